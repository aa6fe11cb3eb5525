//! Fixture loading and the demo catalog.

use consul_sim::{DEMO_FIXTURE, FixtureError, Sim};

mod common;

use common::call;

#[tokio::test]
async fn demo_fixture_has_the_documented_services() {
    let sim = Sim::new();
    sim.load_fixture(DEMO_FIXTURE).expect("demo fixture loads");
    let response = call(&sim, "GET", "/v1/catalog/services", "").await;
    let services: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
    for name in ["web", "api", "db", "redis"] {
        assert!(services.get(name).is_some(), "demo has {name}");
    }
    let nodes = call(&sim, "GET", "/v1/catalog/nodes", "").await;
    let nodes: serde_json::Value = serde_json::from_slice(nodes.body()).expect("json");
    let addresses: Vec<&str> = nodes
        .as_array()
        .expect("array")
        .iter()
        .map(|node| node["Address"].as_str().expect("address"))
        .collect();
    assert!(
        addresses.iter().any(|address| address.contains(':')),
        "one IPv6 node"
    );
    // An RDS-like endpoint registered by hostname, as AWS fleets do.
    let health = call(&sim, "GET", "/v1/health/service/billing-db", "").await;
    let health: serde_json::Value = serde_json::from_slice(health.body()).expect("json");
    assert_eq!(
        health[0]["Service"]["Address"],
        "billing-db.cluster-c1x2y3.eu-west-1.rds.amazonaws.com"
    );
}

/// Consul accepts a hostname as a node or service address and serves it as
/// registered (no IP-only tagged addresses are made up for it).
#[tokio::test]
async fn hostname_addresses_are_kept_as_registered() {
    let sim = Sim::new();
    sim.register(
        consul_sim::Registration::new("elb")
            .id("elb-1")
            .node("edge-1", "edge-1.example.com")
            .address("my-elb-123.eu-west-1.elb.amazonaws.com")
            .port(443),
    );
    let health = call(&sim, "GET", "/v1/health/service/elb", "").await;
    let health: serde_json::Value = serde_json::from_slice(health.body()).expect("json");
    assert_eq!(health[0]["Node"]["Address"], "edge-1.example.com");
    assert_eq!(
        health[0]["Service"]["Address"],
        "my-elb-123.eu-west-1.elb.amazonaws.com"
    );
    let tagged = &health[0]["Node"]["TaggedAddresses"];
    assert!(tagged.get("lan_ipv4").is_none(), "{tagged}");
    let node = call(&sim, "GET", "/v1/catalog/node/edge-1", "").await;
    let node: serde_json::Value = serde_json::from_slice(node.body()).expect("json");
    assert_eq!(node["Node"]["Address"], "edge-1.example.com");
}

#[test]
fn fixture_errors_name_the_problem() {
    let sim = Sim::new();
    let unknown_node = r#"{"services":[{"node":"ghost","service":"web"}]}"#;
    assert!(matches!(
        sim.load_fixture(unknown_node),
        Err(FixtureError::UnknownNode { node, .. }) if node == "ghost"
    ));
    let bad_status = r#"{"nodes":[{"node":"n","address":"10.0.0.1"}],
        "services":[{"node":"n","service":"web","checks":[{"id":"c","status":"sick"}]}]}"#;
    assert!(matches!(
        sim.load_fixture(bad_status),
        Err(FixtureError::InvalidStatus { .. })
    ));
    assert!(matches!(sim.load_fixture("{"), Err(FixtureError::Json(_))));
    assert!(matches!(
        sim.load_fixture(r#"{"bogus":1}"#),
        Err(FixtureError::Json(_))
    ));
}

#[tokio::test]
async fn fixture_weights_may_be_null_and_nodes_may_live_in_other_datacenters() {
    let sim = Sim::new();
    sim.load_fixture(
        r#"{"nodes":[{"node":"e1","address":"10.9.0.1","datacenter":"dc2"}],
            "services":[{"node":"e1","id":"web-e1","service":"web","port":80,"weights":null}]}"#,
    )
    .expect("loads");
    let response = call(&sim, "GET", "/v1/health/service/web?dc=dc2", "").await;
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
    assert_eq!(body[0]["Service"]["ID"], "web-e1");
    assert!(body[0]["Service"]["Weights"].is_null());
}

