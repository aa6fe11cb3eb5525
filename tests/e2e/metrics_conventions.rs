//! The conventions dashboards rely on (issue 15 §2), through the real binary:
//! Prometheus names, labels and buckets scraped over HTTP after UDP and TCP
//! queries; a wildcard metrics endpoint refused unless acknowledged; the
//! DogStatsD agent and unified service tags taken from `DD_*` variables,
//! over UDP and over a Unix socket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::Ask;
use tokio::net::{UdpSocket, UnixDatagram};

use crate::metrics::{Line, has_tags, http_get, parse_line, stop, write_config};

/// One sample of the Prometheus text format: `name{label="value",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let rest = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                    // Our label values never hold ',' or '"' (validated tags, fixed sets).
                    let labels = rest
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair
                                .split_once('=')
                                .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                            (key.to_owned(), value.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels`.
fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
        .sum()
}

async fn scrape(http: SocketAddr) -> String {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Scrapes until `ready` holds (the fast path adds its hits in batches, at
/// most a second late), at most 10 s; returns the last body.
async fn scrape_until(http: SocketAddr, ready: impl Fn(&[Sample]) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = scrape(http).await;
        if ready(&parse_samples(&body)) || tokio::time::Instant::now() >= deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const REQUESTS: &str = "dnsfront_dns_requests_total";
const RESPONSES: &str = "dnsfront_dns_responses_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_names_labels_and_counts_follow_coredns_after_udp_and_tcp_queries() {
    let consul = crate::harness::standard_sim()
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &consul.url(),
        "statsd = false\nprometheus_listen = \"127.0.0.1:0\"",
    );
    let running =
        crate::binary::spawn(&["serve", "--config", config.to_str().expect("utf8")]).await;
    let dns = running.dns[0];
    let http: SocketAddr = running.listening["metrics_http"]
        .as_str()
        .expect("metrics_http in the listening line")
        .parse()
        .expect("socket address");

    let api = Ask::new("api.service.consul.", RecordType::A);
    let (reply, _) = test_support::udp(dns, &api).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let reply = test_support::tcp(dns, &api).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let (missing, _) =
        test_support::udp(dns, &Ask::new("missing.service.consul.", RecordType::A)).await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);

    let udp_a = [("proto", "udp"), ("zone", "consul"), ("type", "A")];
    let tcp_a = [("proto", "tcp"), ("zone", "consul"), ("type", "A")];
    let body = scrape_until(http, |samples| {
        total(samples, REQUESTS, &udp_a) >= 2.0 && total(samples, REQUESTS, &tcp_a) >= 1.0
    })
    .await;
    let samples = parse_samples(&body);
    assert_eq!(total(&samples, REQUESTS, &udp_a), 2.0, "{body}");
    assert_eq!(total(&samples, REQUESTS, &tcp_a), 1.0, "{body}");
    let nxdomain = [("proto", "udp"), ("rcode", "NXDOMAIN"), ("zone", "consul")];
    assert_eq!(total(&samples, RESPONSES, &nxdomain), 1.0, "{body}");
    let noerror_tcp = [("proto", "tcp"), ("rcode", "NOERROR"), ("source", "fresh")];
    assert_eq!(total(&samples, RESPONSES, &noerror_tcp), 1.0, "{body}");
    // Every request got a response: the two counters agree.
    assert_eq!(
        total(&samples, REQUESTS, &[]),
        total(&samples, RESPONSES, &[]),
        "{body}"
    );

    // Conventions: counters end in _total, every name carries the prefix,
    // durations are in seconds with buckets from 5 µs.
    let mut counters = 0;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("name and type");
            assert!(name.starts_with("dnsfront_"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            counters += usize::from(kind == "counter");
        }
    }
    assert!(counters >= 5, "{body}");
    assert!(
        body.contains("# TYPE dnsfront_dns_request_duration_seconds histogram"),
        "{body}"
    );
    let first_bucket = samples
        .iter()
        .find(|sample| {
            sample.name == "dnsfront_dns_request_duration_seconds_bucket"
                && sample.labels.get("proto").map(String::as_str) == Some("tcp")
        })
        .unwrap_or_else(|| panic!("no TCP duration buckets in {body}"));
    assert_eq!(
        first_bucket.labels.get("le").map(String::as_str),
        Some("0.000005"),
        "{body}"
    );
    assert_eq!(
        first_bucket.labels.get("type").map(String::as_str),
        Some("A")
    );
    for name in [
        "dnsfront_consul_requests_total",
        "dnsfront_catalog_first_fetches_total",
    ] {
        assert!(total(&samples, name, &[]) >= 1.0, "{name}: {body}");
    }

    // Counts move: 70 more UDP hits (most from the wire cache, counted in
    // batches) and one more over TCP.
    for _ in 0..70 {
        test_support::udp(dns, &api).await;
    }
    test_support::tcp(dns, &api).await;
    let body = scrape_until(http, |samples| {
        total(samples, REQUESTS, &udp_a) >= 72.0 && total(samples, REQUESTS, &tcp_a) >= 2.0
    })
    .await;
    let samples = parse_samples(&body);
    assert_eq!(total(&samples, REQUESTS, &udp_a), 72.0, "{body}");
    assert_eq!(total(&samples, REQUESTS, &tcp_a), 2.0, "{body}");
    assert!(
        total(&samples, "dnsfront_dns_fast_path_hits_total", &[]) >= 64.0,
        "{body}"
    );

    stop(running.child).await;
    consul.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_metrics_endpoint_is_refused_unless_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "http://127.0.0.1:1",
        "statsd = false\nprometheus_listen = \"0.0.0.0:0\"",
    );
    let path = config.to_str().expect("utf8");
    let (code, _, stderr) = crate::binary::run_async(&["check-config", path]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("metrics.prometheus_listen")
            && stderr.contains("metrics.prometheus_allow_wildcard"),
        "{stderr}"
    );
    // `serve` refuses it the same way, before binding anything.
    let (code, _, stderr) = crate::binary::run_async(&["serve", "--config", path]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("metrics.prometheus_listen"), "{stderr}");

    let config = write_config(
        dir.path(),
        "http://127.0.0.1:1",
        "statsd = false\nprometheus_listen = \"0.0.0.0:0\"\nprometheus_allow_wildcard = true",
    );
    let (code, stdout, stderr) =
        crate::binary::run_async(&["check-config", config.to_str().expect("utf8")]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// The unified service tags every line must carry.
const UNIFIED: [(&str, &str); 3] = [
    ("env", "e2e-dd"),
    ("service", "resolver-e2e"),
    ("version", "9.9.9"),
];

fn dd_env(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DD_ENV", UNIFIED[0].1.to_owned()),
        ("DD_SERVICE", UNIFIED[1].1.to_owned()),
        ("DD_VERSION", UNIFIED[2].1.to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

/// Starts the binary with `env` and a config that names no StatsD agent,
/// answers one UDP query, and hands back the running process.
async fn serve_with_dd_env(
    dir: &std::path::Path,
    consul: &str,
    env: &[(&'static str, String)],
) -> crate::binary::Running {
    let config = write_config(dir, consul, "");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let running =
        crate::binary::spawn_with_env(&["serve", "--config", config.to_str().expect("utf8")], &env)
            .await;
    let (reply, _) = test_support::udp(
        running.dns[0],
        &Ask::new("api.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    running
}

fn is_tagged_response(line: &Line) -> bool {
    line.name == "dnsfront.dns.responses_total"
        && line.kind == "c"
        && has_tags(
            line,
            &[("proto", "udp"), ("rcode", "NOERROR"), ("zone", "consul")],
        )
        && has_tags(line, &UNIFIED)
}

/// Collects StatsD lines from `receive` until one satisfies `wanted` (10 s).
async fn lines_until<F, Fut>(mut receive: F, wanted: impl Fn(&Line) -> bool) -> Vec<Line>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<Vec<u8>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while !lines.iter().any(&wanted) {
        let datagram = tokio::time::timeout_at(deadline, receive())
            .await
            .unwrap_or_else(|_| panic!("no matching StatsD line within 10s: {lines:?}"))
            .expect("receive");
        let text = String::from_utf8(datagram).expect("StatsD datagrams are UTF-8");
        lines.extend(text.lines().filter(|l| !l.is_empty()).map(parse_line));
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dogstatsd_agent_and_unified_tags_come_from_dd_variables_over_udp() {
    let consul = crate::harness::standard_sim()
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim");
    let agent = UdpSocket::bind("127.0.0.1:0").await.expect("agent");
    let port = agent.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let running = serve_with_dd_env(
        dir.path(),
        &consul.url(),
        &dd_env(&[
            ("DD_AGENT_HOST", "127.0.0.1".to_owned()),
            ("DD_DOGSTATSD_PORT", port.to_string()),
        ]),
    )
    .await;
    let lines = lines_until(
        || async {
            let mut buffer = vec![0_u8; 65_536];
            let size = agent.recv(&mut buffer).await?;
            buffer.truncate(size);
            Ok(buffer)
        },
        is_tagged_response,
    )
    .await;
    for line in &lines {
        assert!(line.name.starts_with("dnsfront."), "{line:?}");
        // `version` is also build_info's own tag; every line has env and service.
        assert!(has_tags(line, &UNIFIED[..2]), "{line:?}");
    }
    stop(running.child).await;
    consul.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dogstatsd_over_a_unix_socket_from_dd_dogstatsd_url() {
    let consul = crate::harness::standard_sim()
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("dsd.socket");
    let agent = UnixDatagram::bind(&socket_path).expect("agent socket");
    // A DD_AGENT_HOST beside it loses: DD_DOGSTATSD_URL comes first.
    let decoy = UdpSocket::bind("127.0.0.1:0").await.expect("decoy");
    let decoy_port = decoy.local_addr().expect("addr").port();
    let running = serve_with_dd_env(
        dir.path(),
        &consul.url(),
        &dd_env(&[
            (
                "DD_DOGSTATSD_URL",
                format!("unix://{}", socket_path.display()),
            ),
            ("DD_AGENT_HOST", "127.0.0.1".to_owned()),
            ("DD_DOGSTATSD_PORT", decoy_port.to_string()),
        ]),
    )
    .await;
    lines_until(
        || async {
            let mut buffer = vec![0_u8; 65_536];
            let size = agent.recv(&mut buffer).await?;
            buffer.truncate(size);
            Ok(buffer)
        },
        is_tagged_response,
    )
    .await;
    let mut buffer = [0_u8; 64];
    assert!(
        decoy.try_recv(&mut buffer).is_err(),
        "nothing goes to DD_AGENT_HOST when DD_DOGSTATSD_URL is set"
    );
    stop(running.child).await;
    consul.shutdown().await;
}
