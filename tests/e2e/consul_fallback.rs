//! Consul parity, part 2 (issue 12 §2, §4): the Consul forms dnsfront does not
//! answer itself go to the agent's DNS interface (a fake on loopback here);
//! `alt_domain`; hostname addresses answered with a CNAME and the target's
//! records. Every reply is parsed strictly (`test_support::udp`/`tcp`).

use std::net::IpAddr;
use std::time::Duration;

use consul_sim::{Registration, Sim};
use dnsfront::config::RawConfig;
use dnsfront::control::{self, ExplainReport, Request};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use test_support::{Ask, FakeUpstream, Knobs, a_records, name_of, positive, tcp, udp};

use crate::binary::{Server, Setup};
use crate::harness::{FAST_REFRESH, Harness, eventually, ip, standard_sim};

/// The standard catalog plus services and a node registered by hostname.
fn hostname_sim() -> Sim {
    let sim = standard_sim();
    let at = |service: &str, id: &str, node: (&str, &str), address: &str| {
        Registration::new(service)
            .id(id)
            .node(node.0, node.1)
            .address(address)
            .port(5432)
            .check(&format!("service:{id}"), "passing")
    };
    // Every instance at a hostname (RDS-like).
    sim.register(at(
        "rds",
        "rds-1",
        ("node-5", "10.0.0.5"),
        "primary.rds.example.com",
    ));
    sim.register(at(
        "rds",
        "rds-2",
        ("node-6", "10.0.0.6"),
        "replica.rds.example.com",
    ));
    // One instance at an IP address, one at a hostname.
    sim.register(at("mixed", "mixed-1", ("node-5", "10.0.0.5"), "10.3.0.1"));
    sim.register(at(
        "mixed",
        "mixed-2",
        ("node-6", "10.0.0.6"),
        "mixed.example.com",
    ));
    // A node whose address is a hostname, with a service on the node's address.
    sim.register(at("edge", "edge-1", ("edge-1", "edge-1.example.com"), ""));
    // Hostnames inside the Consul domain, one of them a loop.
    sim.register(at(
        "alias",
        "alias-1",
        ("node-5", "10.0.0.5"),
        "web.service.consul",
    ));
    sim.register(at(
        "loop-a",
        "loop-a",
        ("node-5", "10.0.0.5"),
        "loop-b.service.consul",
    ));
    sim.register(at(
        "loop-b",
        "loop-b",
        ("node-5", "10.0.0.5"),
        "loop-a.service.consul.",
    ));
    // Registered at its own DNS name: answered with the node's address.
    sim.register(at(
        "itself",
        "itself-1",
        ("node-5", "10.0.0.5"),
        "itself.service.consul",
    ));
    sim
}

/// The upstream resolver's records for the hostnames of [`hostname_sim`].
fn upstream_records(upstream: &FakeUpstream) {
    upstream.set("primary.rds.example.com", &["192.0.2.11"], 300);
    upstream.set("replica.rds.example.com", &["192.0.2.12"], 300);
    upstream.set("mixed.example.com", &["192.0.2.31"], 300);
    upstream.set("edge-1.example.com", &["192.0.2.21", "2001:db8::21"], 300);
}

/// dnsfront with `agent` as the agent's DNS, `upstream` as the only resolver
/// and `example.internal` as the alt domain.
async fn start(sim: Sim, agent: &FakeUpstream, upstream: &FakeUpstream) -> Harness {
    start_with(sim, agent, upstream, |_| {}).await
}

async fn start_with(
    sim: Sim,
    agent: &FakeUpstream,
    upstream: &FakeUpstream,
    tweak: impl FnOnce(&mut RawConfig),
) -> Harness {
    let (agent, upstream) = (agent.addr().to_string(), upstream.addr().to_string());
    Harness::start_with(sim, |raw| {
        raw.dns.agent_dns = agent;
        raw.dns.agent_dns_timeout = Duration::from_millis(500);
        raw.dns.alt_domain = "example.internal".to_owned();
        raw.forward.upstreams = vec![upstream];
        tweak(raw);
    })
    .await
}

