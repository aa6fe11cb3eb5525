//! Consul Enterprise namespaces and partitions (issue 14 §2): `consul.namespace`
//! and `consul.partition` go with every request, and the simulator answers from
//! that namespace's catalog; Community Edition refuses them.

use consul_sim::{Registration, Sim};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, sorted_addresses, udp};

use crate::harness::{Harness, ip, standard_sim};

fn with_team_a() -> Sim {
    let sim = standard_sim();
    sim.register(
        Registration::new("web")
            .id("web-a")
            .node("node-a1", "10.9.0.1")
            .port(80)
            .namespace("team-a")
            .check("service:web-a", "passing"),
    );
    sim
}

#[tokio::test]
async fn every_request_names_the_namespace_and_gets_its_catalog() {
    let sim = with_team_a();
    let h = Harness::start_with(sim, |raw| {
        raw.consul.namespace = Some("team-a".to_owned());
        raw.consul.partition = Some("default".to_owned());
    })
    .await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), [ip("10.9.0.1")]);
    let (answer, _) = udp(h.dns, &Ask::new("node-a1.node.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), [ip("10.9.0.1")]);
    // The default namespace's web is not this resolver's.
    let (answer, _) = udp(h.dns, &Ask::new("api.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    let requests = h.sim.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert!(
            request.query.contains("ns=team-a") && request.query.contains("partition=default"),
            "{request:?}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn without_a_namespace_the_default_catalog_is_read_and_community_edition_refuses_one() {
    let h = Harness::start_with(with_team_a(), |_| {}).await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), [ip("10.0.0.1"), ip("10.0.0.2")]);
    assert!(
        h.sim
            .requests()
            .iter()
            .all(|request| !request.query.contains("ns="))
    );
    h.stop().await;

    // A Community Edition agent (no namespaces) answers 400: never-seen names
    // get SERVFAIL, not NXDOMAIN.
    let h = Harness::start_with(standard_sim(), |raw| {
        raw.consul.namespace = Some("team-a".to_owned());
    })
    .await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    h.stop().await;
}
