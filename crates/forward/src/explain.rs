//! What [`Forwarder::explain`](crate::Forwarder::explain) reports about one question.

use std::net::SocketAddr;

use crate::Policy;

/// Where the cache entry of a question stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheState {
    /// Nothing cached (or caching is off).
    Absent,
    /// Within its TTL: answered from the cache.
    Fresh,
    /// Past its TTL but within the serve-stale window: asked upstream again, served
    /// stale if every upstream fails.
    Stale,
    /// Past its TTL and the serve-stale window: a plain miss.
    Expired,
}

/// The cache entry, route and policy verdict of one question (no I/O).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheInfo {
    /// The question name, lower case, absolute.
    pub name: String,
    /// The question type (`A`, `PTR`, ...).
    pub record_type: String,
    /// Whether the DO bit is part of the key asked about.
    pub dnssec_ok: bool,
    /// Whether the question would be answered locally by policy, and why
    /// (`domain_needed`, `bogus_priv`); `None`: it would be forwarded.
    pub policy: Option<Policy>,
    /// Whether rebind protection filters answers for this name.
    pub rebind_filtered: bool,
    /// The zone of the per-domain rule that routes the name, if any.
    pub rule: Option<String>,
    /// The upstream set the name would be sent to now (configured order).
    pub upstreams: Vec<SocketAddr>,
    /// Where the cache entry stands.
    pub state: CacheState,
    /// The cached response code (`NoError`, `NXDomain`), if cached.
    pub response_code: Option<String>,
    /// Seconds since the entry was stored.
    pub age_secs: Option<u64>,
    /// The TTL the entry was stored with, in seconds.
    pub ttl_secs: Option<u64>,
    /// Seconds of freshness left (0 once expired).
    pub remaining_ttl_secs: Option<u64>,
    /// Seconds left in which an expired entry may be served stale.
    pub stale_remaining_secs: Option<u64>,
    /// The response code that would be served stale now (the last positive answer
    /// when a negative one replaced it), if any.
    pub stale_response_code: Option<String>,
    /// The upstream that answered the cached response.
    pub answered_by: Option<SocketAddr>,
    /// Seconds until a refresh is tried again after a failed one (stale served meanwhile).
    pub retry_after_secs: Option<u64>,
    /// Whether an upstream query for this key is in flight (miss, refresh or prefetch).
    pub in_flight: bool,
}
