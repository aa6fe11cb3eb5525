//! Answers at the size limits (issue 12 §1), from the simulator's catalog and
//! a fake upstream, over real UDP and TCP: every reply strictly parsed
//! (`test_support::strict_parse` behind `udp`/`tcp_sized`), and cross-checked
//! with kdig, a strict client we did not write.

use std::collections::HashSet;

use consul_sim::{Registration, Sim};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use test_support::{Ask, FakeUpstream, kdig, tcp_sized, udp};

use crate::harness::Harness;

/// Service sizes asked about.
const SIZES: [usize; 5] = [1, 3, 27, 96, 2000];
/// Forwarded answer sizes (the fake upstream sends them in one UDP reply).
const FORWARDED: [usize; 5] = [1, 3, 27, 60, 96];

/// `s<N>`: N instances on IPv4 nodes with names as long as EC2's;
/// `d<N>`: the same nodes, every other instance (the first among them) with
/// an IPv6 service address.
fn sized_sim() -> Sim {
    let sim = Sim::new();
    for n in SIZES {
        for i in 0..n {
            let node = format!("ip-10-{n}-{i}-ec2-internal");
            let address = format!("10.{}.{}.{}", n % 256, i / 256, i % 256);
            sim.register(
                Registration::new(&format!("s{n}"))
                    .id(&format!("s{n}-{i}"))
                    .node(&node, &address)
                    .port(8080),
            );
            let mut dual = Registration::new(&format!("d{n}"))
                .id(&format!("d{n}-{i}"))
                .node(&node, &address)
                .port(8443);
            if i % 2 == 0 {
                dual = dual.address(&format!("fd00:{n:x}::{:x}", i + 1));
            }
            sim.register(dual);
        }
    }
    sim
}

/// Every SRV answer's target has its address in Additional, and no address
/// is there without its SRV.
fn assert_srv_groups_whole(message: &Message, context: &str) {
    let targets: HashSet<Name> = message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.target.clone()),
            _ => None,
        })
        .collect();
    let glued: HashSet<Name> = message
        .additionals
        .iter()
        .filter(|record| matches!(record.data, RData::A(_) | RData::AAAA(_)))
        .map(|record| record.name.clone())
        .collect();
    assert_eq!(targets, glued, "{context}: SRV groups are whole");
}

/// How many records of each form a full answer has for `n` instances.
fn full_count(rtype: RecordType, n: usize) -> usize {
    match rtype {
        RecordType::AAAA => n.div_ceil(2),
        _ => n,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_form_at_every_size_limit_is_well_formed() {
    let upstream = FakeUpstream::start().await;
    for n in FORWARDED {
        let addresses: Vec<String> = (0..n).map(|i| format!("198.51.100.{}", i + 1)).collect();
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        upstream.set(&format!("f{n}.example.org"), &addresses, 300);
    }
    let up = upstream.addr().to_string();
    let h = Harness::start_with(sized_sim(), |raw| raw.forward.upstreams = vec![up]).await;

    let mut asks = Vec::new();
    for n in SIZES {
        asks.push((format!("s{n}.service.consul."), RecordType::A, n));
        asks.push((format!("d{n}.service.consul."), RecordType::AAAA, n));
        asks.push((format!("d{n}.service.consul."), RecordType::ANY, n));
        asks.push((format!("s{n}.service.consul."), RecordType::SRV, n));
        asks.push((format!("d{n}.service.consul."), RecordType::SRV, n));
    }
    for n in FORWARDED {
        asks.push((format!("f{n}.example.org."), RecordType::A, n));
    }
    for (name, rtype, n) in &asks {
        let plain = Ask::new(name, *rtype);
        let full = full_count(*rtype, *n);
        for (ask, limit) in test_support::udp_size_variants(&plain) {
            let context = format!("{name} {rtype} EDNS {:?}", ask.edns);
            let (reply, size) = udp(h.dns, &ask).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{context}"
            );
            assert!(size <= limit, "{context}: {size} bytes");
            assert!(!reply.answers.is_empty(), "{context}: nothing fitted");
            assert_eq!(
                reply.metadata.truncation,
                reply.answers.len() < full,
                "{context}: TC exactly when answers were cut ({} of {full})",
                reply.answers.len()
            );
            if *rtype == RecordType::SRV {
                assert_srv_groups_whole(&reply, &context);
            }
        }
        let (reply, size) = tcp_sized(h.dns, &plain).await;
        let context = format!("{name} {rtype} TCP");
        assert!(size <= 65_535, "{context}");
        assert!(!reply.metadata.truncation, "{context}: never TC over TCP");
        if *rtype == RecordType::SRV {
            assert_srv_groups_whole(&reply, &context);
        }
        if *rtype != RecordType::SRV {
            // 2,000 addresses included (~32 KB for A: every owner compressed).
            assert_eq!(reply.answers.len(), full, "{context}: everything over TCP");
        }
    }

    // kdig, strict about the wire, on the answers most likely to be cut.
    let port = h.dns.port().to_string();
    let server = format!("@{}", h.dns.ip());
    for (name, rtype) in [
        ("s96.service.consul.", "A"),
        ("d27.service.consul.", "ANY"),
        ("d96.service.consul.", "AAAA"),
        ("s2000.service.consul.", "SRV"),
        ("f60.example.org.", "A"),
    ] {
        for transport in [
            "+noedns",
            "+edns=0",
            "+bufsize=1232",
            "+bufsize=4096",
            "+tcp",
        ] {
            let out = tokio::task::block_in_place(|| {
                kdig(&[
                    server.as_str(),
                    "-p",
                    port.as_str(),
                    "+time=3",
                    "+retry=0",
                    "+ignore",
                    transport,
                    name,
                    rtype,
                ])
            });
            assert!(
                out.contains("status: NOERROR"),
                "{name} {rtype} {transport}: {out}"
            );
        }
    }
    h.stop().await;
}
