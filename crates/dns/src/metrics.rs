//! Metric names of the DNS front and their descriptions.
//!
//! Names and labels follow CoreDNS's (`coredns_dns_requests_total`,
//! `coredns_dns_responses_total`, `coredns_dns_request_duration_seconds`), so a
//! dashboard made for CoreDNS works after a rename. Tags are bounded: `proto`
//! (udp, tcp), `zone` (consul, local, forward, none), `type` (A, AAAA, SRV, ANY,
//! TXT, SOA, PTR, other), `rcode` (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, FORMERR,
//! NOTIMP, other), `source` (fresh, stale, snapshot, upstream, cache, local,
//! policy, agent, none). `zone` is `none` for requests that never reached routing
//! (FORMERR, NOTIMP, BADVERS).

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use hickory_server::net::xfer::Protocol;
use metrics::Unit;
use metrics_util::MetricKind;

/// Counter: queries answered, tagged `proto`, `zone`, `type` (UDP fast-path
/// answers are added in batches, at most 1 s late).
pub const REQUESTS: &str = "dns.requests_total";
/// Counter: responses sent, tagged `proto`, `zone`, `type`, `rcode`, `source`
/// (batched like [`REQUESTS`]).
pub const RESPONSES: &str = "dns.responses_total";
/// Histogram: time from request to response sent, tagged `proto`, `zone`,
/// `type` (UDP fast-path answers: one sample per 64, from receive to the
/// answer's copy).
pub const REQUEST_DURATION_SECONDS: &str = "dns.request_duration_seconds";
/// Counter: responses that had Answer/Authority records cut to fit (TC=1), tagged `zone`.
pub const TRUNCATED: &str = "dns.truncated_responses_total";

/// Counter: UDP queries answered from the fast path's wire cache (also counted in
/// `dns.requests_total`).
pub const FAST_PATH_HITS: &str = "dns.fast_path_hits_total";
/// Counter: UDP queries dropped unanswered because too many were in progress.
pub const UDP_OVERLOAD_DROPS: &str = "dns.udp_overload_drops_total";

/// Counter: UDP queries dropped by the per-client rate limit (`dns.rate_limit`).
pub const RATE_LIMITED: &str = "dns.rate_limited_total";

/// Counter: questions asked of the Consul agent's DNS interface (`dns.agent_dns`) for the
/// Consul forms dnsfront does not answer itself, tagged `result` (answered, timeout, error).
pub const FALLBACK_QUERIES: &str = "dns.fallback_queries_total";

/// Gauge: TCP connections open.
pub const TCP_CONNECTIONS: &str = "dns.tcp_connections";
/// Counter: TCP connections closed at accept, tagged `reason` (acl,
/// client_limit, full).
pub const TCP_REFUSED: &str = "dns.tcp_refused_total";
/// Counter: TCP connections the server closed, tagged `reason` (idle,
/// lifetime, evicted).
pub const TCP_CLOSED: &str = "dns.tcp_closed_total";
/// Counter: pauses of a TCP accept loop because accept failed for lack of
/// file descriptors or memory.
pub const TCP_ACCEPT_BACKOFFS: &str = "dns.tcp_accept_backoffs_total";

/// The `proto` tag of everything the UDP sockets answer.
pub(crate) const PROTO_UDP: &str = "udp";

/// Every metric of this crate, declared once: (name, kind, unit, description).
/// `src/telemetry.rs` describes them to the recorder; the README lists them.
pub const METRICS: &[(&str, MetricKind, Unit, &str)] = &[
    (
        REQUESTS,
        MetricKind::Counter,
        Unit::Count,
        "DNS queries answered, by proto, zone and type",
    ),
    (
        RESPONSES,
        MetricKind::Counter,
        Unit::Count,
        "DNS responses sent, by proto, zone, type, rcode and data source",
    ),
    (
        REQUEST_DURATION_SECONDS,
        MetricKind::Histogram,
        Unit::Seconds,
        "Time to answer a DNS query, by proto, zone and type",
    ),
    (
        FAST_PATH_HITS,
        MetricKind::Counter,
        Unit::Count,
        "UDP queries answered from the wire answer cache (also in dns.requests_total)",
    ),
    (
        UDP_OVERLOAD_DROPS,
        MetricKind::Counter,
        Unit::Count,
        "UDP queries dropped because too many queries were in progress",
    ),
    (
        RATE_LIMITED,
        MetricKind::Counter,
        Unit::Count,
        "UDP queries dropped by the per-client rate limit",
    ),
    (
        FALLBACK_QUERIES,
        MetricKind::Counter,
        Unit::Count,
        "Questions asked of the Consul agent's DNS interface, by result (answered, timeout, error)",
    ),
    (
        TRUNCATED,
        MetricKind::Counter,
        Unit::Count,
        "DNS responses truncated to fit the transport (TC set)",
    ),
    (
        TCP_CONNECTIONS,
        MetricKind::Gauge,
        Unit::Count,
        "TCP connections open",
    ),
    (
        TCP_REFUSED,
        MetricKind::Counter,
        Unit::Count,
        "TCP connections closed at accept, by reason (acl, client_limit, full)",
    ),
    (
        TCP_CLOSED,
        MetricKind::Counter,
        Unit::Count,
        "TCP connections closed by the server, by reason (idle, lifetime, evicted)",
    ),
    (
        TCP_ACCEPT_BACKOFFS,
        MetricKind::Counter,
        Unit::Count,
        "Pauses of TCP accept because file descriptors or memory ran out",
    ),
];

/// The `proto` tag of a request's transport.
pub(crate) fn proto_tag(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => PROTO_UDP,
        Protocol::Tcp => "tcp",
        _ => "other",
    }
}

pub(crate) fn qtype_tag(qtype: RecordType) -> &'static str {
    match qtype {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SRV => "SRV",
        RecordType::ANY => "ANY",
        RecordType::TXT => "TXT",
        RecordType::SOA => "SOA",
        RecordType::PTR => "PTR",
        _ => "other",
    }
}

/// The mnemonic of a response code (`NOERROR`, `BADVERS`, or the number),
/// for logs and diagnostics.
pub fn rcode_name(response_code: ResponseCode) -> std::borrow::Cow<'static, str> {
    match rcode_tag(response_code) {
        "other" => match response_code {
            ResponseCode::YXDomain => "YXDOMAIN".into(),
            ResponseCode::NotAuth => "NOTAUTH".into(),
            ResponseCode::NotZone => "NOTZONE".into(),
            // hickory decodes 16 as BADSIG; without TSIG it can only be BADVERS.
            ResponseCode::BADVERS | ResponseCode::BADSIG => "BADVERS".into(),
            other => u16::from(other).to_string().into(),
        },
        tag => tag.into(),
    }
}

pub(crate) fn rcode_tag(response_code: ResponseCode) -> &'static str {
    match response_code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        _ => "other",
    }
}
