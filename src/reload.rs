//! Live reconfiguration: SIGHUP, the control channel's `reload`, and a poll
//! of the upstream resolv file all re-read the configuration the process was
//! started with (the same file, the same command-line overrides), validate
//! it, and apply what can change while serving. Caches are never dropped.
//!
//! Applied live: `log.level` (the tracing filter's reload handle), the
//! answer-shaping `[dns]` keys (`Router::reload`: domain, TTLs, sizes, query
//! log) and `[forward]` (`Forwarder::reconfigure`, see [`apply_forward`]),
//! except what those report as fixed. Every other changed key is named in one
//! `restart_required` warning and keeps its running value, so it is named
//! again on the next reload until the process restarts.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use dnsfront_dns as dns;
use dnsfront_forward as forward;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{ConfigError, Env, Overrides, RawConfig, Settings};
use crate::telemetry;

/// How often the upstream resolv file is checked for changes (mtime, length
/// and a hash of its content: an edit within the same second is seen too).
pub const RESOLV_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Where the running configuration comes from: re-read on every reload.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config FILE`; `None` = built-in defaults.
    pub file: Option<PathBuf>,
    /// The command-line overrides, re-applied on every reload.
    pub overrides: Overrides,
    /// `--log-level`, which wins over `log.level` in the file.
    pub log_level_flag: Option<String>,
}

/// A freshly loaded and validated configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated settings.
    pub settings: Settings,
    /// The resolv file upstreams come from (watched), when the file and the
    /// flags name no upstream.
    pub resolv_file: Option<PathBuf>,
    /// What the resolv file looked like when it was read.
    resolv_seen: Fingerprint,
}

impl ConfigSource {
    /// Reads the file (or the defaults), applies the overrides, validates.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let mut raw = match &self.file {
            Some(path) => RawConfig::load(path)?,
            None => RawConfig::default(),
        };
        raw.apply(&self.overrides);
        let settings = raw.validate(&Env::from_process())?;
        let resolv_file = raw
            .forward
            .upstreams
            .is_empty()
            .then(|| raw.forward.resolv_file.clone());
        let resolv_seen = resolv_file.as_deref().and_then(fingerprint);
        Ok(Loaded {
            settings,
            resolv_file,
            resolv_seen,
        })
    }

    /// The log filter in effect for `settings`: the flag wins over the file.
    pub fn log_level<'a>(&'a self, settings: &'a Settings) -> &'a str {
        self.log_level_flag
            .as_deref()
            .unwrap_or(&settings.log_level)
    }
}

/// What one reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// What started it: `SIGHUP`, `control`, `resolv file`.
    pub trigger: String,
    /// Every key whose value differs from the running one.
    pub changed: Vec<String>,
    /// The changed keys now in effect.
    pub applied: Vec<String>,
    /// The changed keys that keep their running value until a restart.
    pub restart_required: Vec<String>,
}

/// The running parts a reload can change.
#[derive(Clone)]
pub struct Live {
    /// The forwarder (always present; it may have no upstreams).
    pub forwarder: forward::Forwarder,
    /// The DNS router (answer settings).
    pub router: dns::Router,
    /// The local hosts files (re-read on every reload).
    pub local_hosts: dnsfront_hosts::LocalHosts,
}

// === diff ===

type Field = (&'static str, fn(&Settings) -> String);

/// Every key of [`Settings`], as the config file names it, and how to compare it.
/// A table-level entry (`"snapshot"`) catches fields added later.
const FIELDS: &[Field] = &[
    ("dns.listen", |s| format!("{:?}", s.listen)),
    ("dns.allowed_networks", |s| {
        format!("{:?}", s.server.allowed_networks)
    }),
    ("dns.tcp_idle_timeout", |s| {
        format!("{:?}", s.server.tcp_idle_timeout)
    }),
    ("dns.domain", |s| format!("{:?}", s.dns.domain)),
    ("dns.service_ttl", |s| format!("{:?}", s.dns.service_ttl)),
    ("dns.service_ttl_overrides", |s| {
        format!("{:?}", s.dns.service_ttl_overrides)
    }),
    ("dns.node_ttl", |s| format!("{:?}", s.dns.node_ttl)),
    ("dns.negative_ttl", |s| format!("{:?}", s.dns.negative_ttl)),
    ("dns.stale_ttl", |s| format!("{:?}", s.dns.stale_ttl)),
    ("dns.max_answer_records", |s| {
        format!("{:?}", s.dns.max_answer_records)
    }),
    ("dns.max_udp_payload", |s| {
        format!("{:?}", s.dns.max_udp_payload)
    }),
    // Fields of `dns::Config` that the file keeps in other tables.
    ("hosts.ttl", |s| format!("{:?}", s.dns.local_ttl)),
    ("log.queries", |s| format!("{:?}", s.dns.query_log.enabled)),
    ("log.query_sample", |s| {
        format!("{:?}", s.dns.query_log.sample)
    }),
    ("dns", |s| {
        let mut dns = s.dns.clone();
        dns.local_ttl = Duration::ZERO;
        dns.query_log = dns::QueryLog::default();
        format!("{dns:?}")
    }),
    ("consul.address", |s| s.consul.address.clone()),
    ("consul.request_timeout", |s| {
        format!("{:?}", s.consul.request_timeout)
    }),
    ("consul.stale", |s| format!("{:?}", s.consul.stale)),
    ("consul.cached", |s| format!("{:?}", s.consul.cached)),
    // consul.token is compared apart: its Debug form is redacted.
    ("consul", |s| {
        let mut consul = s.consul.clone();
        consul.token = None;
        format!("{consul:?}")
    }),
    ("catalog.refresh_interval", |s| {
        format!("{:?}", s.catalog.refresh_interval)
    }),
    ("catalog.refresh_jitter", |s| {
        format!("{:?}", s.catalog.refresh_jitter)
    }),
    ("catalog.first_fetch_timeout", |s| {
        format!("{:?}", s.catalog.first_fetch_timeout)
    }),
    ("catalog.negative_cache_ttl", |s| {
        format!("{:?}", s.catalog.negative_ttl)
    }),
    ("catalog.idle_timeout", |s| {
        format!("{:?}", s.catalog.idle_timeout)
    }),
    ("catalog.max_stale", |s| {
        format!("{:?}", s.catalog.max_stale)
    }),
    ("catalog.max_entries", |s| {
        format!("{:?}", s.catalog.max_entries)
    }),
    ("catalog.only_passing", |s| {
        format!("{:?}", s.catalog.only_passing)
    }),
    ("catalog.backoff_min", |s| {
        format!("{:?}", s.catalog.backoff_min)
    }),
    ("catalog.backoff_max", |s| {
        format!("{:?}", s.catalog.backoff_max)
    }),
    ("catalog", |s| format!("{:?}", s.catalog)),
    ("forward.upstreams", |s| {
        format!("{:?}", s.forward.upstreams)
    }),
    ("forward.attempt_timeout", |s| {
        format!("{:?}", s.forward.attempt_timeout)
    }),
    ("forward.deadline", |s| format!("{:?}", s.forward.deadline)),
    ("forward.cache_size", |s| {
        format!("{:?}", s.forward.cache_size)
    }),
    ("forward.min_ttl", |s| format!("{:?}", s.forward.min_ttl)),
    ("forward.max_ttl", |s| format!("{:?}", s.forward.max_ttl)),
    ("forward.negative_max_ttl", |s| {
        format!("{:?}", s.forward.negative_max_ttl)
    }),
    ("forward.max_in_flight", |s| {
        format!("{:?}", s.forward.max_in_flight)
    }),
    ("forward", |s| format!("{:?}", s.forward)),
    ("state.dir", |s| format!("{:?}", s.state_dir)),
    ("snapshot", |s| format!("{:?}", s.follow)),
    ("hosts.files", |s| format!("{:?}", s.hosts.files)),
    ("hosts.watch_interval", |s| {
        format!("{:?}", s.hosts.watch_interval)
    }),
    ("hosts", |s| format!("{:?}", s.hosts)),
    ("log.level", |s| s.log_level.clone()),
    ("log.format", |s| format!("{:?}", s.log_format)),
    ("metrics.statsd_address", |s| {
        format!("{:?}", s.metrics.statsd_address)
    }),
    ("metrics.prefix", |s| s.metrics.prefix.clone()),
    ("metrics.tags", |s| format!("{:?}", s.metrics.tags)),
    ("metrics.prometheus_listen", |s| {
        format!("{:?}", s.metrics.prometheus_listen)
    }),
    ("metrics", |s| format!("{:?}", s.metrics)),
];

/// The keys whose values differ between `old` and `new`, in file order. A
/// table name alone (`"catalog"`) means a field this list does not know yet.
pub fn diff(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut changed: Vec<&'static str> = Vec::new();
    for (key, render) in FIELDS {
        if render(old) == render(new) {
            continue;
        }
        let is_table = !key.contains('.');
        if is_table && changed.iter().any(|k| k.starts_with(&format!("{key}."))) {
            continue;
        }
        changed.push(key);
    }
    if old.consul.token != new.consul.token {
        changed.push("consul.token");
    }
    changed
}

// === apply ===

/// Keys of [`Settings::dns`] (answer shaping), which `Router::reload` applies.
fn is_answer_key(key: &str) -> bool {
    matches!(
        key,
        "dns" | "hosts.ttl" | "log.queries" | "log.query_sample"
    ) || (key.starts_with("dns.")
        && !matches!(
            key,
            "dns.listen" | "dns.allowed_networks" | "dns.tcp_idle_timeout"
        ))
}

fn is_forward_key(key: &str) -> bool {
    key == "forward" || key.starts_with("forward.")
}

/// Applies `new` to the running forwarder (cache, upstream health and
/// queries in flight are kept); returns the keys it kept at their running
/// value, which need a restart (`forward.cache_size`, `forward.max_in_flight`).
pub fn apply_forward(forwarder: &forward::Forwarder, new: &forward::Config) -> Vec<&'static str> {
    forwarder.reconfigure(new.clone())
}

/// Applies `new` over `running` (the settings in effect) and returns the
/// outcome and the settings now in effect: applied keys take their new
/// value, restart-only keys keep the running one.
fn apply(
    live: &Live,
    source: &ConfigSource,
    running: &Settings,
    new: &Settings,
    trigger: &str,
) -> (Outcome, Settings) {
    let changed = diff(running, new);
    let mut in_effect = running.clone();
    let mut fixed: Vec<&'static str> = Vec::new();

    if changed.iter().any(|key| is_forward_key(key)) {
        let kept = apply_forward(&live.forwarder, &new.forward);
        in_effect.forward = new.forward.clone();
        in_effect.upstream_origin = new.upstream_origin.clone();
        for key in &kept {
            match *key {
                "forward.cache_size" => in_effect.forward.cache_size = running.forward.cache_size,
                "forward.max_in_flight" => {
                    in_effect.forward.max_in_flight = running.forward.max_in_flight;
                }
                _ => {}
            }
        }
        fixed.extend(kept);
    }
    if changed.iter().any(|key| is_answer_key(key)) {
        fixed.extend(live.router.reload(new.dns.clone()));
        in_effect.dns = new.dns.clone();
    }
    // SIGHUP re-reads the hosts files even when the config did not change
    // (dnsmasq's habit); a changed file list is applied too. A failed read
    // keeps the previous entries.
    let hosts_result = if changed.contains(&"hosts.files") {
        in_effect.hosts.files = new.hosts.files.clone();
        live.local_hosts.set_paths(new.hosts.files.clone())
    } else {
        live.local_hosts.reload()
    };
    match hosts_result {
        Ok(stats) => info!(
            files = stats.files,
            missing = stats.missing,
            names = stats.names,
            "Hosts files re-read"
        ),
        Err(error) => warn!(error = %error, "Hosts files not re-read; the previous entries stay"),
    }
    let mut deferred_level = None;
    if changed.contains(&"log.level") {
        // Applied after the reload lines are written, so that a quieter
        // level does not hide them.
        deferred_level = Some(source.log_level(new).to_owned());
        in_effect.log_level = new.log_level.clone();
    }

    let live_key = |key: &str| {
        is_forward_key(key) || is_answer_key(key) || matches!(key, "log.level" | "hosts.files")
    };
    let restart_required: Vec<String> = changed
        .iter()
        .filter(|key| !live_key(key) || fixed.contains(key))
        .map(|key| (*key).to_owned())
        .collect();
    let outcome = Outcome {
        trigger: trigger.to_owned(),
        changed: changed.iter().map(|k| (*k).to_owned()).collect(),
        applied: changed
            .iter()
            .filter(|key| !restart_required.iter().any(|r| r == *key))
            .map(|k| (*k).to_owned())
            .collect(),
        restart_required,
    };
    info!(
        trigger,
        changed = ?outcome.changed,
        applied = ?outcome.applied,
        "Configuration reloaded"
    );
    if !outcome.restart_required.is_empty() {
        warn!(
            restart_required = ?outcome.restart_required,
            "Changed settings keep their running values until dnsfront restarts"
        );
    }
    if let Some(level) = deferred_level {
        if source.log_level_flag.is_some() {
            info!(
                "log.level changed in the file, but --log-level overrides it; log filter unchanged"
            );
        } else {
            match telemetry::reload_log_level(&level) {
                Ok(true) => {}
                Ok(false) => info!("RUST_LOG is set and wins over log.level; log filter unchanged"),
                Err(error) => {
                    warn!(key = "log.level", error = %format!("{error:#}"), "Log level not changed");
                }
            }
        }
    }
    (outcome, in_effect)
}

// === the reload task ===

/// A reload request: who asks, and where to send the result.
struct Request {
    trigger: &'static str,
    reply: Option<oneshot::Sender<Result<Outcome, String>>>,
}

/// Asks the reload task to reload (the control channel's `reload`). Cheap to clone.
#[derive(Clone, Default)]
pub struct ReloadHandle {
    requests: Option<mpsc::Sender<Request>>,
    last: Arc<Mutex<Option<LastReload>>>,
}

/// The most recent reload, for `stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastReload {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    /// What changed, when the new configuration was valid.
    pub outcome: Option<Outcome>,
    /// The configuration error, when it was not.
    pub error: Option<String>,
}

