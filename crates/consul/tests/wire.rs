//! T3 wire tests: the reqwest client against consul-sim over real HTTP on 127.0.0.1.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use consul_sim::{Fault, Registration, Sim, SimServer};
use dnsfront_consul::{
    Client, Config, Error, HealthStatus, KvPutOptions, QueryOptions, SessionBehavior,
    SessionRequest, Token, Weights, next_index,
};
use test_support::capture_metrics;

const SECRET: &str = "3f0c1d52-wire-test-s3cret";

/// Upper bound for any single test step, so a broken deadline fails instead of hanging.
async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("step finished within 10s")
}

async fn start() -> (Sim, SimServer) {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("n1", "10.0.0.1")
            .port(80)
            .tags(&["primary", "v2"])
            .weights(10, 1)
            .check("service:web-1", "passing"),
    );
    sim.register(
        Registration::new("web")
            .id("web-2")
            .node("n2", "10.0.0.2")
            .port(8080)
            .check("service:web-2", "critical"),
    );
    let server = sim
        .serve("127.0.0.1:0".parse().expect("valid addr"))
        .await
        .expect("sim serves");
    (sim, server)
}

fn client_for(server: &SimServer) -> Client {
    client_with(server, |_| {})
}

fn client_with(server: &SimServer, edit: impl FnOnce(&mut Config)) -> Client {
    let mut config = Config {
        address: server.url(),
        request_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    edit(&mut config);
    Client::new(config).expect("valid config")
}

fn last_query(sim: &Sim, path_prefix: &str) -> String {
    sim.requests()
        .into_iter()
        .rev()
        .find(|record| record.path.starts_with(path_prefix))
        .map(|record| record.query)
        .expect("request was logged")
}

#[tokio::test]
async fn health_service_decodes_instances_and_meta() {
    let (sim, server) = start().await;
    let client = client_for(&server);

    let response = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect("health read");

    assert_eq!(
        response.value.len(),
        2,
        "critical instances are returned without ?passing"
    );
    let web1 = response
        .value
        .iter()
        .find(|entry| entry.service.id == "web-1")
        .expect("web-1 present");
    assert_eq!(web1.node.node, "n1");
    assert_eq!(web1.node.address, "10.0.0.1");
    assert_eq!(web1.node.datacenter, "dc1");
    assert_eq!(web1.service.service, "web");
    assert_eq!(web1.service.port, 80);
    assert_eq!(web1.service.tags, ["primary", "v2"]);
    assert_eq!(
        web1.service.weights,
        Some(Weights {
            passing: 10,
            warning: 1
        })
    );
    let service_check = web1
        .checks
        .iter()
        .find(|check| check.check_id == "service:web-1")
        .expect("service check present");
    assert_eq!(service_check.status, HealthStatus::Passing);
    assert_eq!(service_check.service_id, "web-1");
    assert!(
        response.meta.index >= 1,
        "index header read: {:?}",
        response.meta
    );
    assert!(response.meta.known_leader);
    assert!(last_query(&sim, "/v1/health/service/web").contains("stale"));
}

#[tokio::test]
async fn passing_option_filters_on_the_server() {
    let (sim, server) = start().await;
    let client = client_for(&server);
    let opts = QueryOptions {
        passing: true,
        ..QueryOptions::default()
    };

    let response = bounded(client.health_service("web", &opts))
        .await
        .expect("health read");

    let ids: Vec<&str> = response
        .value
        .iter()
        .map(|entry| entry.service.id.as_str())
        .collect();
    assert_eq!(ids, ["web-1"]);
    assert!(last_query(&sim, "/v1/health/service/web").contains("passing"));
}

#[tokio::test]
async fn unknown_service_is_an_empty_list_with_an_index() {
    let (_sim, server) = start().await;
    let client = client_for(&server);

    let response = bounded(client.health_service("nope", &QueryOptions::default()))
        .await
        .expect("health read");

    assert!(response.value.is_empty());
    assert!(response.meta.index >= 1);
}

#[tokio::test]
async fn blocking_query_outlives_request_timeout_and_wakes_on_change() {
    let (sim, server) = start().await;
    // The per-call deadline is shorter than the wait: it must be extended by wait + wait/16.
    let client = client_with(&server, |config| {
        config.request_timeout = Duration::from_millis(200)
    });
    let first = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect("first read");

    let opts = QueryOptions {
        index: Some(first.meta.index),
        wait: Some(Duration::from_millis(400)),
        ..QueryOptions::default()
    };
    let unchanged = bounded(client.health_service("web", &opts))
        .await
        .expect("blocking read times out on the server, not in the client");
    assert_eq!(unchanged.meta.index, first.meta.index);
    let query = last_query(&sim, "/v1/health/service/web");
    assert!(
        query.contains(&format!("index={}", first.meta.index)),
        "{query}"
    );
    assert!(query.contains("wait=400ms"), "{query}");

    let opts = QueryOptions {
        wait: Some(Duration::from_secs(5)),
        ..opts
    };
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.health_service("web", &opts).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    sim.register(
        Registration::new("web")
            .id("web-3")
            .node("n3", "10.0.0.3")
            .port(80)
            .check("service:web-3", "passing"),
    );
    let changed = bounded(waiting)
        .await
        .expect("task joined")
        .expect("blocking read");
    assert!(changed.meta.index > first.meta.index);
    assert_eq!(changed.value.len(), 3);
    assert_eq!(
        next_index(first.meta.index, changed.meta.index),
        changed.meta.index
    );
}

#[tokio::test]
async fn index_going_backwards_is_kept_and_zero_clamped_by_next_index() {
    let (sim, server) = start().await;
    let client = client_for(&server);
    let first = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect("first read");

    sim.inject(Fault::index_backwards("/v1/health/service/web"));
    let backwards = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect("read");
    assert!(backwards.meta.index < first.meta.index);
    // Issue 14 §3: the answer is a full read; block on its lower index.
    assert_eq!(
        next_index(first.meta.index, backwards.meta.index),
        backwards.meta.index.max(1)
    );

    sim.clear_faults();
    sim.inject(Fault::index_zero("/v1/health/service/web"));
    let zero = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect("read");
    assert_eq!(zero.meta.index, 0);
    assert_eq!(next_index(0, zero.meta.index), 1);
}

#[tokio::test]
async fn no_cluster_leader_is_a_retryable_no_leader_error() {
    let (sim, server) = start().await;
    sim.inject(Fault::no_cluster_leader("/v1/health/"));
    let client = client_for(&server);

    let error = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("500 No cluster leader");

    assert!(
        matches!(&error, Error::NoLeader { endpoint } if endpoint == "/v1/health/service/web"),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn stale_reads_survive_a_lost_leader_and_default_reads_do_not() {
    let (sim, server) = start().await;
    sim.inject(Fault::NoLeader);

    let stale = client_for(&server);
    let response = bounded(stale.health_service("web", &QueryOptions::default()))
        .await
        .expect("stale read works without a leader");
    assert!(!response.meta.known_leader);

    let consistent = client_with(&server, |config| config.stale = false);
    let error = bounded(consistent.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("leader read fails");
    assert!(matches!(error, Error::NoLeader { .. }), "{error:?}");

    assert_eq!(bounded(stale.status_leader()).await.expect("leader"), "");
}

#[tokio::test]
async fn too_many_requests_is_rate_limited_and_retryable() {
    let (sim, server) = start().await;
    sim.inject(Fault::rate_limited("/v1/health/"));
    let client = client_for(&server);

    let error = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("429");

    assert!(matches!(error, Error::RateLimited { .. }), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn forbidden_is_not_retryable() {
    let (sim, server) = start().await;
    sim.inject(Fault::forbidden("/v1/catalog/"));
    let client = client_for(&server);

    let error = bounded(client.catalog_services(&QueryOptions::default()))
        .await
        .expect_err("403");

    assert!(
        matches!(&error, Error::Forbidden { endpoint, message }
            if endpoint == "/v1/catalog/services" && message.contains("Permission denied")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn other_statuses_keep_code_and_message() {
    let (sim, server) = start().await;
    sim.inject(Fault::unavailable("/v1/health/"));
    let client = client_for(&server);

    let error = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("503");

    assert!(
        matches!(&error, Error::Status { status: 503, message, .. } if message.contains("leader")),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn garbage_and_truncated_bodies_are_decode_errors() {
    let (sim, server) = start().await;
    let client = client_for(&server);

    sim.inject(Fault::garbage("/v1/health/"));
    let error = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("garbage");
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    assert!(!error.is_retryable());

    sim.clear_faults();
    sim.inject(Fault::truncated("/v1/health/"));
    let error = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("truncated");
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
}

#[tokio::test]
async fn connection_refused_is_unreachable() {
    let (_sim, server) = start().await;
    let client = client_for(&server);
    server.set_down(true);

    let error = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("server is down");

    assert!(
        matches!(&error, Error::Unreachable { endpoint, .. } if endpoint == "/v1/health/service/web"),
        "{error:?}"
    );
    assert!(error.is_retryable());

    server.set_down(false);
    bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect("recovers once the server is back");
}

#[tokio::test]
async fn hanging_server_times_out_at_the_request_deadline() {
    let (sim, server) = start().await;
    sim.inject(Fault::hang("/v1/health/"));
    let client = client_with(&server, |config| {
        config.request_timeout = Duration::from_millis(200)
    });

    let error = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("hang");

    assert!(
        matches!(&error, Error::Timeout { endpoint } if endpoint == "/v1/health/service/web"),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn token_is_sent_as_header_and_never_leaks_into_errors() {
    let (sim, server) = start().await;
    sim.set_acl_tokens(&[SECRET]);

    let anonymous = client_for(&server);
    let error = bounded(anonymous.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("ACLs on, no token");
    assert!(matches!(error, Error::Forbidden { .. }), "{error:?}");

    let with_token = client_with(&server, |config| {
        config.token = Some(Token::new(SECRET.to_owned()))
    });
    let response = bounded(with_token.health_service("web", &QueryOptions::default()))
        .await
        .expect("token accepted");
    assert_eq!(response.value.len(), 2);
    let query = last_query(&sim, "/v1/health/service/web");
    assert!(
        !query.contains(SECRET),
        "token must not travel in the URL: {query}"
    );

    let wrong = client_with(&server, |config| {
        config.token = Some(Token::new(format!("{SECRET}-wrong")))
    });
    let error = bounded(wrong.kv_get("some/key", &QueryOptions::default()))
        .await
        .expect_err("wrong token");
    assert!(matches!(error, Error::Forbidden { .. }), "{error:?}");
    for text in [
        format!("{error}"),
        format!("{error:?}"),
        format!("{wrong:?}"),
    ] {
        assert!(!text.contains(SECRET), "token leaked: {text}");
    }
}

#[tokio::test]
async fn unknown_datacenter_is_reported_with_its_name() {
    let (_sim, server) = start().await;
    let client = client_for(&server);
    let opts = QueryOptions {
        datacenter: Some("mars-1".to_owned()),
        ..QueryOptions::default()
    };

    let error = bounded(client.health_service("web", &opts))
        .await
        .expect_err("no such dc");

    assert!(
        matches!(&error, Error::UnknownDatacenter { datacenter } if datacenter == "mars-1"),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn other_datacenter_is_selected_with_dc_parameter() {
    let (sim, server) = start().await;
    sim.add_datacenter("dc2");
    sim.register(
        Registration::new("web")
            .id("web-dc2")
            .node("m1", "10.9.0.1")
            .port(80)
            .datacenter("dc2")
            .check("service:web-dc2", "passing"),
    );
    let client = client_for(&server);
    let opts = QueryOptions {
        datacenter: Some("dc2".to_owned()),
        ..QueryOptions::default()
    };

    let response = bounded(client.health_service("web", &opts))
        .await
        .expect("dc2 read");

    let ids: Vec<&str> = response
        .value
        .iter()
        .map(|entry| entry.service.id.as_str())
        .collect();
    assert_eq!(ids, ["web-dc2"]);
    assert_eq!(response.value[0].node.datacenter, "dc2");
}

#[tokio::test]
async fn kv_get_decodes_values_keeps_slashes_and_maps_404_to_none() {
    let (sim, server) = start().await;
    sim.kv_put("dnsfront/hosts/data", &b"10.0.0.1 web.service.consul\n"[..]);
    let client = client_for(&server);

    let present = bounded(client.kv_get("dnsfront/hosts/data", &QueryOptions::default()))
        .await
        .expect("kv read");
    let pair = present.value.expect("key exists");
    assert_eq!(pair.key, "dnsfront/hosts/data");
    assert_eq!(
        pair.value.as_deref(),
        Some(&b"10.0.0.1 web.service.consul\n"[..])
    );
    assert!(pair.modify_index >= 1);
    assert!(sim.request_count("/v1/kv/dnsfront/hosts/data") >= 1);

    let missing = bounded(client.kv_get("dnsfront/hosts/nope", &QueryOptions::default()))
        .await
        .expect("404 is not an error");
    assert_eq!(missing.value, None);
    assert!(
        missing.meta.index >= 1,
        "a 404 still carries the index to block on"
    );
}

#[tokio::test]
async fn catalog_endpoints_decode() {
    let (_sim, server) = start().await;
    let client = client_for(&server);

    let services = bounded(client.catalog_services(&QueryOptions::default()))
        .await
        .expect("services");
    let web_tags = services.value.get("web").expect("web listed");
    assert!(web_tags.contains(&"primary".to_owned()), "{web_tags:?}");

    let nodes = bounded(client.catalog_nodes(&QueryOptions::default()))
        .await
        .expect("nodes");
    let addresses: BTreeMap<&str, &str> = nodes
        .value
        .iter()
        .map(|node| (node.node.as_str(), node.address.as_str()))
        .collect();
    assert_eq!(addresses.get("n1"), Some(&"10.0.0.1"));
    assert_eq!(addresses.get("n2"), Some(&"10.0.0.2"));

    let node = bounded(client.catalog_node("n1", &QueryOptions::default()))
        .await
        .expect("node");
    let node = node.value.expect("n1 exists");
    assert_eq!(node.node.address, "10.0.0.1");
    assert_eq!(
        node.services.get("web-1").map(|service| service.port),
        Some(80)
    );

    let unknown = bounded(client.catalog_node("nope", &QueryOptions::default()))
        .await
        .expect("unknown node is not an error");
    assert_eq!(unknown.value, None);
}

#[tokio::test]
async fn status_leader_and_agent_self_decode() {
    let (sim, server) = start().await;
    let client = client_for(&server);

    let leader = bounded(client.status_leader()).await.expect("leader");
    assert!(leader.contains(':'), "ip:port expected, got {leader:?}");

    let agent = bounded(client.agent_self()).await.expect("agent self");
    assert_eq!(agent.datacenter, "dc1");
    assert_eq!(agent.node_name, sim.agent_node());
    assert_eq!(agent.version, consul_sim::CONSUL_VERSION);
}

// === KV writes and sessions ===

const KEY: &str = "dnsfront/hosts/data";

fn session_request(name: &str) -> SessionRequest {
    SessionRequest {
        name: name.to_owned(),
        ttl: Duration::from_secs(15),
        behavior: SessionBehavior::Release,
        lock_delay: Duration::ZERO,
    }
}

fn last_request(sim: &Sim, path_prefix: &str) -> consul_sim::RequestRecord {
    sim.requests()
        .into_iter()
        .rev()
        .find(|record| record.path.starts_with(path_prefix))
        .expect("request was logged")
}

#[tokio::test]
async fn kv_put_round_trips_value_and_flags_without_stale() {
    let (sim, server) = start().await;
    // `stale` is on by default: it must apply to reads only.
    let client = client_for(&server);
    let value = b"\x00\x01 binary snapshot \xff".to_vec();

    let written = bounded(client.kv_put(
        KEY,
        &value,
        &KvPutOptions {
            flags: Some(7),
            ..KvPutOptions::default()
        },
    ))
    .await
    .expect("put");
    assert!(written);
    let put = last_request(&sim, "/v1/kv/dnsfront/hosts/data");
    assert_eq!(put.method, "PUT");
    assert_eq!(put.query, "flags=7");
    assert_eq!(sim.kv_get(KEY).as_deref(), Some(&value[..]));

    let pair = bounded(client.kv_get(KEY, &QueryOptions::default()))
        .await
        .expect("get")
        .value
        .expect("key exists");
    assert_eq!(pair.value.as_deref(), Some(&value[..]));
    assert_eq!(pair.flags, 7);
    assert_eq!(pair.session, None);
    assert!(last_query(&sim, "/v1/kv/dnsfront/hosts/data").contains("stale"));

    // An empty value is stored as empty and read back as `None`.
    assert!(
        bounded(client.kv_put("dnsfront/empty", b"", &KvPutOptions::default()))
            .await
            .expect("empty put")
    );
    let empty = bounded(client.kv_get("dnsfront/empty", &QueryOptions::default()))
        .await
        .expect("get")
        .value
        .expect("key exists");
    assert_eq!(empty.value, None);
}

#[tokio::test]
async fn cas_put_and_delete_succeed_only_on_the_current_index() {
    let (sim, server) = start().await;
    let client = client_for(&server);
    let cas = |cas| KvPutOptions {
        cas: Some(cas),
        ..KvPutOptions::default()
    };

    assert!(
        bounded(client.kv_put(KEY, b"v1", &cas(0)))
            .await
            .expect("create-only put"),
        "cas=0 creates a missing key"
    );
    assert_eq!(last_request(&sim, "/v1/kv/").query, "cas=0");
    assert!(
        !bounded(client.kv_put(KEY, b"v2", &cas(0)))
            .await
            .expect("create-only put on an existing key"),
        "cas=0 must not overwrite"
    );
    let first = bounded(client.kv_get(KEY, &QueryOptions::default()))
        .await
        .expect("get")
        .value
        .expect("exists");
    assert_eq!(first.value.as_deref(), Some(&b"v1"[..]));

    assert!(
        bounded(client.kv_put(KEY, b"v2", &cas(first.modify_index)))
            .await
            .expect("cas put")
    );
    assert!(
        !bounded(client.kv_put(KEY, b"v3", &cas(first.modify_index)))
            .await
            .expect("stale cas put"),
        "an outdated ModifyIndex must fail"
    );
    assert_eq!(sim.kv_get(KEY).as_deref(), Some(&b"v2"[..]));

    let second = bounded(client.kv_get(KEY, &QueryOptions::default()))
        .await
        .expect("get")
        .value
        .expect("exists");
    assert!(second.modify_index > first.modify_index);
    assert!(
        !bounded(client.kv_delete(KEY, Some(first.modify_index)))
            .await
            .expect("stale cas delete")
    );
    assert_eq!(sim.kv_get(KEY).as_deref(), Some(&b"v2"[..]));
    assert!(
        bounded(client.kv_delete(KEY, Some(second.modify_index)))
            .await
            .expect("cas delete")
    );
    let delete = last_request(&sim, "/v1/kv/");
    assert_eq!(delete.method, "DELETE");
    assert_eq!(delete.query, format!("cas={}", second.modify_index));
    assert_eq!(sim.kv_get(KEY), None);

    sim.kv_put("dnsfront/other", &b"x"[..]);
    assert!(
        bounded(client.kv_delete("dnsfront/other", None))
            .await
            .expect("delete")
    );
    assert_eq!(sim.kv_get("dnsfront/other"), None);
}

#[tokio::test]
async fn acquire_and_release_follow_the_session_lock() {
    let (sim, server) = start().await;
    let client = client_for(&server);
    let first = bounded(client.session_create(&session_request("publisher-a")))
        .await
        .expect("first session");
    let second = bounded(client.session_create(&session_request("publisher-b")))
        .await
        .expect("second session");
    assert!(!first.is_empty());
    assert_ne!(first, second);

    let acquire = |session: &str| KvPutOptions {
        acquire: Some(session.to_owned()),
        ..KvPutOptions::default()
    };
    let release = |session: &str| KvPutOptions {
        release: Some(session.to_owned()),
        ..KvPutOptions::default()
    };

    assert!(
        bounded(client.kv_put(KEY, b"leader a", &acquire(&first)))
            .await
            .expect("acquire a")
    );
    assert_eq!(
        last_request(&sim, "/v1/kv/").query,
        format!("acquire={first}")
    );
    let held = bounded(client.kv_get(KEY, &QueryOptions::default()))
        .await
        .expect("get")
        .value
        .expect("exists");
    assert_eq!(held.session.as_deref(), Some(first.as_str()));
    assert_eq!(held.lock_index, 1);

    assert!(
        !bounded(client.kv_put(KEY, b"leader b", &acquire(&second)))
            .await
            .expect("acquire b"),
        "a lock held by another session cannot be acquired"
    );
    assert!(
        !bounded(client.kv_put(KEY, b"leader b", &release(&second)))
            .await
            .expect("release by a non-holder"),
        "only the holder can release"
    );
    assert_eq!(sim.kv_session(KEY).as_deref(), Some(first.as_str()));

    assert!(
        bounded(client.kv_put(KEY, b"released", &release(&first)))
            .await
            .expect("release a")
    );
    let released = bounded(client.kv_get(KEY, &QueryOptions::default()))
        .await
        .expect("get")
        .value
        .expect("exists");
    assert_eq!(released.session, None);
    assert_eq!(released.value.as_deref(), Some(&b"released"[..]));

    assert!(
        bounded(client.kv_put(KEY, b"leader b", &acquire(&second)))
            .await
            .expect("acquire b after release")
    );
    // Destroying the holder (behavior release) clears the lock.
    bounded(client.session_destroy(&second))
        .await
        .expect("destroy");
    assert_eq!(sim.kv_session(KEY), None);
}

#[tokio::test]
async fn session_create_sends_ttl_lock_delay_and_behavior() {
    let (sim, server) = start().await;
    let client = client_for(&server);
    let id = bounded(client.session_create(&SessionRequest {
        name: "ephemeral".to_owned(),
        ttl: Duration::from_secs(20),
        behavior: SessionBehavior::Delete,
        lock_delay: Duration::from_secs(1),
    }))
    .await
    .expect("create");
    assert_eq!(
        last_request(&sim, "/v1/session/").method,
        "PUT",
        "session calls are writes"
    );
    let acquire = KvPutOptions {
        acquire: Some(id.clone()),
        ..KvPutOptions::default()
    };
    assert!(
        bounded(client.kv_put("dnsfront/ephemeral", b"x", &acquire))
            .await
            .expect("acquire")
    );
    bounded(client.session_destroy(&id)).await.expect("destroy");
    assert_eq!(
        sim.kv_get("dnsfront/ephemeral"),
        None,
        "Behavior delete was sent: the locked key is deleted"
    );

    // The simulator rejects TTLs outside Consul's 10s..24h: the TTL really travels as a duration.
    let error = bounded(client.session_create(&SessionRequest {
        ttl: Duration::from_secs(5),
        ..session_request("too-short")
    }))
    .await
    .expect_err("TTL below 10s");
    assert!(
        matches!(&error, Error::Status { status: 500, message, .. } if message.contains("TTL")),
        "{error:?}"
    );
}

#[tokio::test]
async fn renew_reports_an_expired_or_destroyed_session_as_false() {
    let (sim, server) = start().await;
    let client = client_for(&server);
    let id = bounded(client.session_create(&session_request("renewer")))
        .await
        .expect("create");

    assert!(bounded(client.session_renew(&id)).await.expect("renew"));
    assert_eq!(
        last_request(&sim, "/v1/session/renew/").path,
        format!("/v1/session/renew/{id}")
    );

    bounded(client.session_destroy(&id)).await.expect("destroy");
    assert!(
        !bounded(client.session_renew(&id))
            .await
            .expect("a missing session is not an error"),
    );
    // Destroy is idempotent.
    bounded(client.session_destroy(&id))
        .await
        .expect("second destroy");

    // A 404 that is not Consul's "session not found" stays an error.
    sim.inject(Fault::status(
        "/v1/session/renew/",
        404,
        "404 page not found",
    ));
    let error = bounded(client.session_renew("whatever"))
        .await
        .expect_err("foreign 404");
    assert!(
        matches!(error, Error::Status { status: 404, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn oversized_value_is_a_413_status_naming_the_size() {
    let (sim, server) = start().await;
    let client = client_for(&server);
    let value = vec![b'x'; 600 * 1024];

    let error = bounded(client.kv_put(KEY, &value, &KvPutOptions::default()))
        .await
        .expect_err("600 KiB is over the 512 KiB limit");
    match &error {
        Error::Status {
            endpoint,
            status,
            message,
        } => {
            assert_eq!(*status, 413);
            assert_eq!(endpoint, "/v1/kv/dnsfront/hosts/data");
            assert!(message.contains("614400"), "{message}");
        }
        other => panic!("expected a 413 status, got {other:?}"),
    }
    assert!(!error.is_retryable());
    assert_eq!(sim.kv_get(KEY), None);
}

#[tokio::test]
async fn blocking_kv_get_wakes_when_the_key_changes() {
    let (sim, server) = start().await;
    let client = client_with(&server, |config| {
        config.request_timeout = Duration::from_millis(200)
    });
    assert!(
        bounded(client.kv_put(KEY, b"generation 1", &KvPutOptions::default()))
            .await
            .expect("put")
    );
    let first = bounded(client.kv_get(KEY, &QueryOptions::default()))
        .await
        .expect("get");

    let opts = QueryOptions {
        index: Some(first.meta.index),
        wait: Some(Duration::from_secs(5)),
        ..QueryOptions::default()
    };
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.kv_get(KEY, &opts).await }
    });
    // Past the 200 ms request timeout: the read must still be parked on the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "blocking read returned early");
    let query = last_query(&sim, "/v1/kv/dnsfront/hosts/data");
    assert!(
        query.contains(&format!("index={}", first.meta.index)),
        "{query}"
    );

    assert!(
        bounded(client.kv_put(KEY, b"generation 2", &KvPutOptions::default()))
            .await
            .expect("second put")
    );
    let changed = bounded(waiting)
        .await
        .expect("task joined")
        .expect("blocking read");
    assert!(changed.meta.index > first.meta.index);
    let pair = changed.value.expect("key exists");
    assert_eq!(pair.value.as_deref(), Some(&b"generation 2"[..]));
    assert!(pair.modify_index > first.value.expect("exists").modify_index);
}

#[tokio::test]
async fn writes_send_the_token_header_and_never_leak_it() {
    let (sim, server) = start().await;
    sim.set_acl_tokens(&[SECRET]);
    let client = client_with(&server, |config| {
        config.token = Some(Token::new(SECRET.to_owned()))
    });
    let id = bounded(client.session_create(&session_request("tokened")))
        .await
        .expect("create with token");
    assert!(bounded(client.session_renew(&id)).await.expect("renew"));
    assert!(
        bounded(client.kv_put(KEY, b"v", &KvPutOptions::default()))
            .await
            .expect("put with token")
    );
    assert!(bounded(client.kv_delete(KEY, None)).await.expect("delete"));
    bounded(client.session_destroy(&id))
        .await
        .expect("destroy with token");
    for record in sim.requests() {
        assert!(!record.query.contains(SECRET), "token in URL: {record:?}");
    }

    let wrong = client_with(&server, |config| {
        config.token = Some(Token::new(format!("{SECRET}-wrong")))
    });
    let mut errors = vec![
        bounded(wrong.kv_put(KEY, b"v", &KvPutOptions::default()))
            .await
            .expect_err("put"),
        bounded(wrong.kv_delete(KEY, None))
            .await
            .expect_err("delete"),
        bounded(wrong.session_create(&session_request("x")))
            .await
            .expect_err("create"),
        bounded(wrong.session_destroy("x"))
            .await
            .expect_err("destroy"),
    ];
    errors.push(bounded(wrong.session_renew("x")).await.expect_err("renew"));
    for error in errors {
        assert!(matches!(error, Error::Forbidden { .. }), "{error:?}");
        let text = format!("{error} {error:?}");
        assert!(!text.contains(SECRET), "token leaked: {text}");
    }
}

// === metrics ===

#[test]
fn requests_are_counted_by_endpoint_and_outcome() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ((), recorded) = capture_metrics(|| {
        runtime.block_on(async {
            let (sim, server) = start().await;
            let client = client_for(&server);
            bounded(client.health_service("web", &QueryOptions::default()))
                .await
                .expect("ok");
            let id = bounded(client.session_create(&session_request("metrics")))
                .await
                .expect("session");
            bounded(client.session_renew(&id)).await.expect("renew");
            bounded(client.kv_put("k", b"v", &KvPutOptions::default()))
                .await
                .expect("put");
            bounded(client.kv_delete("k", None)).await.expect("delete");
            sim.inject(Fault::rate_limited("/v1/kv/"));
            bounded(client.kv_get("k", &QueryOptions::default()))
                .await
                .expect_err("429");
        });
    });

    assert_eq!(
        recorded.counter(
            "consul.requests_total",
            &[("endpoint", "health_service"), ("outcome", "ok")]
        ),
        1
    );
    assert_eq!(
        recorded.counter(
            "consul.requests_total",
            &[("endpoint", "kv"), ("outcome", "rate_limited")]
        ),
        1
    );
    for (endpoint, count) in [("kv_put", 1), ("kv_delete", 1), ("session", 2)] {
        assert_eq!(
            recorded.counter(
                "consul.requests_total",
                &[("endpoint", endpoint), ("outcome", "ok")]
            ),
            count,
            "{endpoint}"
        );
    }
    assert_eq!(
        recorded.histogram_samples(
            "consul.request_duration_seconds",
            &[("endpoint", "health_service")]
        ),
        1
    );
}

// === health state ===

#[test]
fn health_state_decodes_checks_blocks_on_check_changes_and_is_counted() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ((), recorded) = capture_metrics(|| {
        runtime.block_on(async {
            let (sim, server) = start().await;
            let client = client_with(&server, |config| {
                config.request_timeout = Duration::from_millis(200)
            });

            let critical = bounded(client.health_state("critical", &QueryOptions::default()))
                .await
                .expect("critical checks");
            let ids: Vec<&str> = critical
                .value
                .iter()
                .map(|check| check.check_id.as_str())
                .collect();
            assert_eq!(ids, ["service:web-2"]);
            assert_eq!(critical.value[0].node, "n2");
            assert_eq!(critical.value[0].status, HealthStatus::Critical);
            assert_eq!(critical.value[0].service_id, "web-2");
            assert_eq!(critical.value[0].service_name, "web");
            assert!(last_query(&sim, "/v1/health/state/critical").contains("stale"));

            let all = bounded(client.health_state("any", &QueryOptions::default()))
                .await
                .expect("all checks");
            assert_eq!(all.value.len(), 2);
            assert!(all.meta.index >= 1);

            // Blocks past the request timeout and wakes on a check change, which does not
            // move the catalog services index.
            let services = bounded(client.catalog_services(&QueryOptions::default()))
                .await
                .expect("services");
            let opts = QueryOptions {
                index: Some(all.meta.index),
                wait: Some(Duration::from_secs(5)),
                ..QueryOptions::default()
            };
            let waiting = tokio::spawn({
                let client = client.clone();
                async move { client.health_state("any", &opts).await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!waiting.is_finished(), "waits for a check change");
            sim.set_check("n1", "service:web-1", "critical");
            let changed = bounded(waiting)
                .await
                .expect("task joined")
                .expect("blocking read");
            assert!(changed.meta.index > all.meta.index);
            assert_eq!(
                next_index(all.meta.index, changed.meta.index),
                changed.meta.index
            );
            assert!(
                changed
                    .value
                    .iter()
                    .all(|check| check.status == HealthStatus::Critical)
            );
            let query = last_query(&sim, "/v1/health/state/any");
            assert!(
                query.contains(&format!("index={}", all.meta.index)),
                "{query}"
            );
            let services_after = bounded(client.catalog_services(&QueryOptions::default()))
                .await
                .expect("services");
            assert_eq!(
                services_after.meta.index, services.meta.index,
                "the catalog index did not see the check change"
            );
        });
    });

    assert_eq!(
        recorded.counter(
            "consul.requests_total",
            &[("endpoint", "health_state"), ("outcome", "ok")]
        ),
        3
    );
}
