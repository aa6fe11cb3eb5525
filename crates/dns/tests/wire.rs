//! The DNS front over real UDP and TCP sockets on 127.0.0.1, with an in-memory
//! catalog and upstream.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use dnsfront_catalog::{Freshness, Lookup};
use dnsfront_dns::{Config, ServerOptions};
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use support::*;
use test_support::{
    Ask, DebuggingRecorder, QUERY_TIMEOUT, Recorded, sorted_addresses, tcp, udp, udp_raw_wait,
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip literal")
}

fn soa_of(message: &Message) -> &hickory_proto::rr::rdata::SOA {
    assert_eq!(
        message.authorities.len(),
        1,
        "one SOA in Authority: {message:?}"
    );
    match &message.authorities[0].data {
        RData::SOA(soa) => soa,
        other => panic!("expected SOA, got {other:?}"),
    }
}

fn srvs(message: &Message) -> Vec<SRV> {
    message
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(srv) => srv.clone(),
            other => panic!("expected SRV, got {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn service_a_dedups_addresses_and_sets_flags() {
    let server = start_default().await;
    server.catalog.set_instances(
        "web",
        vec![
            instance("n1", "10.0.0.1", None, 80, &[]),
            instance("n2", "10.0.0.2", None, 80, &[]),
            instance("n3", "10.0.0.2", None, 81, &[]),
            instance("n4", "10.0.0.4", Some("fd00::4"), 80, &[]),
        ],
        Freshness::Fresh,
    );
    let (reply, _) = udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(
        reply.metadata.authoritative
            && reply.metadata.recursion_available
            && reply.metadata.recursion_desired
    );
    assert!(!reply.metadata.truncation);
    assert_eq!(
        sorted_addresses(&reply),
        vec![ip("10.0.0.1"), ip("10.0.0.2")],
        "same IP once; v6 service address not in A"
    );
    assert!(reply.answers.iter().all(|r| r.ttl == 5));
    assert!(reply.authorities.is_empty());

    let (reply, _) = udp(
        server.addr,
        &Ask::new("web.service.consul.", RecordType::AAAA),
    )
    .await;
    assert_eq!(sorted_addresses(&reply), vec![ip("fd00::4")]);

    let (reply, _) = udp(
        server.addr,
        &Ask::new("web.service.consul.", RecordType::ANY),
    )
    .await;
    assert_eq!(
        sorted_addresses(&reply),
        vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::4")]
    );
    assert_eq!(server.catalog.asked()[0], "service:web@-");
}

#[tokio::test]
async fn tags_datacenters_and_rfc2782_forms() {
    let server = start_default().await;
    server.catalog.set_instances(
        "web",
        vec![
            instance("n1", "10.0.0.1", None, 80, &["V1", "udp"]),
            instance("n2", "10.0.0.2", None, 80, &["v2"]),
        ],
        Freshness::Fresh,
    );
    let (reply, _) = udp(
        server.addr,
        &Ask::new("v1.web.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(
        sorted_addresses(&reply),
        vec![ip("10.0.0.1")],
        "tags compare case-insensitively"
    );

    let (reply, _) = udp(
        server.addr,
        &Ask::new("_web._tcp.service.consul.", RecordType::SRV),
    )
    .await;
    assert_eq!(reply.answers.len(), 2, "_tcp is no tag filter");
    let (reply, _) = udp(
        server.addr,
        &Ask::new("_web._udp.service.consul.", RecordType::SRV),
    )
    .await;
    assert_eq!(reply.answers.len(), 1, "_udp is a tag");
    let (reply, _) = udp(server.addr, &Ask::new("_web._v2.consul.", RecordType::SRV)).await;
    assert_eq!(srvs(&reply)[0].port, 80);
    assert_eq!(reply.answers.len(), 1, "short RFC 2782 form for SRV");

    let (reply, _) = udp(
        server.addr,
        &Ask::new("v3.web.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NXDomain,
        "no instance left after the tag filter"
    );
    soa_of(&reply);

    server.catalog.set_service(
        "db",
        Some("dc2"),
        Lookup::Found(
            vec![instance("n9", "10.9.0.1", None, 5432, &[])].into(),
            Freshness::Fresh,
        ),
    );
    for name in ["db.service.dc2.consul.", "db.service.dc2.dc.consul."] {
        let (reply, _) = udp(server.addr, &Ask::new(name, RecordType::A)).await;
        assert_eq!(sorted_addresses(&reply), vec![ip("10.9.0.1")], "{name}");
    }
}

#[tokio::test]
async fn srv_targets_and_additional_records() {
    let server = start_default().await;
    server.catalog.set_instances(
        "api",
        vec![
            instance("n1", "10.0.0.1", None, 8080, &[]),
            instance("n1", "10.0.0.1", None, 8080, &[]), // duplicate (node, address, port)
            instance("n1", "10.0.0.1", None, 8081, &[]), // same node, second port
            instance("n2", "10.0.0.2", Some("10.0.0.5"), 9000, &[]),
            instance("n3", "10.0.0.3", Some("2001:db8::1"), 9000, &[]),
        ],
        Freshness::Fresh,
    );
    let (reply, _) = udp(
        server.addr,
        &Ask::new("api.service.consul.", RecordType::SRV).edns(1232),
    )
    .await;
    let mut got: Vec<(String, u16, u16, u16)> = srvs(&reply)
        .iter()
        .map(|s| (s.target.to_ascii(), s.priority, s.weight, s.port))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("0a000005.addr.dc1.consul.".to_owned(), 1, 1, 9000),
            (
                "20010db8000000000000000000000001.addr.dc1.consul.".to_owned(),
                1,
                1,
                9000
            ),
            ("n1.node.dc1.consul.".to_owned(), 1, 1, 8080),
            ("n1.node.dc1.consul.".to_owned(), 1, 1, 8081),
        ]
    );
    let mut extra: Vec<(String, IpAddr)> = reply
        .additionals
        .iter()
        .map(|r| (r.name.to_ascii(), r.data.ip_addr().expect("A/AAAA")))
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        vec![
            ("0a000005.addr.dc1.consul.".to_owned(), ip("10.0.0.5")),
            (
                "20010db8000000000000000000000001.addr.dc1.consul.".to_owned(),
                ip("2001:db8::1")
            ),
            ("n1.node.dc1.consul.".to_owned(), ip("10.0.0.1")),
        ],
        "one glue record per target"
    );
    assert!(
        reply
            .answers
            .iter()
            .chain(&reply.additionals)
            .all(|r| r.ttl == 5)
    );
}

