//! `[snapshot]` (every resolver follows the KV hosts snapshot) and `[publish]`
//! (server nodes write it) tables.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

use dnsfront_snapshot::delivery::{AfterCommand, DEFAULT_COMMAND_TIMEOUT, HostsFile};
use dnsfront_snapshot::follower::{
    DEFAULT_FETCH_SPREAD, DEFAULT_KEY, FollowerConfig, stop_key_for,
};
use dnsfront_snapshot::pointer::pointer_key_for;
use dnsfront_snapshot::store::Attributes;

/// Default mode of the delivered hosts file (what dnsmasq and `/etc/hosts` use).
const DEFAULT_HOSTS_FILE_MODE: &str = "0644";
/// Longest `snapshot.fetch_spread`: a snapshot applied later than this after it was
/// written is a fallback out of date for too long.
const MAX_FETCH_SPREAD: Duration = Duration::from_secs(300);

/// `[snapshot]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSnapshot {
    /// Follow the snapshot key and keep it in `state.dir` (the outage fallback).
    pub follow: bool,
    /// The ONE Consul KV key holding the snapshot.
    pub key: String,
    /// Kill switch: while this key holds a non-empty value (the reason),
    /// publishers do not write and followers do not apply.
    pub stop_key: String,
    /// Ed25519 public key (base64, one line). When set, unsigned or badly
    /// signed snapshots are rejected.
    pub public_key_file: Option<PathBuf>,
    /// Without `public_key_file`, accept snapshots nobody can verify. Off by
    /// default: anyone able to write the KV key would control every node's
    /// fallback answers. Signing is the production setting; `demo` sets this.
    pub allow_unsigned: bool,
    /// Longest blocking wait on the key.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Random delay, up to this, between the pointer naming a newer snapshot and
    /// fetching it (the first fetch after a start with nothing held: at once).
    #[serde(with = "humantime_serde")]
    pub fetch_spread: Duration,
    /// Write each applied snapshot to this file in hosts(5) format (dnsmasq `addn-hosts`).
    pub hosts_file: Option<PathBuf>,
    /// Octal mode of the hosts file.
    pub hosts_file_mode: String,
    /// Owner of the hosts file (user name or uid); default: dnsfront's user.
    pub hosts_file_owner: Option<String>,
    /// Group of the hosts file (group name or gid); default: dnsfront's group.
    pub hosts_file_group: Option<String>,
    /// Program and arguments run after each applied snapshot (no shell); empty = none.
    pub after_delivery_command: Vec<String>,
    /// The command is killed when still running after this.
    #[serde(with = "humantime_serde")]
    pub after_delivery_timeout: Duration,
}

impl Default for RawSnapshot {
    fn default() -> Self {
        Self {
            follow: true,
            key: DEFAULT_KEY.to_owned(),
            stop_key: stop_key_for(DEFAULT_KEY),
            public_key_file: None,
            allow_unsigned: false,
            wait: Duration::from_secs(300),
            fetch_spread: DEFAULT_FETCH_SPREAD,
            hosts_file: None,
            hosts_file_mode: DEFAULT_HOSTS_FILE_MODE.to_owned(),
            hosts_file_owner: None,
            hosts_file_group: None,
            after_delivery_command: Vec::new(),
            after_delivery_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

/// `[publish]` (used by `dnsfront publish` on Consul server nodes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPublish {
    /// Ed25519 private key (base64 seed, one line); snapshots are signed when set.
    pub signing_key_file: Option<PathBuf>,
    /// Name written into each snapshot (default: the Consul agent's node name).
    pub identity: Option<String>,
    /// Never write more often than this.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// TTL of the Consul session holding the publisher lock.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Consul's lock-delay after the lock holder's session is invalidated.
    #[serde(with = "humantime_serde")]
    pub lock_delay: Duration,
    /// A snapshot with fewer services is not published (guard against an empty catalog read).
    pub min_services: usize,
    /// A snapshot dropping more than this share of the published services is not
    /// published without `--force`.
    pub max_drop_fraction: f64,
}

impl Default for RawPublish {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            identity: None,
            min_interval: dnsfront_snapshot::publisher::DEFAULT_MIN_INTERVAL,
            session_ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(15),
            min_services: 1,
            max_drop_fraction: 0.5,
        }
    }
}

