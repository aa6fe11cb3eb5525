//! The catalog cache is bounded by bytes (issue 13 §4): services of many
//! instances weigh what they hold, the cache stays under `max_bytes`, and a hot
//! name keeps being answered from cache. Against consul-sim over real HTTP.

use std::future::Future;
use std::time::Duration;

use consul_sim::{Registration, Sim, SimServer};
use dnsfront_catalog::{Cache, Config, Lookup};
use dnsfront_consul as consul;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait, so a broken test fails instead of hanging.
async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("step finished within 30s")
}

/// Registers `instances` instances of `service`, each on its own node with two tags.
fn register_many(sim: &Sim, service: &str, first: usize, instances: usize) {
    for i in first..first + instances {
        sim.register(
            Registration::new(service)
                .id(&format!("{service}-{i}"))
                .node(
                    &format!("{service}-node-{i}"),
                    &format!("10.{}.{}.{}", i / 65_536 % 256, i / 256 % 256, i % 256),
                )
                .port(8080)
                .tags(&["primary", "zone-a"]),
        );
    }
}

async fn serve(sim: &Sim) -> SimServer {
    sim.serve("127.0.0.1:0".parse().expect("valid addr"))
        .await
        .expect("sim serves")
}

fn start_cache(config: Config, server: &SimServer) -> (Cache, CancellationToken) {
    let client = consul::Client::new(consul::Config {
        address: server.url(),
        request_timeout: Duration::from_secs(5),
        ..consul::Config::default()
    })
    .expect("valid client config");
    let cache = Cache::new(config, client).expect("valid cache config");
    let shutdown = CancellationToken::new();
    tokio::spawn(cache.clone().run(shutdown.clone()));
    (cache, shutdown)
}

fn instance_count(lookup: &Lookup<std::sync::Arc<[consul::ServiceInstance]>>) -> usize {
    match lookup {
        Lookup::Found(instances, _) => instances.len(),
        _ => 0,
    }
}

#[tokio::test]
async fn big_services_fill_the_cache_by_bytes_and_a_hot_name_keeps_hitting() {
    const MAX_BYTES: u64 = 128 << 10;
    const SERVICES: usize = 30;
    const INSTANCES: usize = 100;
    let sim = Sim::new();
    sim.register(
        Registration::new("hot")
            .node("hot-node", "10.9.9.9")
            .port(80),
    );
    for s in 0..SERVICES {
        register_many(&sim, &format!("big{s}"), 0, INSTANCES);
    }
    let server = serve(&sim).await;
    let config = Config {
        // No background re-read during the test: every request is a miss.
        refresh_interval: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(120),
        max_bytes: MAX_BYTES,
        ..Config::default()
    };
    let (cache, shutdown) = start_cache(config, &server);

    assert_eq!(
        instance_count(&bounded(cache.service("hot", None)).await),
        1
    );
    let mut largest = 0;
    for s in 0..SERVICES {
        let name = format!("big{s}");
        let lookup = bounded(cache.service(&name, None)).await;
        assert_eq!(
            instance_count(&lookup),
            INSTANCES,
            "{name} answered in full"
        );
        for _ in 0..4 {
            assert_eq!(
                instance_count(&bounded(cache.service("hot", None)).await),
                1
            );
        }
        cache.settle().await;
        largest = largest.max(cache.weighted_size());
        assert!(
            cache.weighted_size() <= MAX_BYTES,
            "after {name}: {} bytes charged, bound {MAX_BYTES}",
            cache.weighted_size()
        );
    }

    // Each big service is charged for its instances (about 20 KiB each), not 1
    // per entry: the cache filled up to its bound and had to evict.
    assert!(
        largest > MAX_BYTES / 2,
        "cache filled by weight: at most {largest} bytes charged"
    );
    assert!(
        cache.entry_count() < SERVICES as u64,
        "{} of {} names kept under {MAX_BYTES} bytes",
        cache.entry_count(),
        SERVICES + 1
    );
    assert_eq!(
        sim.request_count("/v1/health/service/hot"),
        1,
        "the hot name was answered from cache throughout"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_service_that_grows_is_charged_again_after_its_refresh() {
    let sim = Sim::new();
    register_many(&sim, "grow", 0, 1);
    let server = serve(&sim).await;
    let config = Config {
        refresh_interval: Duration::from_millis(100),
        refresh_jitter: 0.0,
        max_bytes: 1 << 20,
        ..Config::default()
    };
    let (cache, shutdown) = start_cache(config, &server);

    assert_eq!(
        instance_count(&bounded(cache.service("grow", None)).await),
        1
    );
    cache.settle().await;
    let small = cache.weighted_size();
    assert!(small > 0, "the service is charged");

    register_many(&sim, "grow", 1, 199);
    bounded(async {
        loop {
            // Asking keeps the name hot, so the refresher re-reads it.
            let lookup = cache.service("grow", None).await;
            cache.settle().await;
            if instance_count(&lookup) == 200 && cache.weighted_size() > small + 199 * 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(cache.weighted_size() <= 1 << 20);
    assert_eq!(cache.entry_count(), 1, "re-weighing kept the one slot");
    shutdown.cancel();
}
