//! The in-memory view the DNS front reads, and the dnsmasq hosts-file export.

use std::collections::{HashMap, HashSet};
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

/// Address → owner name, for PTR answers during an outage: every node's address, and
/// every service address (`Service.Address`) of a served instance. On a shared address
/// the first name in the snapshot's order wins.
#[derive(Default)]
struct ReverseIndex {
    nodes: HashMap<IpAddr, usize>,
    services: HashMap<IpAddr, usize>,
    /// Node names (as registered) and service names, indexed by the maps above.
    names: Vec<String>,
}

impl ReverseIndex {
    fn new(snapshot: &Snapshot) -> Self {
        let mut index = Self::default();
        for node in snapshot.nodes.values() {
            if let Some(address) = node.address
                && !index.nodes.contains_key(&address)
            {
                index.nodes.insert(address, index.names.len());
                index.names.push(node.name.clone());
            }
        }
        for (name, instances) in &snapshot.services {
            let mut slot = None;
            for address in instances.iter().filter_map(|i| i.service_address) {
                if index.services.contains_key(&address) {
                    continue;
                }
                let slot = *slot.get_or_insert_with(|| {
                    index.names.push(name.clone());
                    index.names.len() - 1
                });
                index.services.insert(address, slot);
            }
        }
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
        let index = *loaded.reverse.nodes.get(&ip)?;
        Some((
            loaded.reverse.names[index].clone(),
            loaded.snapshot.datacenter.clone(),
        ))
    }

    /// The name of a service with an instance at service address `ip` in the current
    /// snapshot, with the snapshot's datacenter.
    pub fn service_at(&self, ip: IpAddr) -> Option<(String, String)> {
        let loaded = self.0.load();
        let loaded = loaded.as_ref()?;
        let index = *loaded.reverse.services.get(&ip)?;
        Some((
            loaded.reverse.names[index].clone(),
            loaded.snapshot.datacenter.clone(),
        ))
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
}
