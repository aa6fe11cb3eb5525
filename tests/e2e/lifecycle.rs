//! Service lifecycle under a real service manager's conventions: sockets
//! passed by `systemd-socket-activate` exactly as systemd passes them
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), restarts that lose no
//! query, and `dnsfront reload` with sd_notify `RELOADING=1`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::Ask;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};

use crate::binary::Setup;

const BIN: &str = env!("CARGO_BIN_EXE_dnsfront");
/// The name the hosts file below answers (no Consul, no upstream needed).
const NAME: &str = "activated.test.";
const ADDRESS: &str = "10.9.8.7";

/// A port free on the loopback for UDP and TCP alike.
fn free_port() -> u16 {
    let probe =
        dnsfront_dns::Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
    probe.local_addrs()[0].port()
}

/// `systemd-socket-activate` passes one socket type per invocation; nested,
/// the outer one's UDP socket is passed through by the inner one, which adds
/// the TCP listener: the child gets fd 3 (UDP) and fd 4 (TCP), as from
/// `dnsfront.socket`. The outer one execs the inner once a datagram arrives,
/// which then execs `program` at once (the datagram is still queued).
fn socket_activate(address: SocketAddr, program: &[&str]) -> Command {
    let listen = address.to_string();
    let mut command = Command::new("systemd-socket-activate");
    command
        .args(["--datagram", "--listen", &listen, "--fdname=dns-udp"])
        .args(["systemd-socket-activate", "--listen", &listen])
        .arg("--fdname=dns-udp:dns-tcp")
        .args(program)
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("RUST_LOG")
        .env_remove("RUNTIME_DIRECTORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A config serving `address` with a hosts file that knows [`NAME`].
fn write_config(setup: &Setup, address: SocketAddr) -> PathBuf {
    let hosts = setup.dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("{ADDRESS} {}\n", NAME.trim_end_matches('.')),
    )
    .expect("write hosts");
    setup.write_config(&format!(
        "[dns]\nlisten = [\"{address}\"]\n\n[hosts]\nfiles = [\"{}\"]\n",
        hosts.display()
    ));
    setup.config.clone()
}

/// Collects a child's output lines (stdout: listening lines; stderr: log).
fn collect(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for (stream, tag) in [
        (
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            "out",
        ),
        (Box::new(stderr), "log"),
    ] {
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                eprintln!("[{tag}] {line}");
                sink.lock().expect("lock").push(format!("{tag}: {line}"));
            }
        });
    }
    lines
}

fn query(id: u16) -> Vec<u8> {
    let mut bytes = Ask::new(NAME, RecordType::A).to_bytes();
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    bytes
}

/// The ID of a strictly parsed NOERROR answer carrying [`ADDRESS`].
fn answered_id(bytes: &[u8]) -> Option<u16> {
    let message = test_support::strict_parse(bytes).ok()?;
    let right = message.metadata.response_code == ResponseCode::NoError
        && test_support::addresses(&message) == vec![crate::harness::ip(ADDRESS)];
    right.then_some(message.metadata.id)
}

/// Sends the first query until it is answered (the first datagrams may
/// arrive before `systemd-socket-activate` has bound the port).
async fn first_answer(address: SocketAddr) {
    for _ in 0..100 {
        if let Some(reply) =
            test_support::udp_raw_wait(address, &query(1), Duration::from_millis(500)).await
        {
            assert_eq!(answered_id(&reply), Some(1), "{reply:?}");
            return;
        }
    }
    panic!("no answer from {address} under socket activation");
}

