//! Names from local hosts files, answered over real UDP and TCP sockets.

mod support;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use dnsfront_catalog::Freshness;
use dnsfront_dns::{Config, ServerOptions};
use dnsfront_hosts::LocalHosts;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use support::*;
use test_support::{Ask, DebuggingRecorder, Recorded, sorted_addresses, tcp, udp};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip literal")
}

const HOSTS: &str = "\
# test hosts file
10.0.0.1   db.internal db
10.0.0.2   db.internal
fd00::7    v6only.internal
10.0.0.3   web.service.consul
bad-line-here
";

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    hosts: LocalHosts,
    server: TestServer,
}

async fn fixture(config: Config) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hosts");
    std::fs::write(&path, HOSTS).expect("write hosts");
    let missing = dir.path().join("addn-hosts-not-there");
    let hosts = LocalHosts::load(vec![path.clone(), missing]).expect("load hosts");
    let server =
        start_with_hosts(config, ServerOptions::default(), true, Some(hosts.clone())).await;
    server.upstream.set_answer(Some(answer(
        ResponseCode::NoError,
        vec![Record::from_rdata(
            Name::from_ascii("elsewhere.example.").expect("name"),
            300,
            RData::A(A::new(192, 0, 2, 1)),
        )],
    )));
    Fixture {
        _dir: dir,
        path,
        hosts,
        server,
    }
}

fn assert_local(reply: &Message) {
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(
        reply.metadata.authoritative,
        "hosts answers are authoritative"
    );
    assert!(reply.metadata.recursion_available);
    assert!(reply.authorities.is_empty(), "no SOA: {reply:?}");
}

#[tokio::test]
async fn hosts_names_are_answered_authoritatively() {
    let f = fixture(Config::default()).await;
    let addr = f.server.addr;

    let (reply, _) = udp(addr, &Ask::new("db.internal.", RecordType::A)).await;
    assert_local(&reply);
    assert_eq!(
        sorted_addresses(&reply),
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
    assert!(
        reply.answers.iter().all(|r| r.ttl == 0),
        "local TTL defaults to 0 (dnsmasq local-ttl)"
    );

    let reply = tcp(addr, &Ask::new("db.", RecordType::A)).await;
    assert_local(&reply);
    assert_eq!(sorted_addresses(&reply), vec![ip("10.0.0.1")]);

    let (reply, _) = udp(addr, &Ask::new("v6only.internal.", RecordType::AAAA)).await;
    assert_local(&reply);
    assert_eq!(sorted_addresses(&reply), vec![ip("fd00::7")]);

    let (reply, _) = udp(addr, &Ask::new("v6only.internal.", RecordType::ANY)).await;
    assert_eq!(sorted_addresses(&reply), vec![ip("fd00::7")]);

    assert!(
        f.server.upstream.asked().is_empty(),
        "hosts names are never forwarded"
    );
}

#[tokio::test]
async fn other_types_of_a_hosts_name_are_nodata() {
    let f = fixture(Config::default()).await;
    for (name, qtype) in [
        ("db.internal.", RecordType::AAAA),
        ("v6only.internal.", RecordType::A),
        ("db.internal.", RecordType::MX),
        ("db.internal.", RecordType::TXT),
    ] {
        let (reply, _) = udp(f.server.addr, &Ask::new(name, qtype)).await;
        assert_local(&reply);
        assert!(reply.answers.is_empty(), "{name} {qtype}: NODATA");
    }
    assert!(f.server.upstream.asked().is_empty());
}

#[tokio::test]
async fn reverse_names_of_hosts_addresses_get_ptr() {
    let f = fixture(Config::default()).await;
    let ptrs = |reply: &Message| -> Vec<String> {
        reply
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::PTR(ptr) => ptr.0.to_ascii(),
                other => panic!("expected PTR, got {other:?}"),
            })
            .collect()
    };

    let (reply, _) = udp(
        f.server.addr,
        &Ask::new("1.0.0.10.in-addr.arpa.", RecordType::PTR),
    )
    .await;
    assert_local(&reply);
    assert_eq!(ptrs(&reply), vec!["db.internal.", "db."], "canonical first");

    let v6 = "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    let reply = tcp(f.server.addr, &Ask::new(v6, RecordType::PTR)).await;
    assert_local(&reply);
    assert_eq!(ptrs(&reply), vec!["v6only.internal."]);

    let (reply, _) = udp(
        f.server.addr,
        &Ask::new("2.0.0.10.in-addr.arpa.", RecordType::A),
    )
    .await;
    assert_local(&reply);
    assert!(
        reply.answers.is_empty(),
        "other types of a reverse name: NODATA"
    );
    assert!(f.server.upstream.asked().is_empty());

    let (reply, _) = udp(
        f.server.addr,
        &Ask::new("9.0.0.10.in-addr.arpa.", RecordType::PTR),
    )
    .await;
    assert!(
        !reply.metadata.authoritative,
        "unlisted addresses are forwarded"
    );
    assert_eq!(f.server.upstream.asked().len(), 1);
}

