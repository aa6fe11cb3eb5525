//! Names that stand for other names in Consul answers.
//!
//! - `alt_domain` (Consul's): a second name for the Consul zone. A question in
//!   it is answered as the same question in the main domain, and the names of
//!   the reply are moved back into the domain the question used ([`rebase_reply`]).
//! - Hostname addresses: a service or node registered at a hostname is
//!   answered with a CNAME to it (A/AAAA/ANY) or with it as the SRV target;
//!   the router then resolves the hostname ([`dangling`]) and appends its
//!   records, as Consul's `resolveCNAME` does: inside the Consul domain by
//!   answering it here (at most [`MAX_DEPTH`] levels, Consul's
//!   `maxRecursionLevelDefault`), else through the forwarder (so cached).

use std::collections::HashSet;

use hickory_proto::rr::{Name, RData, RecordType};

use crate::answer::Reply;

/// Consul domain levels a chain of hostname addresses is followed through.
pub(crate) const MAX_DEPTH: u8 = 3;

/// Records of one hostname's chain a client without EDNS gets in a service
/// answer (Consul's `maxRecurseRecords`; with EDNS there is no cap).
pub(crate) const MAX_CHAIN_RECORDS_WITHOUT_EDNS: usize = 5;

/// Where the records of a resolved hostname go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// After the CNAME that points at it (A/AAAA/ANY answers).
    Answer,
    /// Beside the SRV record that names it.
    Additional,
}

/// The hostnames `reply` points at without giving their records: CNAME
/// targets in Answer without records of their own, and SRV targets without an
/// address in Additional (each once).
pub(crate) fn dangling(reply: &Reply) -> Vec<(Name, Section)> {
    // Sets, not scans: a SRV answer may name 2,000 targets.
    let answer_owners: HashSet<&Name> = reply.answers.iter().map(|record| &record.name).collect();
    let additional_owners: HashSet<&Name> = reply
        .additionals
        .iter()
        .map(|record| &record.name)
        .collect();
    let mut seen: HashSet<&Name> = HashSet::new();
    let mut out = Vec::new();
    for record in &reply.answers {
        let (target, section, owners) = match &record.data {
            RData::CNAME(cname) => (&cname.0, Section::Answer, &answer_owners),
            RData::SRV(srv) => (&srv.target, Section::Additional, &additional_owners),
            _ => continue,
        };
        if !owners.contains(target) && seen.insert(target) {
            out.push((target.clone(), section));
        }
    }
    out
}

/// The type to ask for a hostname's records: the asked address family for A
/// and AAAA (what a stub following the CNAME needs), otherwise (ANY, SRV)
/// `A` upstream, as Consul asks its recursors, and ANY inside the Consul
/// domain, as Consul's internal dispatch does.
pub(crate) fn chain_qtype(qtype: RecordType, internal: bool) -> RecordType {
    match qtype {
        RecordType::A | RecordType::AAAA => qtype,
        _ if internal => RecordType::ANY,
        _ => RecordType::A,
    }
}

/// `name` (at or under `from`) with `from` replaced by `to`; `name` itself
/// when it is not under `from` or the result is too long.
pub(crate) fn rebase(name: &Name, from: &Name, to: &Name) -> Name {
    if !from.zone_of(name) {
        return name.clone();
    }
    let n_prefix = name.iter().count().saturating_sub(from.iter().count());
    Name::from_labels(name.iter().take(n_prefix))
        .and_then(|prefix| prefix.append_domain(to))
        .unwrap_or_else(|_| name.clone())
}

/// Moves the names of a reply built in domain `from` into domain `to` (as
/// the question wrote it): owners and the names inside CNAME, SRV, NS and
/// PTR data. Names outside `from` stay.
pub(crate) fn rebase_reply(reply: &mut Reply, from: &Name, to: &Name) {
    let records = reply
        .answers
        .iter_mut()
        .chain(reply.authorities.iter_mut())
        .chain(reply.additionals.iter_mut());
    for record in records {
        record.name = rebase(&record.name, from, to);
        match &mut record.data {
            RData::CNAME(cname) => cname.0 = rebase(&cname.0, from, to),
            RData::NS(ns) => ns.0 = rebase(&ns.0, from, to),
            RData::PTR(ptr) => ptr.0 = rebase(&ptr.0, from, to),
            RData::SRV(srv) => srv.target = rebase(&srv.target, from, to),
            _ => {}
        }
    }
}

/// Echoes the question's spelling in owner names equal to it (`question` in
/// lower case, `asked` as the client wrote it).
pub(crate) fn echo_owner(reply: &mut Reply, question: &Name, asked: &Name) {
    for record in reply.answers.iter_mut().chain(reply.additionals.iter_mut()) {
        if record.name == *question {
            record.name = asked.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, CNAME, SRV};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("name literal")
    }

    #[test]
    fn rebase_moves_names_between_domains() {
        let consul = name("consul.");
        let alt = name("Example.Internal.");
        assert_eq!(
            rebase(&name("web.service.consul."), &consul, &alt),
            name("web.service.Example.Internal.")
        );
        assert_eq!(rebase(&consul, &consul, &alt), alt);
        assert_eq!(
            rebase(&name("db.example.com."), &consul, &alt),
            name("db.example.com.")
        );
    }

    #[test]
    fn dangling_finds_unresolved_cname_and_srv_targets_once() {
        let owner = name("db.service.consul.");
        let host = name("db.rds.example.com.");
        let node = name("n1.node.dc1.consul.");
        let mut reply = Reply::empty(ResponseCode::NoError, true);
        reply.answers.push(Record::from_rdata(
            owner.clone(),
            5,
            RData::CNAME(CNAME(host.clone())),
        ));
        assert_eq!(dangling(&reply), vec![(host.clone(), Section::Answer)]);
        reply.answers.push(Record::from_rdata(
            host.clone(),
            5,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ));
        assert!(dangling(&reply).is_empty(), "resolved");

        let mut reply = Reply::empty(ResponseCode::NoError, true);
        for target in [&host, &node, &host] {
            let srv = SRV::new(1, 1, 5432, target.clone());
            reply
                .answers
                .push(Record::from_rdata(owner.clone(), 5, RData::SRV(srv)));
        }
        reply.additionals.push(Record::from_rdata(
            node,
            5,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ));
        assert_eq!(dangling(&reply), vec![(host, Section::Additional)]);
    }

    #[test]
    fn chain_type_follows_the_question() {
        assert_eq!(chain_qtype(RecordType::AAAA, false), RecordType::AAAA);
        assert_eq!(chain_qtype(RecordType::SRV, false), RecordType::A);
        assert_eq!(chain_qtype(RecordType::ANY, true), RecordType::ANY);
    }
}