async fn wait_for_line(lines: &Mutex<Vec<String>>, needle: &str, count: usize) -> String {
    let found = crate::harness::eventually(Duration::from_secs(20), || async {
        lines
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
            >= count
    })
    .await;
    let all = lines.lock().expect("lock").clone();
    assert!(
        found,
        "no line #{count} with {needle:?}:\n{}",
        all.join("\n")
    );
    all.into_iter()
        .filter(|l| l.contains(needle))
        .nth(count - 1)
        .expect("counted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_udp_and_tcp_on_sockets_passed_by_systemd_socket_activate() {
    let setup = Setup::start().await;
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = write_config(&setup, address);
    let mut child = socket_activate(
        address,
        &[BIN, "serve", "--config", config.to_str().expect("utf8")],
    )
    .spawn()
    .expect("systemd-socket-activate (Debian package systemd)");
    let lines = collect(&mut child);
    first_answer(address).await;
    // The sockets are systemd's: dnsfront could not have bound them itself
    // (the TCP port is taken), and says it took them over.
    let listening = wait_for_line(&lines, "\"event\":\"listening\"", 1).await;
    assert!(listening.contains(&address.to_string()), "{listening}");
    wait_for_line(&lines, "inherited=true", 1).await;
    let tcp = test_support::tcp(address, &Ask::new(NAME, RecordType::A)).await;
    assert_eq!(
        test_support::addresses(&tcp),
        vec![crate::harness::ip(ADDRESS)]
    );
    crate::binary::terminate(&mut child, Duration::from_secs(10)).await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_socket_that_matches_no_listen_address_is_a_config_error_naming_it() {
    let setup = Setup::start().await;
    let configured: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let passed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = write_config(&setup, configured);
    let mut child = socket_activate(
        passed,
        &[BIN, "serve", "--config", config.to_str().expect("utf8")],
    )
    .spawn()
    .expect("systemd-socket-activate");
    let lines = collect(&mut child);
    // Trigger the activation; nobody answers.
    let _ = test_support::udp_raw_wait(passed, &query(1), Duration::from_millis(200)).await;
    let _ = test_support::udp_raw_wait(passed, &query(1), Duration::from_millis(200)).await;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(64),
        "a config error: systemd must not restart it"
    );
    let error = wait_for_line(&lines, "socket activation", 1).await;
    assert!(error.contains("dns.listen"), "{error}");
    assert!(error.contains(&passed.to_string()), "{error}");
    assert!(
        error.contains("(dns-udp)") || error.contains("(dns-tcp)"),
        "{error}"
    );
    setup.stop().await;
}

/// A supervisor that keeps the sockets and restarts the server as systemd
/// does with `dnsfront.socket`: each new process gets the same fds 3 and 4
/// with `LISTEN_PID` set to its own pid (bash's `$BASHPID` in the subshell
/// that then execs), and writes its pid to `pid_file`. It stops restarting
/// once `stop_file` exists.
fn supervisor(config: &Path, pid_file: &Path, stop_file: &Path) -> Vec<String> {
    let script = r#"while [ ! -e "$3" ]; do
  (echo "$BASHPID" >"$2"; export LISTEN_PID=$BASHPID; exec "$0" serve --config "$1")
done"#;
    [
        "bash",
        "-c",
        script,
        BIN,
        config.to_str().expect("utf8"),
        pid_file.to_str().expect("utf8"),
        stop_file.to_str().expect("utf8"),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn sigterm(pid: &str) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -TERM {pid}");
}

fn current_pid(pid_file: &Path) -> String {
    std::fs::read_to_string(pid_file)
        .expect("pid file")
        .trim()
        .to_owned()
}

/// Queries sent at a steady rate while the server restarts twice are all
/// answered: between two processes they wait in the socket's kernel queue,
/// which the supervisor keeps. (No timing is asserted: the replies may come
/// late, but every one comes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_under_socket_activation_lose_no_query() {
    const FIRST: u16 = 100;
    // 100 a second: the socket's default receive buffer (about 200 KiB, some
    // 160 small datagrams) then holds well over a second of restart on a
    // loaded CI machine; dnsfront.socket sets ReceiveBuffer=4M for production.
    const QUERIES: u16 = 300;
    const INTERVAL: Duration = Duration::from_millis(10);
    let setup = Setup::start().await;
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = write_config(&setup, address);
    let pid_file = setup.dir.path().join("dnsfront.pid");
    let stop_file = setup.dir.path().join("stop");
    let program = supervisor(&config, &pid_file, &stop_file);
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    let mut child = socket_activate(address, &program)
        .spawn()
        .expect("systemd-socket-activate");
    let lines = collect(&mut child);
    first_answer(address).await;
    wait_for_line(&lines, "\"event\":\"listening\"", 1).await;

    let client = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind client"));
    let answered = Arc::new(Mutex::new(HashSet::new()));
    let receiver = {
        let client = Arc::clone(&client);
        let answered = Arc::clone(&answered);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, _)) = client.recv_from(&mut buf).await {
                if let Some(id) = answered_id(&buf[..len]) {
                    answered.lock().expect("lock").insert(id);
                }
            }
        })
    };
    // The client sends at a steady rate whatever happens to the server.
    let sent = Arc::new(AtomicU16::new(0));
    let sender = {
        let client = Arc::clone(&client);
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(INTERVAL);
            for id in FIRST..FIRST + QUERIES {
                ticks.tick().await;
                client.send_to(&query(id), address).await.expect("send");
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Two restarts, at a third and at two thirds of the run.
    let mut pids = vec![current_pid(&pid_file)];
    for at in [QUERIES / 3, 2 * QUERIES / 3] {
        while sent.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sigterm(pids.last().expect("a pid"));
        let restarted = crate::harness::eventually(Duration::from_secs(20), || async {
            !pids.contains(&current_pid(&pid_file))
        })
        .await;
        assert!(restarted, "the supervisor started a new process");
        pids.push(current_pid(&pid_file));
    }
    sender.await.expect("sender");
    let all_answered = crate::harness::eventually(Duration::from_secs(30), || async {
        answered.lock().expect("lock").len() == usize::from(QUERIES)
    })
    .await;
    let got = answered.lock().expect("lock").clone();
    let lost: Vec<u16> = (FIRST..FIRST + QUERIES)
        .filter(|id| !got.contains(id))
        .collect();
    assert!(
        all_answered && lost.is_empty(),
        "{} of {QUERIES} queries lost across two restarts: {lost:?}",
        lost.len()
    );
    assert_eq!(pids.len(), 3, "two restarts: {pids:?}");
    wait_for_line(&lines, "\"event\":\"listening\"", 3).await;

    receiver.abort();
    std::fs::write(&stop_file, b"").expect("stop file");
    sigterm(&current_pid(&pid_file));
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the supervisor exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    setup.stop().await;
}

/// Notifications received on a fake `NOTIFY_SOCKET`, until one has `line`.
async fn notifications_until(socket: &tokio::net::UnixDatagram, line: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let len = tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {line:?} within 20s; got {seen:?}"))
            .expect("recv");
        let message = String::from_utf8_lossy(&buf[..len]).into_owned();
        let done = message.lines().any(|l| l == line);
        seen.push(message);
        if done {
            return seen;
        }
    }
}

