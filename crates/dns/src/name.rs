//! The Consul DNS name grammar (Consul 1.16 `dispatch`, reference a.2): the
//! one place that turns a name in the Consul domain into the catalog key it
//! asks for. The router answers with it and `explain` reports it
//! ([`Router::consul_name`](crate::Router::consul_name)).
//!
//! [`parse`] takes the question name, lower-cased, with the Consul domain
//! already stripped, as a list of labels (leftmost first).
//!
//! A form Consul's DNS knows but dnsfront does not answer from its own data
//! (prepared queries, cluster peers, `.connect`, `.ingress`, `.virtual`,
//! Enterprise namespaces, partitions and sameness groups) is
//! [`ConsulName::Fallback`]: the router asks the local agent's DNS interface
//! (`fallback.rs`). Only what Consul itself would call malformed is
//! [`ConsulName::Invalid`] (NXDOMAIN here, without asking).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::{Name, RecordType};

/// What a name in the Consul domain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsulName {
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
    /// A Consul form dnsfront does not answer from its own data: asked of the
    /// local agent's DNS interface, whose answer is passed on.
    Fallback,
    /// Anything else: NXDOMAIN.
    Invalid,
}

impl ConsulName {
    /// `apex`, `service`, `node`, `addr`, `fallback` or `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Apex => "apex",
            Self::Service { .. } => "service",
            Self::Node { .. } => "node",
            Self::Addr(_) => "addr",
            Self::Fallback => "fallback",
            Self::Invalid => "invalid",
        }
    }
}

/// Keywords that split a name into query parts (left) and locality (right):
/// Consul 1.16's, and `sameness-group`, which Consul CE calls malformed but
/// the agent gets to say so (sameness groups are Enterprise's `.sg` label).
const KEYWORDS: [&str; 8] = [
    "service",
    "connect",
    "virtual",
    "ingress",
    "node",
    "query",
    "addr",
    "sameness-group",
];

/// Parses `lower` (a lower-cased name at or under `domain`, also lower-cased).
pub(crate) fn parse_in_zone(domain: &Name, lower: &Name, qtype: RecordType) -> ConsulName {
    // Labels counted by iterating: `Name::num_labels` leaves out a leading `*`
    // (the RRSIG label count), which would shift the split by one label.
    let n_prefix = lower.iter().count().saturating_sub(domain.iter().count());
    let mut labels = Vec::with_capacity(n_prefix);
    for label in lower.iter().take(n_prefix) {
        match std::str::from_utf8(label) {
            Ok(label) => labels.push(label),
            Err(_) => return ConsulName::Invalid,
        }
    }
    parse(&labels, qtype)
}

/// Parses the labels left of the Consul domain.
pub(crate) fn parse(labels: &[&str], qtype: RecordType) -> ConsulName {
    if labels.is_empty() {
        return ConsulName::Apex;
    }
    if labels.iter().any(|label| !is_acceptable_label(label)) {
        return ConsulName::Invalid;
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
        return ConsulName::Invalid;
    };
    let (query_parts, suffixes) = if short_rfc2782 {
        (&labels[..=index], &labels[index + 1..])
    } else {
        (&labels[..index], &labels[index + 1..])
    };

    match kind {
        "service" => match locality(suffixes) {
            Locality::Invalid => ConsulName::Invalid,
            Locality::Elsewhere if service(query_parts, None) == ConsulName::Invalid => {
                ConsulName::Invalid
            }
            Locality::Elsewhere => ConsulName::Fallback,
            Locality::Datacenter(datacenter) => service(query_parts, datacenter),
        },
        "node" => {
            if query_parts.is_empty() {
                return ConsulName::Invalid;
            }
            match locality(suffixes) {
                Locality::Invalid => ConsulName::Invalid,
                Locality::Elsewhere => ConsulName::Fallback,
                Locality::Datacenter(datacenter) => ConsulName::Node {
                    name: query_parts.join("."),
                    datacenter,
                },
            }
        }
        "addr" => {
            // `.addr` accepts at most one locality label (Consul `parseDatacenter`);
            // the datacenter does not change the answer.
            if suffixes.len() > 1 || query_parts.len() != 1 {
                return ConsulName::Invalid;
            }
            match decode_hex_addr(query_parts[0]) {
                Some(ip) => ConsulName::Addr(ip),
                None => ConsulName::Invalid,
            }
        }
        // `.query`, `.connect`, `.ingress`, `.virtual`, `.sameness-group`: the
        // agent checks their parts and locality itself.
        _ => ConsulName::Fallback,
    }
}

