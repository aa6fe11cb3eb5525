//! Metric names of the forwarder and their descriptions.
//!
//! Tags are bounded: `upstream` takes only configured `ip:port` values, `outcome`
//! only the `OUTCOME_*` values below and `policy` only [`crate::Policy::as_str`] values.

use metrics::Unit;
use metrics_util::MetricKind;

/// Queries answered from the response cache.
pub const CACHE_HITS: &str = "forward.cache_hits_total";
/// Queries the cache could not answer (fresh entry absent or expired).
pub const CACHE_MISSES: &str = "forward.cache_misses_total";
/// Exchanges with one upstream, tagged `upstream` and `outcome`.
pub const UPSTREAM_QUERIES: &str = "forward.requests_total";
/// Duration of one exchange with one upstream, tagged `upstream`.
pub const UPSTREAM_DURATION_SECONDS: &str = "forward.request_duration_seconds";
/// Queries refused because `max_in_flight` upstream queries were already running.
pub const OVERLOADED: &str = "forward.max_concurrent_rejects_total";
/// Cache misses that joined an identical query already in flight.
pub const COALESCED: &str = "forward.coalesced_total";
/// Bytes of upstream answers held in flight (gauge): TCP answers being read, answers
/// waiting for their queries; at most `max_in_flight_bytes`.
pub const IN_FLIGHT_BYTES: &str = "forward.in_flight_bytes";
/// Upstream answers dropped because `max_in_flight_bytes` was used up.
pub const OVER_BUDGET: &str = "forward.over_budget_total";
/// Approximate number of responses in the cache (gauge, set on every insert).
pub const CACHE_ENTRIES: &str = "forward.cache_entries";
/// Bytes charged to the response cache (gauge, set on every insert).
pub const CACHE_BYTES: &str = "forward.cache_bytes";
/// Responses evicted to make room (the cache was full), not by expiry.
pub const CACHE_EVICTIONS: &str = "forward.cache_evictions_total";

/// Failed exchanges with one upstream (timeout, socket error, failure rcode), tagged `upstream`.
pub const UPSTREAM_FAILURES: &str = "forward.upstream_failures_total";
/// 1 while an upstream is marked down, 0 while up (gauge), tagged `upstream`.
pub const UPSTREAM_DOWN: &str = "forward.upstream_down";
/// Background refreshes started for entries hit in the last 10 % of their TTL.
pub const PREFETCHES: &str = "forward.cache_prefetch_total";
/// Answers served from expired cache entries because upstreams failed (RFC 8767).
pub const STALE_ANSWERS: &str = "forward.cache_served_stale_total";
/// Queries answered or answers changed by local policy, tagged `policy`.
pub const POLICY_ANSWERS: &str = "forward.policy_answers_total";

/// Tag key naming the policy (`domain_needed`, `bogus_priv`, `rebind`).
pub const TAG_POLICY: &str = "policy";
/// Tag key naming the upstream (`ip:port`).
pub const TAG_UPSTREAM: &str = "upstream";
/// Tag key naming how an exchange ended.
pub const TAG_OUTCOME: &str = "outcome";

/// The upstream answered NOERROR or NXDOMAIN.
pub const OUTCOME_OK: &str = "ok";
/// No matching answer before the attempt timeout (or the overall deadline).
pub const OUTCOME_TIMEOUT: &str = "timeout";
/// Socket error, connection refused, unusable TCP reply.
pub const OUTCOME_ERROR: &str = "error";
/// The upstream answered with a failure rcode (SERVFAIL, REFUSED, ...).
pub const OUTCOME_SERVFAIL: &str = "servfail";
/// The UDP answer had TC set; a TCP exchange with the same upstream follows.
pub const OUTCOME_TRUNCATED_RETRY: &str = "truncated_retry";
/// The TCP answer did not fit `max_in_flight_bytes` and was not read.
pub const OUTCOME_OVER_BUDGET: &str = "over_budget";

