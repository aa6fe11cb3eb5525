//! consul-sim over real HTTP on 127.0.0.1:0.

use std::time::Duration;

use consul_sim::{Fault, Registration, Sim};
use serde_json::Value;

mod common;

use common::{blocking_answer, client, demo, get, index_of, start, start_blocking_get};

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} present"))
        .to_str()
        .expect("ascii")
}

fn service_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body
        .as_array()
        .expect("array")
        .iter()
        .map(|entry| entry["Service"]["ID"].as_str().expect("ID").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn health_returns_critical_and_warning_instances_unless_passing_is_set() {
    let (_sim, server) = demo().await;
    let response = get(&server, "/v1/health/service/web").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "application/json");
    assert_eq!(header(&response, "x-consul-knownleader"), "true");
    assert_eq!(
        header(&response, "x-consul-effective-consistency"),
        "leader"
    );
    assert!(index_of(&response) >= 1);
    let body: Value = response.json().await.expect("json");
    assert_eq!(service_ids(&body), ["web-1", "web-2", "web-3"]);

    for query in ["passing", "passing=true", "passing=1"] {
        let body: Value = get(&server, &format!("/v1/health/service/web?{query}"))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(service_ids(&body), ["web-1", "web-3"], "query {query}");
    }
    let body: Value = get(&server, "/v1/health/service/web?passing=false")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(service_ids(&body).len(), 3);

    let body: Value = get(&server, "/v1/health/service/db")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(service_ids(&body), ["db-1", "db-2"]);
    let body: Value = get(&server, "/v1/health/service/db?passing")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(service_ids(&body), ["db-1"]);

    let response = get(&server, "/v1/health/service/web?passing=maybe").await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.text().await.expect("body"),
        "Invalid value for ?passing"
    );
}

#[tokio::test]
async fn health_entry_has_consul_shape() {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("node-1", "10.0.0.1")
            .address("10.1.0.1")
            .port(80)
            .tags(&["primary"])
            .weights(10, 1)
            .check("service:web-1", "passing")
            .node_check("serfHealth", "passing"),
    );
    sim.register(
        Registration::new("noport")
            .id("noport-1")
            .node("node-1", "10.0.0.1")
            .no_weights(),
    );
    let server = start(&sim).await;
    let body: Value = get(&server, "/v1/health/service/web")
        .await
        .json()
        .await
        .expect("json");
    let entry = &body[0];
    assert_eq!(entry["Node"]["Node"], "node-1");
    assert_eq!(entry["Node"]["Address"], "10.0.0.1");
    assert_eq!(entry["Node"]["Datacenter"], "dc1");
    assert_eq!(entry["Node"]["TaggedAddresses"]["lan_ipv4"], "10.0.0.1");
    assert!(entry["Node"]["ID"].as_str().expect("ID").len() == 36);
    assert_eq!(entry["Service"]["ID"], "web-1");
    assert_eq!(entry["Service"]["Service"], "web");
    assert_eq!(entry["Service"]["Address"], "10.1.0.1");
    assert_eq!(entry["Service"]["Port"], 80);
    assert_eq!(entry["Service"]["Tags"], serde_json::json!(["primary"]));
    assert_eq!(
        entry["Service"]["Weights"],
        serde_json::json!({"Passing": 10, "Warning": 1})
    );
    assert_eq!(entry["Service"]["EnableTagOverride"], false);
    let checks = entry["Checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[0]["CheckID"], "serfHealth");
    assert_eq!(checks[0]["ServiceID"], "");
    assert_eq!(checks[0]["ServiceTags"], serde_json::json!([]));
    assert_eq!(checks[1]["CheckID"], "service:web-1");
    assert_eq!(checks[1]["ServiceName"], "web");
    assert_eq!(checks[1]["Status"], "passing");
    assert_eq!(checks[1]["ServiceTags"], serde_json::json!(["primary"]));
    for field in [
        "Node",
        "Name",
        "Notes",
        "Output",
        "Type",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(checks[1].get(field).is_some(), "check field {field}");
    }

    let body: Value = get(&server, "/v1/health/service/noport")
        .await
        .json()
        .await
        .expect("json");
    assert!(
        body[0]["Service"].get("Port").is_none(),
        "Port 0 is omitted"
    );
    assert!(body[0]["Service"]["Weights"].is_null());
}

