//! A real authoritative server from Debian's packages (NSD) on 127.0.0.1,
//! serving test zones, for end-to-end tests of the forwarder.
//!
//! The server runs in the foreground (`nsd -d`) as the current user, with
//! every file it writes in a scratch directory, in its own process group so
//! that stopping it also stops the processes it forks (`xfrd`, `main`, the
//! server). Tests fail, never skip, when `nsd` is not installed.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::{Ask, udp_raw_wait};

/// The main test zone served by [`test_zone`].
pub const ZONE: &str = "example.test.";

/// The second zone, served by [`other_zone`] (per-domain routing tests).
pub const OTHER_ZONE: &str = "other.test.";

/// Number of A records of `big.example.test.`: their answer exceeds 512 bytes.
pub const BIG_RRSET_LEN: u8 = 40;

/// The SOA MINIMUM of both zones, hence their negative-caching TTL (RFC 2308).
pub const SOA_MINIMUM: u32 = 60;

/// The zone `example.test.`: default TTL 300 s and
/// - `www`: A 192.0.2.1, AAAA 2001:db8::1 (no MX: a NODATA question);
/// - `a` CNAME `b` CNAME `c` A 192.0.2.3 (a CNAME chain);
/// - the apex: MX 10 `mail`, MX 20 `mail2`; `mail`, `mail2`: A;
/// - `txt`: two TXT records, one of two strings;
/// - `big`: [`BIG_RRSET_LEN`] A records 198.51.100.1.. (over 512 bytes);
/// - `zero`: A 192.0.2.10 with TTL 0;
/// - `brief`: A 192.0.2.77 with TTL 1 (serve-stale tests);
/// - SOA MINIMUM [`SOA_MINIMUM`]; any other name is NXDOMAIN.
pub fn test_zone() -> String {
    let mut zone = format!(
        "$ORIGIN {ZONE}\n\
         $TTL 300\n\
         @      3600 IN SOA ns1 hostmaster 2024010101 3600 600 86400 {SOA_MINIMUM}\n\
         @           IN NS    ns1\n\
         ns1         IN A     192.0.2.53\n\
         www         IN A     192.0.2.1\n\
         www         IN AAAA  2001:db8::1\n\
         a           IN CNAME b\n\
         b           IN CNAME c\n\
         c           IN A     192.0.2.3\n\
         @           IN MX    10 mail\n\
         @           IN MX    20 mail2\n\
         mail        IN A     192.0.2.25\n\
         mail2       IN A     192.0.2.26\n\
         txt         IN TXT   \"v=spf1 -all\"\n\
         txt         IN TXT   \"first string\" \"second string\"\n\
         zero      0 IN A     192.0.2.10\n\
         brief     1 IN A     192.0.2.77\n"
    );
    for last in 1..=BIG_RRSET_LEN {
        writeln!(zone, "big         IN A     198.51.100.{last}").expect("write to String");
    }
    zone
}

/// The zone `other.test.`: `www` A 192.0.2.201, SOA MINIMUM [`SOA_MINIMUM`].
pub fn other_zone() -> String {
    format!(
        "$ORIGIN {OTHER_ZONE}\n\
         $TTL 300\n\
         @      3600 IN SOA ns1 hostmaster 2024010101 3600 600 86400 {SOA_MINIMUM}\n\
         @           IN NS    ns1\n\
         ns1         IN A     192.0.2.153\n\
         www         IN A     192.0.2.201\n"
    )
}

/// A running NSD serving one or more zones on UDP and TCP of one address.
///
/// Dropping it kills the whole process group and waits for it.
#[derive(Debug)]
pub struct Nsd {
    addr: SocketAddr,
    zones: Vec<String>,
    dir: ScratchDir,
    child: Option<Child>,
}

impl Nsd {
    /// Serves one zone (its origin is taken from the `$ORIGIN` line) on a
    /// free port of 127.0.0.1, and returns once it answers the zone's SOA.
    pub async fn start(zone_text: &str) -> Self {
        Self::start_zones(&[zone_text]).await
    }

    /// [`start`](Self::start) with several zones.
    pub async fn start_zones(zone_texts: &[&str]) -> Self {
        let mut last_log = String::new();
        for _ in 0..5 {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
            match Self::try_start(addr, zone_texts).await {
                Ok(nsd) => return nsd,
                Err(log) => last_log = log,
            }
        }
        panic!("nsd did not start on a free port of 127.0.0.1 (5 tries); last log:\n{last_log}");
    }

    /// Serves the zones on exactly `addr` (for example port 53 of another
    /// loopback address, for resolv.conf files, which cannot name a port).
    pub async fn start_at(addr: SocketAddr, zone_texts: &[&str]) -> Self {
        Self::try_start(addr, zone_texts)
            .await
            .unwrap_or_else(|log| {
                let hint = if addr.port() < 1024 {
                    " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
                } else {
                    ""
                };
                panic!("nsd did not start on {addr}{hint}; its log:\n{log}")
            })
    }

