//! The in-memory view the DNS front reads, and the dnsmasq hosts-file export.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::Snapshot;

/// The current snapshot, shared lock-free between the follower (writer) and DNS (readers).
///
/// Cloning is cheap and every clone sees the same snapshot.
#[derive(Clone, Default)]
pub struct Hosts(Arc<ArcSwapOption<Loaded>>);

/// A snapshot with its reverse index, built once when it is swapped in.
struct Loaded {
    snapshot: Arc<Snapshot>,
    reverse: ReverseIndex,
}

/// Address → owner, for PTR answers during an outage: every node's address, and every
/// service address (`Service.Address`) of a served instance. On a shared address the
/// first in the snapshot's order wins.
///
/// Compact on purpose (it lives beside the snapshot, within its memory budget): sorted
/// `(address, ordinal)` pairs, 8 bytes per IPv4 and 20 per IPv6 address, no names
/// copied. An ordinal is the owner's position in the snapshot's node or service map,
/// walked only on a hit; a miss (any address that is not Consul's) is a binary search.
#[derive(Default)]
struct ReverseIndex {
    nodes: Addresses,
    services: Addresses,
}

#[derive(Default)]
struct Addresses {
    v4: Vec<(u32, u32)>,
    v6: Vec<([u8; 16], u32)>,
}

impl Addresses {
    fn push(&mut self, address: IpAddr, ordinal: usize) {
        let ordinal = u32::try_from(ordinal).unwrap_or(u32::MAX);
        match address {
            IpAddr::V4(v4) => self.v4.push((u32::from(v4), ordinal)),
            IpAddr::V6(v6) => self.v6.push((v6.octets(), ordinal)),
        }
    }

    /// Sorts by address; on a shared address the lowest ordinal stays.
    fn finish(&mut self) {
        self.v4.sort_unstable();
        self.v4.dedup_by_key(|(address, _)| *address);
        self.v4.shrink_to_fit();
        self.v6.sort_unstable();
        self.v6.dedup_by_key(|(address, _)| *address);
        self.v6.shrink_to_fit();
    }

    fn ordinal(&self, address: IpAddr) -> Option<usize> {
        let ordinal = match address {
            IpAddr::V4(v4) => {
                let key = u32::from(v4);
                let at = self.v4.binary_search_by_key(&key, |(a, _)| *a).ok()?;
                self.v4[at].1
            }
            IpAddr::V6(v6) => {
                let key = v6.octets();
                let at = self.v6.binary_search_by_key(&key, |(a, _)| *a).ok()?;
                self.v6[at].1
            }
        };
        usize::try_from(ordinal).ok()
    }
}

impl ReverseIndex {
    fn new(snapshot: &Snapshot) -> Self {
        let mut index = Self::default();
        for (ordinal, node) in snapshot.nodes.values().enumerate() {
            if let Some(address) = node.address {
                index.nodes.push(address, ordinal);
            }
        }
        for (ordinal, instances) in snapshot.services.values().enumerate() {
            for address in instances.iter().filter_map(|i| i.service_address) {
                index.services.push(address, ordinal);
            }
        }
        index.nodes.finish();
        index.services.finish();
        index
    }
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Hosts")
            .field("generation", &self.generation())
            .finish()
    }
}

impl Hosts {
    /// An empty view (no snapshot yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot, if any.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.0
            .load()
            .as_ref()
            .map(|loaded| Arc::clone(&loaded.snapshot))
    }

    /// The name of the node whose address is `ip` in the current snapshot, with the
    /// snapshot's datacenter.
    pub fn node_at(&self, ip: IpAddr) -> Option<(String, String)> {
        let loaded = self.0.load();
        let loaded = loaded.as_ref()?;
        let ordinal = loaded.reverse.nodes.ordinal(ip)?;
        let node = loaded.snapshot.nodes.values().nth(ordinal)?;
        Some((node.name.clone(), loaded.snapshot.datacenter.clone()))
    }

    /// The name of a service with an instance at service address `ip` in the current
    /// snapshot, with the snapshot's datacenter.
    pub fn service_at(&self, ip: IpAddr) -> Option<(String, String)> {
        let loaded = self.0.load();
        let loaded = loaded.as_ref()?;
        let ordinal = loaded.reverse.services.ordinal(ip)?;
        let name = loaded.snapshot.services.keys().nth(ordinal)?;
        Some((name.clone(), loaded.snapshot.datacenter.clone()))
    }

    /// Swaps in a new snapshot; readers see either the old or the new one.
    ///
    /// Readers (the catalog's fallback view) serve its instances and nodes as they are, so
    /// it should be normalized ([`Snapshot::normalize`]), as [`crate::decode`] returns it.
    pub fn replace(&self, snapshot: Arc<Snapshot>) {
        let reverse = ReverseIndex::new(&snapshot);
        self.0.store(Some(Arc::new(Loaded { snapshot, reverse })));
    }

    /// Generation of the current snapshot, if any.
    pub fn generation(&self) -> Option<u64> {
        self.0
            .load()
            .as_ref()
            .map(|loaded| loaded.snapshot.generation)
    }
}

/// True when `name` is a usable host name: dot-separated labels of ASCII letters, digits,
/// `-` and `_`, each 1 to 63 bytes (dotted node names and tags are valid in Consul DNS).
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

/// Appends `IP NAME` unless the name is unusable or the line was already written.
fn push_line(
    out: &mut String,
    seen: &mut HashSet<(IpAddr, String)>,
    address: IpAddr,
    name: String,
) {
    if is_host_name(&name) && seen.insert((address, name.clone())) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{address} {name}");
    }
}