fn cnames(message: &Message) -> Vec<(Name, Name)> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::CNAME(cname) => Some((record.name.clone(), cname.0.clone())),
            _ => None,
        })
        .collect()
}

/// (owner, address) of every A/AAAA record of `records`.
fn owned_addresses(records: &[Record]) -> Vec<(Name, IpAddr)> {
    let mut out: Vec<(Name, IpAddr)> = records
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some((record.name.clone(), IpAddr::V4(a.0))),
            RData::AAAA(aaaa) => Some((record.name.clone(), IpAddr::V6(aaaa.0))),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

// === §4: the agent's DNS interface ===

fn srv_record(owner: &str, port: u16, target: &str) -> Record {
    Record::from_rdata(
        name_of(owner),
        0,
        RData::SRV(SRV::new(1, 1, port, name_of(target))),
    )
}

/// Each form dnsfront does not answer from its own data reaches the agent
/// (asked in the main domain, lower case) and its answer comes back intact:
/// rcode, records, the owner as the client wrote it; in `alt_domain` too.
#[tokio::test]
async fn every_form_we_do_not_answer_reaches_the_agent_and_comes_back_intact() {
    let agent = FakeUpstream::start().await;
    let upstream = FakeUpstream::start().await;
    let forms: Vec<(&str, RecordType, &str, Vec<Record>)> = vec![
        (
            "geo-web.query.consul.",
            RecordType::A,
            "geo-web.query.consul.",
            a_records("geo-web.query.consul", 0, &[77, 78]),
        ),
        (
            "Geo-Web.Query.dc2.Consul.",
            RecordType::A,
            "geo-web.query.dc2.consul.",
            a_records("geo-web.query.dc2.consul", 0, &[79]),
        ),
        (
            "web.service.peer1.peer.consul.",
            RecordType::A,
            "web.service.peer1.peer.consul.",
            a_records("web.service.peer1.peer.consul", 0, &[81]),
        ),
        (
            "_web._tcp.service.peer1.peer.consul.",
            RecordType::SRV,
            "_web._tcp.service.peer1.peer.consul.",
            vec![srv_record(
                "_web._tcp.service.peer1.peer.consul.",
                8080,
                "0a000001.addr.consul.",
            )],
        ),
        (
            "web.connect.consul.",
            RecordType::SRV,
            "web.connect.consul.",
            vec![srv_record(
                "web.connect.consul.",
                21000,
                "node-1.node.dc1.consul.",
            )],
        ),
        (
            "web.ingress.consul.",
            RecordType::A,
            "web.ingress.consul.",
            a_records("web.ingress.consul", 0, &[91]),
        ),
        (
            "web.virtual.consul.",
            RecordType::A,
            "web.virtual.consul.",
            a_records("web.virtual.consul", 0, &[92]),
        ),
        (
            "web.service.ns1.ns.dc1.dc.consul.",
            RecordType::A,
            "web.service.ns1.ns.dc1.dc.consul.",
            a_records("web.service.ns1.ns.dc1.dc.consul", 0, &[93]),
        ),
        (
            "web.sameness-group.consul.",
            RecordType::A,
            "web.sameness-group.consul.",
            a_records("web.sameness-group.consul", 0, &[94]),
        ),
        (
            "geo-web.query.Example.Internal.",
            RecordType::A,
            "geo-web.query.consul.",
            a_records("geo-web.query.consul", 0, &[77, 78]),
        ),
    ];
    for (_, qtype, agent_name, records) in &forms {
        agent.answer(agent_name, *qtype, positive(records.clone()));
    }
    let h = start(standard_sim(), &agent, &upstream).await;

    for (asked, qtype, agent_name, records) in &forms {
        let before = agent.queries();
        let ask = Ask::new(asked, *qtype);
        for (transport, answer) in [
            ("udp", udp(h.dns, &ask).await.0),
            ("tcp", tcp(h.dns, &ask).await),
        ] {
            let what = format!("{asked} {qtype} over {transport}");
            assert_eq!(
                answer.metadata.response_code,
                ResponseCode::NoError,
                "{what}"
            );
            assert_eq!(answer.answers.len(), records.len(), "{what}: {answer:?}");
            for (got, sent) in answer.answers.iter().zip(records) {
                assert_eq!(got.data, sent.data, "{what}");
                assert_eq!(got.ttl, sent.ttl, "{what}");
                assert_eq!(
                    got.name.to_string(),
                    *asked,
                    "{what}: the owner is the question as written"
                );
            }
            let last = agent.last_query().expect("the agent was asked");
            assert_eq!(
                last.queries[0].name().to_string(),
                *agent_name,
                "{what}: asked in the main domain, lower case"
            );
        }
        assert_eq!(
            agent.queries(),
            before + 2,
            "{asked}: one question per query"
        );
    }
    assert_eq!(upstream.queries(), 0, "never the upstream resolvers");

    // Consul's NXDOMAIN (with its SOA) is passed on; and only Consul says so.
    let (answer, _) = udp(h.dns, &Ask::new("nosuch.query.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        answer
            .authorities
            .iter()
            .any(|record| record.record_type() == RecordType::SOA),
        "the agent's SOA: {answer:?}"
    );
    // What Consul itself calls malformed is NXDOMAIN here, without asking.
    let before = agent.queries();
    for name in [
        "service.peer1.peer.consul.",
        "web.service.dc1.dc.peer1.peer.consul.",
    ] {
        let (answer, _) = udp(h.dns, &Ask::new(name, RecordType::A)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
    }
    // And the catalog still answers its own forms.
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.answers.len(), 2);
    assert_eq!(agent.queries(), before, "the agent was not asked");
    h.stop().await;
}

/// A large agent answer (a prepared query over 2,000 instances: more names
/// than hickory's encoder compresses) comes back whole over TCP, and with TC
/// over UDP; the agent itself is asked over TCP after its TC.
#[tokio::test]
async fn a_large_agent_answer_comes_back_whole_over_tcp() {
    let agent = FakeUpstream::start().await;
    agent.set_knobs(Knobs {
        truncate_udp: true,
        ..Knobs::default()
    });
    let owner = name_of("big-prepared-query-of-the-fleet.query.consul.");
    let records: Vec<Record> = (0..2000_u32)
        .map(|i| {
            let address = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            Record::from_rdata(
                owner.clone(),
                0,
                RData::A(hickory_proto::rr::rdata::A(address)),
            )
        })
        .collect();
    agent.answer(
        "big-prepared-query-of-the-fleet.query.consul",
        RecordType::A,
        positive(records),
    );
    let upstream = FakeUpstream::start().await;
    let h = start(standard_sim(), &agent, &upstream).await;
    let ask = Ask::new(
        "big-prepared-query-of-the-fleet.query.consul.",
        RecordType::A,
    );
    let answer = tcp(h.dns, &ask).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.metadata.truncation);
    let mut addresses: Vec<IpAddr> = owned_addresses(&answer.answers)
        .into_iter()
        .map(|(_, address)| address)
        .collect();
    addresses.dedup();
    assert_eq!(addresses.len(), 2000, "every record");
    assert!(agent.tcp_queries() >= 1, "the agent was asked over TCP");
    for (ask, limit) in test_support::udp_size_variants(&ask) {
        let (answer, size) = udp(h.dns, &ask).await;
        assert!(answer.metadata.truncation, "{ask:?}");
        assert!(size <= limit, "{ask:?}: {size} bytes");
    }
    h.stop().await;
}

/// No answer from the agent in time is SERVFAIL (never NXDOMAIN), as is a
/// refused connection; with `dns.agent_dns` off the forms are SERVFAIL at once.
#[tokio::test]
async fn an_agent_that_does_not_answer_gives_servfail() {
    let agent = FakeUpstream::start().await;
    agent.set_silent(true);
    let upstream = FakeUpstream::start().await;
    let h = start(standard_sim(), &agent, &upstream).await;
    for ask in [
        Ask::new("geo-web.query.consul.", RecordType::A),
        Ask::new("web.connect.consul.", RecordType::SRV),
    ] {
        let (answer, _) = udp(h.dns, &ask).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::ServFail,
            "{ask:?}"
        );
        assert!(answer.answers.is_empty());
    }
    assert_eq!(agent.queries(), 2, "the agent was asked");
    h.stop().await;

    let closed = test_support::closed_port().await.to_string();
    let h = Harness::start_with(standard_sim(), |raw| raw.dns.agent_dns = closed).await;
    let (answer, _) = udp(h.dns, &Ask::new("geo-web.query.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    h.stop().await;

    let agent = FakeUpstream::start().await;
    let h = Harness::start_with(standard_sim(), |raw| raw.dns.agent_dns = String::new()).await;
    let (answer, _) = udp(h.dns, &Ask::new("geo-web.query.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(agent.queries(), 0);
    h.stop().await;
}

/// `explain` shows the route: zone consul, kind fallback, source agent, the
/// agent's address, and the answer a client gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_agent_route() {
    let agent = FakeUpstream::start().await;
    agent.set("geo-web.query.consul", &["192.0.2.77"], 0);
    let setup = Setup::start().await;
    setup.write_config(&format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\nagent_dns = \"{}\"\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n",
        agent.addr()
    ));
    let server = Server::start(&setup.config).await;
    let value = control::request(
        &setup.socket(),
        &Request::Explain {
            name: "geo-web.query.consul".to_owned(),
            qtype: Some("A".to_owned()),
        },
        Duration::from_secs(10),
    )
    .await
    .expect("explain answers");
    let report: ExplainReport = serde_json::from_value(value.clone()).expect("report");
    assert_eq!(report.zone, "consul", "{value}");
    assert_eq!(report.kind.as_deref(), Some("fallback"), "{value}");
    assert_eq!(report.source, "agent", "{value}");
    let note = report.note.clone().unwrap_or_default();
    assert!(
        note.contains(&agent.addr().to_string()) && note.contains("agent"),
        "{value}"
    );
    let answer = report
        .answer
        .as_ref()
        .expect("explain's own query answered");
    assert_eq!(answer.rcode, "NOERROR", "{value}");
    assert_eq!(answer.answers[0].data, "192.0.2.77", "{value}");
    let text = control::render_explain(&report);
    assert!(text.contains("source:    agent"), "{text}");
    server.stop().await;
    setup.stop().await;
}

// === alt_domain ===

/// A question in `alt_domain` is answered like the same question in the main
/// domain: owners as asked, SRV targets and their glue in the asked domain.
#[tokio::test]
async fn alt_domain_answers_services_nodes_and_srv_in_the_asked_domain() {
    let agent = FakeUpstream::start().await;
    let upstream = FakeUpstream::start().await;
    let h = start(standard_sim(), &agent, &upstream).await;

    let (answer, _) = udp(
        h.dns,
        &Ask::new("Web.Service.Example.Internal.", RecordType::A),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        owned_addresses(&answer.answers),
        vec![
            (name_of("web.service.example.internal."), ip("10.0.0.1")),
            (name_of("web.service.example.internal."), ip("10.0.0.2")),
        ]
    );
    assert!(
        answer
            .answers
            .iter()
            .all(|record| record.name.to_string() == "Web.Service.Example.Internal."),
        "owner as asked"
    );

    let (answer, _) = udp(
        h.dns,
        &Ask::new("node-4.node.dc1.example.internal.", RecordType::AAAA),
    )
    .await;
    assert_eq!(
        owned_addresses(&answer.answers),
        vec![(
            name_of("node-4.node.dc1.example.internal."),
            ip("2001:db8::4")
        )]
    );

    let (answer, _) = udp(
        h.dns,
        &Ask::new("_web._tcp.service.example.internal.", RecordType::SRV),
    )
    .await;
    let mut targets: Vec<String> = answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.target.to_string()),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            "node-1.node.dc1.example.internal.",
            "node-2.node.dc1.example.internal."
        ]
    );
    assert_eq!(
        owned_addresses(&answer.additionals),
        vec![
            (name_of("node-1.node.dc1.example.internal."), ip("10.0.0.1")),
            (name_of("node-2.node.dc1.example.internal."), ip("10.0.0.2")),
        ]
    );
    let (answer, _) = udp(
        h.dns,
        &Ask::new("api.service.example.internal.", RecordType::SRV),
    )
    .await;
    assert!(
        answer.answers.iter().all(|record| match &record.data {
            RData::SRV(srv) => srv
                .target
                .to_string()
                .ends_with(".addr.dc1.example.internal."),
            _ => false,
        }),
        "{answer:?}"
    );

    // Negative answers carry the alt domain's SOA.
    let (answer, _) = udp(
        h.dns,
        &Ask::new("nosuch.service.example.internal.", RecordType::A),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(answer.authorities[0].name, name_of("example.internal."));
    // The main domain is unchanged.
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.answers.len(), 2);
    assert_eq!(upstream.queries() + agent.queries(), 0);
    h.stop().await;
}

