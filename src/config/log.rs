//! `[log]`: level, format and the query log.

use serde::{Deserialize, Serialize};

use dnsfront_dns as dns;

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

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, journald-friendly lines.
    Text,
    /// One JSON object per line.
    Json,
}
