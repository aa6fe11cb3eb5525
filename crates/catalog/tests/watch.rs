//! Refresh modes against consul-sim over real HTTP on 127.0.0.1: watch mode
//! (blocking queries), poll mode and the fast path's witnesses, counted with the
//! simulator's request log.

mod common;

use std::time::Duration;

use consul_sim::{Fault, Registration, RequestRecord, Sim, SimServer};
use dnsfront_catalog::{
    Cache, CircuitState, Config, EntryFreshness, Lookup, RefreshMode, RefreshState,
};
use tokio_util::sync::CancellationToken;

use common::{bounded, eventually, param, requests_to, start_cache, watch_config};

const WEB: &str = "/v1/health/service/web";

async fn start_sim() -> (Sim, SimServer) {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("n1", "10.0.0.1")
            .port(80)
            .check("service:web-1", "passing"),
    );
    let server = sim
        .serve("127.0.0.1:0".parse().expect("valid addr"))
        .await
        .expect("sim serves");
    (sim, server)
}

fn count(sim: &Sim, path: &str) -> usize {
    requests_to(sim, path).len()
}

async fn instances(cache: &Cache, service: &str) -> usize {
    match cache.service(service, None).await {
        Lookup::Found(instances, _) => instances.len(),
        Lookup::NotFound(_) => 0,
        Lookup::Unavailable => panic!("{service} unavailable"),
    }
}

fn watched(cache: &Cache, service: &str) -> bool {
    cache
        .describe_service(service, None)
        .is_some_and(|info| info.refresh == RefreshState::Watching)
}

/// Waits up to 2 s for `service` to be watched.
async fn until_watched(cache: &Cache, service: &str) {
    eventually(
        Duration::from_secs(2),
        &format!("{service} watched"),
        || watched(cache, service),
    )
    .await;
}

/// How many instances the cache holds for `service` (0 when not cached).
fn cached_instances(cache: &Cache, service: &str) -> usize {
    cache
        .describe_service(service, None)
        .map_or(0, |info| info.instances)
}

/// Registers one more instance of `service`, without checks.
fn register(sim: &Sim, service: &str, id: &str, node: &str, address: &str) {
    sim.register(
        Registration::new(service)
            .id(id)
            .node(node, address)
            .port(80),
    );
}