// === §2: hostname addresses ===

/// Every instance at a hostname: one CNAME (a random instance's), then the
/// target's records from the upstream resolver; UDP and TCP.
#[tokio::test]
async fn hostname_service_is_a_cname_and_the_upstream_records() {
    let agent = FakeUpstream::start().await;
    let upstream = FakeUpstream::start().await;
    upstream_records(&upstream);
    let h = start(hostname_sim(), &agent, &upstream).await;
    let expected = [
        ("primary.rds.example.com.", "192.0.2.11"),
        ("replica.rds.example.com.", "192.0.2.12"),
    ];
    let mut seen = std::collections::HashSet::new();
    for round in 0..16 {
        let ask = Ask::new("rds.service.consul.", RecordType::A);
        let answer = if round % 2 == 0 {
            udp(h.dns, &ask).await.0
        } else {
            tcp(h.dns, &ask).await
        };
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        let chain = cnames(&answer);
        assert_eq!(chain.len(), 1, "one CNAME chain: {answer:?}");
        assert_eq!(chain[0].0, name_of("rds.service.consul."));
        let (target, address) = expected
            .iter()
            .find(|(host, _)| name_of(host) == chain[0].1)
            .unwrap_or_else(|| panic!("a hostname of rds: {answer:?}"));
        assert_eq!(
            answer.answers[0].record_type(),
            RecordType::CNAME,
            "CNAME first"
        );
        assert_eq!(answer.answers[0].ttl, 5, "the service TTL");
        assert_eq!(
            owned_addresses(&answer.answers),
            vec![(name_of(target), ip(address))],
            "the upstream's records as they came"
        );
        assert!(
            (200..=300).contains(&answer.answers[1].ttl),
            "the upstream's TTL (counting down in the forwarder's cache): {answer:?}"
        );
        seen.insert(*target);
    }
    assert_eq!(seen.len(), 2, "a random instance each time");
    h.stop().await;
}

