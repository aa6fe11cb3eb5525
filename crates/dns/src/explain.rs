//! `dnsfront explain`: where the answer to a question comes from right now.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RData;

use crate::answer::{Reply, Source};
use crate::metrics::rcode_name;

/// Where the answer to one question comes from, as [`Router::explain`](crate::Router::explain)
/// found out by routing it like a real query.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// `consul`, `local` (hosts files) or `forward`; `none` for a name that is not valid.
    pub zone: &'static str,
    /// The response code a client would get (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...).
    pub rcode: String,
    /// `fresh`, `stale`, `snapshot` (catalog), `cache`, `upstream` (forwarder),
    /// `local` (hosts files), or `none` (synthesised or failed).
    pub source: &'static str,
    /// The Answer section in presentation format (`name TTL class type rdata`).
    pub answers: Vec<String>,
    /// The smallest answer TTL, or for a negative answer the SOA's TTL (how
    /// long a client may cache it); `None` when the reply carries neither.
    pub ttl: Option<u32>,
    /// What else an operator should know about this answer.
    pub note: Option<String>,
}

impl Explanation {
    /// For a name that cannot be parsed.
    pub(crate) fn invalid_name(error: String) -> Self {
        Self {
            zone: "none",
            rcode: rcode_name(ResponseCode::FormErr).into_owned(),
            source: Source::None.tag(),
            answers: Vec::new(),
            ttl: None,
            note: Some(format!("invalid name: {error}")),
        }
    }

    /// From a routed reply; `note` is the router's remark (e.g. a forwarding error).
    pub(crate) fn new(zone: &'static str, reply: &Reply, note: Option<String>) -> Self {
        let ttl = reply
            .answers
            .iter()
            .map(|record| record.ttl)
            .min()
            .or_else(|| {
                reply
                    .authorities
                    .iter()
                    .filter(|record| matches!(record.data, RData::SOA(_)))
                    .map(|record| record.ttl)
                    .min()
            });
        let note = note.or_else(|| default_note(zone, reply).map(str::to_owned));
        Self {
            zone,
            rcode: rcode_name(reply.response_code).into_owned(),
            source: reply.source.tag(),
            answers: reply.answers.iter().map(ToString::to_string).collect(),
            ttl,
            note,
        }
    }
}

fn default_note(zone: &str, reply: &Reply) -> Option<&'static str> {
    let nodata = reply.response_code == ResponseCode::NoError && reply.answers.is_empty();
    match (zone, reply.source) {
        (_, Source::Stale) => Some(
            "stale catalog data (Consul unreachable): TTLs capped at dns.stale_ttl, EDE 3 attached",
        ),
        (_, Source::Snapshot) => Some(
            "hosts snapshot from Consul KV (Consul unreachable, nothing cached): TTLs capped, EDE 3 attached",
        ),
        ("consul", _) if reply.response_code == ResponseCode::ServFail => Some(
            "the catalog has no usable data (Consul unreachable, nothing cached or in the snapshot), or the name uses a Consul form that is not implemented",
        ),
        ("local", _) if nodata => {
            Some("the name is in the local hosts files, without records of this type (NODATA)")
        }
        ("local", _) => Some("answered from the local hosts files"),
        _ => None,
    }
}
