//! Local hosts files for dnsfront: `/etc/hosts` and extra files in the same
//! format (dnsmasq's `addn-hosts`), answered authoritatively by the DNS front.
//!
//! [`LocalHosts`] is a cheap handle; lookups read an immutable table through
//! arc-swap, without locks. Loading replaces the whole table at once, so a
//! query sees either the old files or the new ones, never a mix.
//!
//! Behaviour follows dnsmasq where it has one:
//! - a missing file is a warning, not an error (dnsmasq logs "failed to load
//!   names from …" and carries on); it is picked up once it appears;
//! - malformed lines are skipped, with one warning per file naming the first
//!   bad `file:line` and the count;
//! - names are case-insensitive and match with or without the trailing dot;
//!   a name on several lines collects every address;
//! - reverse names (`in-addr.arpa`, `ip6.arpa`) of listed addresses find their
//!   names, the first name of the first line first. Unspecified addresses
//!   (`0.0.0.0`, `::`, used by blocklists) get no reverse entry.
//!
//! Unlike dnsmasq, changes are picked up without SIGHUP by [`LocalHosts::watch`]:
//! woken by inotify ([`FileChanges`]) and, as a safety net, by a slow poll, it
//! compares each file's size, mtime, ctime and inode with the last load. An idle
//! resolver thus wakes for its files only when they change or the poll is due.
//! A file larger than [`MAX_FILE_SIZE`] is an error.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod changes;
pub mod metrics;
mod parse;
mod ticker;

use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use changes::FileChanges;
pub use parse::reverse_address;
use parse::{Builder, Table, normalize_query};
pub use ticker::Ticker;

/// Largest hosts file we read (16 MiB, ~400k lines): a bound on memory, and a
/// guard against pointing the config at the wrong file.
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Why the hosts files could not be loaded (the previous entries stay in use).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file exists but could not be read (permissions, a directory, I/O).
    #[error("cannot read hosts file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file is larger than [`MAX_FILE_SIZE`].
    #[error("hosts file {} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
}

/// Counts from the last successful load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files read.
    pub files: usize,
    /// Configured files that did not exist.
    pub missing: usize,
    /// Distinct names.
    pub names: usize,
    /// Distinct addresses with a reverse (PTR) entry.
    pub addresses: usize,
    /// Distinct (name, address) pairs.
    pub entries: usize,
    /// Malformed lines skipped, over all files.
    pub bad_lines: usize,
}

/// What the hosts files say about a queried name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is listed: its addresses, in file order (both families).
    Addresses(Arc<[IpAddr]>),
    /// A reverse name of a listed address: the names of that address.
    Names {
        /// The address the reverse name stands for.
        address: IpAddr,
        /// Its names (lower-case, no trailing dot), the canonical one first.
        names: Arc<[Box<str>]>,
    },
}

/// The local hosts files: a cheap, clonable handle with lock-free lookups.
#[derive(Debug, Clone)]
pub struct LocalHosts {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    current: ArcSwap<Loaded>,
    /// Paths and what we saw of them; also serialises loads.
    control: Mutex<Control>,
    /// Told when the paths change, so the watcher watches the new files.
    paths_changed: Notify,
}

#[derive(Debug, Default)]
struct Loaded {
    table: Table,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Control {
    paths: Vec<PathBuf>,
    /// Per path, as of the last load attempt (`None`: missing).
    stamps: Vec<Option<Stamp>>,
}

/// What tells us a file changed: size, times and identity (an editor that
/// replaces the file by rename changes the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    inode: (u64, u64),
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let (changed, inode) = {
            use std::os::unix::fs::MetadataExt;
            (
                (metadata.ctime(), metadata.ctime_nsec()),
                (metadata.dev(), metadata.ino()),
            )
        };
        #[cfg(not(unix))]
        let (changed, inode) = ((0, 0), (0, 0));
        Self {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            changed,
            inode,
        }
    }
}

impl Default for LocalHosts {
    fn default() -> Self {
        Self::empty()
    }
}

