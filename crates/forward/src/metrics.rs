//! Metric names of the forwarder and their descriptions.
//!
//! Tags are bounded: `upstream` takes only configured `ip:port` values and `outcome`
//! only the `OUTCOME_*` values below.

use metrics::{Unit, describe_counter, describe_histogram};

/// Queries answered from the response cache.
pub const CACHE_HITS: &str = "forward.cache_hits";
/// Queries the cache could not answer (fresh entry absent or expired).
pub const CACHE_MISSES: &str = "forward.cache_misses";
/// Exchanges with one upstream, tagged `upstream` and `outcome`.
pub const UPSTREAM_QUERIES: &str = "forward.upstream_queries";
/// Duration of one exchange with one upstream, tagged `upstream`.
pub const UPSTREAM_DURATION_SECONDS: &str = "forward.upstream_duration_seconds";
/// Queries refused because `max_in_flight` upstream queries were already running.
pub const OVERLOADED: &str = "forward.overloaded";
/// Cache misses that joined an identical query already in flight.
pub const COALESCED: &str = "forward.coalesced";
/// Approximate number of responses in the cache (gauge, set on every insert).
pub const CACHE_ENTRIES: &str = "forward.cache_entries";
/// Responses evicted to make room (the cache was full), not by expiry.
pub const CACHE_EVICTIONS: &str = "forward.cache_evictions";

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

/// Registers units and descriptions with the installed recorder.
pub fn describe() {
    describe_counter!(
        CACHE_HITS,
        Unit::Count,
        "Forwarded queries answered from the response cache"
    );
    describe_counter!(
        CACHE_MISSES,
        Unit::Count,
        "Forwarded queries not answerable from the cache"
    );
    describe_counter!(
        UPSTREAM_QUERIES,
        Unit::Count,
        "Exchanges with an upstream resolver, by upstream and outcome"
    );
    describe_histogram!(
        UPSTREAM_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one exchange with an upstream resolver"
    );
    describe_counter!(
        OVERLOADED,
        Unit::Count,
        "Forwarded queries refused because too many upstream queries were in flight"
    );
    metrics::describe_gauge!(
        CACHE_ENTRIES,
        Unit::Count,
        "Responses held by the forwarder's cache (approximate)"
    );
    describe_counter!(
        CACHE_EVICTIONS,
        Unit::Count,
        "Responses evicted from the forwarder's cache because it was full"
    );
    describe_counter!(
        COALESCED,
        Unit::Count,
        "Cache misses that shared an identical upstream query already in flight"
    );
}

/// Counts one [`CACHE_EVICTIONS`] when moka evicted an entry for room.
pub(crate) fn cache_eviction(cause: moka::notification::RemovalCause) {
    if cause == moka::notification::RemovalCause::Size {
        metrics::counter!(CACHE_EVICTIONS).increment(1);
    }
}

/// Sets [`CACHE_ENTRIES`].
pub(crate) fn cache_entries(count: u64) {
    metrics::gauge!(CACHE_ENTRIES).set(count as f64);
}
