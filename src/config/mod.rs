//! The configuration file (TOML) and its validation into each crate's `Config`.
//!
//! Two layers, as in the house style: [`RawConfig`] mirrors the file (serde,
//! unknown keys rejected); [`Settings`] is the validated result the app is
//! built from. Every error names the key path (`catalog.refresh_interval: ...`).

mod resolv;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dnsfront_catalog as catalog;
use dnsfront_consul as consul;
use dnsfront_dns as dns;
use dnsfront_forward as forward;
use serde::{Deserialize, Serialize};

pub use resolv::parse_resolv_conf;
pub use snapshot::{FollowSettings, PublishSettings, RawPublish, RawSnapshot};

/// Where upstreams come from when neither the file nor `--upstream` names any.
/// Never `/etc/resolv.conf`: once dnsfront runs, that file points at dnsfront.
pub const DEFAULT_RESOLV_FILE: &str = "/etc/dnsfront/resolv.conf";
/// Default DNS listen address: loopback only, never an open resolver.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:53";
/// Default Consul agent address when `CONSUL_HTTP_ADDR` is unset.
pub const DEFAULT_CONSUL: &str = "http://127.0.0.1:8500";
/// Default state directory (hosts snapshots live here).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dnsfront";

/// A configuration problem, naming the key path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// File path.
        path: String,
        /// What is wrong, with the key path.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{key}: {reason}")]
    Invalid {
        /// Key path, e.g. `catalog.refresh_interval`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The file, as written. Every table rejects unknown keys.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[dns]`: listeners and answer shaping.
    pub dns: RawDns,
    /// `[consul]`: how to reach the local Consul agent.
    pub consul: RawConsul,
    /// `[catalog]`: the Consul-backed cache.
    pub catalog: RawCatalog,
    /// `[forward]`: upstreams for every other name.
    pub forward: RawForward,
    /// `[state]`: on-disk state.
    pub state: RawState,
    /// `[snapshot]`: following the KV hosts snapshot (outage fallback).
    pub snapshot: RawSnapshot,
    /// `[publish]`: writing the snapshot (`dnsfront publish`, server nodes).
    pub publish: RawPublish,
    /// `[hosts]`: local hosts files answered authoritatively.
    pub hosts: RawHosts,
    /// `[log]`: logging.
    pub log: RawLog,
    /// `[metrics]`: StatsD (DogStatsD) export and the optional Prometheus endpoint.
    pub metrics: RawMetrics,
}

/// `[dns]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    /// UDP+TCP listen addresses.
    pub listen: Vec<String>,
    /// The Consul domain (without trailing dot).
    pub domain: String,
    /// Client networks allowed to query; everyone else gets REFUSED.
    pub allowed_networks: Vec<String>,
    /// Idle TCP connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// TTL of service answers.
    #[serde(with = "humantime_serde")]
    pub service_ttl: Duration,
    /// Per-service TTLs: exact name, `prefix*` or `*`.
    pub service_ttl_overrides: BTreeMap<String, HumanDuration>,
    /// TTL of node and `.addr` answers.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// TTL of negative answers (SOA minimum).
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// TTL cap of answers served from stale data.
    #[serde(with = "humantime_serde")]
    pub stale_ttl: Duration,
    /// Cap on A/AAAA records per answer (Consul's `a_record_limit`); 0 = no cap.
    pub max_answer_records: usize,
    /// Largest UDP answer for EDNS clients.
    pub max_udp_payload: u16,
}

impl Default for RawDns {
    fn default() -> Self {
        let dns = dns::Config::default();
        Self {
            listen: vec![DEFAULT_LISTEN.to_owned()],
            domain: "consul".to_owned(),
            allowed_networks: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            tcp_idle_timeout: Duration::from_secs(10),
            service_ttl: dns.service_ttl,
            service_ttl_overrides: BTreeMap::new(),
            node_ttl: dns.node_ttl,
            negative_ttl: dns.negative_ttl,
            stale_ttl: dns.stale_ttl,
            max_answer_records: 0,
            max_udp_payload: dns.max_udp_payload,
        }
    }
}

