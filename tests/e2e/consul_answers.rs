//! Answers for the Consul domain match Consul's DNS interface (reference §a).

use std::collections::HashSet;
use std::net::IpAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use test_support::{Ask, addresses, sorted_addresses, tcp, udp};

use crate::harness::Harness;

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = list.iter().map(|ip| ip.parse().expect("ip")).collect();
    ips.sort();
    ips
}

fn soa_in_authority(message: &Message) -> bool {
    message
        .authorities
        .iter()
        .any(|record| record.record_type() == RecordType::SOA)
}

#[tokio::test]
async fn service_a_returns_healthy_instances_over_udp_and_tcp() {
    let h = Harness::start().await;
    let ask = Ask::new("web.service.consul.", RecordType::A);
    let (answer, _) = udp(h.dns, &ask).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        answer.metadata.authoritative,
        "Consul-domain answers are authoritative"
    );
    // web-3 is critical: dropped. web-2 is warning: kept (Consul's default rule).
    assert_eq!(sorted_addresses(&answer), ips(&["10.0.0.1", "10.0.0.2"]));
    assert!(
        answer.answers.iter().all(|r| r.ttl == 5),
        "default service TTL is 5s"
    );
    let over_tcp = tcp(h.dns, &ask).await;
    assert_eq!(sorted_addresses(&over_tcp), ips(&["10.0.0.1", "10.0.0.2"]));
    h.stop().await;
}

#[tokio::test]
async fn only_passing_drops_warning_instances() {
    let h = Harness::start_with(crate::harness::standard_sim(), |raw| {
        raw.catalog.only_passing = true;
    })
    .await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), ips(&["10.0.0.1"]));
    h.stop().await;
}