#[tokio::test]
async fn negative_answers_carry_the_soa() {
    let config = Config {
        negative_ttl: Duration::from_secs(7),
        ..Config::default()
    };
    let server = start(config, ServerOptions::default(), true).await;
    server.catalog.set_instances(
        "v4only",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );

    let (reply, _) = udp(
        server.addr,
        &Ask::new("nope.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.metadata.authoritative);
    let soa = soa_of(&reply);
    assert_eq!(reply.authorities[0].name.to_ascii(), "consul.");
    assert_eq!(reply.authorities[0].ttl, 7);
    assert_eq!(soa.mname.to_ascii(), "ns.consul.");
    assert_eq!(soa.rname.to_ascii(), "hostmaster.consul.");
    assert_eq!(
        (soa.refresh, soa.retry, soa.expire, soa.minimum),
        (3600, 600, 86400, 7)
    );
    assert!(soa.serial > 1_600_000_000, "serial is unix time");

    for qtype in [RecordType::AAAA, RecordType::TXT, RecordType::MX] {
        let (reply, _) = udp(server.addr, &Ask::new("v4only.service.consul.", qtype)).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{qtype}"
        );
        assert!(reply.answers.is_empty(), "{qtype}: NODATA");
        soa_of(&reply);
    }
}

#[tokio::test]
async fn unavailable_catalog_is_servfail_never_nxdomain() {
    let server = start_default().await;
    server.catalog.set_service("web", None, Lookup::Unavailable);
    server.catalog.set_node("n1", None, Lookup::Unavailable);
    for (name, qtype) in [
        ("web.service.consul.", RecordType::A),
        ("n1.node.consul.", RecordType::A),
    ] {
        let (reply, _) = udp(server.addr, &Ask::new(name, qtype)).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{name}"
        );
        assert!(reply.answers.is_empty());
    }
    assert!(
        server.upstream.asked().is_empty(),
        "Consul names are never forwarded"
    );
}

