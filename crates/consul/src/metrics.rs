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
];