/// A duration written as `"10s"` inside maps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HumanDuration(#[serde(with = "humantime_serde")] pub Duration);

/// `[consul]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConsul {
    /// Agent HTTP address; default `$CONSUL_HTTP_ADDR` or http://127.0.0.1:8500.
    pub address: Option<String>,
    /// ACL token; prefer `token_file` or `CONSUL_HTTP_TOKEN`.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// File holding the ACL token.
    pub token_file: Option<PathBuf>,
    /// Deadline of one HTTP call.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Read with `?stale` (any server answers; survives leader elections).
    pub stale: bool,
    /// Read health with `?cached` (the agent's cache).
    pub cached: bool,
}

impl Default for RawConsul {
    fn default() -> Self {
        let consul = consul::Config::default();
        Self {
            address: None,
            token: None,
            token_file: None,
            request_timeout: consul.request_timeout,
            stale: consul.stale,
            cached: consul.cached,
        }
    }
}

/// `[catalog]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCatalog {
    /// Re-read period of names being asked for.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Random spread of each refresh, as a fraction of the interval.
    pub refresh_jitter: f64,
    /// Longest wait of a first-ever query on Consul.
    #[serde(with = "humantime_serde")]
    pub first_fetch_timeout: Duration,
    /// How long "no such service" is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
    /// Names nobody asked for during this long stop being refreshed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Oldest data still served while Consul is unreachable.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// Bound on cached services and nodes.
    pub max_entries: u64,
    /// Drop instances with warning checks too.
    pub only_passing: bool,
    /// First pause after Consul fails.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest pause between attempts while Consul fails.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// `poll` (re-read every refresh_interval) or `watch` (blocking queries).
    pub refresh: RawRefreshMode,
    /// `wait` of each blocking query in watch mode.
    #[serde(with = "humantime_serde")]
    pub watch_wait: Duration,
    /// Least time between two requests of one watched name.
    #[serde(with = "humantime_serde")]
    pub watch_min_interval: Duration,
    /// Most names watched at once; the rest are polled.
    pub max_watches: usize,
}

/// `catalog.refresh`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawRefreshMode {
    /// Re-read hot names every `refresh_interval`.
    #[default]
    Poll,
    /// Keep a blocking query open per hot name.
    Watch,
}

impl Default for RawCatalog {
    fn default() -> Self {
        let c = catalog::Config::default();
        Self {
            refresh_interval: c.refresh_interval,
            refresh_jitter: c.refresh_jitter,
            first_fetch_timeout: c.first_fetch_timeout,
            negative_cache_ttl: c.negative_ttl,
            idle_timeout: c.idle_timeout,
            max_stale: c.max_stale,
            max_entries: c.max_entries,
            only_passing: c.only_passing,
            backoff_min: c.backoff_min,
            backoff_max: c.backoff_max,
            refresh: RawRefreshMode::Poll,
            watch_wait: c.watch_wait,
            watch_min_interval: c.watch_min_interval,
            max_watches: c.max_watches,
        }
    }
}