impl LocalHosts {
    /// No files, no entries (every lookup misses).
    pub fn empty() -> Self {
        Self {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(Loaded::default()),
                control: Mutex::new(Control::default()),
                paths_changed: Notify::new(),
            }),
        }
    }

    /// The entries of one hosts file's contents, with no file behind them
    /// (for the fuzz targets in `fuzz/`; not an API).
    #[doc(hidden)]
    pub fn from_text(text: &[u8]) -> Self {
        let mut builder = Builder::default();
        let bad = builder.add_file(text);
        let table = builder.build();
        let stats = Stats {
            names: table.names,
            addresses: table.addresses,
            entries: table.entries,
            bad_lines: bad.count,
            ..Stats::default()
        };
        let hosts = Self::empty();
        hosts
            .shared
            .current
            .store(Arc::new(Loaded { table, stats }));
        hosts
    }

    /// Reads `paths` now (blocking file I/O). Missing files are skipped with a
    /// warning; an unreadable or oversized file is an error.
    pub fn load(paths: Vec<PathBuf>) -> Result<Self, Error> {
        let hosts = Self::empty();
        hosts.set_paths(paths)?;
        Ok(hosts)
    }

    /// Re-reads the current paths (SIGHUP; blocking file I/O). On error the
    /// previous entries stay in use.
    pub fn reload(&self) -> Result<Stats, Error> {
        let mut control = self.lock();
        self.load_locked(&mut control)
    }

    /// Replaces the list of files (config reload) and reads them (blocking file
    /// I/O). On error the previous entries stay in use, the new paths are kept
    /// and [`watch`](Self::watch) retries once a file changes.
    pub fn set_paths(&self, paths: Vec<PathBuf>) -> Result<Stats, Error> {
        let mut control = self.lock();
        control.stamps = vec![None; paths.len()];
        control.paths = paths;
        self.shared.paths_changed.notify_one();
        self.load_locked(&mut control)
    }

    /// The configured files.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().paths.clone()
    }

    /// Counts from the last successful load.
    pub fn stats(&self) -> Stats {
        self.shared.current.load().stats
    }

    /// True when no file holds any entry.
    pub fn is_empty(&self) -> bool {
        self.shared.current.load().table.is_empty()
    }

    /// What the files say about `name` (any case, trailing dot optional): its
    /// addresses, or the names of the address a reverse name stands for.
    pub fn lookup(&self, name: &str) -> Option<Lookup> {
        let loaded = self.shared.current.load();
        if loaded.table.is_empty() {
            return None;
        }
        let key = normalize_query(name);
        if let Some(addresses) = loaded.table.addresses(&key) {
            return Some(Lookup::Addresses(Arc::clone(addresses)));
        }
        let address = reverse_address(&key)?;
        loaded.table.names(&address).map(|names| Lookup::Names {
            address,
            names: Arc::clone(names),
        })
    }

    /// The addresses of `name` (any case, trailing dot optional), in file order.
    pub fn addresses(&self, name: &str) -> Option<Arc<[IpAddr]>> {
        let loaded = self.shared.current.load();
        loaded
            .table
            .addresses(&normalize_query(name))
            .map(Arc::clone)
    }

    /// The names of `address` (lower-case, no trailing dot), the canonical one first.
    pub fn names(&self, address: IpAddr) -> Option<Arc<[Box<str>]>> {
        self.shared
            .current
            .load()
            .table
            .names(&address)
            .map(Arc::clone)
    }

    /// Reloads the files when one changed (or appeared, or vanished), until
    /// `shutdown`: checked when inotify reports an event in a file's directory
    /// ([`FileChanges`]) and every `interval` (the safety net for what inotify
    /// cannot see, such as network file systems). Logs "hosts file reloaded"
    /// once per reload, and a warning when a reload fails (the previous entries
    /// stay; the next change retries).
    #[tracing::instrument(skip_all, name = "hosts_watch")]
    pub async fn watch(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = Ticker::new(interval.max(Duration::from_millis(10)));
        // Watching first, then a first check at once: a change made before the
        // watch existed is not missed.
        let mut changes = self.file_changes();
        let mut first_check = true;
        loop {
            if !std::mem::take(&mut first_check) {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = ticker.tick() => {
                        // A directory that did not exist may exist now.
                        if changes.is_none() {
                            changes = self.file_changes();
                        }
                    }
                    result = next_change(&mut changes) => {
                        if let Err(error) = result {
                            debug!(error = %error, "inotify failed, polling hosts files only");
                            changes = None;
                        }
                    }
                    // New files: watch their directories, then check them.
                    () = self.shared.paths_changed.notified() => changes = self.file_changes(),
                }
            }
            let hosts = self.clone();
            let outcome = match tokio::task::spawn_blocking(move || hosts.reload_if_changed()).await
            {
                Ok(outcome) => outcome,
                Err(error) => {
                    warn!(error = %error, "hosts file check failed");
                    continue;
                }
            };
            match outcome {
                None => {}
                Some(Ok(stats)) => info!(
                    files = stats.files,
                    missing = stats.missing,
                    names = stats.names,
                    entries = stats.entries,
                    bad_lines = stats.bad_lines,
                    "hosts file reloaded"
                ),
                Some(Err(error)) => warn!(
                    error = %error,
                    "hosts file reload failed, keeping the previous entries"
                ),
            }
        }
    }

    /// An inotify watch over the current files' directories (`None`: none).
    fn file_changes(&self) -> Option<FileChanges> {
        let paths = self.paths();
        if paths.is_empty() {
            return None;
        }
        FileChanges::new(&paths)
    }

    /// Reloads when any file's stamp differs from the last load attempt.
    fn reload_if_changed(&self) -> Option<Result<Stats, Error>> {
        let mut control = self.lock();
        let now: Vec<Option<Stamp>> = control.paths.iter().map(|path| stat(path)).collect();
        if now == control.stamps {
            return None;
        }
        Some(self.load_locked(&mut control))
    }

    fn load_locked(&self, control: &mut Control) -> Result<Stats, Error> {
        match load_files(&control.paths) {
            Ok((loaded, stamps)) => {
                let stats = loaded.stats;
                control.stamps = stamps;
                self.shared.current.store(Arc::new(loaded));
                ::metrics::gauge!(metrics::ENTRIES).set(stats.entries as f64);
                ::metrics::counter!(metrics::RELOADS, "result" => "ok").increment(1);
                Ok(stats)
            }
            Err(error) => {
                // Remember what we saw, so the watcher retries on the next change
                // rather than on every tick.
                control.stamps = control.paths.iter().map(|path| stat(path)).collect();
                ::metrics::counter!(metrics::RELOADS, "result" => "error").increment(1);
                Err(error)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        // A panic while loading leaves nothing half-done in `Control`.
        self.shared
            .control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The next event of `changes`, or never when there is no inotify watch.
async fn next_change(changes: &mut Option<FileChanges>) -> io::Result<()> {
    match changes {
        Some(changes) => changes.changed().await,
        None => std::future::pending().await,
    }
}

fn stat(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path)
        .ok()
        .map(|metadata| Stamp::of(&metadata))
}

fn load_files(paths: &[PathBuf]) -> Result<(Loaded, Vec<Option<Stamp>>), Error> {
    let mut builder = Builder::default();
    let mut stats = Stats::default();
    let mut stamps = Vec::with_capacity(paths.len());
    for path in paths {
        let Some((contents, stamp)) = read_capped(path)? else {
            warn!(file = %path.display(), "hosts file not found, skipping it");
            stats.missing += 1;
            stamps.push(None);
            continue;
        };
        stats.files += 1;
        stamps.push(Some(stamp));
        let bad = builder.add_file(&contents);
        if bad.count > 0 {
            warn!(
                location = %format_args!("{}:{}", path.display(), bad.first),
                bad_lines = bad.count,
                "skipped malformed hosts file lines (first one at location)"
            );
            stats.bad_lines += bad.count;
        }
    }
    let table = builder.build();
    stats.names = table.names;
    stats.addresses = table.addresses;
    stats.entries = table.entries;
    Ok((Loaded { table, stats }, stamps))
}

/// The file's contents and stamp; `None` when it does not exist.
fn read_capped(path: &Path) -> Result<Option<(Vec<u8>, Stamp)>, Error> {
    let read_error = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(read_error(error)),
    };
    let metadata = file.metadata().map_err(read_error)?;
    let too_large = || Error::TooLarge {
        path: path.to_owned(),
        limit: MAX_FILE_SIZE,
    };
    if metadata.len() > MAX_FILE_SIZE {
        return Err(too_large());
    }
    let capacity = usize::try_from(metadata.len()).unwrap_or(0);
    let mut contents = Vec::with_capacity(capacity);
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut contents)
        .map_err(read_error)?;
    if contents.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large());
    }
    Ok(Some((contents, Stamp::of(&metadata))))
}
