//! Live reconfiguration: SIGHUP, the control channel's `reload`, and a poll
//! of the upstream resolv file all re-read the configuration the process was
//! started with (the same file, the same command-line overrides), validate
//! it, and apply what can change while serving. Caches are never dropped.
//!
//! Which keys apply live, and how, is declared in
//! [`config::keys::KEYS`](crate::config::keys::KEYS): `log.level` (the tracing
//! filter's reload handle), the answer settings (`Router::reload`: domain,
//! TTLs, sizes, query log), `[forward]` but its cache size and in-flight
//! bound (`Forwarder::reconfigure`) and `hosts.files`. Every other changed key
//! is named in one `restart_required` warning and keeps its running value, so
//! it is named again on the next reload until the process restarts.
//! Every reload also re-reads the hosts files and the Consul client's token
//! file and TLS files (`Client::reread_token`, `Client::reload_tls`), so a
//! rotated credential is in use at once, whatever its file's timestamps say.

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

use crate::config::keys::{self, Key, Reload};
use crate::config::{ConfigError, Env, Overrides, RawConfig, Settings};
use crate::telemetry;

/// How often the upstream resolv file is checked for changes (mtime, length
/// and a hash of its content: an edit within the same second is seen too)
/// besides the inotify events of its directory ([`dnsfront_hosts::FileChanges`]),
/// which see a change at once: the safety net for what inotify cannot see.
pub const RESOLV_POLL_INTERVAL: Duration = Duration::from_secs(30);

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
    /// The Consul client: its token file and TLS files are re-read on every reload.
    pub consul: dnsfront_consul::Client,
}

// === apply ===

/// Applies `new` over `running` (the settings in effect) and returns the
/// outcome and the settings now in effect: live keys (see
/// [`keys::KEYS`](crate::config::keys::KEYS)) take their new value,
/// restart-only keys keep the running one.
async fn apply(
    live: &Live,
    source: &ConfigSource,
    running: &Settings,
    new: &Settings,
    trigger: &str,
) -> (Outcome, Settings) {
    let changed = keys::diff(running, new);
    let changes = |reload: Reload| changed.iter().any(|key| key.reload == reload);
    let mut in_effect = running.clone();
    if changes(Reload::Forwarder) {
        // Cache, upstream health and queries in flight are kept; the
        // restart-only keys (cache size, in-flight bound) keep their value.
        live.forwarder.reconfigure(new.forward.clone());
        in_effect.forward = (*live.forwarder.config()).clone();
        in_effect.upstream_origin = new.upstream_origin.clone();
    }
    if changes(Reload::Router) {
        live.router.reload(new.dns.clone());
        in_effect.dns = new.dns.clone();
    }
    let new_files = changes(Reload::HostsFiles).then(|| new.hosts.files.clone());
    if let Some(files) = &new_files {
        in_effect.hosts.files = files.clone();
    }
    reload_hosts(&live.local_hosts, new_files).await;
    reload_consul_files(&live.consul).await;
    // Applied after the reload lines are written, so that a quieter level
    // does not hide them.
    let deferred_level = changes(Reload::LogLevel).then(|| {
        in_effect.log_level = new.log_level.clone();
        source.log_level(new).to_owned()
    });

    let is_applied = |key: &&Key| key.reload.is_live();
    let paths = |keep: &dyn Fn(&&Key) -> bool| -> Vec<String> {
        changed
            .iter()
            .filter(|key| keep(key))
            .map(|key| key.path.to_owned())
            .collect()
    };
    let outcome = Outcome {
        trigger: trigger.to_owned(),
        changed: paths(&|_| true),
        applied: paths(&is_applied),
        restart_required: paths(&|key| !is_applied(key)),
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
        apply_log_level(source, &level);
    }
    (outcome, in_effect)
}

/// Re-reads the hosts files, from `new_files` when the list changed. SIGHUP
/// re-reads them even when the config did not change (dnsmasq's habit). A
/// failed read keeps the previous entries. The files are read off the
/// workers (see [`off_workers`]).
async fn reload_hosts(local_hosts: &dnsfront_hosts::LocalHosts, new_files: Option<Vec<PathBuf>>) {
    let hosts = local_hosts.clone();
    let Some(result) = off_workers(move || match new_files {
        Some(files) => hosts.set_paths(files),
        None => hosts.reload(),
    })
    .await
    else {
        return;
    };
    match result {
        Ok(stats) => info!(
            files = stats.files,
            missing = stats.missing,
            names = stats.names,
            "Hosts files re-read"
        ),
        Err(error) => warn!(error = %error, "Hosts files not re-read; the previous entries stay"),
    }
}