#[tokio::test]
async fn tag_filter_is_anded_and_case_insensitive() {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("a")
            .node("n1", "10.0.0.1")
            .tags(&["primary", "v2"]),
    );
    sim.register(
        Registration::new("web")
            .id("b")
            .node("n2", "10.0.0.2")
            .tags(&["primary"]),
    );
    sim.register(
        Registration::new("web")
            .id("c")
            .node("n3", "10.0.0.3")
            .tags(&["canary", "v2"]),
    );
    let server = start(&sim).await;
    let body: Value = get(&server, "/v1/health/service/web?tag=PRIMARY")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(service_ids(&body), ["a", "b"]);
    let body: Value = get(&server, "/v1/health/service/web?tag=primary&tag=v2")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(service_ids(&body), ["a"]);
    let body: Value = get(&server, "/v1/catalog/service/web?tag=v2")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body.as_array().expect("array").len(), 2);
}

#[tokio::test]
async fn unknown_service_is_empty_array_with_index_and_unknown_dc_is_500() {
    let (sim, server) = demo().await;
    let response = get(&server, "/v1/health/service/nope").await;
    assert_eq!(response.status(), 200);
    assert!(index_of(&response) >= 1);
    assert_eq!(response.text().await.expect("body"), "[]");

    let response = get(&server, "/v1/health/service/web?dc=dc9").await;
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.text().await.expect("body"),
        "No path to datacenter"
    );

    sim.add_datacenter("dc3");
    sim.register(
        Registration::new("web")
            .id("web-east")
            .node("east-1", "10.9.0.1")
            .datacenter("dc3"),
    );
    let body: Value = get(&server, "/v1/health/service/web?dc=dc3")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(service_ids(&body), ["web-east"]);
    assert_eq!(body[0]["Node"]["Datacenter"], "dc3");
    let body: Value = get(&server, "/v1/health/service/web")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(service_ids(&body).len(), 3, "dc1 catalog is separate");
}

#[tokio::test]
async fn index_is_never_zero_on_an_empty_sim() {
    let sim = Sim::new();
    let server = start(&sim).await;
    let response = get(&server, "/v1/catalog/services").await;
    assert_eq!(index_of(&response), 1);
    assert_eq!(response.text().await.expect("body"), "{}");
}

#[tokio::test]
async fn consistency_params_are_validated_and_reported() {
    let (_sim, server) = demo().await;
    let response = get(&server, "/v1/health/service/web?stale&consistent").await;
    assert_eq!(response.status(), 400);
    let response = get(&server, "/v1/health/service/web?stale").await;
    assert_eq!(header(&response, "x-consul-effective-consistency"), "stale");
    let response = get(&server, "/v1/health/service/web?consistent").await;
    assert_eq!(
        header(&response, "x-consul-effective-consistency"),
        "consistent"
    );
    let response = get(&server, "/v1/health/service/web?index=1&wait=forever").await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.text().await.expect("body"), "Invalid wait time");
    let response = get(&server, "/v1/health/service/web?index=abc").await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn cached_reads_report_miss_then_hit() {
    let (_sim, server) = demo().await;
    let first = get(&server, "/v1/health/service/web?cached&passing").await;
    assert_eq!(header(&first, "x-cache"), "MISS");
    let second = get(&server, "/v1/health/service/web?passing&cached").await;
    assert_eq!(header(&second, "x-cache"), "HIT");
    assert!(second.headers().contains_key("age"));
    let plain = get(&server, "/v1/health/service/web").await;
    assert!(!plain.headers().contains_key("x-cache"));
}

