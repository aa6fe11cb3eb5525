//! Answers from the local hosts files (dnsmasq's `/etc/hosts` and `addn-hosts`).
//!
//! A name listed in a hosts file is owned by that file: every question about it
//! is answered here, authoritatively (AA), never forwarded. The wanted records
//! are answered with the configured local TTL; any other type is NODATA
//! (NOERROR, no records and no SOA, as dnsmasq answers the other address family
//! of a hosts name). The same holds for the reverse name of a listed address:
//! PTR (and ANY) get its names, other types NODATA.

use dnsfront_hosts::Lookup;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::PTR;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::answer::{Reply, Source, address_record};

/// The reply for a name the hosts files know; `asked` is the question name as
/// the client wrote it (the owner of every record).
pub(crate) fn reply(lookup: &Lookup, asked: &Name, qtype: RecordType, ttl: u32) -> Reply {
    let mut reply = Reply::empty(ResponseCode::NoError, true);
    reply.source = Source::Local;
    match lookup {
        Lookup::Addresses(addresses) => {
            reply.answers.extend(
                addresses
                    .iter()
                    .filter_map(|&ip| address_record(asked.clone(), ttl, ip, qtype)),
            );
        }
        Lookup::Names { names, .. } => {
            if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                reply.answers.extend(names.iter().filter_map(|name| {
                    let mut target = Name::from_ascii(name).ok()?;
                    target.set_fqdn(true);
                    Some(Record::from_rdata(
                        asked.clone(),
                        ttl,
                        RData::PTR(PTR(target)),
                    ))
                }));
            }
        }
    }
    reply
}
