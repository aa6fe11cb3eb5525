//! Metric names emitted by the Consul client and their descriptions.

use metrics::Unit;
use metrics_util::MetricKind;

/// Counter of HTTP calls to Consul, tagged `endpoint` and `outcome` (`ok` or [`crate::Error::kind`]).
pub const REQUESTS: &str = "consul.requests_total";

/// Histogram of HTTP call durations in seconds, tagged `endpoint`.
pub const REQUEST_DURATION_SECONDS: &str = "consul.request_duration_seconds";

/// Counter of calls the local datacenter refused because it does not know the ACL
/// token (403 `ACL not found`: expired, revoked or never created).
pub const TOKEN_REJECTIONS: &str = "consul.token_rejections_total";

/// Counter of successful reads, tagged `endpoint`, `backend` ([`crate::QueryBackend::as_str`]:
/// how the agent served it, from `X-Consul-Query-Backend`) and `cache`
/// ([`crate::CacheStatus::as_str`], from `X-Cache`).
pub const READS: &str = "consul.reads_total";

/// Counter of requests that found every slot of `consul.max_concurrent_requests` taken and
/// waited for one before connecting.
pub const REQUEST_SLOT_WAITS: &str = "consul.request_slot_waits_total";

/// Gauge of requests holding a slot (connecting, sent, or blocked in a watch).
pub const REQUESTS_IN_FLIGHT: &str = "consul.requests_in_flight";

/// Every metric of this crate, declared once: (name, kind, unit, description).
/// `src/telemetry.rs` describes them to the recorder; the README lists them.
pub const METRICS: &[(&str, MetricKind, Unit, &str)] = &[
    (
        REQUESTS,
        MetricKind::Counter,
        Unit::Count,
        "HTTP calls to the Consul API by endpoint and outcome",
    ),
    (
        REQUEST_DURATION_SECONDS,
        MetricKind::Histogram,
        Unit::Seconds,
        "Duration of HTTP calls to the Consul API by endpoint",
    ),
    (
        TOKEN_REJECTIONS,
        MetricKind::Counter,
        Unit::Count,
        "Consul calls refused because the local datacenter does not know the ACL token (expired, revoked)",
    ),
    (
        READS,
        MetricKind::Counter,
        Unit::Count,
        "Successful Consul reads by endpoint, query backend (streaming, blocking-query) and agent cache result",
    ),
    (
        REQUEST_SLOT_WAITS,
        MetricKind::Counter,
        Unit::Count,
        "Consul requests that waited for a free slot under consul.max_concurrent_requests",
    ),
    (
        REQUESTS_IN_FLIGHT,
        MetricKind::Gauge,
        Unit::Count,
        "Consul requests in flight (each holds a slot of consul.max_concurrent_requests)",
    ),
];
