//! `[metrics]`: StatsD (DogStatsD) export and the optional Prometheus endpoint.
//!
//! Where the StatsD agent is and the unified service tags also come from the
//! `DD_*` environment variables Datadog's own clients read; a key written in
//! the file wins over them, as an address given in code wins in datadog-go.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::raw::DatadogEnv;
use super::{ConfigError, invalid};

/// Default DogStatsD agent address.
pub const DEFAULT_STATSD_ADDRESS: &str = "127.0.0.1:8125";
/// Default prefix of every metric name.
pub const DEFAULT_METRICS_PREFIX: &str = "dnsfront";
/// DogStatsD's port when `DD_AGENT_HOST` is set without `DD_DOGSTATSD_PORT`.
const DEFAULT_DOGSTATSD_PORT: &str = "8125";

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Send metrics to a (Dog)StatsD agent.
    pub statsd: bool,
    /// The agent: `HOST:PORT`, `udp://HOST:PORT` or `unix:///path`. Unset: the
    /// `DD_*` variables, else [`DEFAULT_STATSD_ADDRESS`].
    pub statsd_address: Option<String>,
    /// Prefix of every metric name (`dnsfront.dns.requests_total`); empty = none.
    pub prefix: String,
    /// Extra tags on every metric (DogStatsD tags, Prometheus labels), e.g. `env`.
    pub tags: BTreeMap<String, String>,
    /// Serve `/metrics` (Prometheus text) and `/health` on this address; off when unset.
    pub prometheus_listen: Option<String>,
    /// Send DogStatsD events (snapshot published, applied, rejected) to `statsd_address`.
    pub events: bool,
    /// Let `prometheus_listen` be a wildcard address (`0.0.0.0`, `[::]`).
    pub prometheus_allow_wildcard: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            statsd: true,
            statsd_address: None,
            prefix: DEFAULT_METRICS_PREFIX.to_owned(),
            tags: BTreeMap::new(),
            prometheus_listen: None,
            events: false,
            prometheus_allow_wildcard: false,
        }
    }
}

/// Where StatsD lines go.
#[derive(Clone, PartialEq, Eq)]
pub enum StatsdTarget {
    /// A UDP agent, `HOST:PORT` (resolved when the exporter starts).
    Udp(String),
    /// A Unix datagram socket (the Datadog agent's `dogstatsd_socket`).
    Unix(PathBuf),
}