/// A publisher-controlled string made safe for the header comment: anything but host-name
/// characters becomes `?`, so it cannot end the comment line and add a hosts entry.
fn comment_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Renders the snapshot as a dnsmasq `addn-hosts` file for `domain` (e.g. `consul`).
///
/// Lines are `IP NAME.service.DOMAIN`, then `IP TAG.NAME.service.DOMAIN` for each tag, per
/// instance (address = service address, else node address; instances without one are
/// skipped), followed by `IP NODE.node.DOMAIN` for every node with an address. Names are
/// lower case; names that are not valid host names (for example tags with `=` or spaces)
/// and duplicate lines are left out, so every line names something under
/// `.service.DOMAIN` or `.node.DOMAIN`; the header's datacenter and publisher keep only
/// host-name characters. The order is deterministic.
pub fn to_hosts_file(snapshot: &Snapshot, domain: &str) -> String {
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# dnsfront hosts snapshot: datacenter {}, generation {}, consul index {}, created {} (unix ms), publisher {}",
        comment_safe(&snapshot.datacenter),
        snapshot.generation,
        snapshot.consul_index,
        snapshot.created_unix_ms,
        comment_safe(&snapshot.publisher),
    );
    let mut seen = HashSet::new();
    let normalized = snapshot.normalized();
    for (service_name, instances) in &normalized.services {
        for instance in instances {
            let Some(address) = instance.address() else {
                continue;
            };
            let service_fqdn = format!("{service_name}.service.{domain}");
            push_line(&mut out, &mut seen, address, service_fqdn.clone());
            for tag in &instance.tags {
                let tag = tag.to_ascii_lowercase();
                push_line(
                    &mut out,
                    &mut seen,
                    address,
                    format!("{tag}.{service_fqdn}"),
                );
            }
        }
    }
    for (node_name, node) in &normalized.nodes {
        if let Some(address) = node.address {
            push_line(
                &mut out,
                &mut seen,
                address,
                format!("{node_name}.node.{domain}"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_validation() {
        assert!(is_host_name("web.service.consul"));
        assert!(is_host_name("v1.primary.db.service.consul"));
        assert!(is_host_name("_srv-x.node.consul"));
        assert!(!is_host_name("version=1.web.service.consul"));
        assert!(!is_host_name("a b.service.consul"));
        assert!(!is_host_name("a..b"));
        assert!(!is_host_name(&format!("{}.consul", "x".repeat(64))));
    }

    #[test]
    fn hosts_view_swaps() {
        let hosts = Hosts::new();
        assert!(hosts.current().is_none());
        assert_eq!(hosts.generation(), None);
        let reader = hosts.clone();
        hosts.replace(Arc::new(Snapshot {
            generation: 7,
            ..Snapshot::default()
        }));
        assert_eq!(reader.generation(), Some(7));
        assert_eq!(
            reader.current().map(|snapshot| snapshot.generation),
            Some(7)
        );
    }

    #[test]
    fn reverse_lookups_find_nodes_and_service_addresses_of_both_families() {
        use dnsfront_consul::{InstanceStatus, Node, ServiceInstance};
        let ip = |text: &str| text.parse::<IpAddr>().expect("ip");
        let node = |name: &str, address: &str| Node {
            name: name.to_owned(),
            datacenter: "dc1".to_owned(),
            address: Some(ip(address)),
            hostname: None,
            details: None,
        };
        let instance = |node: &str, service_address: &str| ServiceInstance {
            node: node.to_owned(),
            datacenter: "dc1".to_owned(),
            node_address: None,
            service_address: Some(ip(service_address)),
            port: 80,
            tags: Vec::new(),
            weight: 1,
            status: InstanceStatus::Passing,
            hostname: None,
            details: None,
        };
        let mut snapshot = Snapshot {
            datacenter: "dc1".to_owned(),
            ..Snapshot::default()
        };
        for (name, address) in [
            ("B-node", "10.0.0.2"),
            ("a-node", "fd00::1"),
            ("c", "10.0.0.2"),
        ] {
            snapshot
                .nodes
                .insert(name.to_ascii_lowercase(), node(name, address));
        }
        snapshot
            .services
            .insert("web".into(), vec![instance("a-node", "10.1.0.1")]);
        snapshot.services.insert(
            "api".into(),
            vec![instance("a-node", "fd00:1::1"), instance("c", "10.1.0.1")],
        );
        snapshot.normalize();
        let hosts = Hosts::new();
        assert_eq!(hosts.node_at(ip("10.0.0.2")), None, "no snapshot yet");
        hosts.replace(Arc::new(snapshot));
        let found = |pair: Option<(String, String)>| pair.map(|(name, _)| name);
        assert_eq!(found(hosts.node_at(ip("fd00::1"))), Some("a-node".into()));
        assert_eq!(
            found(hosts.node_at(ip("10.0.0.2"))),
            Some("B-node".into()),
            "the first in the snapshot's order wins a shared address"
        );
        assert_eq!(
            hosts.service_at(ip("fd00:1::1")),
            Some(("api".into(), "dc1".into()))
        );
        assert_eq!(
            found(hosts.service_at(ip("10.1.0.1"))),
            Some("api".into()),
            "api sorts before web"
        );
        assert_eq!(
            hosts.node_at(ip("10.1.0.1")),
            None,
            "a service address is not a node's"
        );
        assert_eq!(hosts.service_at(ip("10.0.0.2")), None);
        assert_eq!(hosts.node_at(ip("10.9.9.9")), None);
    }
}
