//! Reverse lookups (PTR) of Consul addresses, answered from the data the catalog
//! view already holds (Consul `handlePtr`): a node's address gives
//! `NODE.node.DC.domain`, a service address `NAME.service.DC.domain`. Addresses
//! that are not Consul's are left to the local hosts files and the forwarder.

use std::net::IpAddr;

use dnsfront_catalog::AddressKind;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::PTR;
use hickory_proto::rr::{Name, RData, Record};
use ipnet::IpNet;

use crate::answer::{Reply, Source, Zone};
use crate::backend::CatalogView;

/// TTL of PTR answers: Consul always sends 0.
const PTR_TTL: u32 = 0;

/// The address a full `in-addr.arpa` / `ip6.arpa` name stands for (`None` for any
/// other name, or a partial one such as `10.in-addr.arpa`).
pub(crate) fn address_of(name: &Name) -> Option<IpAddr> {
    match name.parse_arpa_name().ok()? {
        IpNet::V4(net) if net.prefix_len() == 32 => Some(IpAddr::V4(net.addr())),
        IpNet::V6(net) if net.prefix_len() == 128 => Some(IpAddr::V6(net.addr())),
        _ => None,
    }
}

impl Zone {
    /// The PTR answer for `lower` (a lower-cased question name) when it is the
    /// reverse name of an address the catalog knows; `asked` is the owner name.
    pub(crate) fn reverse<C: CatalogView>(
        &self,
        catalog: &C,
        lower: &Name,
        asked: &Name,
    ) -> Option<Reply> {
        let ip = address_of(lower)?;
        let (kind, owner) = catalog.owner_of(ip)?;
        let target = match kind {
            AddressKind::Node => self.node_name(&owner.datacenter, &owner.name),
            AddressKind::Service => self.service_name(&owner.datacenter, &owner.name),
        }?;
        let mut reply = Reply::empty(ResponseCode::NoError, true);
        reply.source = Source::from_freshness(owner.freshness);
        reply.answers.push(Record::from_rdata(
            asked.clone(),
            PTR_TTL,
            RData::PTR(PTR(target)),
        ));
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("name literal")
    }

    #[test]
    fn full_reverse_names_give_their_address() {
        assert_eq!(
            address_of(&name("11.0.0.10.in-addr.arpa.")),
            "10.0.0.11".parse().ok()
        );
        let v6 = "6.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(address_of(&name(v6)), "fd00::16".parse().ok());
        for partial in [
            "0.10.in-addr.arpa.",
            "arpa.",
            "example.com.",
            "1.2.3.4.5.in-addr.arpa.",
            "x.0.0.10.in-addr.arpa.",
        ] {
            assert_eq!(address_of(&name(partial)), None, "{partial}");
        }
    }
}
