//! The snapshot model: every service's healthy instances and every node's address.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use dnsfront_consul::{Node, ServiceInstance};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::wire;

/// A point-in-time copy of the catalog, as the DNS front needs it during a Consul outage.
///
/// Map keys are ASCII-lower-cased names (DNS names compare case-insensitively, RFC 4343);
/// call [`Snapshot::normalize`] after building one so equal content encodes to equal bytes.
/// Instances and nodes are the shared model of `dnsfront-consul`; the serialized format is
/// its own (`wire.rs`), and holds the datacenter once for the whole snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Monotonic generation, set by the publisher; followers refuse to go backwards.
    pub generation: u64,
    /// `X-Consul-Index` of the catalog read the snapshot was built from.
    pub consul_index: u64,
    /// When the snapshot was built, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Who wrote it (node name or hostname of the publisher).
    pub publisher: String,
    /// Datacenter the catalog belongs to (and, once normalized, every instance and node).
    pub datacenter: String,
    /// Service name (lower case) → its healthy (passing or warning) instances, sorted by
    /// (node, service address, port).
    pub services: BTreeMap<String, Vec<ServiceInstance>>,
    /// Node name (lower case) → node.
    pub nodes: BTreeMap<String, Node>,
}

impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        wire::SnapshotRef::from(self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        wire::SnapshotWire::deserialize(deserializer).map(Snapshot::from)
    }
}

/// The canonical instance order: (node, service address, port), then every other field so
/// the order is total and therefore independent of insertion order.
fn instance_order(a: &ServiceInstance, b: &ServiceInstance) -> Ordering {
    a.node
        .cmp(&b.node)
        .then_with(|| a.service_address.cmp(&b.service_address))
        .then_with(|| a.port.cmp(&b.port))
        .then_with(|| a.node_address.cmp(&b.node_address))
        .then_with(|| a.tags.cmp(&b.tags))
        .then_with(|| a.weight.cmp(&b.weight))
        .then_with(|| a.status.cmp(&b.status))
        .then_with(|| a.datacenter.cmp(&b.datacenter))
        .then_with(|| a.hostname.cmp(&b.hostname))
}

fn is_lower(name: &str) -> bool {
    !name.bytes().any(|byte| byte.is_ascii_uppercase())
}

impl Snapshot {
    /// Puts the snapshot in canonical form: lower-case map keys (merging names that differ
    /// only in case), sorted and de-duplicated tags, instances sorted and de-duplicated,
    /// and the snapshot's datacenter on every instance and node (as decoding gives them).
    ///
    /// Idempotent. Two snapshots with the same content are equal after `normalize`.
    pub fn normalize(&mut self) {
        let services = std::mem::take(&mut self.services);
        for (name, mut instances) in services {
            self.services
                .entry(name.to_ascii_lowercase())
                .or_default()
                .append(&mut instances);
        }
        for instances in self.services.values_mut() {
            for instance in instances.iter_mut() {
                if instance.datacenter != self.datacenter {
                    instance.datacenter.clone_from(&self.datacenter);
                }
                instance.tags.sort();
                instance.tags.dedup();
            }
            instances.sort_by(instance_order);
            // Equal in every field the format holds: one instance (details such as node
            // meta are not written, so two that differ only there would encode alike).
            instances.dedup_by(|a, b| instance_order(a, b) == Ordering::Equal);
        }
        let nodes = std::mem::take(&mut self.nodes);
        for (name, node) in nodes {
            // BTreeMap iteration is ordered, so on a case-only collision the same entry wins
            // whatever order the map was filled in.
            self.nodes.entry(name.to_ascii_lowercase()).or_insert(node);
        }
        for node in self.nodes.values_mut() {
            if node.datacenter != self.datacenter {
                node.datacenter.clone_from(&self.datacenter);
            }
        }
    }

    /// True when [`Snapshot::normalize`] would change nothing.
    pub fn is_normalized(&self) -> bool {
        self.nodes
            .iter()
            .all(|(name, node)| is_lower(name) && node.datacenter == self.datacenter)
            && self.services.iter().all(|(name, instances)| {
                is_lower(name)
                    && instances
                        .windows(2)
                        .all(|pair| instance_order(&pair[0], &pair[1]) == Ordering::Less)
                    && instances.iter().all(|instance| {
                        instance.datacenter == self.datacenter
                            && instance.tags.windows(2).all(|pair| pair[0] < pair[1])
                    })
            })
    }

