//! Load on Consul at fleet scale (issue 14 §3), against consul-sim over real
//! HTTP on 127.0.0.1, read from the simulator's request log: watch reads ride
//! the agent's streaming view while first fetches, negatives and polls are
//! plain reads; failures of watches in flight together are one breaker event;
//! node names come from health data already held.

mod common;

use std::time::Duration;

use consul_sim::{Fault, Registration, RequestRecord, Sim, SimServer};
use dnsfront_catalog::{
    Cache, CircuitState, Config, EntryFreshness, Freshness, Lookup, RefreshMode, RefreshState,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use common::{bounded, eventually, param, requests_to, start_cache, watch_config};

const WEB: &str = "/v1/health/service/web";

async fn serve(sim: &Sim) -> SimServer {
    sim.serve("127.0.0.1:0".parse().expect("valid addr"))
        .await
        .expect("sim serves")
}

fn has(record: &RequestRecord, name: &str) -> bool {
    param(record, name).is_some()
}

fn register(sim: &Sim, service: &str, node: &str, address: &str) {
    sim.register(
        Registration::new(service)
            .id(&format!("{service}-{node}"))
            .node(node, address)
            .port(80),
    );
}

/// Keeps `names` hot (services, or nodes when `nodes`) by asking every 50 ms.
fn keep_asking(cache: &Cache, names: &[String], nodes: bool) -> CancellationToken {
    let stop = CancellationToken::new();
    let (cache, names, token) = (cache.clone(), names.to_vec(), stop.clone());
    tokio::spawn(async move {
        while !token.is_cancelled() {
            for name in &names {
                if nodes {
                    let _ = cache.node(name, None).await;
                } else {
                    let _ = cache.service(name, None).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    stop
}

fn found_fresh<T>(lookup: &Lookup<T>) -> bool {
    matches!(lookup, Lookup::Found(_, Freshness::Fresh))
}

/// Watch is the default. A name's first fetch is a plain read; its watch's
/// blocking reads carry `?cached`, which the agent serves from its streaming
/// view (one server subscription per service per agent), and `explain` shows
/// that backend.
#[tokio::test]
async fn watch_is_the_default_and_its_blocking_reads_are_streamed() {
    assert_eq!(Config::default().refresh, RefreshMode::Watch);
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = serve(&sim).await;
    let (cache, shutdown) = start_cache(watch_config(), &server);
    assert!(found_fresh(&bounded(cache.service("web", None)).await));
    let asking = keep_asking(&cache, &["web".to_owned()], false);
    eventually(Duration::from_secs(3), "a streamed watch answered", || {
        cache
            .describe_service("web", None)
            .is_some_and(|info| info.query_backend == Some("streaming"))
    })
    .await;
    let info = cache.describe_service("web", None).expect("cached");
    assert_eq!(info.refresh, RefreshState::Watching);
    assert!(matches!(info.agent_cache, Some("hit" | "miss")), "{info:?}");
    let records = requests_to(&sim, WEB);
    let first = records.first().expect("first fetch");
    assert!(
        !has(first, "index") && !has(first, "cached"),
        "the first fetch is plain: {first:?}"
    );
    assert!(
        records
            .iter()
            .all(|record| has(record, "index") == has(record, "cached")),
        "blocking reads, and only they, carry ?cached: {records:?}"
    );
    assert!(records.iter().any(|record| has(record, "index")));
    assert!(
        records
            .iter()
            .all(|record| !has(record, "near") && !has(record, "max_stale")),
        "nothing that turns streaming off or sends agents to the leader: {records:?}"
    );
    asking.cancel();
    shutdown.cancel();
}

/// Poll mode stays selectable but never reads `?cached`: a poll answered from
/// the agent's streaming view would succeed with its last data while every
/// server is gone. Read from a server, a poll fails with it, so answers go
/// stale and the breaker opens.
#[tokio::test]
async fn poll_reads_reach_the_servers_so_an_outage_is_seen() {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = serve(&sim).await;
    let config = Config {
        refresh: RefreshMode::Poll,
        ..watch_config()
    };
    let (cache, shutdown) = start_cache(config, &server);
    assert!(found_fresh(&bounded(cache.service("web", None)).await));
    let asking = keep_asking(&cache, &["web".to_owned()], false);
    eventually(Duration::from_secs(3), "polled a few times", || {
        requests_to(&sim, WEB).len() >= 4
    })
    .await;
    let records = requests_to(&sim, WEB);
    assert!(
        records
            .iter()
            .all(|record| !has(record, "cached") && !has(record, "index")),
        "{records:?}"
    );
    let info = cache.describe_service("web", None).expect("cached");
    assert_eq!(info.query_backend, Some("blocking-query"));
    assert_eq!(info.refresh, RefreshState::Polling);

    // Every server gone: the agent answers 500 to what it must forward.
    sim.inject(Fault::status(
        "/v1/health/service/",
        500,
        "rpc error making call: No known Consul servers",
    ));
    eventually(
        Duration::from_secs(5),
        "the breaker sees the outage",
        || cache.breaker_state().state != CircuitState::Closed,
    )
    .await;
    eventually(Duration::from_secs(3), "answers go stale", || {
        cache
            .describe_service("web", None)
            .is_some_and(|info| info.freshness == EntryFreshness::Failed)
    })
    .await;
    // Past its fresh window (2 refresh intervals): the last good data, stale.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        bounded(cache.service("web", None)).await,
        Lookup::Found(_, Freshness::Stale)
    ));
    asking.cancel();
    shutdown.cancel();
}

/// A server restart breaks every stream of an agent at once: each held watch
/// gets one HTTP 500. Those failures were in flight together, so they are one
/// breaker event: the breaker stays closed and a never-seen name is still
/// fetched. A sustained outage still opens it.
#[tokio::test]
async fn failures_of_watches_in_flight_together_are_one_breaker_event() {
    const WATCHES: usize = 12;
    let sim = Sim::new();
    let names: Vec<String> = (0..WATCHES).map(|i| format!("svc-{i}")).collect();
    // One node hosts them all, so one node change wakes every watch at once.
    for name in &names {
        register(&sim, name, "n1", "10.0.0.1");
    }
    register(&sim, "late", "n2", "10.0.0.2");
    register(&sim, "later", "n2", "10.0.0.2");
    let server = serve(&sim).await;
    let config = Config {
        watch_wait: Duration::from_secs(30),
        backoff_min: Duration::from_millis(300),
        backoff_max: Duration::from_secs(1),
        ..watch_config()
    };
    let (cache, shutdown) = start_cache(config, &server);
    for name in &names {
        assert!(found_fresh(&bounded(cache.service(name, None)).await));
    }
    let asking = keep_asking(&cache, &names, false);
    eventually(Duration::from_secs(5), "every name held in a watch", || {
        names.iter().all(|name| {
            requests_to(&sim, &format!("/v1/health/service/{name}"))
                .iter()
                .any(|record| has(record, "index"))
        })
    })
    .await;

    // The restart: the watches' next requests are all in flight (held a
    // second) and each gets one 500.
    sim.inject(Fault::delay("/v1/health/service/", Duration::from_secs(1)));
    sim.inject(Fault::fail_next(
        "/v1/health/service/",
        WATCHES,
        500,
        "rpc error: stream reset by server restart",
    ));
    sim.set_node_address("n1", "10.0.0.11");
    eventually(Duration::from_secs(5), "every watch failed once", || {
        names.iter().all(|name| {
            cache
                .describe_service(name, None)
                .is_some_and(|info| info.last_error.is_some())
        })
    })
    .await;
    let breaker = cache.breaker_state();
    assert_eq!(breaker.state, CircuitState::Closed, "{breaker:?}");
    assert!(breaker.consecutive_failures <= 1, "{breaker:?}");
    sim.clear_faults();
    assert!(
        found_fresh(&bounded(cache.service("late", None)).await),
        "a never-seen name is still fetched"
    );
    eventually(Duration::from_secs(5), "watches recovered", || {
        names.iter().all(|name| {
            cache
                .describe_service(name, None)
                .is_some_and(|info| info.freshness == EntryFreshness::Fresh)
        })
    })
    .await;

    // A real outage: every retry fails too, each after the one before.
    sim.inject(Fault::status(
        "/v1/health/service/",
        500,
        "rpc error: No known Consul servers",
    ));
    sim.set_node_address("n1", "10.0.0.12");
    eventually(
        Duration::from_secs(10),
        "a sustained outage opens it",
        || cache.breaker_state().state != CircuitState::Closed,
    )
    .await;
    assert!(matches!(
        bounded(cache.service("later", None)).await,
        Lookup::Unavailable
    ));
    asking.cancel();
    shutdown.cancel();
}

/// `NODE.node` from health data already held: a node that a cached service's
/// instances run on is answered without a `/v1/catalog/node` read (never
/// streamed: each is a server RPC), with the data that read would give, and
/// follows the service's watch.
#[tokio::test]
async fn a_node_named_by_a_cached_service_is_answered_without_a_catalog_read() {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("n1", "10.0.0.1")
            .node_meta("rack", "r7")
            .node_tagged_address("wan", "192.0.2.1")
            .port(80),
    );
    let server = serve(&sim).await;
    let (cache, shutdown) = start_cache(watch_config(), &server);
    assert!(found_fresh(&bounded(cache.service("web", None)).await));
    let Lookup::Found(node, Freshness::Fresh) = bounded(cache.node("N1", None)).await else {
        panic!("n1 answered");
    };
    assert_eq!(
        sim.request_count("/v1/catalog/node/"),
        0,
        "{:?}",
        sim.requests()
    );
    let info = cache.describe_node("n1", None).expect("cached");
    assert_eq!(info.from_service.as_deref(), Some("web"));

    // The same data a catalog read gives (a cache that holds no service).
    let (reader, reader_shutdown) = start_cache(watch_config(), &server);
    let Lookup::Found(read, _) = bounded(reader.node("n1", None)).await else {
        panic!("n1 read");
    };
    assert_eq!(*node, *read);
    assert_eq!(sim.request_count("/v1/catalog/node/n1"), 1);
    reader_shutdown.cancel();

    let asking = keep_asking(&cache, &["web".to_owned()], false);
    let asking_node = keep_asking(&cache, &["n1".to_owned()], true);
    eventually(Duration::from_secs(3), "web watched", || {
        cache
            .describe_service("web", None)
            .is_some_and(|info| info.refresh == RefreshState::Watching)
    })
    .await;
    sim.set_node_address("n1", "10.0.0.99");
    let moved: std::net::IpAddr = "10.0.0.99".parse().expect("ip");
    let mut address = None;
    let started = Instant::now();
    while address != Some(moved) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node change not followed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Lookup::Found(node, _) = cache.node("n1", None).await {
            address = node.address;
        }
    }
    assert_eq!(
        sim.request_count("/v1/catalog/node/n1"),
        1,
        "only the reader's"
    );
    asking.cancel();
    asking_node.cancel();
    shutdown.cancel();
}

/// A node no cached service names is read from `/v1/catalog/node` and then
/// re-read every `node_refresh_interval`, not every `refresh_interval`.
#[tokio::test]
async fn a_node_no_cached_service_names_is_read_and_polled_slowly() {
    let sim = Sim::new();
    register(&sim, "db", "db1", "10.0.0.7");
    let server = serve(&sim).await;
    let config = Config {
        node_refresh_interval: Duration::from_secs(3),
        ..watch_config()
    };
    let (cache, shutdown) = start_cache(config, &server);
    let Lookup::Found(node, Freshness::Fresh) = bounded(cache.node("db1", None)).await else {
        panic!("db1 found");
    };
    assert_eq!(node.address, Some("10.0.0.7".parse().expect("ip")));
    assert!(matches!(
        bounded(cache.node("ghost", None)).await,
        Lookup::NotFound(_)
    ));
    let asking = keep_asking(&cache, &["db1".to_owned()], true);
    // Five refresh intervals: a poll would have read it five more times.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(sim.request_count("/v1/catalog/node/db1"), 1);
    let info = cache.describe_node("db1", None).expect("cached");
    assert_eq!(info.from_service, None);
    assert_eq!(info.refresh, RefreshState::Polling);
    assert_eq!(info.freshness, EntryFreshness::Fresh);
    assert_eq!(info.query_backend, Some("blocking-query"));
    eventually(Duration::from_secs(5), "re-read after its interval", || {
        sim.request_count("/v1/catalog/node/db1") >= 2
    })
    .await;
    asking.cancel();
    shutdown.cancel();
}
