//! Local policy: names that are never forwarded (`domain_needed`, `bogus_priv`) and
//! answers that are filtered (`rebind_protection`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::{Name, RData, Record};

/// Why the forwarder answered (or changed an answer) itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// A single-label name was not forwarded (`domain_needed`): NXDOMAIN.
    DomainNeeded,
    /// A reverse lookup for a private range was not forwarded (`bogus_priv`): NXDOMAIN.
    BogusPriv,
    /// Every address of a public name was private and was dropped
    /// (`rebind_protection`): NOERROR without records, as dnsmasq.
    Rebind,
}

impl Policy {
    /// The value of the `policy` metrics tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DomainNeeded => "domain_needed",
            Self::BogusPriv => "bogus_priv",
            Self::Rebind => "rebind",
        }
    }
}

/// Whether `name` (absolute, any case) has exactly one label (`myhost.`).
pub(crate) fn is_single_label(name: &Name) -> bool {
    name.iter().count() == 1
}

/// Whether `name` is in the reverse tree of a private range (any record type).
///
/// Partial names count when the whole prefix they stand for is private:
/// `16.172.in-addr.arpa.` (172.16/16) is, `172.in-addr.arpa.` (172/8) is not.
pub(crate) fn is_private_reverse(name: &Name) -> bool {
    let labels: Vec<Vec<u8>> = name.iter().map(<[u8]>::to_ascii_lowercase).rev().collect();
    match labels.as_slice() {
        [arpa, in_addr, octets @ ..] if arpa == b"arpa" && in_addr == b"in-addr" => {
            reverse_v4(octets).is_some_and(|(ip, len)| private_v4_prefix(ip, len))
        }
        [arpa, ip6, nibbles @ ..] if arpa == b"arpa" && ip6 == b"ip6" => {
            reverse_v6(nibbles).is_some_and(|(ip, len)| private_v6_prefix(ip, len))
        }
        _ => false,
    }
}

/// The prefix a list of in-addr.arpa labels (most significant first) stands for.
fn reverse_v4(octets: &[Vec<u8>]) -> Option<(u32, u32)> {
    if octets.is_empty() || octets.len() > 4 {
        return None;
    }
    let mut ip = 0_u32;
    for (index, label) in octets.iter().enumerate() {
        let octet: u8 = std::str::from_utf8(label).ok()?.parse().ok()?;
        ip |= u32::from(octet) << (24 - 8 * index);
    }
    let len = u32::try_from(octets.len()).ok()? * 8;
    Some((ip, len))
}

/// The prefix a list of ip6.arpa nibble labels (most significant first) stands for.
fn reverse_v6(nibbles: &[Vec<u8>]) -> Option<(u128, u32)> {
    if nibbles.is_empty() || nibbles.len() > 32 {
        return None;
    }
    let mut ip = 0_u128;
    for (index, label) in nibbles.iter().enumerate() {
        let [digit] = label.as_slice() else {
            return None;
        };
        let nibble = char::from(*digit).to_digit(16)?;
        ip |= u128::from(nibble) << (124 - 4 * index);
    }
    let len = u32::try_from(nibbles.len()).ok()? * 4;
    Some((ip, len))
}

/// (network, prefix length) of the private IPv4 ranges.
const PRIVATE_V4: [(u32, u32); 6] = [
    (0x0A00_0000, 8),  // 10/8, RFC 1918
    (0xAC10_0000, 12), // 172.16/12, RFC 1918
    (0xC0A8_0000, 16), // 192.168/16, RFC 1918
    (0x6440_0000, 10), // 100.64/10, RFC 6598 shared address space
    (0xA9FE_0000, 16), // 169.254/16, link-local
    (0x7F00_0000, 8),  // 127/8, loopback
];

/// (network, prefix length) of the private IPv6 ranges.
const PRIVATE_V6: [(u128, u32); 3] = [
    (0xfc00 << 112, 7),  // fc00::/7, unique local
    (0xfe80 << 112, 10), // fe80::/10, link-local
    (1, 128),            // ::1, loopback
];

