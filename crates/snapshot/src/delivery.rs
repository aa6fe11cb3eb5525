//! Delivery of an applied snapshot beyond DNS: the hosts file and the after-delivery command
//! (kvexpress's file plus its `--exec`), so dnsmasq can serve the same data as `addn-hosts`
//! during a migration or a rollback.
//!
//! A [`Delivery`] runs in its own task, fed the snapshot in memory by the follower after
//! each swap; the DNS path never waits for it. For each snapshot:
//!
//! 1. the hosts file ([`crate::to_hosts_file`], the `snapshot export --format hosts` text)
//!    is compared with the file on disk and, only when they differ, written atomically (a
//!    temp file in the same dir with the configured mode and owner, fsync, rename, fsync of
//!    the dir). Comparing with the disk, not with memory, keeps a restart from rewriting it.
//! 2. the command runs when the snapshot's generation is above the last one it ran for,
//!    which is kept in the state dir ([`COMMAND_MARK_FILE`]) and written *before* the
//!    command starts: it never runs twice for one generation, even across restarts (a crash
//!    during the command means it is not run again for that generation). The command gets
//!    `DNSFRONT_SNAPSHOT_GENERATION` and, with a hosts file, `DNSFRONT_HOSTS_FILE`, no
//!    shell, stdin closed, and is killed at its timeout (its own children are not: scripts
//!    should `exec` their last command).
//!
//! Snapshots applied while a delivery is under way are coalesced: the next delivery takes
//! the latest one. A failed write or command is logged and counted; the snapshot stays
//! applied to DNS either way.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Attributes};
use crate::{Error, Snapshot, metrics, to_hosts_file};

/// File in the state dir holding the generation the command last ran for (decimal).
pub const COMMAND_MARK_FILE: &str = "delivery-command-generation";
/// Default timeout of the after-delivery command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how the hosts file is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// The DNS domain the names are written under (`consul`).
    pub domain: String,
    /// Mode and owner of the file.
    pub attributes: Attributes,
}

/// The command run after each applied snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterCommand {
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// Killed when still running after this.
    pub timeout: Duration,
}

/// What to deliver; with neither a hosts file nor a command there is nothing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// The hosts file, if any.
    pub hosts_file: Option<HostsFile>,
    /// The after-delivery command, if any.
    pub command: Option<AfterCommand>,
    /// The state dir, which keeps [`COMMAND_MARK_FILE`].
    pub state_dir: PathBuf,
}

impl DeliveryConfig {
    /// True when neither a hosts file nor a command is configured.
    pub fn is_empty(&self) -> bool {
        self.hosts_file.is_none() && self.command.is_none()
    }
}

/// What happened to the hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// No hosts file is configured.
    NotConfigured,
    /// Written (the content differed from the file on disk, or there was none).
    Written,
    /// The file on disk already holds this content: not touched.
    Unchanged,
    /// Writing failed (the message names the path).
    Failed(String),
}

/// What happened to the after-delivery command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// No command is configured.
    NotConfigured,
    /// It already ran for this generation (or a later one): not run again.
    AlreadyRan,
    /// Exited with status 0.
    Succeeded,
    /// Exited otherwise (the status, e.g. `exit status: 3`).
    Failed(String),
    /// Still running at the timeout: killed.
    TimedOut,
    /// Could not be started, or the generation could not be recorded first (not run).
    NotRun(String),
}

/// The outcome of one [`Delivery::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The hosts file.
    pub file: FileOutcome,
    /// The command.
    pub command: CommandOutcome,
}

/// Delivers snapshots to the hosts file and the command.
#[derive(Debug)]
pub struct Delivery {
    config: DeliveryConfig,
    /// Generation the command last ran for; read from the state dir on first use.
    command_mark: Option<u64>,
}

impl Delivery {
    /// A delivery with nothing done yet.
    pub fn new(config: DeliveryConfig) -> Self {
        Self {
            config,
            command_mark: None,
        }
    }

    /// Writes the hosts file (when changed), then runs the command (when this generation
    /// is new to it). Logs and counts each outcome. Blocking file I/O runs off the async
    /// workers.
    pub async fn deliver(&mut self, snapshot: &Arc<Snapshot>) -> Report {
        let file = self.write_hosts_file(snapshot).await;
        let command = self.run_command(snapshot.generation).await;
        Report { file, command }
    }