#[tokio::test]
async fn the_agent_reports_which_backend_served_each_read() {
    let (sim, server) = demo().await;
    // A first, non-blocking read without ?cached is one RPC on a server.
    let plain = get(&server, "/v1/health/service/web?stale").await;
    assert_eq!(header(&plain, "x-consul-query-backend"), "blocking-query");
    assert!(!plain.headers().contains_key("x-cache"));
    // ?cached or ?index > 0 is served from the streaming view, which implies the agent cache.
    let cached = get(&server, "/v1/health/service/web?stale&cached").await;
    assert_eq!(header(&cached, "x-consul-query-backend"), "streaming");
    let index = index_of(&plain);
    let watched = get(
        &server,
        &format!("/v1/health/service/web?stale&index={}&wait=1ms", index - 1),
    )
    .await;
    assert_eq!(header(&watched, "x-consul-query-backend"), "streaming");
    assert!(watched.headers().contains_key("x-cache"));
    // ?near turns streaming off; so does the agent's use_streaming_backend = false.
    let near = get(&server, "/v1/health/service/web?cached&near=_agent").await;
    assert_eq!(header(&near, "x-consul-query-backend"), "blocking-query");
    // Other endpoints never stream.
    let services = get(&server, "/v1/catalog/services?cached&index=1&wait=1ms").await;
    assert_eq!(
        header(&services, "x-consul-query-backend"),
        "blocking-query"
    );
    sim.set_streaming(false);
    let off = get(&server, "/v1/health/service/web?cached").await;
    assert_eq!(header(&off, "x-consul-query-backend"), "blocking-query");
}

#[tokio::test]
async fn blocking_query_returns_when_the_service_changes() {
    let (sim, server) = demo().await;
    let index = index_of(&get(&server, "/v1/health/service/web").await);
    let waiter = start_blocking_get(
        &server,
        &format!("/v1/health/service/web?index={index}&wait=60s"),
    )
    .await;
    sim.set_check("node-2", "service:web-2", "critical");
    let response = blocking_answer(waiter).await;
    assert!(index_of(&response) > index);
    let body: Value = response.json().await.expect("json");
    let web2 = body
        .as_array()
        .expect("array")
        .iter()
        .find(|entry| entry["Service"]["ID"] == "web-2")
        .expect("web-2 still listed without ?passing");
    assert_eq!(web2["Checks"][1]["Status"], "critical");
}

#[tokio::test]
async fn blocking_query_ignores_other_services_and_times_out_with_unchanged_index() {
    let (sim, server) = demo().await;
    let first = get(&server, "/v1/health/service/web").await;
    let index = index_of(&first);
    let before = first.text().await.expect("body");
    sim.set_check("node-3", "service:db-1", "warning");
    let response = get(
        &server,
        &format!("/v1/health/service/web?index={index}&wait=300ms"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(index_of(&response), index);
    assert_eq!(response.text().await.expect("body"), before);
}

#[tokio::test]
async fn blocking_kv_get_wakes_when_a_missing_key_appears() {
    let sim = Sim::new();
    let server = start(&sim).await;
    let missing = get(&server, "/v1/kv/dnsfront/hosts").await;
    assert_eq!(missing.status(), 404);
    let index = index_of(&missing);
    assert_eq!(missing.text().await.expect("body"), "");
    let url = format!(
        "{}/v1/kv/dnsfront/hosts?index={index}&wait=60s",
        server.url()
    );
    let waiter = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    sim.kv_put("dnsfront/hosts", "snapshot");
    let response = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("returned on change")
        .expect("task")
        .expect("response");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body[0]["Value"], "c25hcHNob3Q=");
}

#[tokio::test]
async fn status_fault_with_count_fails_then_recovers() {
    let (sim, server) = demo().await;
    sim.inject(Fault::fail_next("/v1/health/service/web", 2, 503, "boom"));
    for _ in 0..2 {
        let response = get(&server, "/v1/health/service/web").await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.text().await.expect("body"), "boom");
    }
    assert_eq!(get(&server, "/v1/health/service/web").await.status(), 200);

    sim.inject(Fault::rate_limited("/v1/health/"));
    let response = get(&server, "/v1/health/service/api").await;
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.text().await.expect("body"),
        "rate limit exceeded, try again later or against a different server"
    );
    assert_eq!(get(&server, "/v1/catalog/services").await.status(), 200);
    sim.clear_faults();
    assert_eq!(get(&server, "/v1/health/service/api").await.status(), 200);
}