fn service(query_parts: &[&str], datacenter: Option<String>) -> ConsulName {
    match query_parts {
        [] => ConsulName::Invalid,
        [service, protocol] if service.starts_with('_') && protocol.starts_with('_') => {
            let name = &service[1..];
            let tag = &protocol[1..];
            if name.is_empty() || tag.is_empty() {
                return ConsulName::Invalid;
            }
            ConsulName::Service {
                name: name.to_owned(),
                tag: (tag != "tcp").then(|| tag.to_owned()),
                datacenter,
            }
        }
        [name] => ConsulName::Service {
            name: (*name).to_owned(),
            tag: None,
            datacenter,
        },
        [tags @ .., name] => ConsulName::Service {
            name: (*name).to_owned(),
            tag: Some(tags.join(".")),
            datacenter,
        },
    }
}

/// Where a name asks, from the labels right of the keyword (Consul's
/// `parseLocality`).
#[derive(Debug, PartialEq, Eq)]
enum Locality {
    /// A datacenter (`None` = the agent's): answered from the catalog.
    Datacenter(Option<String>),
    /// A cluster peer, or an Enterprise namespace or partition: asked of the agent.
    Elsewhere,
    /// Not a locality Consul accepts: NXDOMAIN.
    Invalid,
}

/// 0 labels = the agent's datacenter; 1 = a datacenter; 2 or 4 = `X.dc`,
/// `X.peer` pairs (a datacenter and a peer together are invalid, as in Consul;
/// the last `.dc` wins), where Enterprise also knows `X.ns`, `X.ap` and `X.sg`.
fn locality(suffixes: &[&str]) -> Locality {
    match suffixes {
        [] => Locality::Datacenter(None),
        [datacenter] => Locality::Datacenter(Some((*datacenter).to_owned())),
        [_, _] | [_, _, _, _] => {
            let (mut datacenter, mut peer, mut enterprise) = (None, false, false);
            for pair in suffixes.chunks_exact(2) {
                match pair[1] {
                    "dc" => datacenter = Some(pair[0].to_owned()),
                    "peer" => peer = true,
                    "ns" | "ap" | "sg" => enterprise = true,
                    _ => return Locality::Invalid,
                }
            }
            match (datacenter, peer || enterprise) {
                (Some(_), true) if peer => Locality::Invalid,
                (_, true) => Locality::Elsewhere,
                (datacenter, false) => Locality::Datacenter(datacenter),
            }
        }
        _ => Locality::Invalid,
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

    fn svc(name: &str, tag: Option<&str>, dc: Option<&str>) -> ConsulName {
        ConsulName::Service {
            name: name.to_owned(),
            tag: tag.map(str::to_owned),
            datacenter: dc.map(str::to_owned),
        }
    }

    fn node(name: &str, dc: Option<&str>) -> ConsulName {
        ConsulName::Node {
            name: name.to_owned(),
            datacenter: dc.map(str::to_owned),
        }
    }

    fn p(name: &str, qtype: RecordType) -> ConsulName {
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
        let cases: Vec<(&str, RecordType, ConsulName)> = vec![
            ("", A, ConsulName::Apex),
            ("web.service", A, svc("web", None, None)),
            ("web.service.dc1", A, svc("web", None, Some("dc1"))),
            ("web.service.dc1.dc", A, svc("web", None, Some("dc1"))),
            ("web.service.dc1.peer", A, ConsulName::Fallback),
            ("web.service.peer1.peer", SRV, ConsulName::Fallback),
            ("_web._tcp.service.peer1.peer", SRV, ConsulName::Fallback),
            ("service.peer1.peer", A, ConsulName::Invalid),
            ("web.service.dc1.dc.peer1.peer", A, ConsulName::Invalid),
            ("web.service.peer1.peer.dc1.dc", A, ConsulName::Invalid),
            ("web.service.a.dc.dc2.dc", A, svc("web", None, Some("dc2"))),
            ("web.service.ns1.ns.dc1.dc", A, ConsulName::Fallback),
            ("web.service.part1.ap", A, ConsulName::Fallback),
            ("web.service.group1.sg", A, ConsulName::Fallback),
            ("web.service.dc1.zone", A, ConsulName::Invalid),
            ("n1.node.peer1.peer", A, ConsulName::Fallback),
            ("node.peer1.peer", A, ConsulName::Invalid),
            ("web.service.dc1.extra.more", A, ConsulName::Invalid),
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
            ("_web._tcp", A, ConsulName::Invalid),
            ("_web.web.service", A, svc("web", Some("_web"), None)),
            ("service", A, ConsulName::Invalid),
            ("service.dc1", A, ConsulName::Invalid),
            ("foo.bar", A, ConsulName::Invalid),
            ("n1.node", A, node("n1", None)),
            ("foo.bar.node", A, node("foo.bar", None)),
            ("n1.node.dc1", A, node("n1", Some("dc1"))),
            ("n1.node.dc1.dc", A, node("n1", Some("dc1"))),
            ("node", A, ConsulName::Invalid),
            ("n1.node.a.b.c", A, ConsulName::Invalid),
            ("7f000002.addr", A, ConsulName::Addr(v4)),
            ("7f000002.addr.dc1", A, ConsulName::Addr(v4)),
            ("7f000002.addr.dc1.dc", A, ConsulName::Invalid),
            (
                "2607002040050808000000000000200e.addr",
                AAAA,
                ConsulName::Addr(v6),
            ),
            ("7f00000z.addr", A, ConsulName::Invalid),
            ("7f0000021.addr", A, ConsulName::Invalid),
            ("7f.addr", A, ConsulName::Invalid),
            ("a.7f000002.addr", A, ConsulName::Invalid),
            ("addr", A, ConsulName::Invalid),
            ("web.query", A, ConsulName::Fallback),
            ("geo.web.query.dc2", A, ConsulName::Fallback),
            ("_geo-web._tcp.query", SRV, ConsulName::Fallback),
            ("web.connect", A, ConsulName::Fallback),
            ("web.connect.dc2", SRV, ConsulName::Fallback),
            ("web.ingress", A, ConsulName::Fallback),
            ("web.virtual", A, ConsulName::Fallback),
            ("web.virtual.peer1", A, ConsulName::Fallback),
            ("web.sameness-group", A, ConsulName::Fallback),
            // The rightmost keyword wins: `node` here is a query part of the service form.
            ("node.web.service", A, svc("web", Some("node"), None)),
            ("web.service.node", A, node("web.service", None)),
        ];
        for (name, qtype, expected) in cases {
            assert_eq!(p(name, qtype), expected, "{name} {qtype}");
        }
    }

    #[test]
    fn parse_in_zone_strips_the_domain() {
        let domain = Name::from_ascii("dc.example.").expect("literal");
        let parsed = |text: &str, qtype| {
            parse_in_zone(&domain, &Name::from_ascii(text).expect("literal"), qtype)
        };
        assert_eq!(
            parsed("web.service.dc1.dc.dc.example.", RecordType::A),
            svc("web", None, Some("dc1"))
        );
        assert_eq!(
            parsed("_web._tcp.dc.example.", RecordType::SRV),
            svc("web", None, None)
        );
        assert_eq!(parsed("dc.example.", RecordType::A), ConsulName::Apex);
        let binary = Name::from_labels(vec![&b"w\xffb"[..], b"service", b"dc", b"example"])
            .expect("binary label");
        assert_eq!(
            parse_in_zone(&domain, &binary, RecordType::A),
            ConsulName::Invalid
        );
    }

    /// Found by fuzz/consul_name: a leading `*` label was not counted, so the
    /// label before the domain (the datacenter here) was dropped.
    #[test]
    fn a_leading_asterisk_label_is_a_label_like_any_other() {
        let domain = Name::from_ascii("consul.").expect("literal");
        let parsed = |text: &str| {
            parse_in_zone(
                &domain,
                &Name::from_ascii(text).expect("literal"),
                RecordType::A,
            )
        };
        assert_eq!(
            parsed("*.web.service.dc2.consul."),
            svc("web", Some("*"), Some("dc2"))
        );
        assert_eq!(parsed("*.web.service.consul."), svc("web", Some("*"), None));
        assert_eq!(
            parsed("*.node1.node.dc2.consul."),
            node("*.node1", Some("dc2"))
        );
    }

    #[test]
    fn rejects_labels_that_are_unsafe_to_pass_on() {
        assert_eq!(
            parse(&["a/b", "service"], RecordType::A),
            ConsulName::Invalid
        );
        assert_eq!(
            parse(&["a.b", "service"], RecordType::A),
            ConsulName::Invalid
        );
        assert_eq!(
            parse(&["a b", "service"], RecordType::A),
            ConsulName::Invalid
        );
        assert_eq!(
            parse(&["w\u{e9}b", "service"], RecordType::A),
            ConsulName::Invalid
        );
        assert_eq!(
            parse(&["_", "_tcp", "service"], RecordType::SRV),
            ConsulName::Invalid
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
