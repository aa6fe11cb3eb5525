//! Consul's record-count rules (issue 12 §5 and the rest of its parity list):
//! `udp_answer_limit`, the 5-record cap on a hostname's chain for clients
//! without EDNS (`maxRecurseRecords`), and NS at any name in the Consul domain.
//! Through real sockets, every reply parsed strictly (`test_support::udp`/`tcp`).

use std::collections::BTreeSet;

use consul_sim::{Registration, Sim};
use dnsfront::config::{Env, RawConfig};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use test_support::{Ask, FakeUpstream, tcp, udp};

use crate::harness::{Harness, standard_sim};

/// Instances of `many` (one per node, 10.5.0.1 up).
const MANY: usize = 12;
/// Addresses the upstream gives `big.example.com`.
const BIG: usize = 8;

/// The standard catalog, three Consul servers, `many` with [`MANY`] instances,
/// and `big` registered at a hostname whose upstream answer has [`BIG`] addresses.
fn limits_sim() -> Sim {
    let sim = standard_sim();
    for (node, address) in [
        ("server-1", "10.0.9.1"),
        ("server-2", "10.0.9.2"),
        ("server-3", "10.0.9.3"),
    ] {
        sim.register(Registration::consul_server(node, address));
    }
    for n in 1..=MANY {
        sim.register(
            Registration::new("many")
                .id(&format!("many-{n}"))
                .node(&format!("many-node-{n}"), &format!("10.5.0.{n}"))
                .port(7000)
                .passing(),
        );
    }
    sim.register(
        Registration::new("big")
            .id("big-1")
            .node("node-5", "10.0.0.5")
            .address("big.example.com")
            .port(5432)
            .passing(),
    );
    sim
}

async fn start(tweak: impl FnOnce(&mut RawConfig)) -> (Harness, FakeUpstream) {
    let upstream = FakeUpstream::start().await;
    let addresses: Vec<String> = (1..=BIG).map(|n| format!("192.0.2.{n}")).collect();
    let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
    upstream.set("big.example.com", &addresses, 300);
    let upstream_addr = upstream.addr().to_string();
    let h = Harness::start_with(limits_sim(), |raw| {
        raw.forward.upstreams = vec![upstream_addr];
        tweak(raw);
    })
    .await;
    (h, upstream)
}

fn count(message: &Message, record_type: RecordType) -> usize {
    message
        .answers
        .iter()
        .filter(|record| record.record_type() == record_type)
        .count()
}

fn srv_targets(message: &Message) -> BTreeSet<String> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.target.to_ascii()),
            _ => None,
        })
        .collect()
}

fn additional_owners(message: &Message) -> BTreeSet<String> {
    message
        .additionals
        .iter()
        .filter(|record| record.record_type() != RecordType::OPT)
        .map(|record| record.name.to_ascii())
        .collect()
}

#[tokio::test]
async fn udp_answer_limit_caps_plain_udp_answers_as_consul() {
    let (h, _upstream) = start(|raw| raw.dns.udp_answer_limit = 3).await;
    let many = "many.service.consul.";
    for _ in 0..2 {
        // Twice: a capped answer is not kept whole by the fast path either.
        let (a, _) = udp(h.dns, &Ask::new(many, RecordType::A)).await;
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 3, "cut to udp_answer_limit");
        assert!(!a.metadata.truncation, "no TC for the limit, as Consul");
    }
    let (edns, _) = udp(h.dns, &Ask::new(many, RecordType::A).edns(1232)).await;
    assert_eq!(edns.answers.len(), MANY, "an EDNS client gets every answer");
    let (edns_512, _) = udp(h.dns, &Ask::new(many, RecordType::A).edns(512)).await;
    assert_eq!(edns_512.answers.len(), 3, "EDNS of 512 bytes is capped too");
    let over_tcp = tcp(h.dns, &Ask::new(many, RecordType::A)).await;
    assert_eq!(over_tcp.answers.len(), MANY, "TCP is not capped");

    // SRV: three records, each with its target's address, nothing else.
    let (srv, _) = udp(h.dns, &Ask::new(many, RecordType::SRV)).await;
    assert_eq!(srv.answers.len(), 3);
    let targets = srv_targets(&srv);
    assert_eq!(targets.len(), 3);
    assert_eq!(additional_owners(&srv), targets, "the kept SRVs' addresses");
    h.stop().await;

    // Our default: as many as fit in 512 bytes.
    let (h, _upstream) = start(|_| {}).await;
    let (a, _) = udp(h.dns, &Ask::new(many, RecordType::A)).await;
    assert_eq!(a.answers.len(), MANY, "default 0: no count limit");
    h.stop().await;
}

