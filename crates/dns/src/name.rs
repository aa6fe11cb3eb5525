//! The Consul DNS name grammar (Consul 1.16 `dispatch`, reference a.2).
//!
//! Input is the question name, lower-cased, with the Consul domain already
//! stripped, as a list of labels (leftmost first).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::RecordType;

/// What a name in the Consul domain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The zone apex itself.
    Apex,
    /// Healthy instances of a service, optionally filtered by a tag.
    Service {
        /// Service name (lower-case).
        name: String,
        /// Tag filter, `None` = every instance.
        tag: Option<String>,
        /// Datacenter, `None` = the agent's.
        datacenter: Option<String>,
    },
    /// A catalog node.
    Node {
        /// Node name (lower-case, may contain dots).
        name: String,
        /// Datacenter, `None` = the agent's.
        datacenter: Option<String>,
    },
    /// A literal address encoded in hex.
    Addr(IpAddr),
    /// A Consul form we do not implement yet (`.query`, `.connect`, `.ingress`, `.virtual`).
    Unsupported,
    /// Anything else: NXDOMAIN.
    Invalid,
}

/// Keywords that split a name into query parts (left) and locality (right).
const KEYWORDS: [&str; 7] = [
    "service", "connect", "virtual", "ingress", "node", "query", "addr",
];

/// Parses the labels left of the Consul domain.
pub(crate) fn parse(labels: &[&str], qtype: RecordType) -> Parsed {
    if labels.is_empty() {
        return Parsed::Apex;
    }
    if labels.iter().any(|label| !is_acceptable_label(label)) {
        return Parsed::Invalid;
    }

    // Scan right to left for the first keyword; for SRV a `_` label met first
    // starts an RFC 2782 service name without `.service`.
    let mut found = None;
    for (index, label) in labels.iter().enumerate().rev() {
        if KEYWORDS.contains(label) {
            found = Some((index, *label, false));
            break;
        }
        if qtype == RecordType::SRV && label.starts_with('_') {
            found = Some((index, "service", true));
            break;
        }
    }
    let Some((index, kind, short_rfc2782)) = found else {
        return Parsed::Invalid;
    };
    let (query_parts, suffixes) = if short_rfc2782 {
        (&labels[..=index], &labels[index + 1..])
    } else {
        (&labels[..index], &labels[index + 1..])
    };

    match kind {
        "service" => {
            let Some(datacenter) = locality(suffixes) else {
                return Parsed::Invalid;
            };
            service(query_parts, datacenter)
        }
        "node" => {
            let Some(datacenter) = locality(suffixes) else {
                return Parsed::Invalid;
            };
            if query_parts.is_empty() {
                return Parsed::Invalid;
            }
            Parsed::Node {
                name: query_parts.join("."),
                datacenter,
            }
        }
        "addr" => {
            // `.addr` accepts at most one locality label (Consul `parseDatacenter`);
            // the datacenter does not change the answer.
            if suffixes.len() > 1 || query_parts.len() != 1 {
                return Parsed::Invalid;
            }
            match decode_hex_addr(query_parts[0]) {
                Some(ip) => Parsed::Addr(ip),
                None => Parsed::Invalid,
            }
        }
        _ => Parsed::Unsupported,
    }
}

fn service(query_parts: &[&str], datacenter: Option<String>) -> Parsed {
    match query_parts {
        [] => Parsed::Invalid,
        [service, protocol] if service.starts_with('_') && protocol.starts_with('_') => {
            let name = &service[1..];
            let tag = &protocol[1..];
            if name.is_empty() || tag.is_empty() {
                return Parsed::Invalid;
            }
            Parsed::Service {
                name: name.to_owned(),
                tag: (tag != "tcp").then(|| tag.to_owned()),
                datacenter,
            }
        }
        [name] => Parsed::Service {
            name: (*name).to_owned(),
            tag: None,
            datacenter,
        },
        [tags @ .., name] => Parsed::Service {
            name: (*name).to_owned(),
            tag: Some(tags.join(".")),
            datacenter,
        },
    }
}

/// Datacenter from the labels right of the keyword: `Some(None)` = default,
/// `Some(Some(dc))`, or `None` when the locality is invalid.
fn locality(suffixes: &[&str]) -> Option<Option<String>> {
    match suffixes {
        [] => Some(None),
        [datacenter] => Some(Some((*datacenter).to_owned())),
        [datacenter, "dc"] => Some(Some((*datacenter).to_owned())),
        _ => None,
    }
}

/// Labels we pass on to the catalog: printable ASCII without characters that
/// would be ambiguous in a name or in an HTTP path.
fn is_acceptable_label(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'/' | b'\\' | b'?' | b'#' | b'%'))
}

