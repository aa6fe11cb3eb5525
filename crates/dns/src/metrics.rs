//! Metric names of the DNS front and their descriptions.
//!
//! Tags are bounded: `zone` (consul, local, forward, none), `qtype` (A, AAAA, SRV, ANY,
//! TXT, SOA, PTR, other), `rcode` (NOERROR, NXDOMAIN, SERVFAIL, REFUSED,
//! FORMERR, NOTIMP, other), `source` (fresh, stale, snapshot, upstream, cache,
//! local, none). `zone` is `none` for requests that never reached routing (FORMERR,
//! NOTIMP, BADVERS).

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use metrics::{Unit, describe_counter, describe_histogram};

/// Counter: queries answered, tagged `zone`, `qtype`, `rcode`, `source`.
pub const QUERIES: &str = "dns.queries";
/// Histogram: time from request to response sent, tagged `zone`.
pub const QUERY_DURATION_SECONDS: &str = "dns.query_duration_seconds";
/// Counter: responses that had Answer/Authority records cut to fit (TC=1), tagged `zone`.
pub const TRUNCATED: &str = "dns.truncated";

/// Registers descriptions for every metric of this crate.
pub fn describe() {
    describe_counter!(
        QUERIES,
        Unit::Count,
        "DNS queries answered, by zone, qtype, rcode and data source"
    );
    describe_histogram!(
        QUERY_DURATION_SECONDS,
        Unit::Seconds,
        "Time to answer a DNS query"
    );
    describe_counter!(
        TRUNCATED,
        Unit::Count,
        "DNS responses truncated to fit the transport (TC set)"
    );
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

/// The mnemonic of a response code (`NOERROR`, `BADVERS`, or the number).
pub(crate) fn rcode_name(response_code: ResponseCode) -> std::borrow::Cow<'static, str> {
    match rcode_tag(response_code) {
        "other" => match response_code {
            ResponseCode::YXDomain => "YXDOMAIN".into(),
            ResponseCode::NotAuth => "NOTAUTH".into(),
            ResponseCode::NotZone => "NOTZONE".into(),
            ResponseCode::BADVERS => "BADVERS".into(),
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