    /// The snapshot in canonical form, cloning only when it is not already.
    pub(crate) fn normalized(&self) -> Cow<'_, Snapshot> {
        if self.is_normalized() {
            Cow::Borrowed(self)
        } else {
            let mut copy = self.clone();
            copy.normalize();
            Cow::Owned(copy)
        }
    }

    /// Healthy instances of a service (name compared case-insensitively).
    pub fn service(&self, name: &str) -> Option<&[ServiceInstance]> {
        if is_lower(name) {
            self.services.get(name)
        } else {
            self.services.get(&name.to_ascii_lowercase())
        }
        .map(Vec::as_slice)
    }

    /// A node by name (compared case-insensitively).
    pub fn node(&self, name: &str) -> Option<&Node> {
        if is_lower(name) {
            self.nodes.get(name)
        } else {
            self.nodes.get(&name.to_ascii_lowercase())
        }
    }

    /// Total number of service instances.
    pub fn instance_count(&self) -> usize {
        self.services.values().map(Vec::len).sum()
    }

    /// SHA-256 of the canonical content, excluding `generation`, `created_unix_ms`,
    /// `consul_index` and `publisher`: equal when the catalog content is equal, so a
    /// publisher can tell whether anything changed.
    pub fn content_checksum(&self) -> [u8; 32] {
        let normalized = self.normalized();
        let content = wire::ContentRef::from(&*normalized);
        let mut hasher = Sha256::new();
        serde_json::to_writer(&mut hasher, &content)
            .expect("serializing string-keyed maps of plain data into a hasher cannot fail");
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use dnsfront_consul::InstanceStatus;

    use super::*;

    fn instance(node: &str, port: u16, tags: &[&str]) -> ServiceInstance {
        ServiceInstance {
            node: node.to_owned(),
            datacenter: String::new(),
            node_address: Some(IpAddr::from([10, 0, 0, 1])),
            service_address: None,
            port,
            tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
            weight: 1,
            status: InstanceStatus::Passing,
            hostname: None,
            details: None,
        }
    }

    #[test]
    fn normalize_lowercases_keys_merges_and_sorts() {
        let mut snapshot = Snapshot::default();
        snapshot
            .services
            .insert("Web".into(), vec![instance("b", 80, &["z", "a", "a"])]);
        snapshot.services.insert(
            "web".into(),
            vec![instance("a", 80, &[]), instance("a", 80, &[])],
        );
        snapshot.nodes.insert(
            "Node-A".into(),
            Node {
                name: "Node-A".into(),
                datacenter: String::new(),
                address: None,
                hostname: None,
                details: None,
            },
        );
        assert!(!snapshot.is_normalized());
        snapshot.normalize();
        assert!(snapshot.is_normalized());
        let web = snapshot.service("WEB").expect("merged service");
        assert_eq!(
            web.len(),
            2,
            "duplicate instance removed, case variants merged"
        );
        assert_eq!(web[0].node, "a");
        assert_eq!(web[1].tags, vec!["a".to_owned(), "z".to_owned()]);
        assert_eq!(
            snapshot.node("node-a").map(|node| node.name.as_str()),
            Some("Node-A")
        );
        let once = snapshot.clone();
        snapshot.normalize();
        assert_eq!(snapshot, once, "normalize is idempotent");
    }

    #[test]
    fn content_checksum_ignores_metadata_but_not_content() {
        let mut a = Snapshot::default();
        a.services
            .insert("web".into(), vec![instance("a", 80, &[])]);
        let mut b = a.clone();
        b.generation = 9;
        b.consul_index = 99;
        b.created_unix_ms = 12345;
        b.publisher = "other".into();
        assert_eq!(a.content_checksum(), b.content_checksum());
        b.services
            .insert("db".into(), vec![instance("a", 5432, &[])]);
        assert_ne!(a.content_checksum(), b.content_checksum());
    }

    #[test]
    fn normalize_puts_the_datacenter_on_every_instance_and_node() {
        let mut snapshot = Snapshot {
            datacenter: "dc1".into(),
            ..Snapshot::default()
        };
        snapshot
            .services
            .insert("web".into(), vec![instance("a", 80, &[])]);
        snapshot.nodes.insert(
            "a".into(),
            Node {
                name: "a".into(),
                datacenter: "other".into(),
                address: None,
                hostname: None,
                details: None,
            },
        );
        assert!(!snapshot.is_normalized());
        snapshot.normalize();
        assert!(snapshot.is_normalized());
        assert_eq!(snapshot.service("web").expect("web")[0].datacenter, "dc1");
        assert_eq!(snapshot.node("a").expect("a").datacenter, "dc1");
    }
}