/// Every metric of this crate, declared once: (name, kind, unit, description).
/// `src/telemetry.rs` describes them to the recorder; the README lists them.
pub const METRICS: &[(&str, MetricKind, Unit, &str)] = &[
    (
        CACHE_HITS,
        MetricKind::Counter,
        Unit::Count,
        "Forwarded queries answered from the response cache",
    ),
    (
        CACHE_MISSES,
        MetricKind::Counter,
        Unit::Count,
        "Forwarded queries not answerable from the cache",
    ),
    (
        UPSTREAM_QUERIES,
        MetricKind::Counter,
        Unit::Count,
        "Exchanges with an upstream resolver, by upstream and outcome",
    ),
    (
        UPSTREAM_DURATION_SECONDS,
        MetricKind::Histogram,
        Unit::Seconds,
        "Duration of one exchange with an upstream resolver",
    ),
    (
        OVERLOADED,
        MetricKind::Counter,
        Unit::Count,
        "Forwarded queries refused because too many upstream queries were in flight",
    ),
    (
        UPSTREAM_FAILURES,
        MetricKind::Counter,
        Unit::Count,
        "Failed exchanges with an upstream resolver (timeout, socket error, failure rcode)",
    ),
    (
        UPSTREAM_DOWN,
        MetricKind::Gauge,
        Unit::Count,
        "1 while an upstream resolver is marked down after consecutive failures, else 0",
    ),
    (
        PREFETCHES,
        MetricKind::Counter,
        Unit::Count,
        "Background refreshes of cache entries hit in the last 10% of their TTL",
    ),
    (
        STALE_ANSWERS,
        MetricKind::Counter,
        Unit::Count,
        "Answers served from expired cache entries because every upstream failed",
    ),
    (
        POLICY_ANSWERS,
        MetricKind::Counter,
        Unit::Count,
        "Queries answered locally or answers filtered by policy (domain_needed, bogus_priv, rebind)",
    ),
    (
        CACHE_ENTRIES,
        MetricKind::Gauge,
        Unit::Count,
        "Responses held by the forwarder's cache (approximate)",
    ),
    (
        CACHE_BYTES,
        MetricKind::Gauge,
        Unit::Bytes,
        "Bytes charged to the forwarder's cache (wire data, keys, bookkeeping; at most forward.cache_max_bytes)",
    ),
    (
        CACHE_EVICTIONS,
        MetricKind::Counter,
        Unit::Count,
        "Responses evicted from the forwarder's cache because it was full",
    ),
    (
        COALESCED,
        MetricKind::Counter,
        Unit::Count,
        "Cache misses that shared an identical upstream query already in flight",
    ),
    (
        IN_FLIGHT_BYTES,
        MetricKind::Gauge,
        Unit::Bytes,
        "Bytes of upstream answers held in flight (TCP answers being read, answers waiting for their queries; at most forward.max_in_flight_bytes)",
    ),
    (
        OVER_BUDGET,
        MetricKind::Counter,
        Unit::Count,
        "Upstream answers dropped because forward.max_in_flight_bytes was used up",
    ),
];

/// Counts one [`CACHE_EVICTIONS`]: an entry evicted for room.
pub(crate) fn cache_eviction() {
    metrics::counter!(CACHE_EVICTIONS).increment(1);
}

/// Sets [`CACHE_ENTRIES`].
pub(crate) fn cache_entries(count: u64) {
    metrics::gauge!(CACHE_ENTRIES).set(count as f64);
}

/// Sets [`CACHE_BYTES`].
pub(crate) fn cache_bytes(bytes: u64) {
    metrics::gauge!(CACHE_BYTES).set(bytes as f64);
}

/// Sets [`IN_FLIGHT_BYTES`].
pub(crate) fn in_flight_bytes(bytes: usize) {
    metrics::gauge!(IN_FLIGHT_BYTES).set(bytes as f64);
}
