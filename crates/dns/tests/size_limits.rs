//! Replies at the size limits (plain UDP 512, every EDNS size, TCP 65,535),
//! over real sockets, each one strictly parsed: exactly the records its
//! header counts, never trailing bytes.

mod support;

use std::collections::HashSet;

use dnsfront_catalog::Freshness;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use support::*;
use test_support::{Ask, tcp_sized, udp};

/// `n` instances on nodes with longish names (as real fleets have) and IPv4
/// node addresses; with `dual`, every other one (the first among them) has an
/// IPv6 service address instead.
fn instances(n: usize, dual: bool) -> Vec<dnsfront_catalog::ServiceInstance> {
    (0..n)
        .map(|i| {
            let v4 = format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256);
            let v6 = format!("fd00::{:x}", i + 1);
            instance(
                &format!("ip-10-20-{i}-compute-internal"),
                &v4,
                (dual && i % 2 == 0).then_some(v6.as_str()),
                8080,
                &[],
            )
        })
        .collect()
}

/// The SRV targets in Answer and the owners of address records in Additional.
fn srv_groups(message: &Message) -> (Vec<Name>, HashSet<Name>) {
    let targets = message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.target.to_lowercase()),
            _ => None,
        })
        .collect();
    let glued = message
        .additionals
        .iter()
        .filter(|record| matches!(record.data, RData::A(_) | RData::AAAA(_)))
        .map(|record| record.name.to_lowercase())
        .collect();
    (targets, glued)
}

/// Every SRV kept has its address in Additional, and nothing else is there.
fn assert_srv_groups_whole(message: &Message, context: &str) {
    let (targets, glued) = srv_groups(message);
    let wanted: HashSet<Name> = targets.iter().cloned().collect();
    assert_eq!(
        wanted, glued,
        "{context}: every SRV target has its address, no address without its SRV"
    );
}

#[tokio::test]
async fn replies_at_every_limit_are_exactly_what_their_header_counts() {
    let server = start_default().await;
    for n in [1, 3, 27, 96, 2000] {
        server
            .catalog
            .set_instances(&format!("s{n}"), instances(n, false), Freshness::Fresh);
        server
            .catalog
            .set_instances(&format!("d{n}"), instances(n, true), Freshness::Fresh);
    }
    for n in [1usize, 3, 27, 96, 2000] {
        for (service, rtype) in [
            ("s", RecordType::A),
            ("d", RecordType::AAAA),
            ("d", RecordType::ANY),
            ("s", RecordType::SRV),
            ("d", RecordType::SRV),
        ] {
            let plain = Ask::new(&format!("{service}{n}.service.consul."), rtype);
            // `udp` and `tcp_sized` parse strictly (test_support::strict_parse).
            for (ask, limit) in test_support::udp_size_variants(&plain) {
                let context = format!("{n} instances, {rtype}, {:?}", ask.edns);
                let (reply, size) = udp(server.addr, &ask).await;
                assert!(size <= limit, "{context}: {size} bytes > {limit}");
                assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
                assert!(!reply.answers.is_empty(), "{context}: something fits");
                if rtype == RecordType::SRV {
                    assert_srv_groups_whole(&reply, &context);
                }
            }
            let (reply, size) = tcp_sized(server.addr, &plain).await;
            let context = format!("{n} instances, {rtype}, TCP");
            assert!(size <= 65_535, "{context}");
            assert!(!reply.metadata.truncation, "{context}: no TC over TCP");
            if rtype != RecordType::SRV {
                // 2,000 A records: ~32 KB, every owner compressed.
                let full = if rtype == RecordType::AAAA {
                    n.div_ceil(2)
                } else {
                    n
                };
                assert_eq!(reply.answers.len(), full, "{context}: everything over TCP");
                if n == 2000 && rtype == RecordType::A {
                    // Header, question (22 + 4), 16 bytes a record.
                    assert_eq!(size, 12 + 26 + 2000 * 16, "{context}");
                }
            }
            if rtype == RecordType::SRV {
                assert_srv_groups_whole(&reply, &context);
            }
        }
    }
}

#[tokio::test]
async fn truncated_plain_udp_answer_of_96_addresses_is_well_formed() {
    let server = start_default().await;
    server
        .catalog
        .set_instances("web", instances(96, false), Freshness::Fresh);
    let (reply, size) = udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert!(reply.metadata.truncation);
    assert!(size <= 512, "{size}");
    // 12 + 24 (question) + 16 per record (each owner a pointer to the
    // question): 29 fit in 512.
    assert_eq!(reply.answers.len(), 29, "the space is used ({size} bytes)");
}

#[tokio::test]
async fn forwarded_answer_of_60_addresses_is_well_formed_when_truncated() {
    let server = start_default().await;
    let owner = Name::from_ascii("many.example.org.").expect("name");
    let records = (0..60u8)
        .map(|i| Record::from_rdata(owner.clone(), 300, RData::A(A::new(192, 0, 2, i))))
        .collect();
    server
        .upstream
        .set_answer(Some(answer(ResponseCode::NoError, records)));
    for ask in [
        Ask::new("many.example.org.", RecordType::A),
        Ask::new("many.example.org.", RecordType::A).edns(512),
        Ask::new("many.example.org.", RecordType::A).edns(600),
    ] {
        let (reply, size) = udp(server.addr, &ask).await;
        assert!(reply.metadata.truncation, "{ask:?}");
        assert!(size <= 600, "{size}");
    }
    let (reply, _) = tcp_sized(server.addr, &Ask::new("many.example.org.", RecordType::A)).await;
    assert_eq!(reply.answers.len(), 60);
}