#[tokio::test]
async fn stale_answers_carry_ede_3_and_capped_ttls() {
    let config = Config {
        service_ttl: Duration::from_secs(60),
        stale_ttl: Duration::from_secs(2),
        negative_ttl: Duration::from_secs(30),
        ..Config::default()
    };
    let server = start(config, ServerOptions::default(), true).await;
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Stale,
    );
    server
        .catalog
        .set_service("gone", None, Lookup::NotFound(Freshness::Stale));
    server.catalog.set_instances(
        "fresh",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );

    let (reply, _) = udp(
        server.addr,
        &Ask::new("web.service.consul.", RecordType::A).edns(1232),
    )
    .await;
    assert_eq!(sorted_addresses(&reply), vec![ip("10.0.0.1")]);
    assert_eq!(reply.answers[0].ttl, 2);
    assert!(has_stale_ede(&reply), "{:?}", reply.edns);

    let (reply, _) = udp(
        server.addr,
        &Ask::new("gone.service.consul.", RecordType::A).edns(1232),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(reply.authorities[0].ttl, 2);
    assert!(has_stale_ede(&reply));

    let (reply, _) = udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert!(reply.edns.is_none(), "no OPT for a client without EDNS");

    let (reply, _) = udp(
        server.addr,
        &Ask::new("fresh.service.consul.", RecordType::A).edns(1232),
    )
    .await;
    assert!(!has_stale_ede(&reply));
    assert_eq!(reply.answers[0].ttl, 60);
    assert!(
        reply
            .edns
            .as_ref()
            .expect("OPT")
            .options()
            .get(ede_code())
            .is_none()
    );
}