#[tokio::test]
async fn service_address_wins_over_node_address() {
    let h = Harness::start().await;
    let (answer, _) = udp(h.dns, &Ask::new("api.service.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), ips(&["10.1.0.1", "10.1.0.2"]));
    h.stop().await;
}

#[tokio::test]
async fn tag_datacenter_and_rfc2782_forms() {
    let h = Harness::start().await;
    let cases = [
        (
            "primary.web.service.consul.",
            RecordType::A,
            vec!["10.0.0.1"],
        ),
        (
            "PRIMARY.Web.Service.Consul.",
            RecordType::A,
            vec!["10.0.0.1"],
        ),
        (
            "v1.blue.web.service.consul.",
            RecordType::A,
            vec!["10.0.0.1"],
        ),
        (
            "canary.web.service.consul.",
            RecordType::A,
            vec!["10.0.0.2"],
        ),
        (
            "web.service.dc1.consul.",
            RecordType::A,
            vec!["10.0.0.1", "10.0.0.2"],
        ),
        (
            "_web._tcp.service.consul.",
            RecordType::SRV,
            vec!["10.0.0.1", "10.0.0.2"],
        ),
        (
            "_web._primary.service.consul.",
            RecordType::SRV,
            vec!["10.0.0.1"],
        ),
        ("_web._canary.consul.", RecordType::SRV, vec!["10.0.0.2"]),
    ];
    for (name, rtype, expected) in cases {
        let (answer, _) = udp(h.dns, &Ask::new(name, rtype)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        let mut got: Vec<IpAddr> = match rtype {
            RecordType::SRV => answer
                .additionals
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect(),
            _ => addresses(&answer),
        };
        got.sort();
        got.dedup();
        assert_eq!(got, ips(&expected), "{name} {rtype}");
        // The question is echoed exactly as asked (case preserved).
        assert_eq!(
            answer.queries[0].name().to_ascii(),
            name,
            "question echoed as asked"
        );
        for record in &answer.answers {
            assert_eq!(
                record.name.to_ascii(),
                name,
                "owner name echoes the question"
            );
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn srv_targets_use_node_names_or_addr_names_with_glue() {
    let h = Harness::start().await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::SRV)).await;
    let mut targets = HashSet::new();
    for record in &answer.answers {
        let RData::SRV(srv) = &record.data else {
            panic!("unexpected record {record:?}");
        };
        assert_eq!(srv.priority, 1);
        targets.insert((srv.target.to_ascii(), srv.port));
    }
    let expected: HashSet<(String, u16)> = [
        ("node-1.node.dc1.consul.".to_owned(), 80),
        ("node-2.node.dc1.consul.".to_owned(), 8080),
    ]
    .into_iter()
    .collect();
    assert_eq!(targets, expected);
    // Glue: the node address under the node name.
    for record in &answer.additionals {
        if let RData::A(a) = &record.data {
            let owner = record.name.to_ascii();
            let expected_ip = if owner.starts_with("node-1") {
                "10.0.0.1"
            } else {
                "10.0.0.2"
            };
            assert_eq!(a.0.to_string(), expected_ip, "glue for {owner}");
        }
    }

    // api has its own addresses: targets are .addr names, never the node name.
    let (answer, _) = udp(h.dns, &Ask::new("api.service.consul.", RecordType::SRV)).await;
    let targets: HashSet<String> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.target.to_ascii()),
            _ => None,
        })
        .collect();
    let expected: HashSet<String> = ["0a010001.addr.dc1.consul.", "0a010002.addr.dc1.consul."]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(targets, expected);
    for record in &answer.additionals {
        if let RData::A(a) = &record.data {
            assert!(
                record.name.to_ascii().contains(".addr."),
                "glue under .addr name"
            );
            assert!(
                a.0.to_string().starts_with("10.1.0."),
                "service address, not node's"
            );
        }
    }
    // .addr names resolve.
    let (answer, _) = udp(h.dns, &Ask::new("0a010001.addr.dc1.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), ips(&["10.1.0.1"]));
    h.stop().await;
}

#[tokio::test]
async fn node_lookups_and_ipv6() {
    let h = Harness::start().await;
    let (answer, _) = udp(h.dns, &Ask::new("node-1.node.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), ips(&["10.0.0.1"]));
    let (answer, _) = udp(h.dns, &Ask::new("db.service.consul.", RecordType::AAAA)).await;
    assert_eq!(sorted_addresses(&answer), ips(&["2001:db8::4"]));
    let (answer, _) = udp(h.dns, &Ask::new("node-4.node.consul.", RecordType::AAAA)).await;
    assert_eq!(sorted_addresses(&answer), ips(&["2001:db8::4"]));
    h.stop().await;
}

#[tokio::test]
async fn negative_answers_carry_the_soa() {
    let h = Harness::start().await;
    // Unknown service, node, datacenter, tag: NXDOMAIN + SOA.
    for name in [
        "nosuch.service.consul.",
        "nosuch.node.consul.",
        "web.service.nodc.consul.",
        "nosuchtag.web.service.consul.",
        "service.consul.",
        "foo.bar.consul.",
    ] {
        let (answer, _) = udp(h.dns, &Ask::new(name, RecordType::A)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(soa_in_authority(&answer), "{name}: SOA in authority");
        let soa = answer
            .authorities
            .iter()
            .find(|r| r.record_type() == RecordType::SOA)
            .expect("soa");
        assert_eq!(soa.ttl, 5, "negative TTL is the SOA minimum (5s)");
    }
    // Known service, no record of the asked type: NODATA + SOA.
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::AAAA)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert!(soa_in_authority(&answer));
    h.stop().await;
}

#[tokio::test]
async fn every_instance_critical_is_nxdomain() {
    let sim = crate::harness::standard_sim();
    sim.register(
        consul_sim::Registration::new("broken")
            .id("broken-1")
            .node("node-1", "10.0.0.1")
            .check("service:broken-1", "critical"),
    );
    let h = Harness::start_with(sim, |_| {}).await;
    let (answer, _) = udp(h.dns, &Ask::new("broken.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    h.stop().await;
}

#[tokio::test]
async fn answers_are_shuffled_per_response() {
    let sim = consul_sim::Sim::new();
    for i in 1..=6 {
        sim.register(
            consul_sim::Registration::new("big")
                .id(&format!("big-{i}"))
                .node(&format!("n{i}"), &format!("10.9.0.{i}"))
                .port(80),
        );
    }
    let h = Harness::start_with(sim, |_| {}).await;
    let mut orders = HashSet::new();
    for _ in 0..30 {
        let (answer, _) = udp(h.dns, &Ask::new("big.service.consul.", RecordType::A)).await;
        assert_eq!(answer.answers.len(), 6);
        orders.insert(addresses(&answer));
    }
    assert!(
        orders.len() > 1,
        "30 answers from the cache all had the same order"
    );
    h.stop().await;
}

#[tokio::test]
async fn ttl_overrides_and_answer_cap() {
    let h = Harness::start_with(crate::harness::standard_sim(), |raw| {
        raw.dns.service_ttl = std::time::Duration::from_secs(7);
        raw.dns.service_ttl_overrides.insert(
            "ap*".into(),
            dnsfront::config::HumanDuration(std::time::Duration::from_secs(0)),
        );
        raw.dns.max_answer_records = 1;
    })
    .await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.answers.len(), 1, "max_answer_records caps A answers");
    assert_eq!(answer.answers[0].ttl, 7);
    let (answer, _) = udp(h.dns, &Ask::new("api.service.consul.", RecordType::A)).await;
    assert!(
        answer.answers.iter().all(|r| r.ttl == 0),
        "override ap* = 0s"
    );
    h.stop().await;
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_are_complete_over_tcp() {
    let sim = consul_sim::Sim::new();
    for i in 1..=60 {
        sim.register(
            consul_sim::Registration::new("huge")
                .id(&format!("huge-{i}"))
                .node(
                    &format!("node-with-a-long-name-{i}"),
                    &format!("10.8.{}.{}", i / 200, i % 200 + 1),
                )
                .port(80),
        );
    }
    let h = Harness::start_with(sim, |_| {}).await;
    // No EDNS: at most 512 bytes, TC set.
    let (answer, size) = udp(h.dns, &Ask::new("huge.service.consul.", RecordType::SRV)).await;
    assert!(size <= 512, "non-EDNS UDP answer was {size} bytes");
    assert!(
        answer.metadata.truncation,
        "TC must be set when records were dropped"
    );
    // EDNS 4096: capped at our 1232, with our own OPT record.
    let (answer, size) = udp(
        h.dns,
        &Ask::new("huge.service.consul.", RecordType::SRV).edns(4096),
    )
    .await;
    assert!(size <= 1232, "EDNS UDP answer was {size} bytes");
    assert!(answer.metadata.truncation);
    let edns = answer
        .edns
        .as_ref()
        .expect("response carries an OPT record");
    assert!(edns.max_payload() <= 1232);
    // TCP: everything.
    let full = tcp(h.dns, &Ask::new("huge.service.consul.", RecordType::SRV)).await;
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 60);
    // A small answer to an EDNS client is not truncated and carries OPT.
    let (answer, _) = udp(
        h.dns,
        &Ask::new("huge.service.consul.", RecordType::A).edns(1232),
    )
    .await;
    assert!(answer.metadata.truncation || answer.answers.len() == 60);
    h.stop().await;
}
