//! [`FileChanges`]: wakes when a watched file may have changed, through inotify,
//! so that an idle resolver need not poll its files every few seconds (each poll
//! woke a runtime worker and a blocking thread; issue 16 measured 3 wake-ups a
//! second from the two 2 s polls).
//!
//! inotify watches the directory of each file, not the file: editors, package
//! managers and systemd-resolved replace files by rename, which a watch on the
//! old inode would miss. A symlinked file (`/etc/resolv.conf` →
//! `/run/systemd/resolve/stub-resolv.conf`) also gets its target's directory.
//! Any event in a watched directory counts: the caller then compares the
//! files' stamps, which is cheap, so a busy directory costs a stat, never a
//! missed change. The callers keep a slow poll as the safety net for what
//! inotify cannot see (network file systems, a directory created later, a
//! symlink chain changed above the last link).

use std::io;
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tracing::debug;

/// Events that can mean a watched file changed (created, written, replaced,
/// removed, its permissions changed) or its directory went away.
const MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

/// An inotify instance over the directories of some files.
#[derive(Debug)]
pub struct FileChanges {
    fd: AsyncFd<Descriptor>,
}

/// `AsyncFd` wants `AsRawFd`, which nix's `Inotify` does not implement.
#[derive(Debug)]
struct Descriptor(Inotify);

impl AsRawFd for Descriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl FileChanges {
    /// Watches the directories of `files` (and of their symlink targets).
    /// `None` when inotify is unavailable or no directory could be watched
    /// (the caller's poll then does all the work); must run inside a tokio
    /// runtime.
    pub fn new(files: &[PathBuf]) -> Option<Self> {
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(inotify) => inotify,
            Err(error) => {
                debug!(error = %error, "inotify unavailable, polling files only");
                return None;
            }
        };
        let mut watched = 0;
        for dir in directories(files) {
            match inotify.add_watch(&dir, MASK) {
                Ok(_) => watched += 1,
                Err(error) => {
                    debug!(dir = %dir.display(), error = %error, "cannot watch directory")
                }
            }
        }
        if watched == 0 {
            return None;
        }
        // Deprecated for types whose `as_raw_fd` could change or close under
        // tokio (tokio#8587); `Descriptor` owns the inotify descriptor and returns
        // that same one until it is dropped with the `AsyncFd`, which is the
        // condition the unsafe `register` states. No unsafe code for this.
        #[allow(deprecated)]
        let fd = AsyncFd::new(Descriptor(inotify))
            .inspect_err(|error| debug!(error = %error, "cannot register inotify"))
            .ok()?;
        Some(Self { fd })
    }

    /// Returns once something happened in a watched directory (every event
    /// queued by then is consumed). An error means the instance is unusable;
    /// the caller drops it and polls.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(Ok(_events)) => {
                    // Drain what else is queued, so a burst is one wake-up.
                    while let Ok(events) = self.fd.get_ref().0.read_events() {
                        if events.is_empty() {
                            break;
                        }
                    }
                    return Ok(());
                }
                Ok(Err(error)) => return Err(error),
                // Spurious readiness: wait again.
                Err(_would_block) => {}
            }
        }
    }
}

/// The distinct directories to watch for `files`: each file's own, and its
/// symlink target's when it is a symlink.
fn directories(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut add = |file: &Path| {
        let dir = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    };
    for file in files {
        add(file);
        if let Ok(target) = std::fs::canonicalize(file)
            && target != *file
        {
            add(&target);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_file_replaced_by_rename_wakes_the_watcher() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hosts");
        std::fs::write(&file, "192.0.2.1 a\n").expect("write");
        let mut changes = FileChanges::new(std::slice::from_ref(&file)).expect("inotify");
        let staged = dir.path().join("hosts.new");
        std::fs::write(&staged, "192.0.2.2 a\n").expect("write");
        std::fs::rename(&staged, &file).expect("rename");
        // Bounded only so a broken watcher fails instead of hanging the suite.
        tokio::time::timeout(Duration::from_secs(30), changes.changed())
            .await
            .expect("an event")
            .expect("readable");
    }

    #[tokio::test]
    async fn a_symlinked_file_is_watched_in_its_targets_directory() {
        let link_dir = tempfile::tempdir().expect("tempdir");
        let target_dir = tempfile::tempdir().expect("tempdir");
        let target = target_dir.path().join("stub-resolv.conf");
        std::fs::write(&target, "nameserver 192.0.2.1\n").expect("write");
        let link = link_dir.path().join("resolv.conf");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let mut changes = FileChanges::new(std::slice::from_ref(&link)).expect("inotify");
        std::fs::write(&target, "nameserver 192.0.2.2\n").expect("write");
        tokio::time::timeout(Duration::from_secs(30), changes.changed())
            .await
            .expect("an event")
            .expect("readable");
    }
}