/// `[forward]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForward {
    /// Upstream resolvers (`IP` or `IP:PORT`); empty = read `resolv_file`.
    pub upstreams: Vec<String>,
    /// resolv.conf-format file with the real upstreams.
    pub resolv_file: PathBuf,
    /// Deadline of one attempt against one upstream.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Deadline of a whole forwarded query; SERVFAIL after it.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Bound on cached responses.
    pub cache_size: u64,
    /// Floor on cached TTLs (0 = TTL-0 answers are not cached).
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Ceiling on cached TTLs.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Ceiling on negative-cache TTLs.
    #[serde(with = "humantime_serde")]
    pub negative_max_ttl: Duration,
    /// Bound on concurrent upstream queries.
    pub max_in_flight: usize,
    /// Per-domain upstreams (dnsmasq `server=/zone/ip`); the longest zone wins.
    pub rules: Vec<RawDomainRule>,
    /// `sequential` (failover in order) or `race` (all at once, first answer wins).
    pub strategy: RawStrategy,
    /// Every upstream query over TCP.
    pub tcp_only: bool,
    /// Consecutive timeouts that mark an upstream down.
    pub max_fails: u32,
    /// How often a down upstream is probed.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Never forward single-label names (NXDOMAIN locally).
    pub domain_needed: bool,
    /// Never forward reverse lookups of private ranges (NXDOMAIN locally).
    pub bogus_priv: bool,
    /// Drop private addresses from answers for public names.
    pub rebind_protection: bool,
    /// Domains exempt from rebind protection.
    pub rebind_allow: Vec<String>,
    /// RFC 8767 max-stale window (0 disables serve-stale).
    #[serde(with = "humantime_serde")]
    pub serve_stale: Duration,
    /// TTL of stale answers.
    #[serde(with = "humantime_serde")]
    pub stale_answer_ttl: Duration,
    /// Refresh hot entries in the last 10 % of their TTL.
    pub prefetch: bool,
}

/// One `[[forward.rules]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDomainRule {
    /// The zone, e.g. `corp.example` or `10.in-addr.arpa`.
    pub zone: String,
    /// Its upstreams (`IP` or `IP:PORT`).
    pub upstreams: Vec<String>,
}

/// `forward.strategy`
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawStrategy {
    /// One upstream at a time, in order.
    #[default]
    Sequential,
    /// Every healthy upstream at once.
    Race,
}

impl Default for RawForward {
    fn default() -> Self {
        let f = forward::Config::default();
        Self {
            upstreams: Vec::new(),
            resolv_file: PathBuf::from(DEFAULT_RESOLV_FILE),
            attempt_timeout: f.attempt_timeout,
            deadline: f.deadline,
            cache_size: f.cache_size,
            min_ttl: f.min_ttl,
            max_ttl: f.max_ttl,
            negative_max_ttl: f.negative_max_ttl,
            max_in_flight: f.max_in_flight,
            rules: Vec::new(),
            strategy: RawStrategy::Sequential,
            tcp_only: f.tcp_only,
            max_fails: f.max_fails,
            probe_interval: f.probe_interval,
            domain_needed: f.domain_needed,
            bogus_priv: f.bogus_priv,
            rebind_protection: f.rebind_protection,
            rebind_allow: Vec::new(),
            serve_stale: f.serve_stale,
            stale_answer_ttl: f.stale_answer_ttl,
            prefetch: f.prefetch,
        }
    }
}

/// `[state]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    /// Directory for on-disk state (the hosts snapshot).
    pub dir: PathBuf,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// Level or `tracing` filter (`RUST_LOG` wins when set).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
    /// One line per (sampled) query, like dnsmasq's `log-queries`.
    pub queries: bool,
    /// Fraction of queries the query log writes (0.0 to 1.0).
    pub query_sample: f64,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
            queries: false,
            query_sample: dns::QueryLog::default().sample,
        }
    }
}

/// Default hosts file read by `[hosts]`.
pub const DEFAULT_HOSTS_FILE: &str = "/etc/hosts";

/// `[hosts]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHosts {
    /// hosts(5)-format files (`/etc/hosts`, dnsmasq's `addn-hosts`); `[]` turns this off.
    pub files: Vec<PathBuf>,
    /// TTL of answers from these files (dnsmasq `local-ttl`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How often the files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for RawHosts {
    fn default() -> Self {
        Self {
            files: vec![PathBuf::from(DEFAULT_HOSTS_FILE)],
            ttl: dns::Config::default().local_ttl,
            watch_interval: Duration::from_secs(2),
        }
    }
}

/// Validated `[hosts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsSettings {
    /// Files to read; empty: no local hosts.
    pub files: Vec<PathBuf>,
    /// How often they are checked for changes.
    pub watch_interval: Duration,
}

