//! Helpers shared by the catalog's integration tests (each test binary uses a subset).
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use consul_sim::{RequestRecord, Sim, SimServer};
use dnsfront_catalog::{Cache, Config, RefreshMode};
use dnsfront_consul as consul;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait, so a broken step fails instead of hanging.
pub(crate) async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), future)
        .await
        .expect("step finished within 15s")
}

/// Polls `check` every 10 ms until it holds; panics after `limit`. Returns how long it took.
pub(crate) async fn eventually(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client of `server`.
pub(crate) fn client(server: &SimServer) -> consul::Client {
    consul::Client::new(consul::Config {
        address: server.url(),
        // Much shorter than the waits below: blocking queries must outlive it.
        request_timeout: Duration::from_millis(500),
        ..consul::Config::default()
    })
    .expect("valid client config")
}

/// Watch mode (the default) with short waits so that tests take seconds.
pub(crate) fn watch_config() -> Config {
    Config {
        refresh: RefreshMode::Watch,
        watch_wait: Duration::from_millis(300),
        watch_min_interval: Duration::from_millis(50),
        refresh_interval: Duration::from_millis(200),
        refresh_jitter: 0.0,
        first_fetch_timeout: Duration::from_secs(1),
        negative_ttl: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(30),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        ..Config::default()
    }
}

/// Builds the cache and starts its background refresher.
pub(crate) fn start_cache(config: Config, server: &SimServer) -> (Cache, CancellationToken) {
    let cache = Cache::new(config, client(server)).expect("valid cache config");
    let shutdown = CancellationToken::new();
    tokio::spawn(cache.clone().run(shutdown.clone()));
    (cache, shutdown)
}

/// The simulator's log of requests to `path`.
pub(crate) fn requests_to(sim: &Sim, path: &str) -> Vec<RequestRecord> {
    sim.requests()
        .into_iter()
        .filter(|record| record.path == path)
        .collect()
}

/// The value of query parameter `name` (`Some("")` for a bare key such as `?cached`).
pub(crate) fn param<'a>(record: &'a RequestRecord, name: &str) -> Option<&'a str> {
    record.query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}