/// Keeps `services` hot by asking for them every 50 ms until cancelled.
fn keep_asking(cache: &Cache, services: &[&str]) -> CancellationToken {
    let stop = CancellationToken::new();
    let cache = cache.clone();
    let services: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
    let token = stop.clone();
    tokio::spawn(async move {
        while !token.is_cancelled() {
            for service in &services {
                let _ = cache.service(service, None).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    stop
}

#[tokio::test]
async fn changes_reach_the_cache_within_a_second_in_watch_mode() {
    let (sim, server) = start_sim().await;
    // Long wait and the default 10 s refresh interval: only a blocking query
    // woken by the change can explain an update within a second or two.
    let config = Config {
        refresh: RefreshMode::Watch,
        watch_wait: Duration::from_secs(60),
        watch_min_interval: Duration::from_millis(100),
        ..Config::default()
    };
    let (cache, shutdown) = start_cache(config, &server);
    assert_eq!(bounded(instances(&cache, "web")).await, 1);
    assert!(matches!(
        bounded(cache.node("n1", None)).await,
        Lookup::Found(..)
    ));
    // n1 is answered from web's health data (no /v1/catalog/node read, which
    // is never streamed), and follows web's watch.
    eventually(Duration::from_secs(3), "web watched", || {
        watched(&cache, "web")
    })
    .await;
    assert_eq!(
        cache
            .describe_node("n1", None)
            .and_then(|info| info.from_service),
        Some("web".to_owned())
    );
    assert_eq!(count(&sim, "/v1/catalog/node/n1"), 0);
    // Let the loops' first blocking requests reach the simulator.
    tokio::time::sleep(Duration::from_millis(100)).await;

    sim.register(
        Registration::new("web")
            .id("web-2")
            .node("n2", "10.0.0.2")
            .port(80)
            .check("service:web-2", "passing"),
    );
    let mut seen = 0;
    let new_instance = eventually(Duration::from_secs(2), "new instance visible", || {
        seen = cached_instances(&cache, "web");
        seen == 2
    })
    .await;

    sim.set_check("n2", "service:web-2", "critical");
    let critical = eventually(Duration::from_secs(2), "critical instance dropped", || {
        cached_instances(&cache, "web") == 1
    })
    .await;

    // (A node follows its service's watch: see nodes.rs.)
    eprintln!("watch latency: new instance {new_instance:?}, critical check {critical:?}");
    let info = cache.describe_service("web", None).expect("cached");
    assert_eq!(info.freshness, EntryFreshness::Fresh);
    assert!(info.consul_index > 0);
    shutdown.cancel();
}

#[tokio::test]
async fn an_unchanged_service_costs_one_request_per_wait() {
    let (sim, server) = start_sim().await;
    let (cache, shutdown) = start_cache(watch_config(), &server);
    assert_eq!(bounded(instances(&cache, "web")).await, 1);
    let asking = keep_asking(&cache, &["web"]);
    until_watched(&cache, "web").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = count(&sim, WEB);
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let records = requests_to(&sim, WEB);
    let during = &records[before..];
    eprintln!(
        "watch mode: {} requests in {window:?} with wait=300ms ({} for the first fetch and start)",
        during.len(),
        before
    );
    // One per wait period (3 s / 300 ms = 10), give or take scheduling.
    assert!(
        (7..=12).contains(&during.len()),
        "{} requests: {during:?}",
        during.len()
    );
    for record in during {
        assert!(param(record, "index").is_some_and(|index| index != "0"));
        assert_eq!(param(record, "wait"), Some("300ms"));
        assert!(param(record, "stale").is_some(), "stale as configured");
    }
    asking.cancel();
    shutdown.cancel();
}

#[tokio::test]
async fn index_going_backwards_is_blocked_on_and_recovers() {
    let (sim, server) = start_sim().await;
    let config = Config {
        refresh_interval: Duration::from_millis(500),
        ..watch_config()
    };
    let (cache, shutdown) = start_cache(config, &server);
    assert_eq!(bounded(instances(&cache, "web")).await, 1);
    let asking = keep_asking(&cache, &["web"]);
    until_watched(&cache, "web").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = count(&sim, WEB);

    sim.inject(Fault::index_backwards(WEB));
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let records = requests_to(&sim, WEB);
    let during = &records[before..];
    eprintln!(
        "index backwards: {} requests in {window:?}: {:?}",
        during.len(),
        during.iter().map(|r| r.query.as_str()).collect::<Vec<_>>()
    );
    assert!(
        during.iter().all(|r| param(r, "index").is_some()),
        "a backwards index is blocked on, never re-read without one (issue 14 §3)"
    );
    assert!(
        records.iter().all(|r| param(r, "index") != Some("0")),
        "never index=0"
    );
    // The fault makes every reply return at once: the loop must degrade to
    // about one request per refresh_interval (500 ms) after a burst of 2, not spin.
    assert!(
        during.len() <= 9,
        "{} requests while churning",
        during.len()
    );

    sim.clear_faults();
    register(&sim, "web", "web-2", "n2", "10.0.0.2");
    eventually(
        Duration::from_secs(2),
        "change visible after recovery",
        || cached_instances(&cache, "web") == 2,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let settled = count(&sim, WEB);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = count(&sim, WEB) - settled;
    let last = requests_to(&sim, WEB).pop().expect("requests");
    assert_eq!(
        param(&last, "index"),
        Some(sim.raft_index().to_string().as_str()),
        "blocking on the real index again"
    );
    assert!(after <= 7, "{after} requests in 1.5 s after recovery");
    asking.cancel();
    shutdown.cancel();
}

#[tokio::test]
async fn index_zero_is_clamped_to_one_and_rate_limited() {
    let (sim, server) = start_sim().await;
    let config = Config {
        refresh_interval: Duration::from_millis(500),
        ..watch_config()
    };
    let (cache, shutdown) = start_cache(config, &server);
    sim.inject(Fault::index_zero(WEB));
    assert_eq!(bounded(instances(&cache, "web")).await, 1);
    let asking = keep_asking(&cache, &["web"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let records = requests_to(&sim, WEB);
    assert!(records.len() >= 2, "{records:?}");
    // The first fetch stored index 0, which is "no index": the loop starts with a
    // non-blocking read; from then on a returned 0 is clamped to 1.
    assert!(
        param(&records[0], "index").is_none(),
        "first read non-blocking"
    );
    assert!(
        records
            .iter()
            .filter_map(|r| param(r, "index"))
            .all(|index| index == "1"),
        "index clamped to 1: {records:?}"
    );
    assert!(
        records.iter().any(|r| param(r, "index") == Some("1")),
        "blocks on index 1: {records:?}"
    );
    // First fetch + burst of 2 + one per 500 ms (unlimited, it would spin).
    assert!(records.len() <= 7, "{} requests in 1.5 s", records.len());
    asking.cancel();
    shutdown.cancel();
}

#[tokio::test]
async fn idle_names_stop_being_watched_and_resume_when_asked_again() {
    let (sim, server) = start_sim().await;
    let config = Config {
        watch_wait: Duration::from_secs(5),
        idle_timeout: Duration::from_millis(600),
        ..watch_config()
    };
    let (cache, shutdown) = start_cache(config, &server);
    assert_eq!(bounded(instances(&cache, "web")).await, 1);
    until_watched(&cache, "web").await;
    // Nobody asks any more: the loop ends, abandoning its 5 s blocking query.
    eventually(Duration::from_secs(2), "watch stopped", || {
        cache.watch_count() == 0
    })
    .await;
    let info = cache.describe_service("web", None).expect("still cached");
    assert_eq!(info.refresh, RefreshState::Idle);
    let stopped_at = count(&sim, WEB);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(count(&sim, WEB), stopped_at, "no requests for an idle name");

    // The refresher now sleeps up to a minute (nothing is asked); the name
    // asked again wakes it, so its watch starts at once.
    assert_eq!(bounded(instances(&cache, "web")).await, 1);
    until_watched(&cache, "web").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(count(&sim, WEB) > stopped_at);
    shutdown.cancel();
}

#[tokio::test]
async fn consul_failing_backs_off_without_a_storm_then_recovers() {
    let (sim, server) = start_sim().await;
    let names: Vec<String> = (0..10).map(|i| format!("svc-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        register(
            &sim,
            name,
            &format!("{name}-1"),
            &format!("m{i}"),
            &format!("10.1.0.{i}"),
        );
    }
    let (cache, shutdown) = start_cache(watch_config(), &server);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for name in &refs {
        assert_eq!(bounded(instances(&cache, name)).await, 1);
    }
    let asking = keep_asking(&cache, &refs);
    eventually(Duration::from_secs(2), "all watched", || {
        cache.watch_count() == 10
    })
    .await;

    sim.reset_requests();
    sim.inject(Fault::no_cluster_leader("/v1/"));
    // Blocking queries already in flight end within one wait (300 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mid = sim.requests().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = sim.requests().len();
    let last_second = total - mid;
    eprintln!(
        "Consul failing: {total} requests in 2.5 s for 10 watched names, {last_second} in the last second"
    );
    // Without the shared breaker each of the 10 loops would retry every
    // 100–400 ms (25+ per second); with it, one probe per backoff (>= 200 ms).
    assert!(
        last_second <= 6,
        "{last_second} requests in the last second"
    );
    assert!(total <= 30, "{total} requests in 2.5 s");
    let breaker = cache.breaker_state();
    assert_ne!(breaker.state, CircuitState::Closed, "{breaker:?}");
    let info = cache.describe_service("svc-0", None).expect("cached");
    assert_eq!(info.freshness, EntryFreshness::Failed);
    assert_eq!(info.last_error.as_ref().map(|e| e.kind), Some("no_leader"));
    // Answers keep coming from the last good data.
    assert!(matches!(
        cache.service("svc-0", None).await,
        Lookup::Found(..)
    ));
    let json = serde_json::to_string(&info).expect("serializable");
    assert!(json.contains("\"freshness\":\"failed\""), "{json}");

    sim.clear_faults();
    eventually(Duration::from_secs(3), "all fresh again", || {
        cache.breaker_state().state == CircuitState::Closed
            && refs.iter().all(|name| {
                cache.describe_service(name, None).is_some_and(|info| {
                    info.freshness == EntryFreshness::Fresh
                        && info.refresh == RefreshState::Watching
                })
            })
    })
    .await;
    register(&sim, "svc-3", "svc-3-2", "m3b", "10.1.1.3");
    eventually(Duration::from_secs(2), "change after recovery", || {
        cached_instances(&cache, "svc-3") == 2
    })
    .await;
    asking.cancel();
    shutdown.cancel();
}

#[tokio::test]
async fn agent_down_backs_off_and_recovers() {
    let (sim, server) = start_sim().await;
    let (cache, shutdown) = start_cache(watch_config(), &server);
    assert_eq!(bounded(instances(&cache, "web")).await, 1);
    let asking = keep_asking(&cache, &["web"]);
    until_watched(&cache, "web").await;
    server.set_down(true);
    eventually(Duration::from_secs(3), "breaker opens", || {
        cache.breaker_state().state != CircuitState::Closed
    })
    .await;
    let info = cache.describe_service("web", None).expect("cached");
    assert_eq!(info.freshness, EntryFreshness::Failed);
    assert_eq!(
        info.last_error.as_ref().map(|e| e.kind),
        Some("unreachable")
    );
    server.set_down(false);
    register(&sim, "web", "web-2", "n2", "10.0.0.2");
    eventually(Duration::from_secs(3), "recovered with the change", || {
        cache.breaker_state().state == CircuitState::Closed
            && cache
                .describe_service("web", None)
                .is_some_and(|info| info.instances == 2 && info.freshness == EntryFreshness::Fresh)
    })
    .await;
    asking.cancel();
    shutdown.cancel();
}

#[tokio::test]
async fn max_watches_bounds_the_loops_and_the_rest_are_polled() {
    let (sim, server) = start_sim().await;
    for name in ["api", "db"] {
        register(&sim, name, &format!("{name}-1"), "n1", "10.0.0.1");
    }
    let config = Config {
        max_watches: 2,
        ..watch_config()
    };
    let (cache, shutdown) = start_cache(config, &server);
    let names = ["web", "api", "db"];
    for name in names {
        assert_eq!(bounded(instances(&cache, name)).await, 1);
    }
    let asking = keep_asking(&cache, &names);
    eventually(Duration::from_secs(2), "two watched", || {
        cache.watch_count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let states: Vec<RefreshState> = names
        .iter()
        .map(|name| cache.describe_service(name, None).expect("cached").refresh)
        .collect();
    assert_eq!(
        states
            .iter()
            .filter(|state| **state == RefreshState::Watching)
            .count(),
        2,
        "{states:?}"
    );
    assert!(states.contains(&RefreshState::Polling), "{states:?}");
    asking.cancel();
    shutdown.cancel();
}

/// A name without instances (a typo, a service not deployed yet) is polled
/// every negative_ttl with plain reads, never watched: a blocking or `?cached`
/// read would leave a streaming subscription on the agent for it. Once it has
/// instances it is watched like any other.
#[tokio::test]
async fn unknown_names_are_polled_with_plain_reads_until_they_have_data() {
    let (sim, server) = start_sim().await;
    let (cache, shutdown) = start_cache(watch_config(), &server);
    assert_eq!(bounded(instances(&cache, "later")).await, 0);
    let info = cache.describe_service("later", None).expect("cached");
    assert_eq!(info.freshness, EntryFreshness::Negative);
    assert_eq!(info.instances, 0);
    assert!(
        info.consul_index > 0,
        "Consul sends an index for a missing service"
    );
    let asking = keep_asking(&cache, &["later"]);
    let path = "/v1/health/service/later";
    eventually(Duration::from_secs(3), "re-read by the slow poll", || {
        count(&sim, path) >= 3
    })
    .await;
    assert!(!watched(&cache, "later"));
    assert_eq!(cache.watch_count(), 0);
    let plain = |record: &RequestRecord| {
        param(record, "index").is_none() && param(record, "cached").is_none()
    };
    assert!(
        requests_to(&sim, path).iter().all(plain),
        "{:?}",
        requests_to(&sim, path)
    );
    register(&sim, "later", "later-1", "n1", "10.0.0.1");
    eventually(Duration::from_secs(2), "appears", || {
        cache
            .describe_service("later", None)
            .is_some_and(|info| info.freshness == EntryFreshness::Fresh && info.instances == 1)
    })
    .await;
    until_watched(&cache, "later").await;
    eventually(Duration::from_secs(2), "a streamed blocking read", || {
        requests_to(&sim, path)
            .iter()
            .any(|record| param(record, "index").is_some() && param(record, "cached").is_some())
    })
    .await;
    assert!(cache.describe_service("never-asked", None).is_none());
    asking.cancel();
    shutdown.cancel();
}

#[tokio::test]
async fn poll_mode_is_unchanged() {
    let (sim, server) = start_sim().await;
    let config = Config {
        refresh: RefreshMode::Poll,
        ..watch_config()
    };
    let (cache, shutdown) = start_cache(config, &server);
    assert_eq!(bounded(instances(&cache, "web")).await, 1);
    let asking = keep_asking(&cache, &["web"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let records = requests_to(&sim, WEB);
    eprintln!(
        "poll mode: {} requests in 1.1 s with refresh_interval=200ms",
        records.len()
    );
    // First fetch + one per 200 ms.
    assert!((4..=8).contains(&records.len()), "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| param(r, "index").is_none() && param(r, "wait").is_none()),
        "poll mode never blocks: {records:?}"
    );
    assert_eq!(cache.watch_count(), 0);
    let info = cache.describe_service("web", None).expect("cached");
    assert_eq!(info.refresh, RefreshState::Polling);
    assert_eq!(info.freshness, EntryFreshness::Fresh);
    asking.cancel();
    shutdown.cancel();
}

/// Polled names first asked at different moments fall into step: the pass
/// that reads one reads those due within half a period too, so a resolver
/// wakes once per period for all its names (issue 16: idle wake-ups), not once
/// per name. Without it, names asked 400 ms apart keep their phases forever
/// (no jitter here) and their ages never come closer than 800 ms.
#[tokio::test]
async fn polled_names_are_read_together() {
    let (sim, server) = start_sim().await;
    for (name, address) in [("api", "10.0.0.2"), ("db", "10.0.0.3")] {
        sim.register(
            Registration::new(name)
                .id(&format!("{name}-1"))
                .node(&format!("n-{name}"), address)
                .port(80),
        );
    }
    let config = Config {
        refresh: RefreshMode::Poll,
        refresh_interval: Duration::from_secs(2),
        ..watch_config()
    };
    let (cache, shutdown) = start_cache(config, &server);
    let names = ["web", "api", "db"];
    for name in names {
        assert_eq!(bounded(instances(&cache, name)).await, 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let asking = keep_asking(&cache, &names);
    let spread = || {
        let ages: Vec<u64> = names
            .iter()
            .map(|name| cache.describe_service(name, None).expect("cached").age_ms)
            .collect();
        ages.iter().max().copied().unwrap_or(0) - ages.iter().min().copied().unwrap_or(0)
    };
    eventually(
        Duration::from_secs(8),
        "the three names refreshed in one pass (ages within 300 ms)",
        || spread() < 300,
    )
    .await;
    // Each is still read about once per period, not more.
    let reads = requests_to(&sim, WEB).len();
    assert!((2..=6).contains(&reads), "web read {reads} times");
    asking.cancel();
    shutdown.cancel();
}

/// The fast path's cheap re-check: a witness survives refreshes that bring the
/// same data (in both modes), and fails once Consul's data changes or goes stale.
#[tokio::test]
async fn witnesses_hold_across_unchanged_refreshes_and_fail_on_change() {
    for refresh in [RefreshMode::Poll, RefreshMode::Watch] {
        let (sim, server) = start_sim().await;
        let config = Config {
            refresh,
            ..watch_config()
        };
        let (cache, shutdown) = start_cache(config, &server);
        let Lookup::Found(data, _) = bounded(cache.service("web", None)).await else {
            panic!("web found");
        };
        let witness = cache
            .service_witness("WEB", None, Some(&data))
            .expect("fresh cached data has a witness");
        let other: std::sync::Arc<[_]> = data.to_vec().into();
        assert!(
            cache.service_witness("web", None, Some(&other)).is_none(),
            "a witness is only given for the very data the cache holds"
        );
        assert!(
            cache
                .service_witness("web", Some("dc9"), Some(&data))
                .is_none()
        );
        let absent = match bounded(cache.service("nope", None)).await {
            Lookup::NotFound(_) => cache
                .service_witness("nope", None, None)
                .expect("a cached negative has a witness"),
            other => panic!("nope: {other:?}"),
        };
        let before = count(&sim, WEB);
        // Several refreshes (or watch rounds) with the same data.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                witness.holds(),
                "{refresh:?}: unchanged data keeps the witness"
            );
            assert!(absent.holds(), "{refresh:?}: unchanged negative");
        }
        assert!(
            count(&sim, WEB) > before,
            "{refresh:?}: the witness kept the name refreshed"
        );
        register(&sim, "web", "web-2", "n2", "10.0.0.2");
        register(&sim, "nope", "nope-1", "n2", "10.0.0.2");
        eventually(Duration::from_secs(2), "web witness fails", || {
            !witness.holds()
        })
        .await;
        eventually(Duration::from_secs(2), "nope witness fails", || {
            !absent.holds()
        })
        .await;
        assert_eq!(bounded(instances(&cache, "web")).await, 2);
        // Consul gone: the data ages out of its fresh window and the witness with it.
        let Lookup::Found(data, _) = bounded(cache.service("web", None)).await else {
            panic!("web found");
        };
        let witness = cache
            .service_witness("web", None, Some(&data))
            .expect("witness");
        drop(server);
        eventually(Duration::from_secs(5), "stale witness fails", || {
            !witness.holds()
        })
        .await;
        shutdown.cancel();
    }
}

/// A server without a leader still answers stale reads (`X-Consul-KnownLeader: false`),
/// and after a restart or a snapshot restore it may answer them empty. That one answer,
/// read by every node at once, must not turn known names into NXDOMAIN fleet-wide: the
/// cache keeps the data (stale) and a never-seen name gets no NXDOMAIN either, until a
/// server with a leader says the name is gone.
#[tokio::test]
async fn an_empty_answer_from_a_server_without_a_leader_replaces_nothing() {
    for refresh in [RefreshMode::Poll, RefreshMode::Watch] {
        let (sim, server) = start_sim().await;
        let config = Config {
            refresh,
            ..watch_config()
        };
        let (cache, shutdown) = start_cache(config, &server);
        assert_eq!(bounded(instances(&cache, "web")).await, 1);
        let asking = keep_asking(&cache, &["web"]);

        sim.inject(Fault::NoLeader);
        sim.deregister("n1", "web-1");
        eventually(
            Duration::from_secs(3),
            "the empty answer is doubted",
            || {
                cache
                    .describe_service("web", None)
                    .and_then(|info| info.last_error)
                    .is_some_and(|error| error.kind == "no_leader")
            },
        )
        .await;
        assert_eq!(cached_instances(&cache, "web"), 1, "{refresh:?}");
        assert!(
            matches!(cache.service("web", None).await, Lookup::Found(..)),
            "{refresh:?}: the known name keeps its data"
        );
        assert!(
            !matches!(cache.service("ghost", None).await, Lookup::NotFound(_)),
            "{refresh:?}: a never-seen name is not NXDOMAIN on a leaderless server's word"
        );

        sim.clear_faults();
        eventually(
            Duration::from_secs(3),
            "a leader's empty answer is believed",
            || {
                cache
                    .describe_service("web", None)
                    .is_some_and(|info| info.instances == 0)
            },
        )
        .await;
        assert!(matches!(
            cache.service("web", None).await,
            Lookup::NotFound(_)
        ));
        asking.cancel();
        shutdown.cancel();
    }
}