#[tokio::test]
async fn garbage_and_truncated_bodies_do_not_parse() {
    let (sim, server) = demo().await;
    sim.inject(Fault::garbage("/v1/health/service/web"));
    let response = get(&server, "/v1/health/service/web").await;
    assert_eq!(response.status(), 200);
    assert!(serde_json::from_str::<Value>(&response.text().await.expect("body")).is_err());
    sim.clear_faults();

    let full = get(&server, "/v1/health/service/web")
        .await
        .text()
        .await
        .expect("body");
    sim.inject(Fault::truncated("/v1/health/service/web"));
    let cut = get(&server, "/v1/health/service/web")
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(cut.len(), full.len() / 2);
    assert!(serde_json::from_str::<Value>(&cut).is_err());
}

#[tokio::test]
async fn index_faults_go_backwards_and_to_zero() {
    let (sim, server) = demo().await;
    let index = index_of(&get(&server, "/v1/health/service/web").await);
    sim.inject(Fault::index_backwards("/v1/health/service/web"));
    let response = get(&server, "/v1/health/service/web").await;
    assert!(index_of(&response) < index, "index went backwards");
    sim.clear_faults();
    sim.inject(Fault::index_zero("/v1/health/service/web"));
    assert_eq!(index_of(&get(&server, "/v1/health/service/web").await), 0);
    sim.clear_faults();
    assert_eq!(
        index_of(&get(&server, "/v1/health/service/web").await),
        index
    );
}

#[tokio::test]
async fn no_leader_fails_default_reads_but_serves_stale() {
    let (sim, server) = demo().await;
    sim.inject(Fault::NoLeader);
    sim.inject(Fault::LastContact { millis: 90_000 });
    let response = get(&server, "/v1/health/service/web").await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.text().await.expect("body"), "No cluster leader");
    let response = get(&server, "/v1/health/service/web?stale").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-consul-knownleader"), "false");
    assert_eq!(header(&response, "x-consul-lastcontact"), "90000");
    let leader: Value = get(&server, "/v1/status/leader")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(leader, "");
    sim.clear_faults();
    let leader: Value = get(&server, "/v1/status/leader")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(leader, "127.0.0.1:8300");
}

#[tokio::test]
async fn hang_never_answers() {
    let (sim, server) = demo().await;
    sim.inject(Fault::hang("/v1/health/service/web"));
    test_support::install_crypto_provider();
    let result = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client")
        .get(format!("{}/v1/health/service/web", server.url()))
        .send()
        .await;
    assert!(result.expect_err("hung request times out").is_timeout());
    assert_eq!(get(&server, "/v1/health/service/api").await.status(), 200);
}

#[tokio::test]
async fn down_refuses_connections_closes_keepalive_and_comes_back_on_the_same_port() {
    let (_sim, server) = demo().await;
    let client = client();
    let url = format!("{}/v1/health/service/web", server.url());
    assert_eq!(client.get(&url).send().await.expect("up").status(), 200);

    server.set_down(true);
    let error = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect_err("connection refused while down");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        client.get(&url).send().await.is_err(),
        "the pooled keep-alive connection was closed too"
    );

    server.set_down(false);
    assert_eq!(
        client.get(&url).send().await.expect("up again").status(),
        200
    );
    server.shutdown().await;
}

#[tokio::test]
async fn counts_requests_by_path_prefix() {
    let (sim, server) = demo().await;
    get(&server, "/v1/health/service/web?passing").await;
    get(&server, "/v1/health/service/web").await;
    get(&server, "/v1/health/service/api").await;
    get(&server, "/v1/catalog/services").await;
    assert_eq!(sim.request_count("/v1/health/service/web"), 2);
    assert_eq!(sim.request_count("/v1/health/"), 3);
    let requests = sim.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/v1/health/service/web");
    assert_eq!(requests[0].query, "passing");
    sim.reset_requests();
    assert_eq!(sim.request_count("/"), 0);
}