impl fmt::Display for StatsdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udp(address) => f.write_str(address),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl fmt::Debug for StatsdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Validated `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The StatsD agent; `None` when `metrics.statsd = false`.
    pub statsd_address: Option<StatsdTarget>,
    /// Prefix of every metric name; empty = none.
    pub prefix: String,
    /// Extra tags on every metric, sorted by key.
    pub tags: Vec<(String, String)>,
    /// Tags for StatsD only: Datadog's unified service tags (`env`, `service`,
    /// `version` from `DD_ENV`, `DD_SERVICE`, `DD_VERSION`) that
    /// `metrics.tags` does not already set.
    pub statsd_tags: Vec<(String, String)>,
    /// Address of the Prometheus/health HTTP endpoint; `None` = off.
    pub prometheus_listen: Option<SocketAddr>,
    /// Send DogStatsD events to `statsd_address` (only when that is set).
    pub events: bool,
}

impl MetricsSettings {
    /// True when no exporter is configured (no socket, no recorder).
    pub fn is_disabled(&self) -> bool {
        self.statsd_address.is_none() && self.prometheus_listen.is_none()
    }

    /// The risky-settings line of a wildcard metrics endpoint (accepted only
    /// with `metrics.prometheus_allow_wildcard`).
    pub(super) fn wildcard_warning(&self) -> Option<String> {
        self.prometheus_listen
            .filter(|listen| listen.ip().is_unspecified())
            .map(|listen| {
                format!(
                    "metrics.prometheus_listen is {listen}: metrics served unauthenticated on \
                     every interface, acknowledged by metrics.prometheus_allow_wildcard"
                )
            })
    }
}

impl RawMetrics {
    /// Validates `[metrics]` with the `DD_*` environment; errors name the key
    /// path or the variable.
    pub fn validate(&self, datadog: &DatadogEnv) -> Result<MetricsSettings, ConfigError> {
        let statsd_address = if self.statsd {
            Some(self.statsd_target(datadog)?)
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
            check_tag_value(value)
                .map_err(|reason| invalid(format!("metrics.tags.{key}"), reason))?;
            tags.push((key.clone(), value.clone()));
        }
        let mut statsd_tags = Vec::new();
        for (variable, key, value) in [
            ("DD_ENV", "env", &datadog.env),
            ("DD_SERVICE", "service", &datadog.service),
            ("DD_VERSION", "version", &datadog.version),
        ] {
            let Some(value) = value else { continue };
            check_tag_value(value).map_err(|reason| invalid(variable, reason))?;
            if !self.tags.contains_key(key) {
                statsd_tags.push((key.to_owned(), value.clone()));
            }
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
        if let Some(listen) = prometheus_listen
            && listen.ip().is_unspecified()
            && !self.prometheus_allow_wildcard
        {
            return Err(invalid(
                "metrics.prometheus_listen",
                format!(
                    "{listen} listens on every interface, unauthenticated: give one address \
                     (127.0.0.1 for a local agent) or set metrics.prometheus_allow_wildcard = true"
                ),
            ));
        }
        Ok(MetricsSettings {
            statsd_address,
            prefix: prefix.to_owned(),
            tags,
            statsd_tags,
            prometheus_listen,
            events: self.events,
        })
    }

    /// `metrics.statsd_address`, else `DD_DOGSTATSD_URL`, else `DD_AGENT_HOST`
    /// with `DD_DOGSTATSD_PORT` (8125), else [`DEFAULT_STATSD_ADDRESS`]: the
    /// order of datadog-go's `resolveAddr`, with the file in the place of an
    /// address given in code. `DD_DOGSTATSD_PORT` alone moves the port of the
    /// loopback default.
    fn statsd_target(&self, datadog: &DatadogEnv) -> Result<StatsdTarget, ConfigError> {
        if let Some(address) = &self.statsd_address {
            return parse_statsd_target(address, "metrics.statsd_address");
        }
        if let Some(url) = &datadog.dogstatsd_url {
            if !url.contains("://") {
                return Err(invalid(
                    "DD_DOGSTATSD_URL",
                    format!("{url:?}: use udp://HOST:PORT or unix:///path"),
                ));
            }
            return parse_statsd_target(url, "DD_DOGSTATSD_URL");
        }
        let port = datadog
            .dogstatsd_port
            .as_deref()
            .unwrap_or(DEFAULT_DOGSTATSD_PORT);
        if port.parse::<u16>().map_or(true, |port| port == 0) {
            return Err(invalid(
                "DD_DOGSTATSD_PORT",
                format!("{port:?} is not a port (1-65535)"),
            ));
        }
        let (key, host) = match &datadog.agent_host {
            Some(host) => ("DD_AGENT_HOST", host.as_str()),
            None if datadog.dogstatsd_port.is_some() => ("DD_DOGSTATSD_PORT", "127.0.0.1"),
            None => return parse_statsd_target(DEFAULT_STATSD_ADDRESS, "metrics.statsd_address"),
        };
        // An IPv6 literal takes brackets before its port.
        let address = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        parse_statsd_target(&address, key)
    }
}

/// `HOST:PORT`, `udp://HOST:PORT` or `unix:///absolute/path`; errors name `key`.
fn parse_statsd_target(text: &str, key: &str) -> Result<StatsdTarget, ConfigError> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(invalid(
                key,
                format!("{text:?}: a Unix socket is unix:///absolute/path"),
            ));
        }
        return Ok(StatsdTarget::Unix(PathBuf::from(path)));
    }
    let address = text.strip_prefix("udp://").unwrap_or(text);
    let valid = !address.contains("://")
        && (address
            .parse::<SocketAddr>()
            .is_ok_and(|addr| addr.port() != 0)
            || address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(':')
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                    && port.parse::<u16>().is_ok_and(|port| port != 0)
            }));
    if !valid {
        return Err(invalid(
            key,
            format!("{text:?} is not HOST:PORT (port not 0), udp://HOST:PORT or unix:///path"),
        ));
    }
    Ok(StatsdTarget::Udp(address.to_owned()))
}

/// A tag value DogStatsD and Prometheus both take as is.
fn check_tag_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| matches!(c, ',' | '|' | '#' | '"' | '\\') || c.is_whitespace())
    {
        return Err(
            "tag values must be non-empty, without spaces, ',', '|', '#', quotes or backslashes",
        );
    }
    Ok(())
}