#[tokio::test]
async fn hosts_names_are_case_insensitive_and_echo_the_question() {
    let f = fixture(Config::default()).await;
    let asked = "Db.INTERNAL.";
    let (reply, _) = udp(f.server.addr, &Ask::new(asked, RecordType::A)).await;
    assert_local(&reply);
    assert_eq!(reply.answers.len(), 2);
    assert!(
        reply.answers.iter().all(|r| r.name.to_ascii() == asked),
        "owner names follow the question's case"
    );
    let (reply, _) = udp(
        f.server.addr,
        &Ask::new("1.0.0.10.IN-ADDR.ARPA.", RecordType::PTR),
    )
    .await;
    assert_eq!(reply.answers.len(), 2);
}

#[tokio::test]
async fn other_names_are_forwarded_and_consul_names_stay_with_the_catalog() {
    let f = fixture(Config::default()).await;
    let (reply, _) = udp(
        f.server.addr,
        &Ask::new("elsewhere.example.", RecordType::A),
    )
    .await;
    assert!(!reply.metadata.authoritative);
    assert_eq!(sorted_addresses(&reply), vec![ip("192.0.2.1")]);
    assert_eq!(f.server.upstream.asked().len(), 1);

    f.server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.9.9.9", None, 80, &[])],
        Freshness::Fresh,
    );
    let (reply, _) = udp(
        f.server.addr,
        &Ask::new("web.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(
        sorted_addresses(&reply),
        vec![ip("10.9.9.9")],
        "the Consul domain wins over a hosts entry"
    );
}

#[tokio::test]
async fn edited_hosts_file_is_served_after_reload() {
    let f = fixture(Config::default()).await;
    std::fs::write(&f.path, "10.1.1.1 db.internal\n10.1.1.2 new.internal\n").expect("edit");
    let stats = f.hosts.reload().expect("reload");
    assert_eq!((stats.files, stats.missing, stats.names), (1, 1, 2));

    let (reply, _) = udp(f.server.addr, &Ask::new("db.internal.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&reply), vec![ip("10.1.1.1")]);
    let (reply, _) = udp(f.server.addr, &Ask::new("new.internal.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&reply), vec![ip("10.1.1.2")]);
    let (reply, _) = udp(
        f.server.addr,
        &Ask::new("v6only.internal.", RecordType::AAAA),
    )
    .await;
    assert!(
        !reply.metadata.authoritative,
        "a removed name goes back to the forwarder"
    );
}

#[tokio::test]
async fn watcher_picks_up_an_edit_without_a_signal() {
    let f = fixture(Config::default()).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(
        f.hosts
            .clone()
            .watch(Duration::from_millis(20), shutdown.clone()),
    );
    std::fs::write(&f.path, "10.2.2.2 db.internal\n").expect("edit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (reply, _) = udp(f.server.addr, &Ask::new("db.internal.", RecordType::A)).await;
        if sorted_addresses(&reply) == vec![ip("10.2.2.2")] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "edit not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    watcher.await.expect("watcher stops");
}

#[tokio::test]
async fn local_ttl_is_configurable_and_counted_as_local() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let config = Config {
        local_ttl: Duration::from_secs(60),
        ..Config::default()
    };
    let f = fixture(config).await;
    let (reply, _) = udp(f.server.addr, &Ask::new("db.internal.", RecordType::A)).await;
    assert!(reply.answers.iter().all(|r| r.ttl == 60));
    udp(f.server.addr, &Ask::new("db.internal.", RecordType::MX)).await;

    let recorded = Recorded::take(&snapshotter);
    let local = |qtype| {
        recorded.counter(
            "dns.responses_total",
            &[
                ("proto", "udp"),
                ("type", qtype),
                ("rcode", "NOERROR"),
                ("source", "local"),
                ("zone", "local"),
            ],
        )
    };
    assert_eq!(local("A"), 1);
    assert_eq!(local("other"), 1);
}