    /// Delivers every snapshot `snapshots` holds, the current one first, until `shutdown`
    /// (which kills a command still running) or until the sender is dropped.
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let current = snapshots.borrow_and_update().clone();
            if let Some(snapshot) = current {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = self.deliver(&snapshot) => {}
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = snapshots.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn write_hosts_file(&self, snapshot: &Arc<Snapshot>) -> FileOutcome {
        let Some(hosts_file) = self.config.hosts_file.clone() else {
            return FileOutcome::NotConfigured;
        };
        let snapshot = Arc::clone(snapshot);
        let generation = snapshot.generation;
        let path = hosts_file.path.clone();
        let written =
            tokio::task::spawn_blocking(move || write_if_changed(&hosts_file, &snapshot)).await;
        let outcome = match written {
            Ok(Ok(true)) => FileOutcome::Written,
            Ok(Ok(false)) => FileOutcome::Unchanged,
            Ok(Err(error)) => FileOutcome::Failed(error.to_string()),
            Err(join_error) => FileOutcome::Failed(format!("writing panicked: {join_error}")),
        };
        match &outcome {
            FileOutcome::Written => {
                metrics::hosts_file_write("written");
                tracing::info!(path = %path.display(), generation, "Hosts file delivered");
            }
            FileOutcome::Unchanged => {
                metrics::hosts_file_write("unchanged");
                tracing::debug!(path = %path.display(), generation, "Hosts file unchanged");
            }
            FileOutcome::Failed(error) => {
                metrics::hosts_file_write("failed");
                tracing::error!(
                    path = %path.display(),
                    generation,
                    error = %error,
                    "Cannot write the hosts file; the snapshot is applied to DNS all the same"
                );
            }
            FileOutcome::NotConfigured => {}
        }
        outcome
    }

    async fn run_command(&mut self, generation: u64) -> CommandOutcome {
        let Some(command) = self.config.command.clone() else {
            return CommandOutcome::NotConfigured;
        };
        let mark = match self.command_mark {
            Some(mark) => mark,
            None => {
                let dir = self.config.state_dir.clone();
                let mark = tokio::task::spawn_blocking(move || load_command_mark(&dir))
                    .await
                    .unwrap_or(0);
                self.command_mark = Some(mark);
                mark
            }
        };
        if generation <= mark {
            tracing::debug!(
                generation,
                last_run = mark,
                "After-delivery command already ran for this generation"
            );
            return CommandOutcome::AlreadyRan;
        }
        // Recorded first: a command must never run twice for one generation.
        let dir = self.config.state_dir.clone();
        let saved = tokio::task::spawn_blocking(move || {
            store::save_file(
                &dir,
                COMMAND_MARK_FILE,
                format!("{generation}\n").as_bytes(),
            )
        })
        .await;
        let saved = match saved {
            Ok(saved) => saved.map_err(|error| error.to_string()),
            Err(join_error) => Err(format!("recording the generation panicked: {join_error}")),
        };
        if let Err(error) = saved {
            metrics::after_delivery_command("not_run");
            tracing::error!(
                generation,
                error = %error,
                "After-delivery command not run: cannot record its generation in the state dir"
            );
            return CommandOutcome::NotRun(error);
        }
        self.command_mark = Some(generation);
        let hosts_file = self
            .config
            .hosts_file
            .as_ref()
            .map(|file| file.path.as_path());
        let outcome = execute(&command, generation, hosts_file).await;
        let program = command.argv.first().map_or("", String::as_str);
        match &outcome {
            CommandOutcome::Succeeded => {
                metrics::after_delivery_command("ok");
                tracing::info!(program = %program, generation, "After-delivery command succeeded");
            }
            CommandOutcome::Failed(status) => {
                metrics::after_delivery_command("failed");
                tracing::warn!(program = %program, generation, status = %status, "After-delivery command failed");
            }
            CommandOutcome::TimedOut => {
                metrics::after_delivery_command("timeout");
                tracing::warn!(
                    program = %program,
                    generation,
                    timeout = ?command.timeout,
                    "After-delivery command still running at its timeout, killed"
                );
            }
            CommandOutcome::NotRun(error) => {
                metrics::after_delivery_command("not_run");
                tracing::warn!(program = %program, generation, error = %error, "After-delivery command could not be started");
            }
            CommandOutcome::NotConfigured | CommandOutcome::AlreadyRan => {}
        }
        outcome
    }
}

/// Writes the hosts file unless the file on disk already holds its content; true when written.
fn write_if_changed(hosts_file: &HostsFile, snapshot: &Snapshot) -> Result<bool, Error> {
    let content = to_hosts_file(snapshot, &hosts_file.domain);
    let path = &hosts_file.path;
    match std::fs::read(path) {
        Ok(on_disk) if on_disk == content.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::io(path, source)),
    }
    let (dir, file_name) = split_path(path)?;
    store::save_file_as(dir, file_name, content.as_bytes(), &hosts_file.attributes)?;
    Ok(true)
}

fn split_path(path: &Path) -> Result<(&Path, &str), Error> {
    let invalid = || {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file path with a directory",
            ),
        )
    };
    let dir = path.parent().ok_or_else(invalid)?;
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(invalid)?;
    Ok((dir, file_name))
}

/// The generation the command last ran for; 0 when none (or unreadable, logged).
fn load_command_mark(dir: &Path) -> u64 {
    let path = dir.join(COMMAND_MARK_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(path = %path.display(), "Ignoring an unreadable after-delivery command mark");
            0
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => {
            tracing::warn!(path = %path.display(), error = %error, "Cannot read the after-delivery command mark");
            0
        }
    }
}

/// Runs the command once, bounded by its timeout.
async fn execute(
    command: &AfterCommand,
    generation: u64,
    hosts_file: Option<&Path>,
) -> CommandOutcome {
    let Some((program, args)) = command.argv.split_first() else {
        return CommandOutcome::NotRun("the command is empty".to_owned());
    };
    let mut process = tokio::process::Command::new(program);
    process
        .args(args)
        .env("DNSFRONT_SNAPSHOT_GENERATION", generation.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(path) = hosts_file {
        process.env("DNSFRONT_HOSTS_FILE", path);
    }
    let mut child = match process.spawn() {
        Ok(child) => child,
        Err(error) => return CommandOutcome::NotRun(error.to_string()),
    };
    match tokio::time::timeout(command.timeout, child.wait()).await {
        Ok(Ok(status)) => exit_outcome(status),
        Ok(Err(error)) => CommandOutcome::Failed(format!("waiting for it failed: {error}")),
        Err(_) => {
            // SIGKILL, then reap it.
            let _ = child.kill().await;
            CommandOutcome::TimedOut
        }
    }
}

fn exit_outcome(status: ExitStatus) -> CommandOutcome {
    if status.success() {
        CommandOutcome::Succeeded
    } else {
        CommandOutcome::Failed(status.to_string())
    }
}