/// IP instances win: the hostname instances are dropped, nothing is resolved.
#[tokio::test]
async fn mixed_ip_and_hostname_instances_answer_only_the_ips() {
    let agent = FakeUpstream::start().await;
    let upstream = FakeUpstream::start().await;
    upstream_records(&upstream);
    let h = start(hostname_sim(), &agent, &upstream).await;
    for _ in 0..4 {
        let (answer, _) = udp(h.dns, &Ask::new("mixed.service.consul.", RecordType::A)).await;
        assert_eq!(
            answer
                .answers
                .iter()
                .map(|r| r.data.to_string())
                .collect::<Vec<_>>(),
            vec!["10.3.0.1"],
            "{answer:?}"
        );
    }
    assert_eq!(upstream.queries(), 0, "the hostname was not resolved");
    // SRV keeps both: the IP instance's .addr target with glue, the hostname as target.
    let (answer, _) = udp(h.dns, &Ask::new("mixed.service.consul.", RecordType::SRV)).await;
    let mut targets: Vec<String> = answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.target.to_string()),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec!["0a030001.addr.dc1.consul.", "mixed.example.com."]
    );
    assert_eq!(
        owned_addresses(&answer.additionals),
        vec![
            // Names sort by their rightmost label first (RFC 4034 canonical order).
            (name_of("mixed.example.com."), ip("192.0.2.31")),
            (name_of("0a030001.addr.dc1.consul."), ip("10.3.0.1")),
        ]
    );
    h.stop().await;
}