/// `RELOADING=1` with a `MONOTONIC_USEC`, then `READY=1`, in that order.
fn assert_reload_notified(messages: &[String]) {
    let reloading = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 in {messages:?}"));
    let usec = messages[reloading]
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC with RELOADING=1: {messages:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|usec| usec > 0), "{usec}");
    let ready = messages
        .iter()
        .rposition(|m| m.lines().any(|l| l == "READY=1"))
        .expect("READY=1");
    assert!(ready > reloading, "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_refuses_a_bad_config_naming_the_key_and_applies_a_good_one() {
    let setup = Setup::start().await;
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = write_config(&setup, address);
    let notify_path = setup.dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let running = crate::binary::spawn_with_env(
        &["serve", "--config", config.to_str().expect("utf8")],
        &[("NOTIFY_SOCKET", notify_path.to_str().expect("utf8"))],
    )
    .await;
    notifications_until(&notify, "READY=1").await;
    let socket = setup.socket();
    let control = socket.to_str().expect("utf8");

    // A bad value: the command fails naming the key; the server keeps serving.
    let good = std::fs::read_to_string(&config).expect("read config");
    crate::binary::write(
        &config,
        &good.replace("[dns]\n", "[dns]\nservice_ttl = \"forever\"\n"),
    );
    let (code, stdout, stderr) = crate::binary::run_async(&["reload", "--control", control]).await;
    assert_eq!(code, Some(1), "stdout {stdout:?} stderr {stderr:?}");
    assert!(stderr.contains("dns.service_ttl"), "{stderr}");
    assert!(stderr.contains("reload refused"), "{stderr}");
    assert_reload_notified(&notifications_until(&notify, "READY=1").await);
    first_answer(address).await;

    // A good change: exit 0, the change named and in effect.
    let hosts = setup.dir.path().join("hosts2");
    std::fs::write(&hosts, "10.9.8.6 reloaded.test\n").expect("write hosts");
    crate::binary::write(
        &config,
        &good.replace(
            &setup.dir.path().join("hosts").display().to_string(),
            &hosts.display().to_string(),
        ),
    );
    let (code, stdout, stderr) = crate::binary::run_async(&["reload", "--control", control]).await;
    assert_eq!(code, Some(0), "stdout {stdout:?} stderr {stderr:?}");
    assert!(stdout.contains("changed: hosts.files"), "{stdout}");
    assert_reload_notified(&notifications_until(&notify, "READY=1").await);
    let (answer, _) = test_support::udp(address, &Ask::new("reloaded.test.", RecordType::A)).await;
    assert_eq!(
        test_support::addresses(&answer),
        vec![crate::harness::ip("10.9.8.6")]
    );

    // SIGHUP still reloads (and notifies).
    let pid = running.child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_reload_notified(&notifications_until(&notify, "READY=1").await);

    let mut child = running.child;
    crate::binary::terminate(&mut child, Duration::from_secs(10)).await;
    setup.stop().await;
}

