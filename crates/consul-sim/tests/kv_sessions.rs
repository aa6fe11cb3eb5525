//! KV and sessions: over real HTTP, plus paused-time TTL expiry in-process.

use std::time::Duration;

use bytes::Bytes;
use consul_sim::{Fault, Sim, SimServer};
use serde_json::Value;

mod common;

use common::{call, client, get, start};

async fn put(
    server: &SimServer,
    path_and_query: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client()
        .put(format!("{}{path_and_query}", server.url()))
        .body(body)
        .send()
        .await
        .expect("response")
}

async fn put_bool(server: &SimServer, path_and_query: &str, body: &'static str) -> bool {
    let response = put(server, path_and_query, body).await;
    assert_eq!(response.status(), 200, "PUT {path_and_query}");
    response.json().await.expect("true/false")
}

async fn get_json(server: &SimServer, path_and_query: &str) -> (u16, Value) {
    let response = get(server, path_and_query).await;
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create_session(server: &SimServer, body: &str) -> String {
    let response = put(server, "/v1/session/create", body.to_owned()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["ID"].as_str().expect("ID").to_owned()
}

#[tokio::test]
async fn kv_put_get_raw_recurse_keys_and_delete() {
    let sim = Sim::new();
    let server = start(&sim).await;
    assert!(put_bool(&server, "/v1/kv/app/hosts/data?flags=42", "hello").await);
    assert!(put_bool(&server, "/v1/kv/app/hosts/checksum", "abc").await);
    assert!(put_bool(&server, "/v1/kv/app/other", "").await);

    let (status, body) = get_json(&server, "/v1/kv/app/hosts/data").await;
    assert_eq!(status, 200);
    let entry = &body[0];
    assert_eq!(entry["Key"], "app/hosts/data");
    assert_eq!(entry["Flags"], 42);
    assert_eq!(entry["Value"], "aGVsbG8=");
    assert_eq!(entry["LockIndex"], 0);
    assert!(
        entry.get("Session").is_none(),
        "Session omitted when unlocked"
    );
    assert!(entry["CreateIndex"].as_u64().expect("index") >= 1);

    let (_, body) = get_json(&server, "/v1/kv/app/other").await;
    assert!(body[0]["Value"].is_null(), "empty value is null");

    let response = client()
        .get(format!("{}/v1/kv/app/hosts/data?raw", server.url()))
        .send()
        .await
        .expect("response");
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.expect("body"), "hello");

    let (_, body) = get_json(&server, "/v1/kv/app/?recurse").await;
    assert_eq!(body.as_array().expect("array").len(), 3);
    let (_, body) = get_json(&server, "/v1/kv/app/?keys&separator=/").await;
    assert_eq!(body, serde_json::json!(["app/hosts/", "app/other"]));

    let response = client()
        .delete(format!("{}/v1/kv/app/hosts?recurse", server.url()))
        .send()
        .await
        .expect("response");
    assert_eq!(response.json::<Value>().await.expect("json"), true);
    let response = client()
        .get(format!("{}/v1/kv/app/hosts/data", server.url()))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("x-consul-index"));
    assert_eq!(response.text().await.expect("body"), "");
}

