//! `[metrics]`: StatsD (DogStatsD) export and the optional Prometheus endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

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
    /// Send DogStatsD events (snapshot published, applied, rejected) to `statsd_address`.
    pub events: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            statsd: true,
            statsd_address: DEFAULT_STATSD_ADDRESS.to_owned(),
            prefix: DEFAULT_METRICS_PREFIX.to_owned(),
            tags: BTreeMap::new(),
            prometheus_listen: None,
            events: false,
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
    /// Send DogStatsD events to `statsd_address` (only when that is set).
    pub events: bool,
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
            events: self.events,
        })
    }
}
