//! `[forward]`: upstreams for every other name.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use dnsfront_forward as forward;
use serde::{Deserialize, Serialize};

use super::{ConfigError, RawConfig, invalid, parse_resolv_conf};

/// Where upstreams come from when neither the file nor `--upstream` names any.
/// Never `/etc/resolv.conf`: once dnsfront runs, that file points at dnsfront.
pub const DEFAULT_RESOLV_FILE: &str = "/etc/dnsfront/resolv.conf";

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
    /// Bound on cached responses (entries).
    pub cache_size: u64,
    /// Bound on the bytes cached responses take.
    pub cache_max_bytes: u64,
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
    /// Bound on the bytes upstream answers hold while in flight.
    pub max_in_flight_bytes: u64,
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
            cache_max_bytes: f.cache_max_bytes,
            min_ttl: f.min_ttl,
            max_ttl: f.max_ttl,
            negative_max_ttl: f.negative_max_ttl,
            max_in_flight: f.max_in_flight,
            max_in_flight_bytes: f.max_in_flight_bytes,
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

impl RawConfig {
    /// `[forward]`; `listen` is checked for forwarding loops. Also returns
    /// where the upstreams came from, for the startup log.
    pub(super) fn forward_config(
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
            cache_max_bytes: f.cache_max_bytes,
            min_ttl: f.min_ttl,
            max_ttl: f.max_ttl,
            negative_max_ttl: f.negative_max_ttl,
            max_in_flight: f.max_in_flight,
            max_in_flight_bytes: f.max_in_flight_bytes,
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
        // The forwarder owns its bounds (DefMinMax consts) and names fields;
        // the key paths are ours.
        config.validate().map_err(invalid_forward)?;
        Ok((config, origin))
    }
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

/// The file's key path of a forwarder setting.
fn key_path(field: forward::Field) -> String {
    use forward::Field;
    let name = match field {
        Field::RuleZone(index) => return format!("forward.rules[{index}].zone"),
        Field::RuleUpstreams(index) => return format!("forward.rules[{index}].upstreams"),
        Field::RebindAllow(index) => return format!("forward.rebind_allow[{index}]"),
        Field::Upstreams => "upstreams",
        Field::AttemptTimeout => "attempt_timeout",
        Field::Deadline => "deadline",
        Field::CacheSize => "cache_size",
        Field::CacheMaxBytes => "cache_max_bytes",
        Field::MinTtl => "min_ttl",
        Field::MaxTtl => "max_ttl",
        Field::NegativeMaxTtl => "negative_max_ttl",
        // Not in the file (always the default); named for completeness.
        Field::UdpPayload => "udp_payload",
        Field::MaxInFlight => "max_in_flight",
        Field::MaxInFlightBytes => "max_in_flight_bytes",
        Field::MaxFails => "max_fails",
        Field::ProbeInterval => "probe_interval",
        Field::ServeStale => "serve_stale",
        Field::StaleAnswerTtl => "stale_answer_ttl",
    };
    format!("forward.{name}")
}

/// A rejected forwarder setting, named by its key path.
pub(super) fn invalid_forward(error: forward::InvalidConfig) -> ConfigError {
    use forward::{Field, InvalidConfig};
    let reason = match &error {
        InvalidConfig::OutOfRange {
            min, max, value, ..
        } => format!("must be between {min} and {max}, got {value}"),
        InvalidConfig::MinTtlAboveMaxTtl { min_ttl, max_ttl } => format!(
            "must not exceed {} ({max_ttl:?}), got {min_ttl:?}",
            key_path(Field::MaxTtl)
        ),
        InvalidConfig::DeadlineBelowAttemptTimeout {
            deadline,
            attempt_timeout,
        } => format!(
            "must be at least {} ({attempt_timeout:?}), got {deadline:?}",
            key_path(Field::AttemptTimeout)
        ),
        InvalidConfig::UnusableUpstream {
            index, upstream, ..
        } => format!("entry {index} is not a usable address: {upstream}"),
        InvalidConfig::RootZone { .. } => format!(
            "must not be the root: use {} for the default",
            key_path(Field::Upstreams)
        ),
        InvalidConfig::DuplicateZone { zone, .. } => {
            format!("{zone} appears in an earlier rule")
        }
        InvalidConfig::RuleWithoutUpstreams { .. } => "must name at least one upstream".to_owned(),
        InvalidConfig::RootRebindAllow { .. } => {
            "must not be the root: set forward.rebind_protection = false instead".to_owned()
        }
    };
    invalid(key_path(error.field()), reason)
}
