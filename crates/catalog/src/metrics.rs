//! Metric names of the catalog cache, and their descriptions.

use metrics::{Unit, counter, gauge};
use metrics_util::MetricKind;

/// Background refreshes, tagged `outcome` (ok or a Consul error kind).
pub const REFRESHES: &str = "catalog.refreshes_total";
/// First fetches of a never-seen key, tagged `outcome`.
pub const FIRST_FETCHES: &str = "catalog.first_fetches_total";
/// Number of cached keys.
pub const ENTRIES: &str = "catalog.entries";
/// Datacenters whose circuit breaker holds Consul requests back (0 = none).
pub const CIRCUIT_OPEN: &str = "catalog.consul_circuit_open";
/// Consul requests sent by the cache, tagged `endpoint` (`health_service` or
/// `catalog_node`), `mode` (`poll`: first fetches and periodic re-reads;
/// `watch`: requests of a blocking-query loop) and `outcome` (ok or a Consul error kind).
pub const CONSUL_REQUESTS: &str = "catalog.consul_requests_total";
/// Lookups answered from a cached key (fresh, stale or negative); misses are `FIRST_FETCHES`.
pub const CACHE_HITS: &str = "catalog.cache_hits_total";
/// Keys evicted because the cache was full (`catalog.max_entries` or `catalog.max_bytes`).
pub const EVICTIONS: &str = "catalog.evictions_total";
/// Names currently watched with a blocking query.
pub const WATCHES: &str = "catalog.watches";
/// Watch loops that reset their index to 0 because Consul's went backwards.
pub const WATCH_INDEX_RESETS: &str = "catalog.watch_index_resets_total";

/// Every metric of this crate, declared once: (name, kind, unit, description).
/// `src/telemetry.rs` describes them to the recorder; the README lists them.
pub const METRICS: &[(&str, MetricKind, Unit, &str)] = &[
    (
        REFRESHES,
        MetricKind::Counter,
        Unit::Count,
        "Background refreshes of cached Consul data, by outcome",
    ),
    (
        FIRST_FETCHES,
        MetricKind::Counter,
        Unit::Count,
        "First fetches of a never-seen name, by outcome",
    ),
    (
        ENTRIES,
        MetricKind::Gauge,
        Unit::Count,
        "Cached services and nodes",
    ),
    (
        CACHE_HITS,
        MetricKind::Counter,
        Unit::Count,
        "Lookups answered from a cached service or node (misses are first fetches)",
    ),
    (
        EVICTIONS,
        MetricKind::Counter,
        Unit::Count,
        "Cached services and nodes evicted because the cache was full (catalog.max_entries or catalog.max_bytes)",
    ),
    (
        CIRCUIT_OPEN,
        MetricKind::Gauge,
        Unit::Count,
        "Datacenters whose Consul requests are held back by their circuit breaker (0 = none)",
    ),
    (
        CONSUL_REQUESTS,
        MetricKind::Counter,
        Unit::Count,
        "Consul requests sent by the catalog cache, by endpoint, mode (poll or watch) and outcome",
    ),
    (
        WATCHES,
        MetricKind::Gauge,
        Unit::Count,
        "Names kept current by a blocking-query watch",
    ),
    (
        WATCH_INDEX_RESETS,
        MetricKind::Counter,
        Unit::Count,
        "Watch answers whose index went backwards (a snapshot restore or another server); the watch blocks on the index returned",
    ),
];

pub(crate) fn consul_request(endpoint: &'static str, mode: &'static str, outcome: &'static str) {
    counter!(CONSUL_REQUESTS, "endpoint" => endpoint, "mode" => mode, "outcome" => outcome)
        .increment(1);
}

pub(crate) fn watches(count: usize) {
    gauge!(WATCHES).set(count as f64);
}

pub(crate) fn watch_index_reset() {
    counter!(WATCH_INDEX_RESETS).increment(1);
}

pub(crate) fn refresh(outcome: &'static str) {
    counter!(REFRESHES, "outcome" => outcome).increment(1);
}

pub(crate) fn first_fetch(outcome: &'static str) {
    counter!(FIRST_FETCHES, "outcome" => outcome).increment(1);
}

pub(crate) fn entries(count: u64) {
    gauge!(ENTRIES).set(count as f64);
}

pub(crate) fn circuits_open(count: u64) {
    gauge!(CIRCUIT_OPEN).set(count as f64);
}

pub(crate) fn cache_hits(count: u64) {
    counter!(CACHE_HITS).increment(count);
}

pub(crate) fn eviction() {
    counter!(EVICTIONS).increment(1);
}