/// Default DogStatsD agent address.
pub const DEFAULT_STATSD_ADDRESS: &str = "127.0.0.1:8125";
/// Default prefix of every metric name.
pub const DEFAULT_METRICS_PREFIX: &str = "dnsfront";

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Send metrics to a (Dog)StatsD agent over UDP.
    pub statsd: bool,
    /// The agent's `HOST:PORT`.
    pub statsd_address: String,
    /// Prefix of every metric name (`dnsfront.dns.queries`); empty = none.
    pub prefix: String,
    /// Extra tags on every metric (DogStatsD tags, Prometheus labels), e.g. `env`.
    pub tags: BTreeMap<String, String>,
    /// Serve `/metrics` (Prometheus text) and `/health` on this address; off when unset.
    pub prometheus_listen: Option<String>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            statsd: true,
            statsd_address: DEFAULT_STATSD_ADDRESS.to_owned(),
            prefix: DEFAULT_METRICS_PREFIX.to_owned(),
            tags: BTreeMap::new(),
            prometheus_listen: None,
        }
    }
}

/// Validated `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The StatsD agent's `HOST:PORT`; `None` when `metrics.statsd = false`.
    pub statsd_address: Option<String>,
    /// Prefix of every metric name; empty = none.
    pub prefix: String,
    /// Extra tags on every metric, sorted by key.
    pub tags: Vec<(String, String)>,
    /// Address of the Prometheus/health HTTP endpoint; `None` = off.
    pub prometheus_listen: Option<SocketAddr>,
}

impl MetricsSettings {
    /// True when no exporter is configured (no socket, no recorder).
    pub fn is_disabled(&self) -> bool {
        self.statsd_address.is_none() && self.prometheus_listen.is_none()
    }
}

impl RawMetrics {
    /// Validates `[metrics]`; errors name the key path.
    pub fn validate(&self) -> Result<MetricsSettings, ConfigError> {
        let statsd_address = if self.statsd {
            let address = self.statsd_address.trim();
            let valid = address
                .parse::<SocketAddr>()
                .is_ok_and(|addr| addr.port() != 0)
                || address.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty()
                        && !host.contains(':')
                        && host
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                        && port.parse::<u16>().is_ok_and(|port| port != 0)
                });
            if !valid {
                return Err(invalid(
                    "metrics.statsd_address",
                    format!("{:?} is not HOST:PORT (port not 0)", self.statsd_address),
                ));
            }
            Some(address.to_owned())
        } else {
            None
        };
        let prefix = self.prefix.trim_end_matches('.');
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            || prefix.starts_with('.')
            || prefix.contains("..")
        {
            return Err(invalid(
                "metrics.prefix",
                format!(
                    "{:?}: use letters, digits, '_' and single dots",
                    self.prefix
                ),
            ));
        }
        let mut tags = Vec::new();
        for (key, value) in &self.tags {
            // Valid as a DogStatsD tag and as a Prometheus label name.
            let key_ok = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !key_ok {
                return Err(invalid(
                    format!("metrics.tags.{key}"),
                    "tag names are a letter followed by letters, digits or '_'",
                ));
            }
            if value.is_empty()
                || value
                    .chars()
                    .any(|c| matches!(c, ',' | '|' | '#' | '"' | '\\') || c.is_whitespace())
            {
                return Err(invalid(
                    format!("metrics.tags.{key}"),
                    "tag values must be non-empty, without spaces, ',', '|', '#', quotes or backslashes",
                ));
            }
            tags.push((key.clone(), value.clone()));
        }
        let prometheus_listen = self
            .prometheus_listen
            .as_deref()
            .map(|addr| {
                addr.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "metrics.prometheus_listen",
                        format!("{addr:?} is not an IP:PORT address"),
                    )
                })
            })
            .transpose()?;
        Ok(MetricsSettings {
            statsd_address,
            prefix: prefix.to_owned(),
            tags,
            prometheus_listen,
        })
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, journald-friendly lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` (replaces `dns.listen`).
    pub listen: Vec<String>,
    /// `--consul`.
    pub consul: Option<String>,
    /// `--upstream` (replaces `forward.upstreams`).
    pub upstreams: Vec<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--domain`.
    pub domain: Option<String>,
}