async fn get_with_header(url: &str, name: &str, value: &str) -> reqwest::Response {
    client()
        .get(url)
        .header(name, value)
        .send()
        .await
        .expect("response")
}

#[tokio::test]
async fn acl_tokens_are_required_when_configured() {
    let (sim, server) = demo().await;
    sim.set_acl_tokens(&["s3cret"]);
    let url = format!("{}/v1/health/service/web", server.url());
    let response = client().get(&url).send().await.expect("response");
    assert_eq!(response.status(), 403);
    assert_eq!(header(&response, "x-consul-default-acl-policy"), "deny");
    assert_eq!(response.text().await.expect("body"), "ACL not found");
    let response = get_with_header(&url, "X-Consul-Token", "wrong").await;
    assert_eq!(response.status(), 403);
    let response = get_with_header(&url, "X-Consul-Token", "s3cret").await;
    assert_eq!(response.status(), 200);
    let response = get_with_header(&url, "Authorization", "bearer s3cret").await;
    assert_eq!(response.status(), 200);
    sim.set_acl_tokens(&[]);
    assert_eq!(
        client().get(&url).send().await.expect("response").status(),
        200
    );
}

#[tokio::test]
async fn catalog_endpoints_have_consul_shapes() {
    let (_sim, server) = demo().await;
    let services: Value = get(&server, "/v1/catalog/services")
        .await
        .json()
        .await
        .expect("json");
    let mut web_tags: Vec<&str> = services["web"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|tag| tag.as_str().expect("str"))
        .collect();
    web_tags.sort_unstable();
    assert_eq!(web_tags, ["canary", "primary"]);
    assert!(services.get("redis").is_some());

    let entries: Value = get(&server, "/v1/catalog/service/api")
        .await
        .json()
        .await
        .expect("json");
    let entries = entries.as_array().expect("array");
    assert_eq!(entries.len(), 2);
    for field in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServiceAddress",
        "ServicePort",
        "ServiceWeights",
        "ServiceMeta",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(entries[0].get(field).is_some(), "catalog field {field}");
    }
    assert_eq!(entries[0]["ServicePort"], 8080);
    assert!(
        entries[0]["ServiceAddress"]
            .as_str()
            .expect("addr")
            .starts_with("10.1.0.")
    );

    let nodes: Value = get(&server, "/v1/catalog/nodes")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        nodes.as_array().expect("array").len(),
        7,
        "3 servers and 4 nodes"
    );
    let node: Value = get(&server, "/v1/catalog/node/node-6")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(node["Node"]["Address"], "fd00::16");
    assert!(node["Services"].get("redis-1").is_some());
    let response = get(&server, "/v1/catalog/node/ghost").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "null");

    let agent: Value = get(&server, "/v1/agent/self")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(agent["Config"]["Version"], "1.16.4");
    assert_eq!(agent["Config"]["Datacenter"], "dc1");
    assert_eq!(agent["Config"]["NodeName"], "sim-agent");
}

#[tokio::test]
async fn deregister_and_node_address_changes_show_up() {
    let (sim, server) = demo().await;
    let index = index_of(&get(&server, "/v1/health/service/web").await);
    sim.set_node_address("node-1", "10.0.0.99");
    let response = get(&server, "/v1/health/service/web").await;
    assert!(index_of(&response) > index);
    let body: Value = response.json().await.expect("json");
    let web1 = body
        .as_array()
        .expect("array")
        .iter()
        .find(|entry| entry["Service"]["ID"] == "web-1")
        .expect("web-1");
    assert_eq!(web1["Node"]["Address"], "10.0.0.99");
    sim.deregister("node-1", "web-1");
    let body: Value = get(&server, "/v1/health/service/web")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(service_ids(&body), ["web-2", "web-3"]);
}