    /// The address it serves on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the server (an upstream going away) and returns once its
    /// address is free again.
    pub async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_group(child);
        }
        wait_until_released(self.addr, self.zones.first().map_or(".", String::as_str)).await;
    }

    /// Starts the server again on the same address with the same zones.
    pub async fn restart(&mut self) {
        self.stop().await;
        let child = spawn_and_wait(&self.dir, self.addr, &self.zones)
            .await
            .unwrap_or_else(|log| panic!("nsd did not restart on {}; its log:\n{log}", self.addr));
        self.child = Some(child);
    }

    async fn try_start(addr: SocketAddr, zone_texts: &[&str]) -> Result<Self, String> {
        let dir = ScratchDir::new("nsd");
        let mut zones = Vec::new();
        let mut config = format!(
            "server:\n\
             \x20 ip-address: {ip}\n\
             \x20 port: {port}\n\
             \x20 server-count: 1\n\
             \x20 username: \"\"\n\
             \x20 chroot: \"\"\n\
             \x20 zonesdir: \"{dir}\"\n\
             \x20 database: \"\"\n\
             \x20 zonelistfile: \"{dir}/zone.list\"\n\
             \x20 xfrdfile: \"{dir}/xfrd.state\"\n\
             \x20 xfrdir: \"{dir}\"\n\
             \x20 pidfile: \"{dir}/nsd.pid\"\n\
             \x20 logfile: \"{dir}/nsd.log\"\n\
             \x20 cookie-secret-file: \"{dir}/cookiesecrets.txt\"\n\
             \x20 do-ip6: no\n\
             \x20 reuseport: no\n\
             \x20 verbosity: 1\n\
             remote-control:\n\
             \x20 control-enable: no\n",
            ip = addr.ip(),
            port = addr.port(),
            dir = dir.path().display(),
        );
        for (index, text) in zone_texts.iter().enumerate() {
            let origin = origin_of(text);
            let file = dir.path().join(format!("zone{index}.zone"));
            std::fs::write(&file, text).expect("write zone file");
            write!(
                config,
                "zone:\n  name: \"{origin}\"\n  zonefile: \"{}\"\n",
                file.display()
            )
            .expect("write to String");
            zones.push(origin);
        }
        std::fs::write(dir.path().join("nsd.conf"), config).expect("write nsd.conf");
        let child = spawn_and_wait(&dir, addr, &zones).await?;
        Ok(Self {
            addr,
            zones,
            dir,
            child: Some(child),
        })
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_group(child);
        }
    }
}

/// Starts `nsd -d` with the scratch dir's config and waits (10 s at most)
/// until it answers the first zone's SOA; on failure, the server's log.
async fn spawn_and_wait(
    dir: &ScratchDir,
    addr: SocketAddr,
    zones: &[String],
) -> Result<Child, String> {
    let program = find_program("nsd", "nsd");
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("create stderr log");
    let mut child = Command::new(program)
        .arg("-d")
        .arg("-c")
        .arg(dir.path().join("nsd.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start nsd: {error}"));
    let origin = zones.first().map_or(".", String::as_str);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if answers_soa(addr, origin, Duration::from_millis(100)).await {
            return Ok(child);
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || std::time::Instant::now() >= deadline {
            kill_group(child);
            return Err(dir.logs());
        }
    }
}

/// Waits (3 s at most) until no process holds UDP `addr`: binding it
/// succeeds, or, where binding is not allowed (port 53 without root), it no
/// longer answers `origin` SOA.
async fn wait_until_released(addr: SocketAddr, origin: &str) {
    for _ in 0..150 {
        match std::net::UdpSocket::bind(addr) {
            Ok(_) => return,
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                if !answers_soa(addr, origin, Duration::from_millis(100)).await {
                    return;
                }
            }
        }
    }
    panic!("{addr} is still in use 3 s after its server was killed");
}

/// Whether `server` answers `origin` SOA with NOERROR and an SOA record.
async fn answers_soa(server: SocketAddr, origin: &str, wait: Duration) -> bool {
    let query = Ask::new(origin, RecordType::SOA).to_bytes();
    let Some(reply) = udp_raw_wait(server, &query, wait).await else {
        tokio::time::sleep(Duration::from_millis(20)).await;
        return false;
    };
    Message::from_vec(&reply).is_ok_and(|message| {
        message.metadata.response_code == ResponseCode::NoError
            && message
                .answers
                .iter()
                .any(|record| record.record_type() == RecordType::SOA)
    })
}

/// The name of the zone's `$ORIGIN` line (with its trailing dot).
fn origin_of(zone_text: &str) -> String {
    zone_text
        .lines()
        .find_map(|line| line.trim().strip_prefix("$ORIGIN"))
        .map(|rest| rest.trim().to_owned())
        .filter(|origin| origin.ends_with('.'))
        .expect("test zone text must start with `$ORIGIN name.` (absolute)")
}

/// Kills the process group led by `child` (SIGKILL) and reaps the leader.
pub(crate) fn kill_group(mut child: Child) {
    let group = format!("-{}", child.id());
    let killed = find_in_path("kill")
        .and_then(|kill| {
            Command::new(kill)
                .args(["-KILL", "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()
        })
        .is_some_and(|status| status.success());
    if !killed {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// A port free on 127.0.0.1 for both UDP and TCP at the time of the call.
pub(crate) fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let addr = udp.local_addr().expect("udp addr");
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no port of 127.0.0.1 is free for both UDP and TCP");
}

/// The path of `program` from PATH or the sbin directories (where Debian
/// puts daemons, often outside a user's PATH); panics naming the Debian
/// package and `tests/run` when it is missing.
pub(crate) fn find_program(program: &str, package: &str) -> PathBuf {
    find_in_path(program).unwrap_or_else(|| {
        panic!(
            "{program} is not installed: these tests need Debian's {package} package. \
             `tests/run` installs it (as root, or with sudo); or run `sudo apt-get install {package}`"
        )
    })
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `dnsfront-test-{what}-{pid}-{random}`.
    pub(crate) fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "dnsfront-test-{what}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Self(path)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Every `*.log` file in it, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let _ = writeln!(out, "== {}\n{text}", path.display());
            }
        }
        out
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
