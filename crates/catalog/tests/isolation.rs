//! One name, one datacenter or one flood cannot degrade Consul answers for the
//! whole node (issue 13 §2): against consul-sim over real HTTP on 127.0.0.1.

use std::future::Future;
use std::time::Duration;

use consul_sim::{Fault, Registration, Sim, SimServer};
use dnsfront_catalog::{Cache, CircuitState, Config, Freshness, Lookup, RefreshMode};
use dnsfront_consul as consul;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait, so a broken test fails instead of hanging.
async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("step finished within 20s")
}

async fn start_sim() -> (Sim, SimServer) {
    let sim = Sim::new();
    for (service, node, address) in [
        ("web", "n1", "10.0.0.1"),
        ("api", "n2", "10.0.0.2"),
        ("secret", "n3", "10.0.0.3"),
    ] {
        sim.register(
            Registration::new(service)
                .node(node, address)
                .port(80)
                .check(&format!("service:{service}"), "passing"),
        );
    }
    sim.register(
        Registration::new("far")
            .node("r1", "10.1.0.1")
            .datacenter("dc2")
            .port(80),
    );
    let server = sim
        .serve("127.0.0.1:0".parse().expect("valid addr"))
        .await
        .expect("sim serves");
    (sim, server)
}

fn client(server: &SimServer) -> consul::Client {
    consul::Client::new(consul::Config {
        address: server.url(),
        request_timeout: Duration::from_secs(5),
        ..consul::Config::default()
    })
    .expect("valid client config")
}

/// Poll mode: these tests count the re-reads a failing name costs, which a
/// blocking query held since before the fault would not show.
fn config() -> Config {
    Config {
        refresh: RefreshMode::Poll,
        refresh_interval: Duration::from_millis(100),
        refresh_jitter: 0.0,
        first_fetch_timeout: Duration::from_millis(500),
        negative_ttl: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(30),
        backoff_min: Duration::from_millis(400),
        backoff_max: Duration::from_millis(800),
        ..Config::default()
    }
}

fn start_cache(config: Config, server: &SimServer) -> (Cache, CancellationToken) {
    let cache = Cache::new(config, client(server)).expect("valid cache config");
    let shutdown = CancellationToken::new();
    tokio::spawn(cache.clone().run(shutdown.clone()));
    (cache, shutdown)
}

fn found_fresh(lookup: &Lookup<std::sync::Arc<[consul::ServiceInstance]>>) -> bool {
    matches!(lookup, Lookup::Found(_, Freshness::Fresh))
}

#[tokio::test]
async fn a_cut_off_remote_datacenter_never_opens_the_agents_breaker() {
    let (sim, server) = start_sim().await;
    let (cache, shutdown) = start_cache(config(), &server);
    assert!(found_fresh(&bounded(cache.service("web", None)).await));

    // Every request toward dc2 hangs (as when the agent cannot reach its servers).
    sim.inject(Fault::hang("/v1/health/service/far"));
    for _ in 0..3 {
        assert!(matches!(
            bounded(cache.service("far", Some("dc2"))).await,
            Lookup::Unavailable
        ));
    }
    let states = cache.breaker_states();
    assert!(
        states
            .iter()
            .any(|(dc, state)| dc.as_deref() == Some("dc2") && state.state == CircuitState::Open),
        "{states:?}"
    );
    // dc2 is now held back: no more requests go there during its backoff.
    let before = sim.request_count("/v1/health/service/far");
    assert!(matches!(
        bounded(cache.service("far", Some("dc2"))).await,
        Lookup::Unavailable
    ));
    assert_eq!(sim.request_count("/v1/health/service/far"), before);

    assert!(cache.consul_unavailable_in(Some("DC2")));
    // The agent's own datacenter is untouched: closed, and never-seen names are fetched.
    assert_eq!(cache.breaker_state().state, CircuitState::Closed);
    assert!(!cache.consul_unavailable());
    assert!(!cache.consul_unavailable_in(None));
    assert!(!cache.consul_unavailable_in(Some("dc3")));
    assert!(found_fresh(&bounded(cache.service("api", None)).await));
    shutdown.cancel();
}

