//! `/v1/health/state/:state` over real HTTP on 127.0.0.1:0.

use consul_sim::{Fault, Registration, Sim, SimServer};
use serde_json::Value;

mod common;

use common::{blocking_answer, client, demo, get, index_of, start, start_blocking_get};

/// `(Node, CheckID, Status)` of every check in a body, in body order.
fn checks(body: &Value) -> Vec<(String, String, String)> {
    body.as_array()
        .expect("array")
        .iter()
        .map(|check| {
            let field = |name: &str| check[name].as_str().expect(name).to_owned();
            (field("Node"), field("CheckID"), field("Status"))
        })
        .collect()
}

async fn body_of(server: &SimServer, path_and_query: &str) -> Value {
    let response = get(server, path_and_query).await;
    assert_eq!(response.status(), 200, "{path_and_query}");
    response.json().await.expect("json")
}

#[tokio::test]
async fn state_filters_checks_and_any_returns_all() {
    let (_sim, server) = demo().await;

    let critical = body_of(&server, "/v1/health/state/critical").await;
    assert_eq!(
        checks(&critical),
        [(
            "node-2".to_owned(),
            "service:db-2".to_owned(),
            "critical".to_owned()
        )]
    );
    let warning = body_of(&server, "/v1/health/state/warning").await;
    assert_eq!(
        checks(&warning),
        [(
            "node-2".to_owned(),
            "service:web-2".to_owned(),
            "warning".to_owned()
        )]
    );
    let passing = checks(&body_of(&server, "/v1/health/state/passing").await);
    assert_eq!(
        passing.len(),
        14,
        "7 serfHealth (3 servers) + 7 passing service checks"
    );
    assert!(passing.iter().all(|(_, _, status)| status == "passing"));
    let any = checks(&body_of(&server, "/v1/health/state/any").await);
    assert_eq!(any.len(), 16);
    let mut sorted = any.clone();
    sorted.sort();
    assert_eq!(any, sorted, "ordered by node, then check ID");
}

#[tokio::test]
async fn checks_have_consul_health_check_shape() {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("node-1", "10.0.0.1")
            .tags(&["primary", "v2"])
            .check("service:web-1", "warning")
            .node_check("serfHealth", "passing"),
    );
    let server = start(&sim).await;
    let response = get(&server, "/v1/health/state/any").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().expect("ascii"),
        "application/json"
    );
    let body: Value = response.json().await.expect("json");
    let list = body.as_array().expect("array");
    assert_eq!(list.len(), 2);
    let serf = &list[0];
    assert_eq!(serf["Node"], "node-1");
    assert_eq!(serf["CheckID"], "serfHealth");
    assert_eq!(serf["Name"], "Serf Health Status");
    assert_eq!(serf["Status"], "passing");
    assert_eq!(serf["ServiceID"], "");
    assert_eq!(serf["ServiceName"], "");
    assert_eq!(
        serf["ServiceTags"],
        serde_json::json!([]),
        "never null for node checks"
    );
    let service = &list[1];
    assert_eq!(service["CheckID"], "service:web-1");
    assert_eq!(service["Status"], "warning");
    assert_eq!(service["ServiceID"], "web-1");
    assert_eq!(service["ServiceName"], "web");
    assert_eq!(service["ServiceTags"], serde_json::json!(["primary", "v2"]));
    for field in [
        "Node",
        "CheckID",
        "Name",
        "Status",
        "Notes",
        "Output",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "Type",
        "Interval",
        "Timeout",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(service.get(field).is_some(), "{field} present");
    }
    assert!(service["CreateIndex"].as_u64().expect("number") >= 1);
}