/// SRV of hostname instances: the hostname is the target, its records go to
/// Additional; without a resolver the SRV is still answered, without them.
#[tokio::test]
async fn srv_of_hostname_instances_targets_the_hostname() {
    let agent = FakeUpstream::start().await;
    let upstream = FakeUpstream::start().await;
    upstream_records(&upstream);
    let h = start(hostname_sim(), &agent, &upstream).await;
    for ask in [
        Ask::new("rds.service.consul.", RecordType::SRV),
        Ask::new("_rds._tcp.service.consul.", RecordType::SRV),
    ] {
        let answer = tcp(h.dns, &ask).await;
        let mut srvs: Vec<(u16, String)> = answer
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some((srv.port, srv.target.to_string())),
                _ => None,
            })
            .collect();
        srvs.sort();
        assert_eq!(
            srvs,
            vec![
                (5432, "primary.rds.example.com.".to_owned()),
                (5432, "replica.rds.example.com.".to_owned())
            ],
            "{ask:?}"
        );
        assert_eq!(
            owned_addresses(&answer.additionals),
            vec![
                (name_of("primary.rds.example.com."), ip("192.0.2.11")),
                (name_of("replica.rds.example.com."), ip("192.0.2.12")),
            ],
            "{ask:?}"
        );
    }
    h.stop().await;

    let h = Harness::start_with(hostname_sim(), |_| {}).await;
    let (answer, _) = udp(h.dns, &Ask::new("rds.service.consul.", RecordType::SRV)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 2);
    assert!(answer.additionals.is_empty(), "{answer:?}");
    h.stop().await;
}