/// A 403 or an undecodable answer for one name: that name alone is unavailable
/// (SERVFAIL, or its stale data), retried after its own backoff; the breaker
/// stays closed and every other name is fetched as usual.
#[tokio::test]
async fn a_forbidden_or_undecodable_name_affects_that_name_alone() {
    for fault in [
        Fault::forbidden("/v1/health/service/secret"),
        Fault::garbage("/v1/health/service/secret"),
        Fault::truncated("/v1/health/service/secret"),
    ] {
        let (sim, server) = start_sim().await;
        let (cache, shutdown) = start_cache(config(), &server);
        sim.inject(fault.clone());

        assert!(
            matches!(
                bounded(cache.service("secret", None)).await,
                Lookup::Unavailable
            ),
            "{fault:?}"
        );
        assert_eq!(
            cache.breaker_state().state,
            CircuitState::Closed,
            "{fault:?}"
        );
        assert!(found_fresh(&bounded(cache.service("api", None)).await));
        // Asked again at once: not sent again before its own backoff ends.
        for _ in 0..5 {
            assert!(matches!(
                bounded(cache.service("secret", None)).await,
                Lookup::Unavailable
            ));
        }
        assert_eq!(
            sim.request_count("/v1/health/service/secret"),
            1,
            "{fault:?}"
        );
        // After its backoff (400 ms, jittered down to 200 ms) it is tried again.
        tokio::time::sleep(Duration::from_millis(450)).await;
        sim.clear_faults();
        assert!(found_fresh(&bounded(cache.service("secret", None)).await));
        assert_eq!(sim.request_count("/v1/health/service/secret"), 2);

        // A cached name that starts failing keeps its data (stale), and is
        // retried at its own pace rather than every refresh interval.
        sim.inject(fault.clone());
        let started = sim.request_count("/v1/health/service/secret");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        while tokio::time::Instant::now() < deadline {
            let lookup = bounded(cache.service("secret", None)).await;
            assert!(matches!(lookup, Lookup::Found(..)), "{fault:?}: {lookup:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let retries = sim.request_count("/v1/health/service/secret") - started;
        // Polling every 100 ms would be 15; its backoff (400 → 800 ms) allows about 4.
        assert!((1..=5).contains(&retries), "{fault:?}: {retries} requests");
        assert!(matches!(
            bounded(cache.service("secret", None)).await,
            Lookup::Found(_, Freshness::Stale)
        ));
        assert_eq!(cache.breaker_state().state, CircuitState::Closed);
        assert!(found_fresh(&bounded(cache.service("web", None)).await));
        shutdown.cancel();
    }
}

#[tokio::test]
async fn a_flood_of_new_names_never_has_more_first_fetches_in_flight_than_the_cap() {
    let (sim, server) = start_sim().await;
    sim.inject(Fault::delay(
        "/v1/health/service/",
        Duration::from_millis(50),
    ));
    let config = Config {
        first_fetch_timeout: Duration::from_secs(15),
        ..config()
    };
    let cap = config.max_concurrent_fetches;
    assert_eq!(cap, 64, "the default");
    // No background refresher: its own re-reads (up to 8 at once) are bounded
    // apart; this counts first fetches alone.
    let cache = Cache::new(config, client(&server)).expect("valid cache config");

    let mut askers = tokio::task::JoinSet::new();
    for n in 0..500 {
        let cache = cache.clone();
        askers.spawn(async move { cache.service(&format!("random-{n}"), None).await });
    }
    // Concurrent askers of one name share one request, even while waiting for a slot.
    for _ in 0..20 {
        let cache = cache.clone();
        askers.spawn(async move { cache.service("web", None).await });
    }
    let mut answered = 0;
    while let Some(lookup) = bounded(askers.join_next()).await {
        let lookup = lookup.expect("asker finished");
        assert!(
            matches!(lookup, Lookup::NotFound(_) | Lookup::Found(..)),
            "{lookup:?}"
        );
        answered += 1;
    }
    assert_eq!(answered, 520);
    let high_water = sim.in_flight_high_water();
    assert!(
        high_water <= cap,
        "{high_water} requests in flight, cap {cap}"
    );
    assert!(high_water >= cap / 2, "the cap is used: {high_water}");
    assert_eq!(sim.request_count("/v1/health/service/web"), 1);
}

#[tokio::test]
async fn a_huge_body_is_refused_without_being_read_whole() {
    let (sim, server) = start_sim().await;
    let huge = 4 * consul::MAX_RESPONSE_BYTES as u64;
    sim.inject(Fault::huge_body("/v1/health/service/big", huge));

    let error = bounded(client(&server).health_service("big", &consul::QueryOptions::default()))
        .await
        .expect_err("over the cap");
    assert_eq!(error.kind(), "decode", "{error:?}");
    assert!(!error.is_retryable());
    let sent = sim.huge_body_bytes_sent();
    assert!(
        sent < huge / 2,
        "the client stopped reading near the cap: {sent} of {huge} bytes sent"
    );

    // Through the cache: that name is unavailable, the breaker stays closed.
    let (cache, shutdown) = start_cache(config(), &server);
    assert!(matches!(
        bounded(cache.service("big", None)).await,
        Lookup::Unavailable
    ));
    assert_eq!(cache.breaker_state().state, CircuitState::Closed);
    assert!(found_fresh(&bounded(cache.service("web", None)).await));
    shutdown.cancel();
}