#[tokio::test]
async fn node_and_addr_lookups() {
    let config = Config {
        node_ttl: Duration::from_secs(9),
        ..Config::default()
    };
    let server = start(config, ServerOptions::default(), true).await;
    server.catalog.set_node(
        "n1",
        None,
        Lookup::Found(node("n1", "10.1.0.1"), Freshness::Fresh),
    );
    server.catalog.set_node(
        "foo.bar",
        Some("dc1"),
        Lookup::Found(node("foo.bar", "fd00::1"), Freshness::Fresh),
    );

    let (reply, _) = udp(server.addr, &Ask::new("n1.node.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&reply), vec![ip("10.1.0.1")]);
    assert_eq!(reply.answers[0].ttl, 9);
    let (reply, _) = udp(
        server.addr,
        &Ask::new("foo.bar.node.dc1.consul.", RecordType::ANY),
    )
    .await;
    assert_eq!(
        sorted_addresses(&reply),
        vec![ip("fd00::1")],
        "dotted node names"
    );
    for qtype in [RecordType::AAAA, RecordType::SRV, RecordType::TXT] {
        let (reply, _) = udp(server.addr, &Ask::new("n1.node.consul.", qtype)).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{qtype}"
        );
        assert!(
            reply.answers.is_empty() && reply.authorities.is_empty(),
            "{qtype}: empty, no SOA"
        );
    }
    let (reply, _) = udp(
        server.addr,
        &Ask::new("unknown.node.consul.", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    soa_of(&reply);

    let (reply, _) = udp(
        server.addr,
        &Ask::new("7f000002.addr.dc1.consul.", RecordType::A),
    )
    .await;
    assert_eq!(sorted_addresses(&reply), vec![ip("127.0.0.2")]);
    assert_eq!(reply.answers[0].ttl, 9);
    let (reply, _) = udp(
        server.addr,
        &Ask::new(
            "2607002040050808000000000000200e.addr.consul.",
            RecordType::AAAA,
        ),
    )
    .await;
    assert_eq!(sorted_addresses(&reply), vec![ip("2607:20:4005:808::200e")]);
    let (reply, _) = udp(
        server.addr,
        &Ask::new("7f000002.addr.consul.", RecordType::AAAA),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    let (reply, _) = udp(
        server.addr,
        &Ask::new("7f00zz02.addr.consul.", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn apex_soa_invalid_and_unsupported_names() {
    let server = start_default().await;
    let (reply, _) = udp(server.addr, &Ask::new("consul.", RecordType::SOA)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(matches!(reply.answers[0].data, RData::SOA(_)));
    let (reply, _) = udp(
        server.addr,
        &Ask::new("whatever.service.consul.", RecordType::SOA),
    )
    .await;
    assert!(
        matches!(reply.answers[0].data, RData::SOA(_)),
        "SOA at any name in the zone"
    );
    assert_eq!(reply.answers[0].name.to_ascii(), "consul.");

    let (reply, _) = udp(server.addr, &Ask::new("consul.", RecordType::NS)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    soa_of(&reply);
    for name in [
        "consul.",
        "service.consul.",
        "foo.bar.consul.",
        "web.service.dc1.extra.more.consul.",
    ] {
        let (reply, _) = udp(server.addr, &Ask::new(name, RecordType::A)).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        soa_of(&reply);
    }
    let (reply, _) = udp(server.addr, &Ask::new("web.query.consul.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        server
            .catalog
            .asked()
            .iter()
            .all(|asked| asked == "service:consul@-"),
        "invalid names never reach the catalog (SOA and NS ask for the servers only)"
    );
}

#[tokio::test]
async fn names_are_case_insensitive_and_echoed_as_asked() {
    let server = start_default().await;
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );
    let asked = "WeB.SeRvIcE.CoNsUl.";
    let (reply, _) = udp(server.addr, &Ask::new(asked, RecordType::A)).await;
    assert_eq!(sorted_addresses(&reply), vec![ip("10.0.0.1")]);
    assert_eq!(
        reply.queries[0].name.to_ascii(),
        asked,
        "question echoed as asked"
    );
    assert_eq!(
        reply.answers[0].name.to_ascii(),
        asked,
        "owner name as asked"
    );
    assert_eq!(server.catalog.asked(), vec!["service:web@-".to_owned()]);
}

#[tokio::test]
async fn answers_are_shuffled_and_capped() {
    let config = Config {
        max_answer_records: Some(3),
        ..Config::default()
    };
    let server = start(config, ServerOptions::default(), true).await;
    let instances = (1..=10)
        .map(|i| instance(&format!("n{i}"), &format!("10.0.0.{i}"), None, 80, &[]))
        .collect();
    server
        .catalog
        .set_instances("web", instances, Freshness::Fresh);

    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let reply = tcp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
        assert_eq!(
            reply.answers.len(),
            3,
            "max_answer_records applies to TCP too"
        );
        let order: Vec<IpAddr> = reply
            .answers
            .iter()
            .filter_map(|r| r.data.ip_addr())
            .collect();
        seen.insert(order);
    }
    assert!(seen.len() > 1, "order changes between responses");

    let reply = tcp(
        server.addr,
        &Ask::new("web.service.consul.", RecordType::SRV),
    )
    .await;
    assert_eq!(reply.answers.len(), 10, "the cap does not apply to SRV");
}

#[tokio::test]
async fn large_answers_truncate_on_udp_and_are_complete_over_tcp() {
    let server = start_default().await;
    let instances = (0..200u16)
        .map(|i| {
            instance(
                &format!("n{i}"),
                &format!("10.0.{}.{}", i / 250, i % 250),
                None,
                80,
                &[],
            )
        })
        .collect();
    server
        .catalog
        .set_instances("big", instances, Freshness::Stale);

    let (reply, size) = udp(server.addr, &Ask::new("big.service.consul.", RecordType::A)).await;
    assert!(size <= 512, "{size} bytes without EDNS");
    assert!(reply.metadata.truncation);
    assert!(!reply.answers.is_empty() && reply.answers.len() < 200);

    let (reply, size) = udp(
        server.addr,
        &Ask::new("big.service.consul.", RecordType::A).edns(4096),
    )
    .await;
    assert!(
        size <= 1232,
        "{size} bytes for EDNS 4096 capped at max_udp_payload"
    );
    assert!(size > 1100, "{size}: the space is used");
    assert!(reply.metadata.truncation);
    let edns = reply.edns.as_ref().expect("our OPT survives truncation");
    assert_eq!(edns.max_payload(), 1232);
    assert!(has_stale_ede(&reply), "EDE survives truncation");

    let (reply, size) = udp(
        server.addr,
        &Ask::new("big.service.consul.", RecordType::SRV).edns(900),
    )
    .await;
    assert!(size <= 900);
    assert!(reply.metadata.truncation);
    assert!(!reply.answers.is_empty());
    assert_eq!(
        reply.additionals.len(),
        reply.answers.len(),
        "each SRV is kept with its target's address (Consul's trimming)"
    );

    let reply = tcp(
        server.addr,
        &Ask::new("big.service.consul.", RecordType::A).edns(1232),
    )
    .await;
    assert_eq!(reply.answers.len(), 200);
    assert!(!reply.metadata.truncation);
    let reply = tcp(
        server.addr,
        &Ask::new("big.service.consul.", RecordType::SRV),
    )
    .await;
    assert_eq!((reply.answers.len(), reply.additionals.len()), (200, 200));
    assert!(!reply.metadata.truncation);
}

#[tokio::test]
async fn forwards_other_names_only() {
    let server = start_default().await;
    let asked = "WwW.Example.ORG.";
    let record = Record::from_rdata(
        Name::from_ascii("www.example.org.").expect("name"),
        300,
        RData::A(A::new(192, 0, 2, 1)),
    );
    let mut upstream_answer = answer(ResponseCode::NoError, vec![record]);
    upstream_answer.authentic_data = true;
    server.upstream.set_answer(Some(upstream_answer));

    let mut message = query_message(&Ask::new(asked, RecordType::A).edns(1232));
    message.edns.as_mut().expect("edns").set_dnssec_ok(true);
    let (reply, _) = udp_message(server.addr, &message).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(
        !reply.metadata.authoritative
            && reply.metadata.recursion_available
            && reply.metadata.authentic_data
    );
    assert_eq!(sorted_addresses(&reply), vec![ip("192.0.2.1")]);
    assert_eq!(
        reply.answers[0].name.to_ascii(),
        asked,
        "owner case follows the question"
    );
    assert!(reply.edns.as_ref().expect("OPT").flags().dnssec_ok);
    let forwarded = server.upstream.asked();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].0.name.to_ascii(), asked);
    assert!(forwarded[0].1, "DO passed on");

    server
        .upstream
        .set_answer(Some(answer(ResponseCode::NXDomain, Vec::new())));
    let (reply, _) = udp(server.addr, &Ask::new("nope.example.org.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

    server.upstream.set_answer(None);
    let (reply, _) = udp(server.addr, &Ask::new("down.example.org.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.metadata.recursion_available);

    let (reply, _) = udp(
        server.addr,
        &Ask::new("missing.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        server.upstream.asked().len(),
        3,
        "Consul names never reach the upstream"
    );
}

#[tokio::test]
async fn no_forwarder_means_servfail() {
    let server = start(Config::default(), ServerOptions::default(), false).await;
    let (reply, _) = udp(server.addr, &Ask::new("example.org.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.metadata.recursion_available);
}

#[tokio::test]
async fn malformed_datagrams_do_not_stop_the_server() {
    let server = start_default().await;
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );
    let short = Duration::from_millis(300);

    let random: Vec<u8> = (0..200).map(|_| rand::random::<u8>()).collect();
    let _ = udp_raw_wait(server.addr, &random, short).await;
    assert_eq!(
        udp_raw_wait(server.addr, &[0x12, 0x34, 0x01], short).await,
        None,
        "truncated header is dropped"
    );

    // One question whose name is a compression pointer to itself.
    let pointer_loop = [
        0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1,
    ];
    let reply = udp_raw_wait(server.addr, &pointer_loop, short)
        .await
        .expect("FORMERR reply");
    let reply = Message::from_vec(&reply).expect("parse");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    let mut two = query_message(&Ask::new("web.service.consul.", RecordType::A));
    two.add_query(hickory_proto::op::Query::query(
        Name::from_ascii("x.consul.").expect("name"),
        RecordType::A,
    ));
    let (reply, _) = udp_message(server.addr, &two).await;
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::FormErr,
        "QDCOUNT=2"
    );

    let mut status = query_message(&Ask::new("web.service.consul.", RecordType::A));
    status.metadata.op_code = OpCode::Status;
    let (reply, _) = udp_message(server.addr, &status).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);

    let (reply, _) = udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(
        sorted_addresses(&reply),
        vec![ip("10.0.0.1")],
        "still serving"
    );
}

#[tokio::test]
async fn clients_outside_allowed_networks_are_refused() {
    let options = ServerOptions {
        allowed_networks: vec!["10.0.0.0/8".parse().expect("net")],
        ..ServerOptions::default()
    };
    let server = start(Config::default(), options, true).await;
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );
    let (reply, _) = udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(reply.answers.is_empty());
    // Over TCP the connection is closed at accept, before any query is read.
    let query = Ask::new("web.service.consul.", RecordType::A).to_bytes();
    assert!(test_support::tcp_raw(server.addr, &query).await.is_err());
    assert!(server.catalog.asked().is_empty());
}

#[tokio::test]
async fn stalled_tcp_client_does_not_block_others_and_is_closed() {
    let options = ServerOptions {
        tcp_idle_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = start(Config::default(), options, true).await;
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );

    let mut stalled = TcpStream::connect(server.addr).await.expect("connect");
    let reply = tcp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&reply), vec![ip("10.0.0.1")]);
    let (reply, _) = udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&reply), vec![ip("10.0.0.1")]);

    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(QUERY_TIMEOUT, stalled.read(&mut buffer))
        .await
        .expect("closed before the test timeout");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "server closed the idle connection: {read:?}"
    );
}

#[tokio::test]
async fn shutdown_stops_answering() {
    let server = start_default().await;
    let addr = server.addr;
    let (reply, _) = udp(addr, &Ask::new("x.service.consul.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    tokio::time::timeout(QUERY_TIMEOUT, server.handle.shutdown())
        .await
        .expect("bounded")
        .expect("clean stop");
    let bytes = Ask::new("x.service.consul.", RecordType::A).to_bytes();
    assert_eq!(
        udp_raw_wait(addr, &bytes, Duration::from_millis(300)).await,
        None
    );
}

#[tokio::test]
async fn edns_versions_above_zero_get_badvers() {
    let server = start_default().await;
    let mut message = query_message(&Ask::new("web.service.consul.", RecordType::A).edns(1232));
    message.edns.as_mut().expect("edns").set_version(1);
    let (reply, _) = udp_message(server.addr, &message).await;
    // BADVERS and BADSIG share code 16; hickory decodes 16 as BADSIG.
    assert_eq!(u16::from(reply.metadata.response_code), 16);
    assert!(
        reply.edns.is_some(),
        "BADVERS needs our OPT to carry the high bits"
    );
    assert!(server.catalog.asked().is_empty());
}

#[tokio::test]
async fn queries_are_counted_by_zone_rcode_and_source() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = start_default().await;
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Stale,
    );
    server
        .upstream
        .set_answer(Some(answer(ResponseCode::NoError, Vec::new())));

    udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    udp(
        server.addr,
        &Ask::new("nope.service.consul.", RecordType::MX),
    )
    .await;
    udp(server.addr, &Ask::new("example.org.", RecordType::AAAA)).await;
    let big = (0..100u8)
        .map(|i| instance(&format!("n{i}"), &format!("10.1.0.{i}"), None, 80, &[]))
        .collect();
    server.catalog.set_instances("big", big, Freshness::Fresh);
    udp(server.addr, &Ask::new("big.service.consul.", RecordType::A)).await;

    let recorded = Recorded::take(&snapshotter);
    let queries = |qtype, rcode, source, zone| {
        recorded.counter(
            "dns.responses_total",
            &[
                ("proto", "udp"),
                ("type", qtype),
                ("rcode", rcode),
                ("source", source),
                ("zone", zone),
            ],
        )
    };
    assert_eq!(queries("A", "NOERROR", "stale", "consul"), 2);
    assert_eq!(queries("other", "NXDOMAIN", "fresh", "consul"), 1);
    assert_eq!(queries("AAAA", "NOERROR", "upstream", "forward"), 1);
    assert_eq!(
        recorded.counter("dns.truncated_responses_total", &[("zone", "consul")]),
        1
    );
}