#[tokio::test]
async fn kv_cas_is_create_only_at_zero_and_compares_modify_index() {
    let sim = Sim::new();
    let server = start(&sim).await;
    assert!(put_bool(&server, "/v1/kv/k?cas=0", "one").await);
    assert!(
        !put_bool(&server, "/v1/kv/k?cas=0", "two").await,
        "cas=0 only creates"
    );
    let (_, body) = get_json(&server, "/v1/kv/k").await;
    let modify_index = body[0]["ModifyIndex"].as_u64().expect("index");
    assert!(
        !put_bool(
            &server,
            &format!("/v1/kv/k?cas={}", modify_index + 100),
            "x"
        )
        .await
    );
    assert!(put_bool(&server, &format!("/v1/kv/k?cas={modify_index}"), "three").await);
    assert!(
        !put_bool(&server, &format!("/v1/kv/k?cas={modify_index}"), "four").await,
        "index moved on"
    );
    assert_eq!(sim.kv_get("k"), Some(Bytes::from_static(b"three")));

    let response = put(&server, "/v1/kv/k?cas=1&acquire=abc", "x").await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn kv_put_over_512k_is_413() {
    let sim = Sim::new();
    let server = start(&sim).await;
    let response = put(&server, "/v1/kv/big", vec![b'x'; 524_289]).await;
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.text().await.expect("body"),
        "Request body(524289 bytes) too large, max size: 524288 bytes. See https://developer.hashicorp.com/consul/docs/agent/config/config-files#kv_max_value_size."
    );
    assert!(sim.kv_get("big").is_none());
    let response = put(&server, "/v1/kv/big", vec![b'x'; 524_288]).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn acquire_and_release_follow_the_lock_protocol() {
    let sim = Sim::new();
    let server = start(&sim).await;
    let first = create_session(&server, r#"{"Name":"publisher","TTL":"15s"}"#).await;
    let second = create_session(&server, "").await;
    assert_ne!(first, second);

    assert!(put_bool(&server, &format!("/v1/kv/lock?acquire={first}"), "me").await);
    assert!(!put_bool(&server, &format!("/v1/kv/lock?acquire={second}"), "you").await);
    let (_, body) = get_json(&server, "/v1/kv/lock").await;
    assert_eq!(body[0]["Session"], first.as_str());
    assert_eq!(body[0]["LockIndex"], 1);
    assert!(!put_bool(&server, &format!("/v1/kv/lock?release={second}"), "").await);
    assert!(put_bool(&server, &format!("/v1/kv/lock?release={first}"), "").await);
    let (_, body) = get_json(&server, "/v1/kv/lock").await;
    assert!(body[0].get("Session").is_none());
    assert_eq!(body[0]["LockIndex"], 1, "release keeps LockIndex");
    assert!(put_bool(&server, &format!("/v1/kv/lock?acquire={second}"), "you").await);
    let (_, body) = get_json(&server, "/v1/kv/lock").await;
    assert_eq!(body[0]["LockIndex"], 2);

    let (status, info) = get_json(&server, &format!("/v1/session/info/{first}")).await;
    assert_eq!(status, 200);
    assert_eq!(info[0]["Name"], "publisher");
    assert_eq!(info[0]["TTL"], "15s");
    assert_eq!(info[0]["Behavior"], "release");
    assert_eq!(info[0]["LockDelay"], 15_000_000_000_u64);

    let response = put(&server, &format!("/v1/session/renew/{first}"), "").await;
    assert_eq!(response.status(), 200);
    let renewed: Value = response.json().await.expect("json");
    assert_eq!(renewed[0]["ID"], first.as_str());
    let response = put(
        &server,
        "/v1/session/renew/00000000-0000-0000-0000-000000000000",
        "",
    )
    .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.text().await.expect("body"),
        "Session id '00000000-0000-0000-0000-000000000000' not found"
    );

    let response = put(&server, &format!("/v1/session/destroy/{second}"), "").await;
    assert_eq!(response.json::<Value>().await.expect("json"), true);
    let (_, body) = get_json(&server, "/v1/kv/lock").await;
    assert!(
        body[0].get("Session").is_none(),
        "destroy releases held keys"
    );

    let response = put(&server, "/v1/session/create", r#"{"TTL":"5s"}"#).await;
    assert_eq!(response.status(), 500, "TTL below 10s is rejected");
    let response = put(&server, "/v1/kv/lock?acquire=not-a-session", "").await;
    assert_eq!(response.status(), 500);
}

#[tokio::test]
async fn no_leader_fails_writes() {
    let sim = Sim::new();
    let server = start(&sim).await;
    sim.inject(Fault::NoLeader);
    let response = put(&server, "/v1/kv/k", "v").await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.text().await.expect("body"), "No cluster leader");
}

fn json(response: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).expect("json body")
}