impl RawConfig {
    /// Parses TOML text; `origin` names the file in errors.
    ///
    /// Errors give the key path, the position and toml's message, but never
    /// quote the offending line: it may hold the Consul token.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let describe = |error: &toml::de::Error| {
            let position = error.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" (line {line}, column {column})")
            });
            (
                error.message().trim().replace('\n', " "),
                position.unwrap_or_default(),
            )
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|error| {
            let (message, position) = describe(&error);
            ConfigError::Parse {
                path: origin.to_owned(),
                message: format!("{message}{position}"),
            }
        })?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let (mut message, position) = describe(error.inner());
            if path.contains("token") {
                // "invalid type: integer `1234`" would print the secret.
                message = "invalid value (not shown: it may be a secret)".to_owned();
            }
            ConfigError::Parse {
                path: origin.to_owned(),
                message: if path == "." || path.is_empty() {
                    format!("{message}{position}")
                } else {
                    format!("{path}: {message}{position}")
                },
            }
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Applies command-line overrides.
    pub fn apply(&mut self, overrides: &Overrides) {
        if !overrides.listen.is_empty() {
            self.dns.listen = overrides.listen.clone();
        }
        if let Some(consul) = &overrides.consul {
            self.consul.address = Some(consul.clone());
        }
        if !overrides.upstreams.is_empty() {
            self.forward.upstreams = overrides.upstreams.clone();
        }
        if let Some(dir) = &overrides.state_dir {
            self.state.dir = dir.clone();
        }
        if let Some(domain) = &overrides.domain {
            self.dns.domain = domain.clone();
        }
    }
}

/// The environment the config reads defaults from (injected for tests).
#[derive(Debug, Default, Clone)]
pub struct Env {
    /// `CONSUL_HTTP_ADDR`.
    pub consul_http_addr: Option<String>,
    /// `CONSUL_HTTP_TOKEN`.
    pub consul_http_token: Option<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let non_empty = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Self {
            consul_http_addr: non_empty("CONSUL_HTTP_ADDR"),
            consul_http_token: non_empty("CONSUL_HTTP_TOKEN"),
        }
    }
}

/// Validated settings, one plain `Config` per crate.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Addresses to bind (UDP and TCP each).
    pub listen: Vec<SocketAddr>,
    /// Server options (client ACL, TCP idle timeout).
    pub server: dns::ServerOptions,
    /// Answer shaping.
    pub dns: dns::Config,
    /// Consul client.
    pub consul: consul::Config,
    /// Catalog cache.
    pub catalog: catalog::Config,
    /// Forwarder; `upstreams` may be empty (then non-Consul names get SERVFAIL).
    pub forward: forward::Config,
    /// Where the upstreams came from, for the startup log.
    pub upstream_origin: String,
    /// State directory (the snapshot file lives here).
    pub state_dir: PathBuf,
    /// Snapshot following; None when `snapshot.follow = false`.
    pub follow: Option<FollowSettings>,
    /// Local hosts files.
    pub hosts: HostsSettings,
    /// Log filter and format.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Metrics export.
    pub metrics: MetricsSettings,
}