fn mask_v4(len: u32) -> u32 {
    u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

fn mask_v6(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

/// Whether every address of `ip/len` lies in one private IPv4 range.
fn private_v4_prefix(ip: u32, len: u32) -> bool {
    PRIVATE_V4
        .iter()
        .any(|&(net, net_len)| len >= net_len && ip & mask_v4(net_len) == net)
}

/// Whether every address of `ip/len` lies in one private IPv6 range.
fn private_v6_prefix(ip: u128, len: u32) -> bool {
    PRIVATE_V6
        .iter()
        .any(|&(net, net_len)| len >= net_len && ip & mask_v6(net_len) == net)
}

/// Whether `ip` is private, loopback, link-local or unspecified (rebind protection).
pub(crate) fn is_private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            v6 == Ipv6Addr::UNSPECIFIED || private_v6_prefix(u128::from(v6), 128)
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    // 0.0.0.0/8 ("this network") reaches the local host on Linux; dnsmasq bans it too.
    ip.octets()[0] == 0 || private_v4_prefix(u32::from(ip), 32)
}

/// Removes A/AAAA records with private addresses; returns how many were removed.
pub(crate) fn drop_private_addresses(records: &mut Vec<Record>) -> usize {
    let before = records.len();
    records.retain(|record| match &record.data {
        RData::A(a) => !is_private_address(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => !is_private_address(IpAddr::V6(aaaa.0)),
        _ => true,
    });
    before - records.len()
}

/// Whether any A/AAAA record is left.
pub(crate) fn has_addresses(records: &[Record]) -> bool {
    records
        .iter()
        .any(|record| matches!(record.data, RData::A(_) | RData::AAAA(_)))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_str(text).expect("test name")
    }

    #[test]
    fn single_label_names() {
        assert!(is_single_label(&name("myhost.")));
        assert!(is_single_label(&name("myhost")));
        assert!(!is_single_label(&name("myhost.example.")));
        assert!(!is_single_label(&Name::root()));
    }

    #[test]
    fn private_reverse_names_cover_whole_private_prefixes_only() {
        for private in [
            "1.0.0.10.in-addr.arpa.",
            "10.in-addr.arpa.",
            "16.172.in-addr.arpa.",
            "5.31.172.IN-ADDR.ARPA.",
            "168.192.in-addr.arpa.",
            "7.0.64.100.in-addr.arpa.",
            "1.1.254.169.in-addr.arpa.",
            "1.0.0.127.in-addr.arpa.",
            "c.f.ip6.arpa.",
            "d.f.ip6.arpa.",
            "8.e.f.ip6.arpa.",
            "b.e.f.ip6.arpa.",
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
        ] {
            assert!(is_private_reverse(&name(private)), "{private}");
        }
        for public in [
            "in-addr.arpa.",
            "172.in-addr.arpa.",
            "1.32.172.in-addr.arpa.",
            "8.8.8.8.in-addr.arpa.",
            "1.2.0.192.in-addr.arpa.",
            "f.ip6.arpa.",
            "e.f.ip6.arpa.",
            "8.b.d.0.1.0.0.2.ip6.arpa.",
            "10.in-addr.arpa.example.",
            "x.10.in-addr.arpa.",
            "300.10.in-addr.arpa.",
            "www.example.",
        ] {
            assert!(!is_private_reverse(&name(public)), "{public}");
        }
        // a label below a full address is not an address any more
        assert!(!is_private_reverse(&name("9.1.0.0.10.in-addr.arpa.")));
    }

    #[test]
    fn private_addresses_for_rebind_protection() {
        for private in [
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "100.100.0.1",
            "169.254.169.254",
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = private.parse().expect("literal");
            assert!(is_private_address(ip), "{private}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "100.128.0.1",
        ] {
            let ip: IpAddr = public.parse().expect("literal");
            assert!(!is_private_address(ip), "{public}");
        }
    }
}
