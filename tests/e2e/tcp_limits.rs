//! The real binary at its file-descriptor limit: TCP accept backs off
//! instead of spinning, UDP keeps answering, and TCP recovers once fds
//! are free again.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, udp};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::binary::{Setup, sigterm};
use crate::harness::eventually;

/// The fd limit the server runs under: enough to start, small enough to fill.
const NOFILE: usize = 128;

/// Open fds of `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

struct Limited {
    child: Child,
    dns: SocketAddr,
    metrics_http: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Limited {
    fn lines_with(&self, needle: &str) -> usize {
        let log = self.log.lock().expect("log");
        log.iter().filter(|line| line.contains(needle)).count()
    }
}

/// `dnsfront serve --config FILE` under `ulimit -n NOFILE`.
async fn spawn_limited(config: &std::path::Path) -> Limited {
    let command = crate::binary::command(&["serve", "--config", config.to_str().expect("utf8")]);
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    let mut shell = std::process::Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""))
        .arg(program)
        .args(args)
        .envs(
            command
                .get_envs()
                .filter_map(|(key, value)| value.map(|value| (key, value))),
        );
    for (key, value) in command.get_envs() {
        if value.is_none() {
            shell.env_remove(key);
        }
    }
    let mut child = Command::from(shell)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dnsfront");
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let stderr = child.stderr.take().expect("stderr");
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[dnsfront] {line}");
            sink.lock().expect("log").push(line);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("listening line in time")
        .expect("stdout")
        .expect("a line");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let value: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    let address = |value: &serde_json::Value| value.as_str().expect("str").parse().expect("addr");
    Limited {
        child,
        dns: address(&value["dns"][0]),
        metrics_http: address(&value["metrics_http"]),
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_fds_tcp_accept_backs_off_udp_answers_and_tcp_recovers() {
    let setup = Setup::start().await;
    setup.write_config(
        "prometheus_listen = \"127.0.0.1:0\"\n\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n",
    );
    let server = spawn_limited(&setup.config).await;
    let pid = server.child.id().expect("pid");
    let web = Ask::new("web.service.consul.", RecordType::A);
    let (answer, _) = udp(server.dns, &web).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);

    // Idle HTTP connections to the metrics endpoint take every free fd.
    let mut hogs = Vec::new();
    while open_fds(pid) < NOFILE && hogs.len() < 2 * NOFILE {
        hogs.push(
            TcpStream::connect(server.metrics_http)
                .await
                .expect("connect"),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async { open_fds(pid) >= NOFILE }).await,
        "the server reached its fd limit ({} open)",
        open_fds(pid)
    );

    // A TCP client arrives: accept fails with EMFILE (Linux takes the fd
    // before looking at the queue, so any accept fails now).
    let mut pending = TcpStream::connect(server.dns).await.expect("connect");
    let query = web.to_bytes();
    let mut frame = u16::try_from(query.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    frame.extend(&query);
    pending.write_all(&frame).await.expect("write");
    assert!(
        eventually(Duration::from_secs(5), || async {
            server.lines_with("TCP accept failing") == 1
        })
        .await,
        "the episode is logged"
    );
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(pid) - before;
    // A spinning accept loop burns a whole core: ~200 ticks in 2 s.
    assert!(
        spent < 40,
        "{spent} clock ticks of CPU in 2 s at the fd limit"
    );
    let (answer, _) = udp(server.dns, &web).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::NoError,
        "UDP answers at the fd limit"
    );
    assert_eq!(
        server.lines_with("TCP accept failing"),
        1,
        "logged once per episode"
    );

    // Fds free again: TCP clients are accepted and answered.
    drop(hogs);
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), pending.read_exact(&mut len))
        .await
        .expect("answered once fds came back")
        .expect("answer");
    assert!(u16::from_be_bytes(len) > 12);
    assert!(
        eventually(Duration::from_secs(10), || async {
            test_support::tcp_raw(server.dns, &query).await.is_ok()
        })
        .await,
        "new TCP clients are answered"
    );
    assert!(server.lines_with("TCP accept works again") >= 1);

    let mut child = server.child;
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    setup.stop().await;
}