/// Re-reads the Consul token file on the next request, and the TLS files now,
/// even when they look unchanged (a rotation that kept the modification time,
/// size and inode, or one made within the TLS check interval). Unusable TLS
/// files keep the previous ones (warned about); the TLS files are read off the
/// workers.
async fn reload_consul_files(client: &dnsfront_consul::Client) {
    client.reread_token();
    let tls = client.clone();
    match off_workers(move || tls.reload_tls()).await {
        Some(Ok(true)) => info!("Consul TLS files re-read; new connections use them"),
        Some(Ok(false)) | None => {}
        Some(Err(error)) => {
            warn!(error = %error, "Consul TLS files not re-read; the previous ones stay");
        }
    }
}

/// Runs blocking file work (reading the config, the resolv file, the hosts
/// files) on tokio's blocking pool: a slow or hung file system (NFS, a FIFO
/// named by mistake) then delays only the reload, never the workers that
/// answer queries and ping the watchdog. `None`: the runtime is shutting down.
async fn off_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Some(value),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_cancelled) => None,
    }
}

/// Swaps the log filter for `level`, unless `--log-level` or `RUST_LOG` wins.
fn apply_log_level(source: &ConfigSource, level: &str) {
    if source.log_level_flag.is_some() {
        info!("log.level changed in the file, but --log-level overrides it; log filter unchanged");
        return;
    }
    match telemetry::reload_log_level(level) {
        Ok(true) => {}
        Ok(false) => info!("RUST_LOG is set and wins over log.level; log filter unchanged"),
        Err(error) => {
            warn!(key = "log.level", error = %format!("{error:#}"), "Log level not changed");
        }
    }
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
        let mut poll = dnsfront_hosts::Ticker::new(RESOLV_POLL_INTERVAL);
        // Rebuilt when a reload names another file; after an inotify failure only the
        // poll runs (no retry loop).
        let mut watched = watch.path.clone();
        let mut events = resolv_changes(watched.as_deref());
        // Watching first, then one check at once: an edit made between loading
        // the configuration and the watch's start is not left to the poll.
        let mut first_check = true;
        loop {
            if watch.path != watched {
                watched.clone_from(&watch.path);
                events = resolv_changes(watched.as_deref());
            }
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
                // No resolv file (upstreams are configured): no poll, no wake-up.
                woken = resolv_event(&mut events, watch.path.is_some(), &mut poll, &mut first_check) => {
                    if !woken {
                        events = None;
                    }
                    let Some((changed, polled)) = off_workers(move || {
                        let mut watch = watch;
                        (watch.changed(), watch)
                    })
                    .await
                    else {
                        return;
                    };
                    watch = polled;
                    if !changed {
                        continue;
                    }
                    Request { trigger: "resolv file", reply: None }
                }
            };
            crate::systemd::reloading();
            let reading = source.clone();
            let Some(loaded) = off_workers(move || reading.load()).await else {
                return;
            };
            let result = match loaded {
                Ok(loaded) => {
                    let (outcome, in_effect) =
                        apply(&live, &source, &running, &loaded.settings, request.trigger).await;
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
            crate::systemd::reloaded(&match &result {
                Ok(outcome) => format!(
                    "serving; reloaded ({}): {} changed, {} need a restart",
                    request.trigger,
                    outcome.changed.len(),
                    outcome.restart_required.len()
                ),
                Err(error) => format!(
                    "serving with the previous configuration; reload ({}) refused: {error}",
                    request.trigger
                ),
            });
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

/// The inotify watch for the resolv file at `path` (`None` without a path or
/// inotify).
fn resolv_changes(path: Option<&Path>) -> Option<dnsfront_hosts::FileChanges> {
    dnsfront_hosts::FileChanges::new(&[path?.to_path_buf()])
}

/// Waits for an inotify event or the safety poll (never when `watching` is
/// false); false when inotify failed (the caller then polls only).
async fn resolv_event(
    events: &mut Option<dnsfront_hosts::FileChanges>,
    watching: bool,
    poll: &mut dnsfront_hosts::Ticker,
    first_check: &mut bool,
) -> bool {
    if !watching {
        return std::future::pending().await;
    }
    if std::mem::take(first_check) {
        return true;
    }
    let Some(changes) = events else {
        poll.tick().await;
        return true;
    };
    tokio::select! {
        () = poll.tick() => true,
        result = changes.changed() => result.is_ok(),
    }
}

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
        let diff = |old, new| {
            keys::diff(old, new)
                .iter()
                .map(|key| key.path)
                .collect::<Vec<_>>()
        };
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

    /// Restart-only keys keep their running value and are named; live ones are
    /// applied to the running parts, in the same reload.
    #[tokio::test]
    async fn apply_splits_live_and_restart_only_keys_by_the_registry() {
        let state = tempfile::tempdir().expect("tempdir");
        let base = format!(
            "[state]\ndir = {:?}\n[snapshot]\nfollow = false\n[hosts]\nfiles = []\n\
             [metrics]\nstatsd = false\n[dns]\nlisten = [\"127.0.0.1:0\"]\n",
            state.path().display().to_string()
        );
        let running = settings(&format!("{base}[forward]\nupstreams = [\"192.0.2.1\"]\n"));
        let new = settings(&format!(
            "{base}[forward]\nupstreams = [\"192.0.2.2\"]\ncache_size = 5\nmax_in_flight = 7\n\
             [catalog]\nmax_entries = 5\n[log]\nquery_sample = 0.5\n"
        ));
        let app = crate::App::build(running.clone()).expect("app builds");
        let live = Live {
            forwarder: app.forwarder.clone(),
            router: app.router.clone(),
            local_hosts: app.local_hosts.clone(),
            consul: app.consul.clone(),
        };
        let (outcome, in_effect) =
            apply(&live, &ConfigSource::default(), &running, &new, "test").await;
        assert_eq!(
            outcome.changed,
            [
                "catalog.max_entries",
                "forward.upstreams",
                "forward.cache_size",
                "forward.max_in_flight",
                "log.query_sample"
            ]
        );
        assert_eq!(outcome.applied, ["forward.upstreams", "log.query_sample"]);
        assert_eq!(
            outcome.restart_required,
            [
                "catalog.max_entries",
                "forward.cache_size",
                "forward.max_in_flight"
            ]
        );
        let forward = live.forwarder.config();
        assert_eq!(forward.upstreams, new.forward.upstreams, "applied live");
        assert_eq!(forward.cache_size, running.forward.cache_size, "kept");
        assert_eq!(in_effect.forward.cache_size, running.forward.cache_size);
        assert_eq!(in_effect.forward.upstreams, new.forward.upstreams);
        assert_eq!(in_effect.catalog.max_entries, running.catalog.max_entries);
        assert!((in_effect.dns.query_log.sample - 0.5).abs() < f64::EPSILON);
        // What is in effect now differs from the file only in restart-only keys.
        let again: Vec<_> = keys::diff(&in_effect, &new)
            .iter()
            .map(|key| key.path)
            .collect();
        assert_eq!(again, outcome.restart_required);
    }

    /// A reload whose hosts file blocks on read (a FIFO with no writer yet:
    /// a hung file system) does not hold up the runtime: on a one-thread
    /// runtime a timer still fires on time, and the reload finishes once the
    /// file can be read.
    #[tokio::test(flavor = "current_thread")]
    async fn a_hung_file_read_on_reload_does_not_block_the_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("hosts.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let config = dir.path().join("dnsfront.toml");
        let base = format!(
            "[state]\ndir = {:?}\n[snapshot]\nfollow = false\n[metrics]\nstatsd = false\n\
             [dns]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"192.0.2.1\"]\n",
            dir.path().join("state").display().to_string()
        );
        std::fs::write(&config, format!("{base}[hosts]\nfiles = []\n")).expect("write");
        let source = ConfigSource {
            file: Some(config.clone()),
            ..ConfigSource::default()
        };
        let loaded = source.load().expect("loads");
        let app = crate::App::build(loaded.settings.clone()).expect("app builds");
        let live = Live {
            forwarder: app.forwarder.clone(),
            router: app.router.clone(),
            local_hosts: app.local_hosts.clone(),
            consul: app.consul.clone(),
        };
        let shutdown = CancellationToken::new();
        let handle = spawn(source, loaded, live.clone(), shutdown.clone()).expect("spawn");
        std::fs::write(&config, format!("{base}[hosts]\nfiles = [{fifo:?}]\n")).expect("write");

        let reload = tokio::spawn(async move { handle.reload("control").await });
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                std::fs::write(&fifo, "10.0.0.9 fifo-host\n").expect("write the FIFO");
            })
        };
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "the runtime stalled for {waited:?} behind a reload"
        );
        let outcome = tokio::time::timeout(Duration::from_secs(10), reload)
            .await
            .expect("the reload finishes once the file is readable")
            .expect("task")
            .expect("valid config");
        assert_eq!(outcome.applied, ["hosts.files"]);
        assert!(live.local_hosts.addresses("fifo-host").is_some());
        writer.join().expect("writer");
        shutdown.cancel();
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
