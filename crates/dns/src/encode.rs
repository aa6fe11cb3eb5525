//! Encoding our responses to wire bytes: hickory's format and its name
//! compression, except that every owner name is compressed.
//!
//! hickory 0.26 compresses at most 120 names per message (its guard against
//! CVE-2024-8508's quadratic compression), so from the 121st record on each
//! owner is written out in full: 2,000 A records then need ~66 KB instead of
//! ~32 KB and do not fit a TCP message. The cost that guard bounds is already
//! bounded by hickory's encoder, which keeps at most 64 names to point at:
//! compressing an owner costs at most labels × 64 comparisons of short slices.
//! Names inside RDATA are still written by hickory (SRV targets uncompressed,
//! as RFC 2782 asks).

use hickory_server::proto::ProtoError;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata};
use hickory_server::proto::rr::{Name, Record, RecordData as _};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::zone_handler::Queries;

/// A response ready to encode (already fitted to its transport's limit).
#[derive(Clone, Copy)]
pub(crate) struct Response<'a> {
    pub(crate) metadata: Metadata,
    pub(crate) queries: &'a Queries,
    pub(crate) edns: Option<&'a Edns>,
    pub(crate) answers: &'a [Record],
    pub(crate) authorities: &'a [Record],
    pub(crate) additionals: &'a [Record],
}

impl Response<'_> {
    /// The wire form and its header. Fails only for a response that does not
    /// fit a DNS message (65,535 bytes) at all.
    pub(crate) fn encode(&self) -> Result<(Header, Vec<u8>), ProtoError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        let place = encoder.place::<Header>()?;
        for query in self.queries.queries() {
            // Through hickory's name emission, so that owners can point at it.
            query.original().emit(&mut encoder)?;
        }
        let mut previous = None;
        for record in self
            .answers
            .iter()
            .chain(self.authorities)
            .chain(self.additionals)
        {
            emit_record(&mut encoder, record, &mut previous)?;
        }
        if let Some(edns) = self.edns {
            let mut edns = edns.clone();
            edns.set_rcode_high(self.metadata.response_code.high());
            Record::from(&edns).emit(&mut encoder)?;
        }
        let count = |records: &[Record]| {
            u16::try_from(records.len())
                .map_err(|_| ProtoError::Message("too many records to fit in header count"))
        };
        let header = Header {
            metadata: self.metadata,
            counts: HeaderCounts {
                queries: count_queries(self.queries)?,
                answers: count(self.answers)?,
                authorities: count(self.authorities)?,
                additionals: count(self.additionals)? + u16::from(self.edns.is_some()),
            },
        };
        place.replace(&mut encoder, header)?;
        let end = encoder.offset();
        bytes.truncate(end);
        Ok((header, bytes))
    }

    /// The encoded size (`usize::MAX` when it does not fit a DNS message).
    pub(crate) fn encoded_len(&self) -> usize {
        self.encode().map_or(usize::MAX, |(_, bytes)| bytes.len())
    }
}

fn count_queries(queries: &Queries) -> Result<u16, ProtoError> {
    u16::try_from(queries.len()).map_err(|_| ProtoError::Message("too many queries"))
}

/// The previous record's owner and where it can be pointed at.
type Previous<'r> = Option<(&'r Name, u16)>;

/// One record as hickory's `Record::emit` writes it, with the owner name
/// always compressed ([`emit_owner`]).
fn emit_record<'r>(
    encoder: &mut BinEncoder<'_>,
    record: &'r Record,
    previous: &mut Previous<'r>,
) -> Result<(), ProtoError> {
    emit_owner(encoder, &record.name, previous)?;
    record.record_type().emit(encoder)?;
    record.dns_class.emit(encoder)?;
    encoder.emit_u32(record.ttl)?;
    let place = encoder.place::<u16>()?;
    if !record.data.is_update() {
        record.data.emit(encoder)?;
    }
    let len = u16::try_from(encoder.len_since_place(&place))
        .map_err(|_| ProtoError::Message("record data longer than 65,535 bytes"))?;
    place.replace(encoder, len)
}

/// hickory's `Name::emit` in compressed mode, without its per-message limit:
/// writes the labels, then replaces the longest suffix already in the message
/// by a pointer to it; otherwise offers each suffix for later names to point at.
///
/// An owner written exactly as the previous one (the common case: every
/// record of an RRset) is a pointer to where that one is, at once.
fn emit_owner<'r>(
    encoder: &mut BinEncoder<'_>,
    name: &'r Name,
    previous: &mut Previous<'r>,
) -> Result<(), ProtoError> {
    if let Some((last, at)) = *previous
        && last.eq_case(name)
    {
        return encoder.emit_u16(0xc000 | at);
    }
    let written = encoder.offset();
    let mut starts = [0usize; 128];
    let mut n_labels = 0;
    for label in name.iter() {
        starts[n_labels] = encoder.offset();
        n_labels += 1;
        encoder.emit_character_data(label)?;
    }
    let end = encoder.offset();
    for &start in &starts[..n_labels] {
        match encoder.get_label_pointer(start, end) {
            Some(pointer) if pointer & 0xc000 == 0 => {
                encoder.set_offset(start);
                encoder.trim();
                // Whole name a pointer: later ones point where it points.
                let at = if start == written {
                    Some(pointer)
                } else {
                    offset(written)
                };
                *previous = at.map(|at| (name, at));
                return encoder.emit_u16(0xc000 | pointer);
            }
            _ => encoder.store_label_pointer(start, end),
        }
    }
    *previous = offset(written).map(|at| (name, at));
    encoder.emit(0)
}