impl FollowSettings {
    /// How snapshots are trusted, in words (for `check` and the start-up log).
    pub fn trust(&self) -> &'static str {
        match (&self.verifying_key, self.allow_unsigned) {
            (Some(_), _) => "signed snapshots only (snapshot.public_key_file)",
            (None, true) => {
                "UNSIGNED snapshots accepted (snapshot.allow_unsigned = true): anyone who can \
                 write the snapshot key controls the outage answers; set snapshot.public_key_file"
            }
            (None, false) => {
                "every snapshot refused: no snapshot.public_key_file and \
                 snapshot.allow_unsigned = false (no outage fallback)"
            }
        }
    }
}

/// Validated `[snapshot]`: what a follower needs.
#[derive(Debug, Clone)]
pub struct FollowSettings {
    /// The KV key.
    pub key: String,
    /// The kill-switch key.
    pub stop_key: String,
    /// Public key to verify signatures with (then unsigned data is rejected).
    pub verifying_key: Option<dnsfront_snapshot::VerifyingKey>,
    /// Accept snapshots nobody verified (only matters without `verifying_key`).
    pub allow_unsigned: bool,
    /// Longest blocking wait.
    pub wait: Duration,
    /// Random delay before fetching a newer snapshot the pointer names.
    pub fetch_spread: Duration,
    /// The delivered hosts file: path and attributes (the domain comes from `dns.domain`).
    pub hosts_file: Option<(PathBuf, Attributes)>,
    /// The after-delivery command.
    pub after_delivery: Option<AfterCommand>,
}

impl FollowSettings {
    /// The follower's settings, writing the hosts file under `domain` and reporting to `events`.
    pub fn follower_config(
        &self,
        state_dir: PathBuf,
        domain: &str,
        events: dnsfront_snapshot::events::Events,
    ) -> FollowerConfig {
        FollowerConfig {
            key: self.key.clone(),
            stop_key: self.stop_key.clone(),
            pointer_key: pointer_key_for(&self.key),
            verifying_key: self.verifying_key,
            allow_unsigned: self.allow_unsigned,
            wait: self.wait,
            fetch_spread: self.fetch_spread,
            hosts_file: self
                .hosts_file
                .as_ref()
                .map(|(path, attributes)| HostsFile {
                    path: path.clone(),
                    domain: domain.trim_end_matches('.').to_ascii_lowercase(),
                    attributes: *attributes,
                }),
            after_delivery: self.after_delivery.clone(),
            events,
            ..FollowerConfig::new(state_dir)
        }
    }
}

/// Validated `[publish]` plus the snapshot keys.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// The KV key.
    pub key: String,
    /// The kill-switch key.
    pub stop_key: String,
    /// Signing key, when snapshots are signed.
    pub signing_key: Option<dnsfront_snapshot::SigningKey>,
    /// Identity written into snapshots (None: the agent's node name).
    pub identity: Option<String>,
    /// Minimum interval between writes.
    pub min_interval: Duration,
    /// Lock session TTL.
    pub session_ttl: Duration,
    /// Lock delay.
    pub lock_delay: Duration,
    /// Minimum number of services to publish.
    pub min_services: usize,
    /// Largest share of published services a new snapshot may drop.
    pub max_drop_fraction: f64,
}

fn check_key(table: &str, name: &str, key: &str) -> Result<(), ConfigError> {
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
        return Err(invalid(
            format!("{table}.{name}"),
            format!("{key:?} is not a Consul KV key (non-empty, no leading or trailing '/')"),
        ));
    }
    Ok(())
}