#[test]
fn udp_answer_limit_above_consuls_maximum_is_refused_by_name() {
    let mut raw = RawConfig::default();
    raw.dns.udp_answer_limit = 9;
    let error = raw
        .validate(&Env::default())
        .expect_err("9 is above Consul's maximum of 8")
        .to_string();
    assert!(error.contains("dns.udp_answer_limit"), "{error}");
    raw.dns.udp_answer_limit = 8;
    raw.validate(&Env::default()).expect("8 is allowed");
}

#[tokio::test]
async fn a_hostname_chain_has_at_most_five_records_without_edns() {
    let (h, _upstream) = start(|_| {}).await;
    let big = "big.service.consul.";
    let (plain, _) = udp(h.dns, &Ask::new(big, RecordType::A)).await;
    assert_eq!(count(&plain, RecordType::CNAME), 1);
    assert_eq!(
        count(&plain, RecordType::A),
        5,
        "Consul's maxRecurseRecords"
    );
    let over_tcp = tcp(h.dns, &Ask::new(big, RecordType::A)).await;
    assert_eq!(
        count(&over_tcp, RecordType::A),
        5,
        "without EDNS over TCP too"
    );
    let (edns, _) = udp(h.dns, &Ask::new(big, RecordType::A).edns(1232)).await;
    assert_eq!(count(&edns, RecordType::CNAME), 1);
    assert_eq!(count(&edns, RecordType::A), BIG, "no cap with EDNS");

    let (srv, _) = udp(h.dns, &Ask::new(big, RecordType::SRV)).await;
    assert_eq!(
        srv_targets(&srv),
        BTreeSet::from(["big.example.com.".to_owned()])
    );
    assert_eq!(srv.additionals.len(), 5, "the target's chain, capped");
    let (srv, _) = udp(h.dns, &Ask::new(big, RecordType::SRV).edns(1232)).await;
    let chain = srv
        .additionals
        .iter()
        .filter(|record| record.record_type() == RecordType::A)
        .count();
    assert_eq!(chain, BIG);
    h.stop().await;
}

#[tokio::test]
async fn ns_at_any_name_in_the_domain_answers_the_apex_servers() {
    let (h, _upstream) = start(|_| {}).await;
    let servers = BTreeSet::from([
        "server-1.node.dc1.consul.".to_owned(),
        "server-2.node.dc1.consul.".to_owned(),
        "server-3.node.dc1.consul.".to_owned(),
    ]);
    for name in [
        "consul.",
        "web.service.consul.",
        "missing.node.consul.",
        "no.such.form.consul.",
        // A form the agent's DNS answers otherwise: NS is Consul's before the name.
        "geo.query.consul.",
    ] {
        let (ns, _) = udp(h.dns, &Ask::new(name, RecordType::NS)).await;
        assert_eq!(ns.metadata.response_code, ResponseCode::NoError, "{name}");
        let targets: BTreeSet<String> = ns
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::NS(ns) => Some(ns.0.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(targets, servers, "{name}");
        assert!(
            ns.answers
                .iter()
                .all(|record| record.name.to_ascii() == "consul."),
            "{name}: owned by the apex, as Consul"
        );
        assert_eq!(additional_owners(&ns), servers, "{name}: glue");
    }
    h.stop().await;
}
