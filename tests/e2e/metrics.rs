//! Metrics leave the real `dnsfront` binary: DogStatsD datagrams on a UDP
//! socket the test owns, and the optional Prometheus `/metrics` + `/health`
//! endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Child;

use crate::cli::sigterm;

/// One StatsD line: `name:value|type|#tag:value,...`.
#[derive(Debug)]
pub(super) struct Line {
    pub(super) name: String,
    pub(super) value: f64,
    pub(super) kind: String,
    pub(super) tags: BTreeMap<String, String>,
}

pub(super) fn parse_line(line: &str) -> Line {
    let (name, rest) = line
        .split_once(':')
        .unwrap_or_else(|| panic!("no ':' in {line:?}"));
    let mut fields = rest.split('|');
    let value = fields
        .next()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("bad value in {line:?}"));
    let kind = fields
        .next()
        .unwrap_or_else(|| panic!("no type in {line:?}"))
        .to_owned();
    let mut tags = BTreeMap::new();
    for field in fields {
        if let Some(list) = field.strip_prefix('#') {
            for tag in list.split(',') {
                let (key, value) = tag.split_once(':').unwrap_or((tag, ""));
                tags.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    Line {
        name: name.to_owned(),
        value,
        kind,
        tags,
    }
}

pub(super) fn has_tags(line: &Line, expected: &[(&str, &str)]) -> bool {
    expected
        .iter()
        .all(|(key, value)| line.tags.get(*key).map(String::as_str) == Some(*value))
}

/// A named expectation on one StatsD line.
type Wanted<'a> = (&'a str, &'a dyn Fn(&Line) -> bool);

/// Receives datagrams until every `wanted` predicate matched a line (or 10 s pass).
async fn receive_until(socket: &UdpSocket, lines: &mut Vec<Line>, wanted: &[Wanted<'_>]) {
    receive_within(socket, lines, wanted, Duration::from_secs(10)).await;
}

/// [`receive_until`] with another limit.
async fn receive_within(
    socket: &UdpSocket,
    lines: &mut Vec<Line>,
    wanted: &[Wanted<'_>],
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buffer = vec![0u8; 65_536];
    loop {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|(_, matches)| !lines.iter().any(matches))
            .map(|(what, _)| *what)
            .collect();
        if missing.is_empty() {
            return;
        }
        let received = tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await;
        let Ok(Ok(size)) = received else {
            let names: Vec<&str> = lines.iter().map(|line| line.name.as_str()).collect();
            panic!("no StatsD line for {missing:?} within {limit:?}; received {names:?}");
        };
        let text = std::str::from_utf8(&buffer[..size]).expect("StatsD datagrams are UTF-8");
        lines.extend(
            text.split('\n')
                .filter(|line| !line.is_empty())
                .map(parse_line),
        );
    }
}

pub(super) fn write_config(
    dir: &std::path::Path,
    consul: &str,
    metrics: &str,
) -> std::path::PathBuf {
    let path = dir.join("dnsfront.toml");
    let text = format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\
         [consul]\naddress = \"{consul}\"\n\
         [forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n\
         [state]\ndir = \"{state}\"\n\
         [metrics]\n{metrics}\n",
        state = dir.display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

pub(super) async fn stop(mut child: Child) {
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_datagrams_carry_names_types_and_tags_after_real_queries() {
    let sim = crate::harness::standard_sim();
    let consul = sim
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim");
    let statsd = UdpSocket::bind("127.0.0.1:0").await.expect("bind statsd");
    let statsd_addr = statsd.local_addr().expect("statsd addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &consul.url(),
        &format!("statsd_address = \"{statsd_addr}\"\ntags = {{ env = \"e2e\" }}"),
    );
    let crate::binary::Running {
        child,
        dns,
        listening,
    } = crate::binary::spawn(&["serve", "--config", config.to_str().expect("utf8 path")]).await;
    let dns = dns[0];
    assert!(
        listening.get("metrics_http").is_none(),
        "no HTTP endpoint unless asked: {listening}"
    );

    let (answer, _) = test_support::udp(
        dns,
        &test_support::Ask::new("web.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let (missing, _) = test_support::udp(
        dns,
        &test_support::Ask::new("nosuch.service.consul.", RecordType::AAAA),
    )
    .await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    // Asked again: answered from the catalog cache.
    let (again, _) = test_support::udp(
        dns,
        &test_support::Ask::new("web.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(again.metadata.response_code, ResponseCode::NoError);

    let version = env!("CARGO_PKG_VERSION");
    let query_ok = |line: &Line| {
        line.name == "dnsfront.dns.responses_total"
            && line.kind == "c"
            && line.value >= 1.0
            && has_tags(
                line,
                &[
                    ("zone", "consul"),
                    ("type", "A"),
                    ("proto", "udp"),
                    ("rcode", "NOERROR"),
                    ("source", "fresh"),
                    ("env", "e2e"),
                ],
            )
    };
    let query_nxdomain = |line: &Line| {
        line.name == "dnsfront.dns.responses_total"
            && line.kind == "c"
            && has_tags(
                line,
                &[("zone", "consul"), ("type", "AAAA"), ("rcode", "NXDOMAIN")],
            )
    };
    let duration = |line: &Line| {
        line.name == "dnsfront.dns.request_duration_seconds"
            && line.kind == "d"
            && line.value >= 0.0
            && line.value < 10.0
            && has_tags(line, &[("zone", "consul"), ("env", "e2e")])
    };
    let build_info = |line: &Line| {
        line.name == "dnsfront.build_info"
            && line.kind == "g"
            && line.value == 1.0
            && has_tags(line, &[("version", version), ("env", "e2e")])
    };
    let consul_request = |line: &Line| {
        line.name == "dnsfront.consul.requests_total"
            && line.kind == "c"
            && has_tags(line, &[("outcome", "ok")])
            && line.tags.contains_key("endpoint")
    };
    let consul_duration = |line: &Line| {
        line.name == "dnsfront.consul.request_duration_seconds"
            && line.kind == "d"
            && line.tags.contains_key("endpoint")
    };
    let catalog_hit = |line: &Line| {
        line.name == "dnsfront.catalog.cache_hits_total" && line.kind == "c" && line.value >= 1.0
    };
    let mut lines = Vec::new();
    receive_until(
        &statsd,
        &mut lines,
        &[
            ("dns.responses_total A NOERROR fresh", &query_ok),
            ("dns.responses_total AAAA NXDOMAIN", &query_nxdomain),
            ("dns.request_duration_seconds", &duration),
            ("build_info", &build_info),
            ("consul.requests_total ok", &consul_request),
            ("consul.request_duration_seconds", &consul_duration),
            ("catalog.cache_hits_total", &catalog_hit),
        ],
    )
    .await;
    for line in &lines {
        assert!(
            line.name.starts_with("dnsfront."),
            "every metric carries the prefix: {line:?}"
        );
        assert!(
            ["c", "g", "d"].contains(&line.kind.as_str()),
            "only counters, gauges and distributions: {line:?}"
        );
        assert_eq!(
            line.tags.get("env").map(String::as_str),
            Some("e2e"),
            "{line:?}"
        );
    }

    // The StatsD socket is connected to the agent and bound to the loopback,
    // never to a wildcard address (issue 13 §6); nor is any other UDP socket.
    let sockets = udp_sockets_of(child.id().expect("pid"));
    let sender = sockets
        .iter()
        .find(|(_, remote)| *remote == statsd_addr)
        .unwrap_or_else(|| panic!("no UDP socket connected to {statsd_addr}: {sockets:?}"));
    assert!(sender.0.ip().is_loopback(), "{sockets:?}");
    for (local, _) in &sockets {
        assert!(
            !local.ip().is_unspecified(),
            "wildcard UDP socket: {sockets:?}"
        );
    }

    // Gauges are sent again every 10 s with nothing asked in between (a
    // DogStatsD agent reports a gauge only for the flush windows it got it in).
    let mut repeated = Vec::new();
    receive_within(
        &statsd,
        &mut repeated,
        &[("build_info, repeated", &build_info)],
        Duration::from_secs(20),
    )
    .await;

    stop(child).await;
    consul.shutdown().await;
}

/// The UDP sockets (IPv4) the process `pid` holds: (local, remote) address
/// pairs read from `/proc/net/udp`, matched by inode with `/proc/PID/fd`.
fn udp_sockets_of(pid: u32) -> Vec<(SocketAddr, SocketAddr)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    // `0100007F:1F90` is 127.0.0.1:8080: the address's bytes printed as a native u32.
    let parse = |field: &str| -> SocketAddr {
        let (ip, port) = field.split_once(':').expect("ip:port");
        let ip = u32::from_str_radix(ip, 16).expect("hex ip");
        let port = u16::from_str_radix(port, 16).expect("hex port");
        SocketAddr::from((std::net::Ipv4Addr::from(ip.to_ne_bytes()), port))
    };
    std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .expect("/proc/net/udp")
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(9)?;
            inodes
                .iter()
                .any(|own| own == inode)
                .then(|| (parse(fields[1]), parse(fields[2])))
        })
        .collect()
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub(super) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("response within 5s")
        .expect("read response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_endpoint_serves_metrics_and_health_when_enabled() {
    let sim = crate::harness::standard_sim();
    let consul = sim
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &consul.url(),
        "statsd = false\nprometheus_listen = \"127.0.0.1:0\"\ntags = { env = \"e2e\" }",
    );
    let crate::binary::Running {
        child,
        dns,
        listening,
    } = crate::binary::spawn(&["serve", "--config", config.to_str().expect("utf8 path")]).await;
    let dns = dns[0];
    let http: SocketAddr = listening["metrics_http"]
        .as_str()
        .unwrap_or_else(|| panic!("metrics_http in the listening line: {listening}"))
        .parse()
        .expect("socket address");

    let (status, body) = http_get(http, "/health").await;
    assert_eq!((status, body.trim()), (200, "ok"));

    let (answer, _) = test_support::udp(
        dns,
        &test_support::Ask::new("api.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);

    // The router counts a query after its answer is sent, so the sample may
    // land a moment after the reply: scrape until it is there (bounded).
    let is_query_line = |line: &str| {
        line.starts_with("dnsfront_dns_responses_total{")
            && line.contains("zone=\"consul\"")
            && line.contains("type=\"A\"")
            && line.contains("proto=\"udp\"")
            && line.contains("rcode=\"NOERROR\"")
            && line.contains("source=\"fresh\"")
            && line.contains("env=\"e2e\"")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, body) = http_get(http, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        if body.lines().any(is_query_line) || tokio::time::Instant::now() >= deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let query_line = body
        .lines()
        .find(|line| is_query_line(line))
        .unwrap_or_else(|| panic!("no dnsfront_dns_responses_total sample in:\n{body}"));
    assert!(query_line.ends_with(" 1"), "{query_line}");
    assert!(
        body.lines()
            .any(|line| line.starts_with("dnsfront_build_info{")
                && line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                && line.ends_with(" 1")),
        "{body}"
    );
    assert!(
        body.contains("dnsfront_dns_request_duration_seconds_bucket{"),
        "{body}"
    );
    let (status, _) = http_get(http, "/nope").await;
    assert_eq!(status, 404);

    stop(child).await;
    consul.shutdown().await;
}