impl RawSnapshot {
    /// `None` when following is off.
    pub(super) fn validate(&self) -> Result<Option<FollowSettings>, ConfigError> {
        check_key("snapshot", "key", &self.key)?;
        check_key("snapshot", "stop_key", &self.stop_key)?;
        if self.stop_key == self.key {
            return Err(invalid(
                "snapshot.stop_key",
                "must differ from snapshot.key",
            ));
        }
        if self.stop_key == pointer_key_for(&self.key) {
            return Err(invalid(
                "snapshot.stop_key",
                "must differ from the pointer key (snapshot.key + \".pointer\")",
            ));
        }
        if self.wait < Duration::from_secs(1) || self.wait > Duration::from_secs(600) {
            return Err(invalid(
                "snapshot.wait",
                "must be between 1s and 10m (Consul caps blocking queries at 10m)",
            ));
        }
        if !self.follow {
            return Ok(None);
        }
        let verifying_key = self
            .public_key_file
            .as_deref()
            .map(|path| {
                dnsfront_snapshot::keys::load_verifying_key(path)
                    .map_err(|error| invalid("snapshot.public_key_file", error.to_string()))
            })
            .transpose()?;
        if self.fetch_spread > MAX_FETCH_SPREAD {
            return Err(invalid("snapshot.fetch_spread", "must be at most 5m"));
        }
        Ok(Some(FollowSettings {
            key: self.key.clone(),
            stop_key: self.stop_key.clone(),
            verifying_key,
            allow_unsigned: self.allow_unsigned,
            wait: self.wait,
            fetch_spread: self.fetch_spread,
            hosts_file: self.hosts_file()?,
            after_delivery: self.after_delivery()?,
        }))
    }

    fn hosts_file(&self) -> Result<Option<(PathBuf, Attributes)>, ConfigError> {
        let mode = u32::from_str_radix(self.hosts_file_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "snapshot.hosts_file_mode",
                    format!(
                        "{:?} is not an octal file mode such as \"0644\"",
                        self.hosts_file_mode
                    ),
                )
            })?;
        let owner = self
            .hosts_file_owner
            .as_deref()
            .map(|user| id_of("snapshot.hosts_file_owner", user, "/etc/passwd"))
            .transpose()?;
        let group = self
            .hosts_file_group
            .as_deref()
            .map(|group| id_of("snapshot.hosts_file_group", group, "/etc/group"))
            .transpose()?;
        let Some(path) = &self.hosts_file else {
            return Ok(None);
        };
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(invalid(
                "snapshot.hosts_file",
                format!("{} is not an absolute file path", path.display()),
            ));
        }
        Ok(Some((
            path.clone(),
            Attributes {
                mode: Some(mode),
                owner,
                group,
            },
        )))
    }

    fn after_delivery(&self) -> Result<Option<AfterCommand>, ConfigError> {
        if self.after_delivery_timeout < Duration::from_millis(100)
            || self.after_delivery_timeout > Duration::from_secs(3600)
        {
            return Err(invalid(
                "snapshot.after_delivery_timeout",
                "must be between 100ms and 1h",
            ));
        }
        let Some(program) = self.after_delivery_command.first() else {
            return Ok(None);
        };
        if program.is_empty() {
            return Err(invalid(
                "snapshot.after_delivery_command",
                "the program (first element) is empty",
            ));
        }
        Ok(Some(AfterCommand {
            argv: self.after_delivery_command.clone(),
            timeout: self.after_delivery_timeout,
        }))
    }
}

/// A uid or gid: a number, or a name looked up in `database` (`/etc/passwd`, `/etc/group`).
fn id_of(key: &str, name: &str, database: &str) -> Result<u32, ConfigError> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(database).map_err(|error| {
        invalid(
            key,
            format!("cannot read {database} to look up {name:?}: {error}"),
        )
    })?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let entry = fields.next()?;
            let id = fields.nth(1)?.parse::<u32>().ok()?;
            (entry == name).then_some(id)
        })
        .next()
        .ok_or_else(|| invalid(key, format!("{name:?} is not in {database}")))
}