#[tokio::test]
async fn missing_state_is_400_and_unknown_state_matches_nothing() {
    let (_sim, server) = demo().await;
    let response = get(&server, "/v1/health/state/").await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.text().await.expect("body"), "Missing check state");

    // Consul 1.16 looks an unknown state up in its status index: 200, empty, with an index.
    let response = get(&server, "/v1/health/state/bogus").await;
    assert_eq!(response.status(), 200);
    assert!(index_of(&response) >= 1);
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        serde_json::json!([])
    );

    let response = client()
        .put(format!("{}/v1/health/state/any", server.url()))
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn node_meta_filter_keeps_checks_on_matching_nodes() {
    let (_sim, server) = demo().await;
    let any = checks(&body_of(&server, "/v1/health/state/any?node-meta=role:data").await);
    assert!(!any.is_empty());
    assert!(any.iter().all(|(node, _, _)| node == "node-3"), "{any:?}");
    let none = body_of(&server, "/v1/health/state/any?node-meta=role:nope").await;
    assert_eq!(none, serde_json::json!([]));
}

#[tokio::test]
async fn index_is_the_checks_table_index() {
    let sim = Sim::new();
    let server = start(&sim).await;
    assert_eq!(
        index_of(&get(&server, "/v1/health/state/any").await),
        1,
        "never 0"
    );
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("node-1", "10.0.0.1")
            .check("service:web-1", "passing"),
    );
    let registered = index_of(&get(&server, "/v1/health/state/any").await);
    assert!(registered > 1);

    // Neither a KV write nor a registration without check changes moves it.
    sim.kv_put("unrelated", "x");
    sim.register(Registration::new("nochecks").node("node-1", "10.0.0.1"));
    assert_eq!(
        index_of(&get(&server, "/v1/health/state/any").await),
        registered
    );

    sim.set_check("node-1", "service:web-1", "critical");
    let changed = index_of(&get(&server, "/v1/health/state/any").await);
    assert!(changed > registered);
    // Index of the whole table, whatever the filter.
    assert_eq!(
        index_of(&get(&server, "/v1/health/state/passing").await),
        changed
    );

    sim.deregister("node-1", "web-1");
    let removed = get(&server, "/v1/health/state/any").await;
    assert!(index_of(&removed) > changed, "removing checks moves it");
    assert_eq!(
        removed.json::<Value>().await.expect("json"),
        serde_json::json!([])
    );
}

#[tokio::test]
async fn blocking_query_wakes_on_a_check_change_only() {
    let (sim, server) = demo().await;
    let index = index_of(&get(&server, "/v1/health/state/any").await);

    // An unrelated change (KV) does not wake it: it times out with the same index.
    sim.kv_put("unrelated", "x");
    let response = get(
        &server,
        &format!("/v1/health/state/any?index={index}&wait=300ms"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(index_of(&response), index);

    let waiter = start_blocking_get(
        &server,
        &format!("/v1/health/state/critical?index={index}&wait=60s"),
    )
    .await;
    sim.set_check("node-1", "service:web-1", "critical");
    let response = blocking_answer(waiter).await;
    assert!(index_of(&response) > index);
    let body: Value = response.json().await.expect("json");
    assert!(
        checks(&body)
            .iter()
            .any(|(node, id, _)| node == "node-1" && id == "service:web-1"),
        "{body}"
    );
}

#[tokio::test]
async fn stale_dc_faults_and_request_log_apply() {
    let (sim, server) = demo().await;
    sim.inject(Fault::NoLeader);
    let response = get(&server, "/v1/health/state/any").await;
    assert_eq!(response.status(), 500);
    let response = get(&server, "/v1/health/state/any?stale").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-consul-effective-consistency"],
        "stale"
    );
    sim.clear_faults();

    let response = get(&server, "/v1/health/state/any?dc=nowhere").await;
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.text().await.expect("body"),
        "No path to datacenter"
    );
    sim.add_datacenter("dc3");
    assert_eq!(
        body_of(&server, "/v1/health/state/any?dc=dc3").await,
        serde_json::json!([])
    );

    sim.inject(Fault::rate_limited("/v1/health/state/"));
    assert_eq!(get(&server, "/v1/health/state/any").await.status(), 429);
    sim.clear_faults();
    assert_eq!(sim.request_count("/v1/health/state/"), 5);
}