/// A node at a hostname: CNAME and the target's records of the asked family,
/// for the node and for a service on the node's address.
#[tokio::test]
async fn node_with_hostname_address_is_a_cname() {
    let agent = FakeUpstream::start().await;
    let upstream = FakeUpstream::start().await;
    upstream_records(&upstream);
    let h = start(hostname_sim(), &agent, &upstream).await;
    let edge = name_of("edge-1.example.com.");
    for (asked, qtype, address) in [
        ("edge-1.node.consul.", RecordType::A, "192.0.2.21"),
        ("edge-1.node.dc1.consul.", RecordType::AAAA, "2001:db8::21"),
        ("edge.service.consul.", RecordType::A, "192.0.2.21"),
        ("edge.service.consul.", RecordType::AAAA, "2001:db8::21"),
    ] {
        let (answer, _) = udp(h.dns, &Ask::new(asked, qtype)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{asked}"
        );
        assert_eq!(
            cnames(&answer),
            vec![(name_of(asked), edge.clone())],
            "{asked}"
        );
        assert_eq!(
            owned_addresses(&answer.answers),
            vec![(edge.clone(), ip(address))],
            "{asked} {qtype}"
        );
    }
    h.stop().await;
}

/// A hostname inside the Consul domain is answered here (nested up to three
/// levels; a loop ends there), never asked upstream.
#[tokio::test]
async fn hostname_inside_the_consul_domain_is_followed() {
    let agent = FakeUpstream::start().await;
    let upstream = FakeUpstream::start().await;
    let h = start(hostname_sim(), &agent, &upstream).await;
    let (answer, _) = udp(h.dns, &Ask::new("alias.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        cnames(&answer),
        vec![(
            name_of("alias.service.consul."),
            name_of("web.service.consul.")
        )]
    );
    assert_eq!(
        owned_addresses(&answer.answers),
        vec![
            (name_of("web.service.consul."), ip("10.0.0.1")),
            (name_of("web.service.consul."), ip("10.0.0.2")),
        ]
    );
    // In alt_domain, the chain stays in the asked domain.
    let (answer, _) = udp(
        h.dns,
        &Ask::new("alias.service.example.internal.", RecordType::A),
    )
    .await;
    assert_eq!(
        cnames(&answer),
        vec![(
            name_of("alias.service.example.internal."),
            name_of("web.service.example.internal.")
        )]
    );
    assert_eq!(owned_addresses(&answer.answers).len(), 2);

    let (answer, _) = udp(h.dns, &Ask::new("loop-a.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let chain = cnames(&answer);
    assert!(
        !chain.is_empty() && chain.len() <= 4 && chain.len() == answer.answers.len(),
        "a bounded chain of CNAMEs: {answer:?}"
    );
    let (answer, _) = udp(h.dns, &Ask::new("itself.service.consul.", RecordType::A)).await;
    assert_eq!(
        owned_addresses(&answer.answers),
        vec![(name_of("itself.service.consul."), ip("10.0.0.5"))],
        "no CNAME to itself: {answer:?}"
    );
    assert_eq!(upstream.queries() + agent.queries(), 0);
    h.stop().await;
}

/// The chain follows the catalog and the upstream's TTL at once: neither the
/// fast path nor anything else keeps an old chain.
#[tokio::test]
async fn a_changed_hostname_or_upstream_record_shows_in_the_next_answers() {
    let agent = FakeUpstream::start().await;
    let upstream = FakeUpstream::start().await;
    upstream.set("single.rds.example.com", &["192.0.2.41"], 1);
    upstream.set("moved.rds.example.com", &["192.0.2.51"], 300);
    let sim = standard_sim();
    let single = |address: &str| {
        Registration::new("single")
            .id("single-1")
            .node("node-5", "10.0.0.5")
            .address(address)
            .port(5432)
    };
    sim.register(single("single.rds.example.com"));
    let h = start_with(sim, &agent, &upstream, |raw| {
        raw.catalog.refresh_interval = FAST_REFRESH;
    })
    .await;
    let ask = Ask::new("single.service.consul.", RecordType::A);
    let addresses = |answer: Message| {
        owned_addresses(&answer.answers)
            .into_iter()
            .map(|(_, address)| address)
            .collect::<Vec<_>>()
    };
    for _ in 0..4 {
        assert_eq!(addresses(udp(h.dns, &ask).await.0), vec![ip("192.0.2.41")]);
    }
    // The upstream record changes: seen once its 1 s TTL is over.
    upstream.set("single.rds.example.com", &["192.0.2.42"], 1);
    let changed = eventually(Duration::from_secs(5), || async {
        addresses(udp(h.dns, &ask).await.0) == vec![ip("192.0.2.42")]
    })
    .await;
    assert!(changed, "the upstream's new record");
    // The registration moves to another hostname: seen after a refresh.
    h.sim.register(single("moved.rds.example.com"));
    let moved = eventually(Duration::from_secs(5), || async {
        let answer = udp(h.dns, &ask).await.0;
        cnames(&answer).first().map(|(_, target)| target.clone())
            == Some(name_of("moved.rds.example.com."))
            && addresses(answer) == vec![ip("192.0.2.51")]
    })
    .await;
    assert!(moved, "the new hostname and its record");
    h.stop().await;
}