impl ReloadHandle {
    /// Reloads now and returns what changed, or the configuration error.
    pub async fn reload(&self, trigger: &'static str) -> Result<Outcome, String> {
        let Some(requests) = &self.requests else {
            return Err("this server was not started from a configuration source".to_owned());
        };
        let (reply, outcome) = oneshot::channel();
        requests
            .send(Request {
                trigger,
                reply: Some(reply),
            })
            .await
            .map_err(|_| "the server is shutting down".to_owned())?;
        outcome
            .await
            .map_err(|_| "the server is shutting down".to_owned())?
    }

    /// The most recent reload, if any.
    pub fn last(&self) -> Option<LastReload> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Installs the SIGHUP handler and starts the reload task (with the resolv
/// file poll) until `shutdown`. `loaded` is what the app was built from.
pub fn spawn(
    source: ConfigSource,
    loaded: Loaded,
    live: Live,
    shutdown: CancellationToken,
) -> anyhow::Result<ReloadHandle> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let (sender, mut requests) = mpsc::channel::<Request>(8);
    let handle = ReloadHandle {
        requests: Some(sender),
        last: Arc::default(),
    };
    let last = Arc::clone(&handle.last);
    tokio::spawn(async move {
        let mut running = loaded.settings;
        let mut watch = ResolvWatch {
            path: loaded.resolv_file,
            seen: loaded.resolv_seen,
        };
        let mut poll = tokio::time::interval(RESOLV_POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let request = tokio::select! {
                () = shutdown.cancelled() => return,
                received = hangup.recv() => match received {
                    Some(()) => Request { trigger: "SIGHUP", reply: None },
                    None => return,
                },
                request = requests.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
                _ = poll.tick() => {
                    if !watch.changed() {
                        continue;
                    }
                    Request { trigger: "resolv file", reply: None }
                }
            };
            let result = match source.load() {
                Ok(loaded) => {
                    let (outcome, in_effect) =
                        apply(&live, &source, &running, &loaded.settings, request.trigger);
                    running = in_effect;
                    watch = ResolvWatch {
                        path: loaded.resolv_file,
                        seen: loaded.resolv_seen,
                    };
                    Ok(outcome)
                }
                Err(config_error) => {
                    error!(
                        trigger = request.trigger,
                        error = %config_error,
                        "Configuration reload failed; still running with the previous configuration"
                    );
                    Err(config_error.to_string())
                }
            };
            *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(LastReload {
                at_unix: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                outcome: result.as_ref().ok().cloned(),
                error: result.as_ref().err().cloned(),
            });
            if let Some(reply) = request.reply {
                let _ = reply.send(result);
            }
        }
    });
    Ok(handle)
}

// === resolv file watch ===

/// What we know of a file: `None` when it does not exist or cannot be read.
type Fingerprint = Option<(Option<SystemTime>, u64, u64)>;

/// Polls one file for changes of mtime, length or content.
struct ResolvWatch {
    path: Option<PathBuf>,
    seen: Fingerprint,
}

impl ResolvWatch {
    #[cfg(test)]
    fn new(path: Option<PathBuf>) -> Self {
        let seen = path.as_deref().and_then(fingerprint);
        Self { path, seen }
    }