impl RawPublish {
    pub(super) fn validate(&self, snapshot: &RawSnapshot) -> Result<PublishSettings, ConfigError> {
        snapshot.validate()?;
        if self.min_interval < Duration::from_secs(1) {
            return Err(invalid("publish.min_interval", "must be at least 1s"));
        }
        // Consul accepts session TTLs from 10s to 24h.
        if self.session_ttl < Duration::from_secs(10)
            || self.session_ttl > Duration::from_secs(86_400)
        {
            return Err(invalid(
                "publish.session_ttl",
                "must be between 10s and 24h (Consul's range)",
            ));
        }
        if self.lock_delay > Duration::from_secs(60) {
            return Err(invalid(
                "publish.lock_delay",
                "must be at most 60s (Consul's range)",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_drop_fraction) {
            return Err(invalid(
                "publish.max_drop_fraction",
                format!(
                    "must be between 0.0 and 1.0, got {}",
                    self.max_drop_fraction
                ),
            ));
        }
        let signing_key = self
            .signing_key_file
            .as_deref()
            .map(|path| {
                dnsfront_snapshot::keys::load_signing_key(path)
                    .map_err(|error| invalid("publish.signing_key_file", error.to_string()))
            })
            .transpose()?;
        Ok(PublishSettings {
            key: snapshot.key.clone(),
            stop_key: snapshot.stop_key.clone(),
            signing_key,
            identity: self.identity.clone(),
            min_interval: self.min_interval,
            session_ttl: self.session_ttl,
            lock_delay: self.lock_delay,
            min_services: self.min_services,
            max_drop_fraction: self.max_drop_fraction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow(raw: RawSnapshot) -> Result<FollowSettings, String> {
        raw.validate()
            .map(|settings| settings.expect("followed"))
            .map_err(|error| error.to_string())
    }

    #[test]
    fn delivery_keys_default_to_nothing_delivered() {
        let settings = follow(RawSnapshot::default()).expect("defaults");
        assert_eq!(settings.fetch_spread, Duration::from_secs(60));
        assert!(settings.hosts_file.is_none());
        assert!(settings.after_delivery.is_none());
    }

    #[test]
    fn the_pointer_key_follows_the_snapshot_key() {
        let settings = follow(RawSnapshot {
            key: "team/hosts".to_owned(),
            stop_key: "team/hosts-stop".to_owned(),
            ..RawSnapshot::default()
        })
        .expect("valid");
        let config = settings.follower_config(PathBuf::from("/var/lib/dnsfront"), "consul.", None);
        assert_eq!(config.pointer_key, "team/hosts.pointer");
        let error = follow(RawSnapshot {
            stop_key: "dnsfront/hosts.pointer".to_owned(),
            ..RawSnapshot::default()
        })
        .expect_err("the stop key may not be the pointer key");
        assert!(error.starts_with("snapshot.stop_key"), "{error}");
    }

    #[test]
    fn hosts_file_takes_its_mode_and_numeric_or_named_owner() {
        let settings = follow(RawSnapshot {
            hosts_file: Some(PathBuf::from("/var/lib/dnsfront/consul.hosts")),
            hosts_file_mode: "0640".to_owned(),
            hosts_file_owner: Some("0".to_owned()),
            hosts_file_group: Some("root".to_owned()),
            ..RawSnapshot::default()
        })
        .expect("valid");
        let (path, attributes) = settings.hosts_file.expect("hosts file");
        assert_eq!(path, PathBuf::from("/var/lib/dnsfront/consul.hosts"));
        assert_eq!(
            attributes,
            Attributes {
                mode: Some(0o640),
                owner: Some(0),
                group: Some(0),
            }
        );
    }

    #[test]
    fn bad_delivery_settings_name_their_key() {
        let cases = [
            (
                RawSnapshot {
                    hosts_file: Some(PathBuf::from("relative/hosts-file")),
                    ..RawSnapshot::default()
                },
                "snapshot.hosts_file",
            ),
            (
                RawSnapshot {
                    hosts_file_mode: "rw-r--r--".to_owned(),
                    ..RawSnapshot::default()
                },
                "snapshot.hosts_file_mode",
            ),
            (
                RawSnapshot {
                    hosts_file_mode: "01777".to_owned(),
                    ..RawSnapshot::default()
                },
                "snapshot.hosts_file_mode",
            ),
            (
                RawSnapshot {
                    hosts_file_owner: Some("no-such-user-dnsfront-test".to_owned()),
                    ..RawSnapshot::default()
                },
                "snapshot.hosts_file_owner",
            ),
            (
                RawSnapshot {
                    after_delivery_command: vec![String::new(), "-HUP".to_owned()],
                    ..RawSnapshot::default()
                },
                "snapshot.after_delivery_command",
            ),
            (
                RawSnapshot {
                    after_delivery_timeout: Duration::ZERO,
                    ..RawSnapshot::default()
                },
                "snapshot.after_delivery_timeout",
            ),
            (
                RawSnapshot {
                    fetch_spread: Duration::from_secs(3600),
                    ..RawSnapshot::default()
                },
                "snapshot.fetch_spread",
            ),
        ];
        for (raw, key) in cases {
            let error = follow(raw).expect_err(key);
            assert!(error.starts_with(key), "{error}");
        }
    }
}
