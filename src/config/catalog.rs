//! `[catalog]`: the Consul-backed cache.

use std::time::Duration;

use dnsfront_catalog as catalog;
use serde::{Deserialize, Serialize};

use super::{ConfigError, RawConfig, invalid};

/// `[catalog]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCatalog {
    /// Re-read period of names being asked for.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Re-read period of node names no cached service names.
    #[serde(with = "humantime_serde")]
    pub node_refresh_interval: Duration,
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
    /// Bound on the estimated bytes of cached services and nodes.
    pub max_bytes: u64,
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
    /// Most first fetches in flight to the agent at once.
    pub max_concurrent_fetches: usize,
}

/// `catalog.refresh`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawRefreshMode {
    /// Re-read hot names every `refresh_interval`.
    Poll,
    /// Keep a blocking query open per hot name (served from the agent's streaming view).
    #[default]
    Watch,
}

impl Default for RawCatalog {
    fn default() -> Self {
        let c = catalog::Config::default();
        Self {
            refresh_interval: c.refresh_interval,
            node_refresh_interval: c.node_refresh_interval,
            refresh_jitter: c.refresh_jitter,
            first_fetch_timeout: c.first_fetch_timeout,
            negative_cache_ttl: c.negative_ttl,
            idle_timeout: c.idle_timeout,
            max_stale: c.max_stale,
            max_entries: c.max_entries,
            max_bytes: c.max_bytes,
            only_passing: c.only_passing,
            backoff_min: c.backoff_min,
            backoff_max: c.backoff_max,
            refresh: RawRefreshMode::Watch,
            watch_wait: c.watch_wait,
            watch_min_interval: c.watch_min_interval,
            max_watches: c.max_watches,
            max_concurrent_fetches: c.max_concurrent_fetches,
        }
    }
}

impl RawConfig {
    /// `[catalog]`; the catalog crate checks its own bounds.
    pub(super) fn catalog_config(&self) -> Result<catalog::Config, ConfigError> {
        let c = &self.catalog;
        let config = catalog::Config {
            refresh_interval: c.refresh_interval,
            node_refresh_interval: c.node_refresh_interval,
            refresh_jitter: c.refresh_jitter,
            first_fetch_timeout: c.first_fetch_timeout,
            negative_ttl: c.negative_cache_ttl,
            idle_timeout: c.idle_timeout,
            max_stale: c.max_stale,
            max_entries: c.max_entries,
            max_bytes: c.max_bytes,
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
            max_concurrent_fetches: c.max_concurrent_fetches,
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
}
