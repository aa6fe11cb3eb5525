//! Names outside the Consul domain go to the upstreams, never Consul names.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, FakeUpstream, sorted_addresses, tcp, udp};

use crate::harness::{Harness, standard_sim};

#[tokio::test]
async fn other_names_are_forwarded_and_cached() {
    let upstream = FakeUpstream::start().await;
    upstream.set("example.com", &["192.0.2.10", "192.0.2.11"], 300);
    let up = upstream.addr().to_string();
    let h = Harness::start_with(standard_sim(), |raw| raw.forward.upstreams = vec![up]).await;
    let ask = Ask::new("example.com.", RecordType::A);
    let (answer, _) = udp(h.dns, &ask).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        !answer.metadata.authoritative,
        "forwarded answers are not authoritative"
    );
    assert!(answer.metadata.recursion_available);
    assert_eq!(
        sorted_addresses(&answer),
        vec![
            "192.0.2.10".parse::<std::net::IpAddr>().expect("ip"),
            "192.0.2.11".parse().expect("ip")
        ]
    );
    let over_tcp = tcp(h.dns, &ask).await;
    assert_eq!(over_tcp.answers.len(), 2);
    assert_eq!(
        upstream.queries(),
        1,
        "second query answered from the cache"
    );

    let (answer, _) = udp(h.dns, &Ask::new("missing.example.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    h.stop().await;
}

#[tokio::test]
async fn consul_names_are_never_forwarded() {
    let upstream = FakeUpstream::start().await;
    let up = upstream.addr().to_string();
    let h = Harness::start_with(standard_sim(), |raw| raw.forward.upstreams = vec![up]).await;
    for name in [
        "nosuch.service.consul.",
        "web.service.consul.",
        "x.y.consul.",
        "consul.",
    ] {
        udp(h.dns, &Ask::new(name, RecordType::A)).await;
    }
    assert_eq!(
        upstream.queries(),
        0,
        "a Consul-domain name reached the upstream"
    );
    h.stop().await;
}

#[tokio::test]
async fn silent_upstream_gives_servfail_before_the_client_gives_up() {
    let upstream = FakeUpstream::start().await;
    upstream.set_silent(true);
    let up = upstream.addr().to_string();
    let h = Harness::start_with(standard_sim(), |raw| {
        raw.forward.upstreams = vec![up];
        raw.forward.attempt_timeout = Duration::from_millis(300);
        raw.forward.deadline = Duration::from_millis(600);
    })
    .await;
    let (answer, _) = udp(h.dns, &Ask::new("example.org.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    h.stop().await;
}

#[tokio::test]
async fn no_upstreams_means_servfail_for_other_names_but_consul_still_works() {
    let h = Harness::start().await;
    let (answer, _) = udp(h.dns, &Ask::new("example.org.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    h.stop().await;
}

#[tokio::test]
async fn a_rule_sends_a_consul_sub_zone_to_its_own_upstream() {
    // `query.consul` (prepared queries) is not ours to answer: a rule sends it to the
    // Consul agent's DNS port, here a fake upstream. The rest of the domain stays Consul's.
    let default_upstream = FakeUpstream::start().await;
    let agent_dns = FakeUpstream::start().await;
    agent_dns.set("geo-web.query.consul", &["192.0.2.77"], 0);
    let (default_up, agent_up) = (
        default_upstream.addr().to_string(),
        agent_dns.addr().to_string(),
    );
    let h = Harness::start_with(standard_sim(), |raw| {
        raw.forward.upstreams = vec![default_up];
        raw.forward.rules = vec![dnsfront::config::RawDomainRule {
            zone: "Query.Consul".to_owned(),
            upstreams: vec![agent_up],
        }];
    })
    .await;
    let (answer, _) = udp(h.dns, &Ask::new("geo-web.query.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        sorted_addresses(&answer),
        vec!["192.0.2.77".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(agent_dns.queries(), 1);

    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        answer.metadata.authoritative,
        "still answered from the catalog"
    );
    assert_eq!(agent_dns.queries(), 1);
    assert_eq!(default_upstream.queries(), 0);
    h.stop().await;
}
