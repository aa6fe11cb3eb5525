//! The snapshot's serialized shape: the JSON inside every envelope, and what
//! [`Snapshot::content_checksum`] hashes.
//!
//! Kept apart from the shared model ([`ServiceInstance`], [`Node`]) on purpose: the model
//! may grow fields for the DNS front without changing a byte of the format (and so the
//! checksum of unchanged content). The datacenter is written once per snapshot, not per
//! instance or node; decoding copies it into each of them. Field order is the format.

use std::collections::BTreeMap;
use std::net::IpAddr;

use dnsfront_consul::{InstanceStatus, Node, ServiceInstance};
use serde::{Deserialize, Serialize, Serializer};

use crate::Snapshot;

/// The whole document, borrowed for writing: the metadata, then the content (same
/// fields, same order as before the content was split out: `flatten` writes them in place).
#[derive(Serialize)]
pub(crate) struct SnapshotRef<'a> {
    generation: u64,
    consul_index: u64,
    created_unix_ms: u64,
    publisher: &'a str,
    #[serde(flatten)]
    content: ContentRef<'a>,
}

impl<'a> From<&'a Snapshot> for SnapshotRef<'a> {
    fn from(snapshot: &'a Snapshot) -> Self {
        Self {
            generation: snapshot.generation,
            consul_index: snapshot.consul_index,
            created_unix_ms: snapshot.created_unix_ms,
            publisher: &snapshot.publisher,
            content: ContentRef::from(snapshot),
        }
    }
}

/// The part of a snapshot that [`Snapshot::content_checksum`] covers.
#[derive(Serialize)]
pub(crate) struct ContentRef<'a> {
    datacenter: &'a str,
    services: Services<'a>,
    nodes: Nodes<'a>,
}

impl<'a> From<&'a Snapshot> for ContentRef<'a> {
    fn from(snapshot: &'a Snapshot) -> Self {
        Self {
            datacenter: &snapshot.datacenter,
            services: Services(&snapshot.services),
            nodes: Nodes(&snapshot.nodes),
        }
    }
}

struct Services<'a>(&'a BTreeMap<String, Vec<ServiceInstance>>);

impl Serialize for Services<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(name, instances)| (name, Instances(instances))),
        )
    }
}

struct Instances<'a>(&'a [ServiceInstance]);

impl Serialize for Instances<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(InstanceRef::from))
    }
}

struct Nodes<'a>(&'a BTreeMap<String, Node>);

impl Serialize for Nodes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(name, node)| (name, NodeRef::from(node))),
        )
    }
}

/// One instance as written (format version 1).
#[derive(Serialize)]
struct InstanceRef<'a> {
    node: &'a str,
    node_address: Option<IpAddr>,
    service_address: Option<IpAddr>,
    port: u16,
    tags: &'a [String],
    weight: u16,
    status: Status,
}

impl<'a> From<&'a ServiceInstance> for InstanceRef<'a> {
    fn from(instance: &'a ServiceInstance) -> Self {
        Self {
            node: &instance.node,
            node_address: instance.node_address,
            service_address: instance.service_address,
            port: instance.port,
            tags: &instance.tags,
            weight: instance.weight,
            status: instance.status.into(),
        }
    }
}

/// One node as written.
#[derive(Serialize)]
struct NodeRef<'a> {
    name: &'a str,
    address: Option<IpAddr>,
}

impl<'a> From<&'a Node> for NodeRef<'a> {
    fn from(node: &'a Node) -> Self {
        Self {
            name: &node.name,
            address: node.address,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Passing,
    Warning,
}

impl From<InstanceStatus> for Status {
    fn from(status: InstanceStatus) -> Self {
        match status {
            InstanceStatus::Passing => Self::Passing,
            InstanceStatus::Warning => Self::Warning,
        }
    }
}

impl From<Status> for InstanceStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Passing => Self::Passing,
            Status::Warning => Self::Warning,
        }
    }
}

/// The whole document, as read.
#[derive(Deserialize)]
pub(crate) struct SnapshotWire {
    generation: u64,
    consul_index: u64,
    created_unix_ms: u64,
    publisher: String,
    datacenter: String,
    services: BTreeMap<String, Vec<InstanceWire>>,
    nodes: BTreeMap<String, NodeWire>,
}

#[derive(Deserialize)]
struct InstanceWire {
    node: String,
    node_address: Option<IpAddr>,
    service_address: Option<IpAddr>,
    port: u16,
    tags: Vec<String>,
    weight: u16,
    status: Status,
}

#[derive(Deserialize)]
struct NodeWire {
    name: String,
    address: Option<IpAddr>,
}

impl From<SnapshotWire> for Snapshot {
    fn from(wire: SnapshotWire) -> Self {
        let datacenter = wire.datacenter;
        let services = wire
            .services
            .into_iter()
            .map(|(name, instances)| {
                let instances = instances
                    .into_iter()
                    .map(|instance| ServiceInstance {
                        node: instance.node,
                        datacenter: datacenter.clone(),
                        node_address: instance.node_address,
                        service_address: instance.service_address,
                        port: instance.port,
                        tags: instance.tags,
                        weight: instance.weight,
                        status: instance.status.into(),
                    })
                    .collect();
                (name, instances)
            })
            .collect();
        let nodes = wire
            .nodes
            .into_iter()
            .map(|(key, node)| {
                let node = Node {
                    name: node.name,
                    datacenter: datacenter.clone(),
                    address: node.address,
                };
                (key, node)
            })
            .collect();
        Snapshot {
            generation: wire.generation,
            consul_index: wire.consul_index,
            created_unix_ms: wire.created_unix_ms,
            publisher: wire.publisher,
            datacenter,
            services,
            nodes,
        }
    }
}