#[tokio::test(start_paused = true)]
async fn session_ttl_expiry_after_twice_the_ttl_releases_the_lock() {
    let sim = Sim::new();
    let created = call(
        &sim,
        "PUT",
        "/v1/session/create",
        r#"{"TTL":"10s","LockDelay":"0s"}"#,
    )
    .await;
    let session = json(&created)["ID"].as_str().expect("ID").to_owned();
    let acquire = format!("/v1/kv/leader?acquire={session}");
    let acquired = call(&sim, "PUT", &acquire, "node-a").await;
    assert_eq!(json(&acquired), true);
    assert_eq!(sim.kv_session("leader").as_deref(), Some(session.as_str()));

    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        sim.kv_session("leader").as_deref(),
        Some(session.as_str()),
        "still held after TTL (Consul waits 2×TTL)"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(sim.kv_session("leader"), None, "released after 2×TTL");
    assert_eq!(sim.kv_get("leader"), Some(Bytes::from_static(b"node-a")));
    let renew = format!("/v1/session/renew/{session}");
    let renewed = call(&sim, "PUT", &renew, "").await;
    assert_eq!(renewed.status(), 404);
}

#[tokio::test(start_paused = true)]
async fn renewing_keeps_a_session_alive_and_delete_behavior_deletes_keys() {
    let sim = Sim::new();
    let created = call(
        &sim,
        "PUT",
        "/v1/session/create",
        r#"{"TTL":"10s","Behavior":"delete"}"#,
    )
    .await;
    let session = json(&created)["ID"].as_str().expect("ID").to_owned();
    let acquire: String = format!("/v1/kv/ephemeral?acquire={session}");
    assert_eq!(json(&call(&sim, "PUT", &acquire, "x").await), true);
    let renew: String = format!("/v1/session/renew/{session}");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(call(&sim, "PUT", &renew, "").await.status(), 200);
    }
    assert!(
        sim.kv_get("ephemeral").is_some(),
        "renewed session keeps its key"
    );
    tokio::time::sleep(Duration::from_secs(21)).await;
    assert!(
        sim.kv_get("ephemeral").is_none(),
        "delete behavior removes the key"
    );
    let acquire_again = call(&sim, "PUT", &acquire, "y").await;
    assert_eq!(acquire_again.status(), 500, "session is gone");
}

#[tokio::test(start_paused = true)]
async fn lock_delay_blocks_reacquire_after_invalidation() {
    let sim = Sim::new();
    let first =
        json(&call(&sim, "PUT", "/v1/session/create", r#"{"LockDelay":"15s"}"#).await)["ID"]
            .as_str()
            .expect("ID")
            .to_owned();
    let second = json(&call(&sim, "PUT", "/v1/session/create", "").await)["ID"]
        .as_str()
        .expect("ID")
        .to_owned();
    let take_first: String = format!("/v1/kv/l?acquire={first}");
    let take_second: String = format!("/v1/kv/l?acquire={second}");
    let destroy: String = format!("/v1/session/destroy/{first}");
    assert_eq!(json(&call(&sim, "PUT", &take_first, "").await), true);
    assert_eq!(json(&call(&sim, "PUT", &destroy, "").await), true);
    assert_eq!(
        json(&call(&sim, "PUT", &take_second, "").await),
        false,
        "within lock-delay"
    );
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(json(&call(&sim, "PUT", &take_second, "").await), true);
}

#[tokio::test(start_paused = true)]
async fn delay_fault_and_blocking_wait_use_tokio_time() {
    let sim = Sim::new();
    sim.inject(Fault::delay("/v1/catalog/", Duration::from_secs(3)));
    let started = tokio::time::Instant::now();
    let response = call(&sim, "GET", "/v1/catalog/services", "").await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_secs(3));
    sim.clear_faults();

    let index: u64 = response.headers()["x-consul-index"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("index");
    let uri: String = format!("/v1/catalog/services?index={index}");
    let started = tokio::time::Instant::now();
    let response = call(&sim, "GET", &uri, "").await;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_secs(300),
        "default wait is 5m"
    );
    assert!(
        started.elapsed() < Duration::from_secs(301),
        "jitter is off by default"
    );
}

#[tokio::test]
async fn router_serves_in_process() {
    use tower::ServiceExt as _;
    let sim = Sim::new();
    sim.kv_put("a", "b");
    let request = http::Request::builder()
        .uri("/v1/kv/a?raw")
        .body(axum::body::Body::empty())
        .expect("request");
    let response = sim.router().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), 200);
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .expect("body");
    assert_eq!(&body[..], b"b");
}
