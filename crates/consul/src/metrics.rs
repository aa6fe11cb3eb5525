//! Metric names emitted by the Consul client and their descriptions.

/// Counter of HTTP calls to Consul, tagged `endpoint` and `outcome` (`ok` or [`crate::Error::kind`]).
pub const REQUESTS: &str = "consul.requests";

/// Histogram of HTTP call durations in seconds, tagged `endpoint`.
pub const REQUEST_DURATION_SECONDS: &str = "consul.request_duration_seconds";

/// Registers descriptions for every metric of this crate with the installed recorder.
pub fn describe() {
    ::metrics::describe_counter!(
        REQUESTS,
        ::metrics::Unit::Count,
        "HTTP calls to the Consul API by endpoint and outcome"
    );
    ::metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Duration of HTTP calls to the Consul API by endpoint"
    );
}
