//! The configuration file (TOML) and its validation into each crate's `Config`.
//!
//! Two layers, as in the house style: [`RawConfig`] (`raw.rs`) mirrors the
//! file (serde, unknown keys rejected); [`Settings`] (`settings.rs`) is the
//! validated result the app is built from. Each table has its own file with
//! its raw struct, defaults and validation (`dns.rs`, `consul.rs`, ...).
//! Every error names the key path (`catalog.refresh_interval: ...`).

mod catalog;
mod consul;
mod dns;
mod forward;
mod hosts;
pub mod keys;
mod log;
mod metrics;
mod raw;
mod resolv;
mod settings;
mod snapshot;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use catalog::{RawCatalog, RawRefreshMode};
pub use consul::{DEFAULT_CONSUL, RawConsul, TlsEnv};
pub use dns::{DEFAULT_LISTEN, RawDns};
pub use forward::{DEFAULT_RESOLV_FILE, RawDomainRule, RawForward, RawStrategy, parse_upstream};
pub use hosts::{DEFAULT_HOSTS_FILE, DEFAULT_STATE_DIR, HostsSettings, RawHosts, RawState};
pub use log::{LogFormat, RawLog};
pub use metrics::{
    DEFAULT_METRICS_PREFIX, DEFAULT_STATSD_ADDRESS, MetricsSettings, RawMetrics, StatsdTarget,
};
pub use raw::{DatadogEnv, Env, HumanDuration, Overrides, RawConfig};
pub use resolv::parse_resolv_conf;
pub use settings::Settings;
pub use snapshot::{FollowSettings, PublishSettings, RawPublish, RawSnapshot};

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
