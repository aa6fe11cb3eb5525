//! `[hosts]`: local hosts files answered authoritatively, and `[state]`.

use std::path::PathBuf;
use std::time::Duration;

use dnsfront_dns as dns;
use serde::{Deserialize, Serialize};

use super::{ConfigError, RawConfig, check_duration_range};

/// Default state directory (hosts snapshots live here).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dnsfront";

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
    /// How often the files are checked for changes besides inotify's events
    /// (the safety net for file systems inotify cannot see).
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for RawHosts {
    fn default() -> Self {
        Self {
            files: vec![PathBuf::from(DEFAULT_HOSTS_FILE)],
            ttl: dns::Config::default().local_ttl,
            // inotify brings changes in at once; this poll is the safety net, and
            // an idle resolver should not wake for it often (benches/README.md "Idle cost").
            watch_interval: Duration::from_secs(30),
        }
    }
}

/// Validated `[hosts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsSettings {
    /// Files to read; empty: no local hosts.
    pub files: Vec<PathBuf>,
    /// How often they are checked for changes besides inotify's events.
    pub watch_interval: Duration,
}

impl RawConfig {
    /// `hosts.files` and `hosts.watch_interval` (`hosts.ttl` is an answer setting).
    pub(super) fn hosts_settings(&self) -> Result<HostsSettings, ConfigError> {
        check_duration_range(
            "hosts.watch_interval",
            self.hosts.watch_interval,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        Ok(HostsSettings {
            files: self.hosts.files.clone(),
            watch_interval: self.hosts.watch_interval,
        })
    }
}