/// `dnsfront check` exits as a Nagios plugin / Consul script check: 0 when
/// every line is ok, 1 with a warning, 2 with a failure; `--json` says the
/// same in one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exit_codes_follow_the_script_check_convention() {
    let setup = Setup::start().await;
    let upstream = test_support::FakeUpstream::start().await;
    let dead = test_support::closed_port().await;
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config_text = |upstreams: &str| {
        format!(
            "[dns]\nlisten = [\"{address}\"]\n\n[forward]\nupstreams = [{upstreams}]\n\n[snapshot]\nfollow = false\n"
        )
    };
    setup.write_config(&config_text(&format!("\"{}\"", upstream.addr())));
    let server = crate::binary::Server::start(&setup.config).await;
    let config = setup.config.to_str().expect("utf8");
    let check = |json: bool| {
        let mut args = vec!["check", "--config", config];
        if json {
            args.push("--json");
        }
        async move { crate::binary::run_async(&args).await }
    };

    let (code, report, stderr) = check(false).await;
    assert_eq!(code, Some(0), "all ok:\n{report}\n{stderr}");
    assert!(report.lines().all(|l| l.starts_with("ok ")), "{report}");
    let (code, json, _) = check(true).await;
    assert_eq!(code, Some(0), "{json}");
    let value: serde_json::Value = serde_json::from_str(&json).expect("one JSON object");
    assert_eq!(value["status"], "passing", "{value}");
    assert_eq!(value["exit_code"], 0, "{value}");
    let checks = value["checks"].as_array().expect("checks");
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "server" && c["status"] == "ok"),
        "{value}"
    );

    // A dead upstream beside a live one: a warning.
    setup.write_config(&config_text(&format!(
        "\"{}\", \"{dead}\"",
        upstream.addr()
    )));
    let (code, report, _) = check(false).await;
    assert_eq!(code, Some(1), "warning:\n{report}");
    let (code, json, _) = check(true).await;
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        (code, &value["status"]),
        (Some(1), &"warning".into()),
        "{value}"
    );
    assert!(
        value["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .any(|c| c["status"] == "warn" && c["check"] == format!("upstream {dead}")),
        "{value}"
    );

    // Consul down: critical.
    setup.consul.set_down(true);
    let (code, report, _) = check(false).await;
    assert_eq!(code, Some(2), "critical:\n{report}");
    let (code, json, _) = check(true).await;
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        (code, &value["status"]),
        (Some(2), &"critical".into()),
        "{value}"
    );
    assert_eq!(value["exit_code"], 2);
    server.stop().await;
    setup.stop().await;
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let output = crate::binary::run(&["--version"]);
    assert!(output.status.success());
    let version = String::from_utf8_lossy(&output.stdout).into_owned();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    let expected = std::env::var("DNSFRONT_COMMIT")
        .ok()
        .or(head)
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        version.trim(),
        format!("dnsfront {} (commit {expected})", env!("CARGO_PKG_VERSION")),
    );
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let output = crate::binary::run(&["completions", shell]);
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8(output.stdout).expect("utf8");
        for command in ["serve", "check", "reload", "check-config", "explain"] {
            assert!(
                script.contains(command),
                "{shell} completion lacks {command}"
            );
        }
        if shell == "bash" {
            let path = dir.path().join("dnsfront.bash");
            std::fs::write(&path, &script).expect("write");
            let status = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .status()
                .expect("bash");
            assert!(status.success(), "the bash completion does not parse");
        }
    }
    let output = crate::binary::run(&["completions", "tcsh"]);
    assert_eq!(
        output.status.code(),
        Some(64),
        "an unknown shell is a usage error"
    );
}

/// The Consul service example's script check is a command line the binary
/// accepts (exit 0, 1 or 2, never 64), and the sudoers example allows
/// exactly that command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consul_service_example_runs_a_real_check_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let service =
        std::fs::read_to_string(root.join("consul-service-dnsfront.hcl")).expect("example");
    let args_line = service
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("args"))
        .expect("an args line");
    let args: Vec<String> =
        serde_json::from_str(args_line.split_once('=').expect("args = [...]").1.trim())
            .expect("a list of strings");
    assert_eq!(args[..3], ["/usr/bin/sudo", "-n", "/usr/bin/dnsfront"]);
    assert_eq!(args[3], "check");
    let sudoers =
        std::fs::read_to_string(root.join("sudoers-dnsfront-check")).expect("sudoers example");
    let rule = sudoers
        .lines()
        .find(|line| line.starts_with("consul "))
        .expect("a rule for the consul user");
    assert!(
        rule.ends_with(&format!("NOPASSWD: {}", args[2..].join(" "))),
        "{rule}"
    );
    // Run what the agent would, against a test config.
    let setup = Setup::start().await;
    setup.write_config("");
    let command: Vec<&str> = args[3..]
        .iter()
        .map(|arg| {
            if arg == dnsfront::cli::DEFAULT_CONFIG_FILE {
                setup.config.to_str().expect("utf8")
            } else {
                arg.as_str()
            }
        })
        .collect();
    let (code, report, stderr) = crate::binary::run_async(&command).await;
    assert!(
        matches!(code, Some(0..=2)),
        "{command:?}: {code:?}\n{report}\n{stderr}"
    );
    assert!(report.contains("consul leader"), "{report}");
    setup.stop().await;
}
