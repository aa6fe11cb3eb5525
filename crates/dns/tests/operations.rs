//! Operating the DNS front: the query log, live reload of settings, explain.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dnsfront_catalog::Freshness;
use dnsfront_dns::{Config, Explanation, QueryLog, ServerOptions};
use dnsfront_hosts::LocalHosts;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tracing_subscriber::fmt::MakeWriter;

use support::*;
use test_support::{Ask, tcp, udp};

/// Collects everything a tracing subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8 log")
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A subscriber for this thread (the current-thread runtime runs the server
/// here too) that keeps INFO and above from every target.
fn capture_logs() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}

fn query_lines(capture: &Capture) -> Vec<String> {
    capture
        .lines()
        .into_iter()
        .filter(|line| line.contains("dnsfront::query"))
        .collect()
}

fn logging(enabled: bool, sample: f64) -> Config {
    Config {
        query_log: QueryLog { enabled, sample },
        ..Config::default()
    }
}

fn upstream_a(name: &str) -> dnsfront_forward::Answer {
    answer(
        ResponseCode::NoError,
        vec![Record::from_rdata(
            Name::from_ascii(name).expect("name"),
            300,
            RData::A(A::new(192, 0, 2, 1)),
        )],
    )
}

#[tokio::test]
async fn query_log_writes_one_line_per_query_when_enabled() {
    let (capture, _guard) = capture_logs();
    let server = start(logging(true, 1.0), ServerOptions::default(), true).await;
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );
    server
        .upstream
        .set_answer(Some(upstream_a("www.example.org.")));

    udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    tcp(server.addr, &Ask::new("www.example.org.", RecordType::AAAA)).await;

    let lines = query_lines(&capture);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for field in [
        "client=127.0.0.1:",
        "protocol=udp",
        "name=web.service.consul.",
        "qtype=A ",
        "rcode=NOERROR",
        "zone=consul",
        "source=fresh",
        "answers=1",
        "duration_us=",
    ] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
    assert!(lines[0].contains(" INFO "), "{}", lines[0]);
    for field in [
        "protocol=tcp",
        "name=www.example.org.",
        "qtype=AAAA",
        "zone=forward",
        "source=upstream",
    ] {
        assert!(lines[1].contains(field), "{field} in {}", lines[1]);
    }
}

#[tokio::test]
async fn query_log_is_silent_when_disabled_or_sampled_out() {
    let (capture, _guard) = capture_logs();
    let server = start(logging(false, 1.0), ServerOptions::default(), true).await;
    for _ in 0..5 {
        udp(server.addr, &Ask::new("x.service.consul.", RecordType::A)).await;
    }
    assert!(query_lines(&capture).is_empty(), "disabled: no lines");

    server.router.reload(logging(true, 0.0));
    for _ in 0..5 {
        udp(server.addr, &Ask::new("x.service.consul.", RecordType::A)).await;
    }
    assert!(query_lines(&capture).is_empty(), "sample 0: no lines");

    server.router.reload(logging(true, 1.0));
    udp(server.addr, &Ask::new("x.service.consul.", RecordType::A)).await;
    let lines = query_lines(&capture);
    assert_eq!(lines.len(), 1, "reload turned the log on: {lines:#?}");
    assert!(lines[0].contains("rcode=NXDOMAIN"), "{}", lines[0]);

    server.router.reload(logging(false, 1.0));
    udp(server.addr, &Ask::new("x.service.consul.", RecordType::A)).await;
    assert_eq!(query_lines(&capture).len(), 1, "reload turned it off again");
}

#[tokio::test]
async fn reload_changes_ttls_for_the_running_server() {
    let server = start_default().await;
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );
    let ask = Ask::new("web.service.consul.", RecordType::A);
    let (reply, _) = udp(server.addr, &ask).await;
    assert_eq!(reply.answers[0].ttl, 5);

    server.router.reload(Config {
        service_ttl: Duration::from_secs(30),
        service_ttl_overrides: vec![("db*".to_owned(), Duration::from_secs(2))],
        ..Config::default()
    });
    let (reply, _) = udp(server.addr, &ask).await;
    assert_eq!(reply.answers[0].ttl, 30);
    let reply = tcp(server.addr, &ask).await;
    assert_eq!(reply.answers[0].ttl, 30);

    // The domain is live too: the old one goes to the forwarder afterwards.
    server.router.reload(Config {
        domain: Name::from_ascii("sd.example.").expect("name"),
        ..Config::default()
    });
    let (reply, _) = udp(
        server.addr,
        &Ask::new("web.service.sd.example.", RecordType::A),
    )
    .await;
    assert_eq!(reply.answers.len(), 1);
    assert!(reply.metadata.authoritative);
    let (reply, _) = udp(server.addr, &ask).await;
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::ServFail,
        "the fake upstream has no answer"
    );
    assert_eq!(server.upstream.asked().len(), 1);
}