/// Decodes an `.addr` label: 8 hex digits = IPv4, 32 = IPv6.
pub(crate) fn decode_hex_addr(label: &str) -> Option<IpAddr> {
    fn bytes<const N: usize>(hex: &str) -> Option<[u8; N]> {
        let hex = hex.as_bytes();
        if hex.len() != N * 2 {
            return None;
        }
        let mut out = [0u8; N];
        for (index, pair) in hex.chunks_exact(2).enumerate() {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            out[index] = u8::try_from(high * 16 + low).ok()?;
        }
        Some(out)
    }
    match label.len() {
        8 => bytes::<4>(label).map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        32 => bytes::<16>(label).map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

/// Encodes an address as an `.addr` label (lower-case hex).
pub(crate) fn encode_hex_addr(ip: IpAddr) -> String {
    let octets: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    octets.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, tag: Option<&str>, dc: Option<&str>) -> Parsed {
        Parsed::Service {
            name: name.to_owned(),
            tag: tag.map(str::to_owned),
            datacenter: dc.map(str::to_owned),
        }
    }

    fn node(name: &str, dc: Option<&str>) -> Parsed {
        Parsed::Node {
            name: name.to_owned(),
            datacenter: dc.map(str::to_owned),
        }
    }

    fn p(name: &str, qtype: RecordType) -> Parsed {
        let labels: Vec<&str> = if name.is_empty() {
            Vec::new()
        } else {
            name.split('.').collect()
        };
        parse(&labels, qtype)
    }

    #[test]
    fn grammar_table() {
        use RecordType::{A, AAAA, SRV};
        let v4 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let v6: IpAddr = "2607:20:4005:808::200e".parse().expect("literal");
        let cases: Vec<(&str, RecordType, Parsed)> = vec![
            ("", A, Parsed::Apex),
            ("web.service", A, svc("web", None, None)),
            ("web.service.dc1", A, svc("web", None, Some("dc1"))),
            ("web.service.dc1.dc", A, svc("web", None, Some("dc1"))),
            ("web.service.dc1.peer", A, Parsed::Invalid),
            ("web.service.dc1.extra.more", A, Parsed::Invalid),
            ("v1.web.service", A, svc("web", Some("v1"), None)),
            (
                "v1.primary.db.service",
                A,
                svc("db", Some("v1.primary"), None),
            ),
            (
                "v1.web.service.dc2",
                AAAA,
                svc("web", Some("v1"), Some("dc2")),
            ),
            ("_web._tcp.service", SRV, svc("web", None, None)),
            ("_web._tcp.service", A, svc("web", None, None)),
            ("_web._udp.service", SRV, svc("web", Some("udp"), None)),
            (
                "_web._v1.service.dc1",
                SRV,
                svc("web", Some("v1"), Some("dc1")),
            ),
            ("_web._tcp", SRV, svc("web", None, None)),
            ("_web._tcp.dc1", SRV, svc("web", None, Some("dc1"))),
            ("_web._tcp", A, Parsed::Invalid),
            ("_web.web.service", A, svc("web", Some("_web"), None)),
            ("service", A, Parsed::Invalid),
            ("service.dc1", A, Parsed::Invalid),
            ("foo.bar", A, Parsed::Invalid),
            ("n1.node", A, node("n1", None)),
            ("foo.bar.node", A, node("foo.bar", None)),
            ("n1.node.dc1", A, node("n1", Some("dc1"))),
            ("n1.node.dc1.dc", A, node("n1", Some("dc1"))),
            ("node", A, Parsed::Invalid),
            ("n1.node.a.b.c", A, Parsed::Invalid),
            ("7f000002.addr", A, Parsed::Addr(v4)),
            ("7f000002.addr.dc1", A, Parsed::Addr(v4)),
            ("7f000002.addr.dc1.dc", A, Parsed::Invalid),
            (
                "2607002040050808000000000000200e.addr",
                AAAA,
                Parsed::Addr(v6),
            ),
            ("7f00000z.addr", A, Parsed::Invalid),
            ("7f0000021.addr", A, Parsed::Invalid),
            ("7f.addr", A, Parsed::Invalid),
            ("a.7f000002.addr", A, Parsed::Invalid),
            ("addr", A, Parsed::Invalid),
            ("web.query", A, Parsed::Unsupported),
            ("web.connect", A, Parsed::Unsupported),
            ("web.ingress", A, Parsed::Unsupported),
            ("web.virtual", A, Parsed::Unsupported),
            // The rightmost keyword wins: `node` here is a query part of the service form.
            ("node.web.service", A, svc("web", Some("node"), None)),
            ("web.service.node", A, node("web.service", None)),
        ];
        for (name, qtype, expected) in cases {
            assert_eq!(p(name, qtype), expected, "{name} {qtype}");
        }
    }

    #[test]
    fn rejects_labels_that_are_unsafe_to_pass_on() {
        assert_eq!(parse(&["a/b", "service"], RecordType::A), Parsed::Invalid);
        assert_eq!(parse(&["a.b", "service"], RecordType::A), Parsed::Invalid);
        assert_eq!(parse(&["a b", "service"], RecordType::A), Parsed::Invalid);
        assert_eq!(
            parse(&["w\u{e9}b", "service"], RecordType::A),
            Parsed::Invalid
        );
        assert_eq!(
            parse(&["_", "_tcp", "service"], RecordType::SRV),
            Parsed::Invalid
        );
    }

    #[test]
    fn hex_addr_round_trip() {
        let v4: IpAddr = "127.0.0.2".parse().expect("literal");
        assert_eq!(encode_hex_addr(v4), "7f000002");
        let v6: IpAddr = "2607:20:4005:808::200e".parse().expect("literal");
        assert_eq!(encode_hex_addr(v6), "2607002040050808000000000000200e");
        for ip in [
            v4,
            v6,
            "::1".parse().expect("literal"),
            "10.255.0.1".parse().expect("literal"),
        ] {
            assert_eq!(decode_hex_addr(&encode_hex_addr(ip)), Some(ip));
        }
        assert_eq!(
            decode_hex_addr("7F000002"),
            Some(v4),
            "upper-case hex decodes too"
        );
        assert_eq!(decode_hex_addr("+f000002"), None);
        assert_eq!(decode_hex_addr("7f00000"), None);
        assert_eq!(decode_hex_addr(""), None);
    }
}
