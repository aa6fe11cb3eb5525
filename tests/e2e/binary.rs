//! The real `dnsfront` binary: running a command, starting a server and reading
//! its listening line, capturing its log, signals, and a config written next to
//! a simulated Consul.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consul_sim::{Sim, SimServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::{eventually, serve, standard_sim};

const BIN: &str = env!("CARGO_BIN_EXE_dnsfront");

/// `dnsfront ARGS`, without the caller's Consul, log filter and runtime directory.
pub(crate) fn command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_SSL")
        .env_remove("CONSUL_HTTP_SSL_VERIFY")
        .env_remove("CONSUL_CACERT")
        .env_remove("CONSUL_CAPATH")
        .env_remove("CONSUL_CLIENT_CERT")
        .env_remove("CONSUL_CLIENT_KEY")
        .env_remove("CONSUL_TLS_SERVER_NAME")
        .env_remove("RUST_LOG")
        .env_remove("RUNTIME_DIRECTORY");
    command
}

/// Runs the binary to completion, blocking the calling thread.
pub(crate) fn run(args: &[&str]) -> std::process::Output {
    command(args).output().expect("run dnsfront")
}

/// Runs the binary to completion without blocking the runtime that serves the
/// simulator: the exit code, stdout and stderr.
pub(crate) async fn run_async(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::from(command(args)).kill_on_drop(true).output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("finishes within 30s")
        .expect("run dnsfront");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Spawns `command` with stdout piped (for the listening line) and `stderr` as given.
fn launch(command: std::process::Command, stderr: Stdio) -> Child {
    Command::from(command)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dnsfront")
}

/// Waits for the machine-readable listening line and returns it with its DNS
/// addresses; then keeps draining stdout so the child never blocks on a full pipe.
async fn listening_line(child: &mut Child) -> (serde_json::Value, Vec<SocketAddr>) {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("listening line within 20s")
        .expect("read stdout")
        .expect("a line on stdout");
    let value: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
    assert_eq!(value["event"], "listening", "{line}");
    let dns = value["dns"]
        .as_array()
        .expect("dns array")
        .iter()
        .map(|a| a.as_str().expect("str").parse().expect("socket addr"))
        .collect();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (value, dns)
}

/// A running `dnsfront` process and the addresses from its listening line.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) dns: Vec<SocketAddr>,
    /// The whole listening line (it also names e.g. `metrics_http`).
    pub(crate) listening: serde_json::Value,
}

/// Starts the binary and waits for its machine-readable listening line.
pub(crate) async fn spawn(args: &[&str]) -> Running {
    spawn_with_env(args, &[]).await
}

/// [`spawn`] with extra environment variables.
pub(crate) async fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = command(args);
    command.envs(env.iter().copied());
    let mut child = launch(command, Stdio::inherit());
    let (listening, dns) = listening_line(&mut child).await;
    Running {
        child,
        dns,
        listening,
    }
}

fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

pub(crate) fn sigterm(child: &Child) {
    signal(child, "-TERM");
}

/// Sends SIGTERM and expects exit 0 within `within`.
pub(crate) async fn terminate(child: &mut Child, within: Duration) {
    sigterm(child);
    let status = tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("exits within {within:?} of SIGTERM"))
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

/// A running `dnsfront serve` whose stderr (the log) is captured.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) dns: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `dnsfront serve --config FILE` and waits for its listening line.
    pub(crate) async fn start(config: &Path) -> Self {
        let mut child = launch(
            command(&["serve", "--config", config.to_str().expect("utf8")]),
            Stdio::piped(),
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[dnsfront] {line}");
                sink.lock().expect("log lock").push(line);
            }
        });
        let dns = listening_line(&mut child).await.1[0];
        Self { child, dns, log }
    }

    /// Every log line so far.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Log lines containing `needle`.
    pub(crate) fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|line| line.contains(needle))
            .collect()
    }

    /// Waits until `count` log lines contain `needle`; returns the last of them.
    pub(crate) async fn wait_for(&self, needle: &str, count: usize, within: Duration) -> String {
        let found = eventually(within, || async { self.lines_with(needle).len() >= count }).await;
        assert!(
            found,
            "no log line #{count} with {needle:?} within {within:?}; log:\n{}",
            self.log().join("\n")
        );
        self.lines_with(needle)
            .into_iter()
            .nth(count - 1)
            .expect("counted")
    }

    pub(crate) fn hangup(&self) {
        signal(&self.child, "-HUP");
    }

    /// Sends SIGTERM and expects exit 0 within 10 s.
    pub(crate) async fn stop(mut self) {
        terminate(&mut self.child, Duration::from_secs(10)).await;
    }
}

/// The `[consul]`, `[state]` and `[catalog]` part every test config shares.
pub(crate) fn base_config(consul: &str, state: &Path) -> String {
    format!(
        "[consul]\naddress = \"{consul}\"\n\n[state]\ndir = \"{}\"\n\n[catalog]\nrefresh_interval = \"400ms\"\nrefresh_jitter = 0.0\nnegative_cache_ttl = \"400ms\"\nidle_timeout = \"60s\"\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n\n[metrics]\nstatsd = false\n",
        state.display()
    )
}

pub(crate) fn write(path: &Path, text: &str) {
    // Write-then-rename, as editors and config management do.
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).expect("write config");
    std::fs::rename(&temp, path).expect("rename config");
}

/// A served simulator and a temporary directory holding `dnsfront.toml` and the
/// state dir `state/`.
pub(crate) struct Setup {
    _sim: Sim,
    pub(crate) consul: SimServer,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) state: PathBuf,
    pub(crate) config: PathBuf,
}

impl Setup {
    /// The standard test catalog.
    pub(crate) async fn start() -> Self {
        Self::with_sim(standard_sim()).await
    }

    pub(crate) async fn with_sim(sim: Sim) -> Self {
        let consul = serve(&sim).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let config = dir.path().join("dnsfront.toml");
        Self {
            _sim: sim,
            consul,
            dir,
            state,
            config,
        }
    }

    /// [`base_config`] for this simulator and state dir.
    pub(crate) fn base(&self) -> String {
        base_config(&self.consul.url(), &self.state)
    }

    /// Writes [`base`](Self::base) followed by `rest` as the config file.
    pub(crate) fn write_config(&self, rest: &str) {
        write(&self.config, &format!("{}\n{rest}", self.base()));
    }

    /// Path of the control socket in the state dir.
    pub(crate) fn socket(&self) -> PathBuf {
        self.state.join(dnsfront::control::SOCKET_FILE)
    }

    pub(crate) async fn stop(self) {
        self.consul.shutdown().await;
    }
}
