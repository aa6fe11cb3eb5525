//! dnsmasq from Debian's `dnsmasq-base`, as a caching forwarder on 127.0.0.1:
//! the resolver dnsfront replaces, run side by side for parity tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};

use crate::authoritative::{ScratchDir, find_program, free_port, kill_group};
use crate::udp_raw_wait;

/// A running dnsmasq forwarding every name to one upstream, with its cache on.
///
/// It runs in the foreground as the current user (root or not), reads no
/// config file, no resolv.conf and no hosts file. Dropping it kills it.
#[derive(Debug)]
pub struct Dnsmasq {
    addr: SocketAddr,
    dir: ScratchDir,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq on a free port of 127.0.0.1 forwarding to `upstream`
    /// (cache of 1,000 entries) and returns once it answers.
    pub async fn start(upstream: SocketAddr) -> Self {
        let mut last_log = String::new();
        for _ in 0..5 {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
            let dir = ScratchDir::new("dnsmasq");
            match spawn_and_wait(&dir, addr, upstream).await {
                Ok(child) => {
                    return Self {
                        addr,
                        dir,
                        child: Some(child),
                    };
                }
                Err(log) => last_log = log,
            }
        }
        panic!(
            "dnsmasq did not start on a free port of 127.0.0.1 (5 tries); last log:\n{last_log}"
        );
    }

    /// The address it listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What dnsmasq logged so far (for failure messages).
    pub fn log(&self) -> String {
        self.dir.logs()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_group(child);
        }
    }
}

async fn spawn_and_wait(
    dir: &ScratchDir,
    addr: SocketAddr,
    upstream: SocketAddr,
) -> Result<Child, String> {
    let program = find_program("dnsmasq", "dnsmasq-base");
    let stderr = std::fs::File::create(dir.path().join("dnsmasq.log")).expect("create dnsmasq log");
    let mut child = Command::new(program)
        .arg("--keep-in-foreground")
        .arg("--conf-file=/dev/null")
        .arg("--no-resolv")
        .arg("--no-hosts")
        .arg(format!("--server={}#{}", upstream.ip(), upstream.port()))
        .arg(format!("--port={}", addr.port()))
        .arg(format!("--listen-address={}", addr.ip()))
        .arg("--bind-interfaces")
        .arg(format!(
            "--pid-file={}",
            dir.path().join("dnsmasq.pid").display()
        ))
        .arg("--cache-size=1000")
        .arg(format!("--user={}", current_user()))
        .arg("--log-facility=-")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start dnsmasq: {error}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if answers_version(addr).await {
            return Ok(child);
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || std::time::Instant::now() >= deadline {
            kill_group(child);
            return Err(dir.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether dnsmasq answers `version.bind` CH TXT (which it answers itself).
async fn answers_version(addr: SocketAddr) -> bool {
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    let mut query = Query::query(
        Name::from_str("version.bind.").expect("literal name"),
        RecordType::TXT,
    );
    query.set_query_class(DNSClass::CH);
    message.add_query(query);
    let bytes = message.to_vec().expect("query encodes");
    udp_raw_wait(addr, &bytes, Duration::from_millis(100))
        .await
        .and_then(|reply| Message::from_vec(&reply).ok())
        .is_some_and(|reply| !reply.answers.is_empty())
}

/// The current user's name, for `--user` (dnsmasq would switch to `nobody`).
fn current_user() -> String {
    let output = Command::new("id")
        .arg("-un")
        .output()
        .unwrap_or_else(|error| panic!("cannot run `id -un`: {error}"));
    let name = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success() && !name.is_empty(),
        "`id -un` gave no user name"
    );
    name
}