#[tokio::test]
async fn fixture_kv_is_written_like_a_plain_put_and_keeps_a_held_lock() {
    let sim = Sim::new();
    let created = call(&sim, "PUT", "/v1/session/create", "").await;
    let created: serde_json::Value = serde_json::from_slice(created.body()).expect("json");
    let session = created["ID"].as_str().expect("ID").to_owned();
    let acquired = call(&sim, "PUT", &format!("/v1/kv/k?acquire={session}"), "old").await;
    assert_eq!(acquired.body().as_ref(), b"true");

    sim.load_fixture(r#"{"kv":[{"key":"k","value":"new","flags":3}]}"#)
        .expect("loads");
    assert_eq!(sim.kv_get("k"), Some(bytes::Bytes::from_static(b"new")));
    assert_eq!(sim.kv_session("k").as_deref(), Some(session.as_str()));
    let entry = call(&sim, "GET", "/v1/kv/k", "").await;
    let entry: serde_json::Value = serde_json::from_slice(entry.body()).expect("json");
    assert_eq!(entry[0]["LockIndex"], 1);
    assert_eq!(entry[0]["Flags"], 3);
}

#[tokio::test]
async fn demo_fixture_has_consul_servers_and_explicit_tagged_addresses() {
    let sim = Sim::new();
    sim.load_fixture(DEMO_FIXTURE).expect("demo fixture loads");
    let servers = call(&sim, "GET", "/v1/health/service/consul", "").await;
    let servers: serde_json::Value = serde_json::from_slice(servers.body()).expect("json");
    let names: Vec<&str> = servers
        .as_array()
        .expect("array")
        .iter()
        .map(|entry| entry["Node"]["Node"].as_str().expect("node"))
        .collect();
    assert_eq!(
        names,
        ["consul-server-1", "consul-server-2", "consul-server-3"]
    );

    let node = call(&sim, "GET", "/v1/catalog/node/node-1", "").await;
    let node: serde_json::Value = serde_json::from_slice(node.body()).expect("json");
    let tagged = &node["Node"]["TaggedAddresses"];
    assert_eq!(tagged["lan_ipv6"], "fd00::11", "explicit tag");
    assert_eq!(tagged["lan_ipv4"], "10.0.0.11", "the agent's tags stay");
    assert_eq!(node["Node"]["Meta"]["rfc1035-location"], "rack 12");

    let edge = call(&sim, "GET", "/v1/health/service/web?dc=dc2", "").await;
    let edge: serde_json::Value = serde_json::from_slice(edge.body()).expect("json");
    assert_eq!(edge[0]["Node"]["TaggedAddresses"]["wan"], "198.51.100.11");
    assert_eq!(edge[0]["Node"]["Datacenter"], "dc2");
}

#[tokio::test]
async fn registrations_set_service_tagged_addresses_over_the_agents() {
    use consul_sim::Registration;
    let sim = Sim::new();
    sim.register(
        Registration::new("api")
            .node("n1", "10.0.0.1")
            .address("10.1.0.1")
            .port(9090)
            .tagged_address("lan_ipv6", "fd00::1"),
    );
    sim.register(Registration::consul_server("s1", "10.0.9.1"));
    let api = call(&sim, "GET", "/v1/health/service/api", "").await;
    let api: serde_json::Value = serde_json::from_slice(api.body()).expect("json");
    let tagged = &api[0]["Service"]["TaggedAddresses"];
    assert_eq!(tagged["lan_ipv6"]["Address"], "fd00::1");
    assert_eq!(tagged["lan_ipv6"]["Port"], 9090);
    assert_eq!(tagged["lan_ipv4"]["Address"], "10.1.0.1");
    let consul = call(&sim, "GET", "/v1/health/service/consul", "").await;
    let consul: serde_json::Value = serde_json::from_slice(consul.body()).expect("json");
    assert_eq!(consul[0]["Service"]["Port"], 8300);
    assert_eq!(consul[0]["Checks"][0]["CheckID"], "serfHealth");
}