    /// True (once) when the file changed since the last call.
    fn changed(&mut self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let now = fingerprint(path);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

fn fingerprint(path: &Path) -> Fingerprint {
    let metadata = std::fs::metadata(path).ok()?;
    let content = std::fs::read(path).ok()?;
    let mut hasher = DefaultHasher::new();
    content.hash(&mut hasher);
    Some((metadata.modified().ok(), metadata.len(), hasher.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Settings {
        let mut raw = RawConfig::parse(text, "test").expect("parses");
        raw.forward.resolv_file = PathBuf::from("/nonexistent/dnsfront-reload/resolv.conf");
        raw.validate(&Env::default()).expect("valid")
    }

    #[test]
    fn diff_names_each_changed_key_by_its_file_path() {
        let old = settings("");
        assert!(diff(&old, &old).is_empty());
        let new = settings(
            "[dns]\nlisten = [\"127.0.0.1:5300\"]\n[log]\nlevel = \"debug\"\n[forward]\nupstreams = [\"192.0.2.1\"]\n[catalog]\nnegative_cache_ttl = \"7s\"\n[consul]\ntoken = \"s3cret\"\n",
        );
        assert_eq!(
            diff(&old, &new),
            vec![
                "dns.listen",
                "catalog.negative_cache_ttl",
                "forward.upstreams",
                "log.level",
                "consul.token"
            ]
        );
    }

    #[test]
    fn resolv_watch_sees_content_changes_of_equal_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("resolv.conf");
        let mut watch = ResolvWatch::new(Some(path.clone()));
        assert!(!watch.changed(), "absent and still absent");
        std::fs::write(&path, "nameserver 192.0.2.1\n").expect("write");
        assert!(watch.changed(), "created");
        assert!(!watch.changed(), "reported once");
        std::fs::write(&path, "nameserver 192.0.2.2\n").expect("write");
        assert!(watch.changed(), "same length, other content");
        std::fs::remove_file(&path).expect("rm");
        assert!(watch.changed(), "removed");
    }
}