#[tokio::test]
async fn explain_routes_like_a_query() {
    let server = start_default().await;
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );
    let explained = server
        .router
        .explain("Web.Service.Consul", RecordType::A)
        .await;
    assert_eq!(
        explained,
        Explanation {
            zone: "consul",
            rcode: "NOERROR".to_owned(),
            source: "fresh",
            answers: vec!["Web.Service.Consul. 5 IN A 10.0.0.1".to_owned()],
            ttl: Some(5),
            note: None,
        }
    );
    assert_eq!(
        server.catalog.asked(),
        vec!["service:web@-"],
        "explain reads the catalog"
    );

    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Stale,
    );
    let explained = server
        .router
        .explain("web.service.consul.", RecordType::A)
        .await;
    assert_eq!(explained.source, "stale");
    assert!(
        explained
            .note
            .as_deref()
            .is_some_and(|n| n.contains("stale")),
        "{explained:?}"
    );

    let explained = server
        .router
        .explain("nope.service.consul.", RecordType::A)
        .await;
    assert_eq!(
        (explained.rcode.as_str(), explained.ttl),
        ("NXDOMAIN", Some(5)),
        "negative TTL from the SOA"
    );

    server
        .upstream
        .set_answer(Some(upstream_a("www.example.org.")));
    let explained = server
        .router
        .explain("www.example.org.", RecordType::A)
        .await;
    assert_eq!(explained.zone, "forward");
    assert_eq!(explained.source, "upstream");
    assert_eq!(
        explained.answers,
        vec!["www.example.org. 300 IN A 192.0.2.1"]
    );
    assert_eq!(
        server.upstream.asked().len(),
        1,
        "explain asks the forwarder"
    );

    server.upstream.set_answer(None);
    let explained = server
        .router
        .explain("down.example.org.", RecordType::A)
        .await;
    assert_eq!(explained.rcode, "SERVFAIL");
    assert!(
        explained
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("forwarding failed: ")),
        "{explained:?}"
    );

    let json = serde_json::to_value(&explained).expect("serialize");
    assert_eq!(json["zone"], "forward");
    assert_eq!(json["rcode"], "SERVFAIL");
}

#[tokio::test]
async fn explain_names_local_answers_and_invalid_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hosts");
    std::fs::write(&path, "10.0.0.5 printer.lan\n").expect("write");
    let hosts = LocalHosts::load(vec![path]).expect("load");
    let server = start_with_hosts(
        Config::default(),
        ServerOptions::default(),
        false,
        Some(hosts),
    )
    .await;

    let explained = server.router.explain("printer.lan", RecordType::A).await;
    assert_eq!(explained.zone, "local");
    assert_eq!(explained.source, "local");
    assert_eq!(explained.answers, vec!["printer.lan. 0 IN A 10.0.0.5"]);
    assert_eq!(explained.ttl, Some(0));

    let explained = server.router.explain("printer.lan", RecordType::AAAA).await;
    assert_eq!((explained.rcode.as_str(), explained.ttl), ("NOERROR", None));
    assert!(
        explained
            .note
            .as_deref()
            .is_some_and(|n| n.contains("NODATA")),
        "{explained:?}"
    );

    let explained = server.router.explain("other.lan", RecordType::A).await;
    assert_eq!(explained.zone, "forward");
    assert_eq!(
        explained.note.as_deref(),
        Some("no upstream resolvers configured: SERVFAIL")
    );

    let explained = server.router.explain("a..b", RecordType::A).await;
    assert_eq!(explained.zone, "none");
    assert_eq!(explained.rcode, "FORMERR");
}