/// `at` when a pointer can reach it (below 0x4000).
fn offset(at: usize) -> Option<u16> {
    u16::try_from(at).ok().filter(|at| at & 0xc000 == 0)
}

#[cfg(test)]
mod tests {
    use std::iter;
    use std::net::Ipv4Addr;

    use hickory_server::proto::op::{Message, MessageType, OpCode, Query};
    use hickory_server::proto::rr::rdata::{A, CNAME, SRV};
    use hickory_server::proto::rr::{RData, RecordType};
    use hickory_server::proto::serialize::binary::BinDecoder;
    use hickory_server::zone_handler::MessageResponseBuilder;

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("name literal")
    }

    fn queries(asked: &Name) -> Queries {
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(asked.clone(), RecordType::A));
        let bytes = query.to_vec().expect("encode query");
        Queries::read(&mut BinDecoder::new(&bytes[12..]), 1).expect("queries")
    }

    fn hickory_bytes(response: &Response<'_>) -> Vec<u8> {
        let mut builder = MessageResponseBuilder::new(response.queries, None);
        if let Some(edns) = response.edns {
            builder.edns(edns);
        }
        let message = builder.build(
            response.metadata,
            response.answers.iter(),
            response.authorities.iter(),
            iter::empty(),
            response.additionals.iter(),
        );
        let mut bytes = Vec::new();
        let mut encoder = BinEncoder::new(&mut bytes);
        message.destructive_emit(&mut encoder).expect("encodes");
        bytes
    }

    /// Our encoding decodes to what hickory's does, strictly, and is never
    /// longer (the first owner also points at the question, which hickory
    /// copies in without offering its name for compression).
    #[test]
    fn responses_decode_as_hickory_encodes_them() {
        let asked = name("Web.Service.consul.");
        let queries = queries(&asked);
        let target = |i: u8| name(&format!("node-{i}.node.dc1.consul."));
        let answers: Vec<Record> = (0..20u8)
            .map(|i| {
                Record::from_rdata(asked.clone(), 5, RData::SRV(SRV::new(1, 1, 80, target(i))))
            })
            .collect();
        let mut additionals: Vec<Record> = (0..20u8)
            .map(|i| Record::from_rdata(target(i), 5, RData::A(A::new(10, 0, 0, i))))
            .collect();
        additionals.push(Record::from_rdata(
            name("alias.example."),
            5,
            RData::CNAME(CNAME(name("node-1.node.dc1.consul."))),
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        let response = Response {
            metadata: Metadata::new(7, MessageType::Response, OpCode::Query),
            queries: &queries,
            edns: Some(&edns),
            answers: &answers,
            authorities: &[],
            additionals: &additionals,
        };
        let (header, ours) = response.encode().expect("encodes");
        let theirs = hickory_bytes(&response);
        assert_eq!(
            test_support::strict_parse(&ours).expect("strict"),
            test_support::strict_parse(&theirs).expect("strict")
        );
        assert!(
            ours.len() < theirs.len(),
            "{} >= {}",
            ours.len(),
            theirs.len()
        );
        assert_eq!(header.counts.additionals, 22);
        assert_eq!(response.encoded_len(), ours.len());
    }

    /// 2,000 A records: every owner a pointer (16 bytes a record), where
    /// hickory writes the owner out from the 121st name on.
    #[test]
    fn every_owner_is_compressed() {
        let asked = name("s2000.service.consul.");
        let queries = queries(&asked);
        let answers: Vec<Record> = (0..2000u16)
            .map(|i| {
                let [high, low] = i.to_be_bytes();
                let ip = Ipv4Addr::new(10, 0, high, low);
                Record::from_rdata(asked.clone(), 5, RData::A(A(ip)))
            })
            .collect();
        let response = Response {
            metadata: Metadata::new(7, MessageType::Response, OpCode::Query),
            queries: &queries,
            edns: None,
            answers: &answers,
            authorities: &[],
            additionals: &[],
        };
        let (_, bytes) = response.encode().expect("encodes");
        // Header, question (22 + 4), 16 bytes a record.
        assert_eq!(bytes.len(), 12 + 26 + 2000 * 16);
        let message = test_support::strict_parse(&bytes).expect("strict");
        assert_eq!(message.answers, answers);
    }
}