impl RawConfig {
    /// Validates every key and builds the per-crate configs.
    pub fn validate(&self, env: &Env) -> Result<Settings, ConfigError> {
        let listen = self
            .dns
            .listen
            .iter()
            .map(|addr| {
                addr.parse::<SocketAddr>().map_err(|_| {
                    invalid("dns.listen", format!("{addr:?} is not an IP:PORT address"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            return Err(invalid("dns.listen", "at least one address is needed"));
        }

        let allowed_networks = self
            .dns
            .allowed_networks
            .iter()
            .map(|net| {
                net.parse::<ipnet::IpNet>()
                    .or_else(|_| net.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "dns.allowed_networks",
                            format!("{net:?} is not a network like 10.0.0.0/8"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if allowed_networks.is_empty() {
            return Err(invalid(
                "dns.allowed_networks",
                "empty: no client could query",
            ));
        }

        let domain = self.dns.domain.trim_end_matches('.').to_ascii_lowercase();
        let domain_name = hickory_server::proto::rr::Name::from_ascii(format!("{domain}."))
            .ok()
            .filter(|_| !domain.is_empty())
            .ok_or_else(|| {
                invalid(
                    "dns.domain",
                    format!("{:?} is not a domain name", self.dns.domain),
                )
            })?;

        let mut service_ttl_overrides = Vec::new();
        for (pattern, ttl) in &self.dns.service_ttl_overrides {
            check_ttl(&format!("dns.service_ttl_overrides.{pattern}"), ttl.0)?;
            service_ttl_overrides.push((pattern.to_ascii_lowercase(), ttl.0));
        }
        check_ttl("dns.service_ttl", self.dns.service_ttl)?;
        check_ttl("dns.node_ttl", self.dns.node_ttl)?;
        check_ttl("dns.negative_ttl", self.dns.negative_ttl)?;
        check_ttl("dns.stale_ttl", self.dns.stale_ttl)?;
        if !(512..=4096).contains(&self.dns.max_udp_payload) {
            return Err(invalid(
                "dns.max_udp_payload",
                format!(
                    "must be between 512 and 4096, got {}",
                    self.dns.max_udp_payload
                ),
            ));
        }
        check_duration_range(
            "dns.tcp_idle_timeout",
            self.dns.tcp_idle_timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        let dns_config = dns::Config {
            domain: domain_name,
            service_ttl: self.dns.service_ttl,
            service_ttl_overrides,
            node_ttl: self.dns.node_ttl,
            negative_ttl: self.dns.negative_ttl,
            stale_ttl: self.dns.stale_ttl,
            max_answer_records: (self.dns.max_answer_records > 0)
                .then_some(self.dns.max_answer_records),
            max_udp_payload: self.dns.max_udp_payload,
            local_ttl: self.hosts.ttl,
            query_log: dns::QueryLog {
                enabled: self.log.queries,
                sample: self.log.query_sample,
            },
        };
        check_ttl("hosts.ttl", self.hosts.ttl)?;
        if !(0.0..=1.0).contains(&self.log.query_sample) {
            return Err(invalid(
                "log.query_sample",
                format!(
                    "must be a fraction between 0.0 and 1.0, got {}",
                    self.log.query_sample
                ),
            ));
        }
        check_duration_range(
            "hosts.watch_interval",
            self.hosts.watch_interval,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;

        let consul = self.consul_config(env)?;
        let catalog = self.catalog_config()?;
        let (forward, upstream_origin) = self.forward_config(&listen)?;

        Ok(Settings {
            listen,
            server: dns::ServerOptions {
                tcp_idle_timeout: self.dns.tcp_idle_timeout,
                allowed_networks,
            },
            dns: dns_config,
            consul,
            catalog,
            forward,
            upstream_origin,
            state_dir: self.state.dir.clone(),
            follow: self.snapshot.validate()?,
            hosts: HostsSettings {
                files: self.hosts.files.clone(),
                watch_interval: self.hosts.watch_interval,
            },
            log_level: self.log.level.clone(),
            log_format: self.log.format,
            metrics: self.metrics.validate()?,
        })
    }

    /// Validates what `dnsfront publish` needs: Consul and `[publish]`.
    pub fn validate_publish(
        &self,
        env: &Env,
    ) -> Result<(consul::Config, PublishSettings, catalog::Config), ConfigError> {
        Ok((
            self.consul_config(env)?,
            self.publish.validate(&self.snapshot)?,
            self.catalog_config()?,
        ))
    }

    fn consul_config(&self, env: &Env) -> Result<consul::Config, ConfigError> {
        let address = self
            .consul
            .address
            .clone()
            .or_else(|| env.consul_http_addr.clone())
            .unwrap_or_else(|| DEFAULT_CONSUL.to_owned());
        // CONSUL_HTTP_ADDR may be "host:port" without a scheme, as the consul CLI allows.
        let address = if address.contains("://") {
            address
        } else {
            format!("http://{address}")
        };
        if !address.starts_with("http://") {
            return Err(invalid(
                "consul.address",
                format!(
                    "{address:?}: only http:// is supported (run dnsfront beside the local agent)"
                ),
            ));
        }
        let token = match (&self.consul.token, &self.consul.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "consul.token",
                    "set either token or token_file, not both",
                ));
            }
            (Some(token), None) => Some(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    invalid(
                        "consul.token_file",
                        format!("reading {}: {error}", path.display()),
                    )
                })?;
                Some(text.trim().to_owned())
            }
            (None, None) => env.consul_http_token.clone(),
        }
        .filter(|token| !token.is_empty())
        .map(consul::Token::new);
        if self.consul.request_timeout < Duration::from_millis(100)
            || self.consul.request_timeout > Duration::from_secs(60)
        {
            return Err(invalid(
                "consul.request_timeout",
                "must be between 100ms and 60s",
            ));
        }
        Ok(consul::Config {
            address,
            token,
            request_timeout: self.consul.request_timeout,
            stale: self.consul.stale,
            cached: self.consul.cached,
        })
    }

    fn catalog_config(&self) -> Result<catalog::Config, ConfigError> {
        let c = &self.catalog;
        let config = catalog::Config {
            refresh_interval: c.refresh_interval,
            refresh_jitter: c.refresh_jitter,
            first_fetch_timeout: c.first_fetch_timeout,
            negative_ttl: c.negative_cache_ttl,
            idle_timeout: c.idle_timeout,
            max_stale: c.max_stale,
            max_entries: c.max_entries,
            only_passing: c.only_passing,
            backoff_min: c.backoff_min,
            backoff_max: c.backoff_max,
            refresh: match c.refresh {
                RawRefreshMode::Poll => catalog::RefreshMode::Poll,
                RawRefreshMode::Watch => catalog::RefreshMode::Watch,
            },
            watch_wait: c.watch_wait,
            watch_min_interval: c.watch_min_interval,
            max_watches: c.max_watches,
        };
        config.validate().map_err(|error| match error {
            catalog::Error::InvalidConfig { key, reason } => {
                let key = if key == "negative_ttl" {
                    "negative_cache_ttl"
                } else {
                    key
                };
                invalid(format!("catalog.{key}"), reason)
            }
        })?;
        Ok(config)
    }

    fn forward_config(
        &self,
        listen: &[SocketAddr],
    ) -> Result<(forward::Config, String), ConfigError> {
        let f = &self.forward;
        let (upstreams, origin) = if f.upstreams.is_empty() {
            match std::fs::read_to_string(&f.resolv_file) {
                Ok(text) => (
                    parse_resolv_conf(&text),
                    format!("resolv file {}", f.resolv_file.display()),
                ),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => (
                    Vec::new(),
                    format!("none ({} does not exist)", f.resolv_file.display()),
                ),
                Err(error) => {
                    return Err(invalid(
                        "forward.resolv_file",
                        format!("reading {}: {error}", f.resolv_file.display()),
                    ));
                }
            }
        } else {
            let parsed = f
                .upstreams
                .iter()
                .map(|upstream| {
                    parse_upstream(upstream).ok_or_else(|| {
                        invalid(
                            "forward.upstreams",
                            format!("{upstream:?} is not IP or IP:PORT"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (parsed, "configuration".to_owned())
        };
        let check_loop = |key: &str, upstream: &SocketAddr| {
            if listen.iter().any(|own| is_same_endpoint(own, upstream)) {
                Err(invalid(
                    key,
                    format!(
                        "{upstream} is one of dnsfront's own listen addresses: that would be a forwarding loop"
                    ),
                ))
            } else {
                Ok(())
            }
        };
        for upstream in &upstreams {
            check_loop("forward.upstreams", upstream)?;
        }
        let mut rules = Vec::with_capacity(f.rules.len());
        for (index, rule) in f.rules.iter().enumerate() {
            let zone =
                hickory_server::proto::rr::Name::from_ascii(&rule.zone).map_err(|error| {
                    invalid(
                        format!("forward.rules[{index}].zone"),
                        format!("{:?} is not a domain name: {error}", rule.zone),
                    )
                })?;
            let key = format!("forward.rules[{index}].upstreams");
            let mut rule_upstreams = Vec::with_capacity(rule.upstreams.len());
            for upstream in &rule.upstreams {
                let addr = parse_upstream(upstream)
                    .ok_or_else(|| invalid(&key, format!("{upstream:?} is not IP or IP:PORT")))?;
                check_loop(&key, &addr)?;
                rule_upstreams.push(addr);
            }
            rules.push(forward::DomainRule {
                zone,
                upstreams: rule_upstreams,
            });
        }
        let rebind_allow = f
            .rebind_allow
            .iter()
            .enumerate()
            .map(|(index, domain)| {
                hickory_server::proto::rr::Name::from_ascii(domain).map_err(|error| {
                    invalid(
                        format!("forward.rebind_allow[{index}]"),
                        format!("{domain:?} is not a domain name: {error}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config = forward::Config {
            upstreams,
            attempt_timeout: f.attempt_timeout,
            deadline: f.deadline,
            cache_size: f.cache_size,
            min_ttl: f.min_ttl,
            max_ttl: f.max_ttl,
            negative_max_ttl: f.negative_max_ttl,
            max_in_flight: f.max_in_flight,
            rules,
            strategy: match f.strategy {
                RawStrategy::Sequential => forward::Strategy::Sequential,
                RawStrategy::Race => forward::Strategy::Race,
            },
            tcp_only: f.tcp_only,
            max_fails: f.max_fails,
            probe_interval: f.probe_interval,
            domain_needed: f.domain_needed,
            bogus_priv: f.bogus_priv,
            rebind_protection: f.rebind_protection,
            rebind_allow,
            serve_stale: f.serve_stale,
            stale_answer_ttl: f.stale_answer_ttl,
            prefetch: f.prefetch,
            udp_payload: forward::config::UDP_PAYLOAD.default,
        };
        // The forwarder owns its bounds (DefMinMax consts); its keys are already
        // the file's key paths.
        config.validate().map_err(|error| match error {
            forward::Error::InvalidConfig { key, reason } => invalid(key, reason),
            other => invalid("forward", other.to_string()),
        })?;
        Ok((config, origin))
    }
}

fn check_duration_range(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(invalid(
        key,
        format!(
            "must be between {} and {}, got {}",
            humantime::format_duration(min),
            humantime::format_duration(max),
            humantime::format_duration(value)
        ),
    ))
}

fn check_ttl(key: &str, ttl: Duration) -> Result<(), ConfigError> {
    // RFC 2181 §8: TTLs are 31-bit; a day is plenty for a service answer.
    if ttl > Duration::from_secs(86_400) {
        return Err(invalid(
            key,
            format!(
                "must be at most 24h, got {}",
                humantime::format_duration(ttl)
            ),
        ));
    }
    if ttl.subsec_nanos() != 0 {
        return Err(invalid(key, "DNS TTLs are whole seconds"));
    }
    Ok(())
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`; port 53 when omitted.
pub fn parse_upstream(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Would sending to `upstream` reach the socket bound at `own`?
fn is_same_endpoint(own: &SocketAddr, upstream: &SocketAddr) -> bool {
    if own.port() != upstream.port() {
        return false;
    }
    own.ip() == upstream.ip()
        || (own.ip().is_unspecified()
            && (upstream.ip().is_loopback() || upstream.ip().is_unspecified()))
}
