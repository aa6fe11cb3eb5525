//! The snapshot's serialized shape: the JSON inside every envelope, and what
//! [`Snapshot::content_checksum`] hashes.
//!
//! Kept apart from the shared model ([`ServiceInstance`], [`Node`]) on purpose: the model
//! may grow fields for the DNS front without changing a byte of the format (and so the
//! checksum of unchanged content). The datacenter is written once per snapshot, not per
//! instance or node; decoding copies it into each of them. Field order is the format.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use dnsfront_consul::{InstanceStatus, Node, ServiceInstance};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
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
    /// Written only when set, so snapshots without hostname addresses keep their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
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
            hostname: instance.hostname.as_deref(),
        }
    }
}

/// One node as written.
#[derive(Serialize)]
struct NodeRef<'a> {
    name: &'a str,
    address: Option<IpAddr>,
    /// Written only when set, as the instance's.
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
}

impl<'a> From<&'a Node> for NodeRef<'a> {
    fn from(node: &'a Node) -> Self {
        Self {
            name: &node.name,
            address: node.address,
            hostname: node.hostname.as_deref(),
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

/// The whole document, as read: built by [`SnapshotWire::decode`] under [`Limits`].
pub(crate) struct SnapshotWire {
    generation: u64,
    consul_index: u64,
    created_unix_ms: u64,
    publisher: String,
    datacenter: String,
    services: BTreeMap<String, Vec<InstanceWire>>,
    nodes: BTreeMap<String, NodeWire>,
}

struct InstanceWire {
    node: String,
    node_address: Option<IpAddr>,
    service_address: Option<IpAddr>,
    port: u16,
    tags: Vec<String>,
    weight: u16,
    status: Status,
    hostname: Option<String>,
}

struct NodeWire {
    name: String,
    address: Option<IpAddr>,
    hostname: Option<String>,
}

/// Bounds on the decoded shape of a snapshot, checked while the JSON is read (each count
/// before the element it counts is built), so a hostile document is refused before it can
/// allocate past them. See [`crate::codec::LIMITS`] for the values and the memory they allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Services (map entries, empty ones included).
    pub services: usize,
    /// Instances of one service.
    pub instances_per_service: usize,
    /// Instances of all services together.
    pub instances: usize,
    /// Tags of one instance.
    pub tags_per_instance: usize,
    /// Tags of all instances together.
    pub tags: usize,
    /// Nodes.
    pub nodes: usize,
    /// Bytes of any name, tag or publisher.
    pub string_len: usize,
    /// Bytes of the datacenter name (copied into every instance and node once decoded).
    pub datacenter_len: usize,
}

/// Which limit a document broke, kept by the decoder so the caller can report it as a
/// shape error rather than a JSON syntax error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Violation {
    pub(crate) what: &'static str,
    pub(crate) limit: usize,
}

/// Running counts of one decode, shared by the seeds below.
struct Budget {
    limits: Limits,
    instances: Cell<usize>,
    tags: Cell<usize>,
    violation: Cell<Option<Violation>>,
}

impl Budget {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            instances: Cell::new(0),
            tags: Cell::new(0),
            violation: Cell::new(None),
        }
    }

    /// Adds one to `counter`; an error (and the violation noted) past `limit`.
    fn take<E: de::Error>(
        &self,
        counter: &Cell<usize>,
        limit: usize,
        what: &'static str,
    ) -> Result<(), E> {
        let next = counter.get() + 1;
        if next > limit {
            return Err(self.refuse(what, limit));
        }
        counter.set(next);
        Ok(())
    }

    /// Checks a local count (already incremented) against `limit`.
    fn check<E: de::Error>(&self, count: usize, limit: usize, what: &'static str) -> Result<(), E> {
        if count > limit {
            return Err(self.refuse(what, limit));
        }
        Ok(())
    }

    fn refuse<E: de::Error>(&self, what: &'static str, limit: usize) -> E {
        self.violation.set(Some(Violation { what, limit }));
        E::custom(format_args!("more than {limit} {what}"))
    }
}

impl<'de> Deserialize<'de> for SnapshotWire {
    /// Any reader of the document (not only [`crate::codec::decode`]) is held to
    /// [`crate::codec::LIMITS`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let budget = Budget::new(crate::codec::LIMITS);
        DocumentSeed(&budget).deserialize(deserializer)
    }
}

impl SnapshotWire {
    /// Reads the document from JSON, refusing it as soon as it breaks `limits`.
    ///
    /// The `Err` carries the broken limit when that is why it failed.
    pub(crate) fn decode(
        json: &[u8],
        limits: Limits,
    ) -> Result<Self, (serde_json::Error, Option<Violation>)> {
        let budget = Budget::new(limits);
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let result = DocumentSeed(&budget)
            .deserialize(&mut deserializer)
            .and_then(|wire| deserializer.end().map(|()| wire));
        result.map_err(|error| (error, budget.violation.get()))
    }
}

/// A string of at most `string_len` bytes with no control characters (they could break
/// a hosts file line or a log line).
struct BoundedString<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for BoundedString<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for BoundedString<'_> {
    type Value = String;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a short string")
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        self.0
            .check(value.len(), self.0.limits.string_len, "bytes in a string")?;
        if value.chars().any(char::is_control) {
            return Err(self.0.refuse("control characters in a string", 0));
        }
        Ok(value.to_owned())
    }
}

/// Reads a map of known fields in any order; unknown fields are skipped (as the derived
/// reader did), duplicates refused.
macro_rules! field {
    ($slot:ident, $name:literal, $value:expr) => {{
        if $slot.is_some() {
            return Err(de::Error::duplicate_field($name));
        }
        $slot = Some($value);
    }};
}

fn required<T, E: de::Error>(slot: Option<T>, name: &'static str) -> Result<T, E> {
    slot.ok_or_else(|| E::missing_field(name))
}

struct DocumentSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_> {
    type Value = SnapshotWire;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<SnapshotWire, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_> {
    type Value = SnapshotWire;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a snapshot document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SnapshotWire, A::Error> {
        let budget = self.0;
        let (mut generation, mut consul_index, mut created_unix_ms) = (None, None, None);
        let (mut publisher, mut datacenter, mut services, mut nodes) = (None, None, None, None);
        while let Some(key) = map.next_key_seed(BoundedString(budget))? {
            match key.as_str() {
                "generation" => field!(generation, "generation", map.next_value()?),
                "consul_index" => field!(consul_index, "consul_index", map.next_value()?),
                "created_unix_ms" => {
                    field!(created_unix_ms, "created_unix_ms", map.next_value()?)
                }
                "publisher" => field!(
                    publisher,
                    "publisher",
                    map.next_value_seed(BoundedString(budget))?
                ),
                "datacenter" => {
                    let name: String = map.next_value_seed(BoundedString(budget))?;
                    budget.check(
                        name.len(),
                        budget.limits.datacenter_len,
                        "bytes in the datacenter name",
                    )?;
                    field!(datacenter, "datacenter", name)
                }
                "services" => field!(
                    services,
                    "services",
                    map.next_value_seed(ServicesSeed(budget))?
                ),
                "nodes" => field!(nodes, "nodes", map.next_value_seed(NodesSeed(budget))?),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(SnapshotWire {
            generation: required(generation, "generation")?,
            consul_index: required(consul_index, "consul_index")?,
            created_unix_ms: required(created_unix_ms, "created_unix_ms")?,
            publisher: required(publisher, "publisher")?,
            datacenter: required(datacenter, "datacenter")?,
            services: required(services, "services")?,
            nodes: required(nodes, "nodes")?,
        })
    }
}

struct ServicesSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for ServicesSeed<'_> {
    type Value = BTreeMap<String, Vec<InstanceWire>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ServicesSeed<'_> {
    type Value = BTreeMap<String, Vec<InstanceWire>>;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a map of services")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let budget = self.0;
        let mut services = BTreeMap::new();
        while let Some(name) = map.next_key_seed(BoundedString(budget))? {
            budget.check(services.len() + 1, budget.limits.services, "services")?;
            let instances = map.next_value_seed(InstancesSeed(budget))?;
            if services.insert(name, instances).is_some() {
                return Err(de::Error::custom("duplicate service name"));
            }
        }
        Ok(services)
    }
}

struct InstancesSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for InstancesSeed<'_> {
    type Value = Vec<InstanceWire>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InstancesSeed<'_> {
    type Value = Vec<InstanceWire>;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list of instances")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let budget = self.0;
        let mut instances = Vec::new();
        loop {
            budget.check(
                instances.len(),
                budget.limits.instances_per_service,
                "instances of one service",
            )?;
            let Some(instance) = seq.next_element_seed(InstanceSeed(budget))? else {
                break;
            };
            instances.push(instance);
        }
        instances.shrink_to_fit();
        Ok(instances)
    }
}

struct InstanceSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for InstanceSeed<'_> {
    type Value = InstanceWire;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InstanceSeed<'_> {
    type Value = InstanceWire;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an instance")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let budget = self.0;
        budget.take(&budget.instances, budget.limits.instances, "instances")?;
        let (mut node, mut node_address, mut service_address, mut port) = (None, None, None, None);
        let (mut tags, mut weight, mut status, mut hostname) = (None, None, None, None);
        while let Some(key) = map.next_key_seed(BoundedString(budget))? {
            match key.as_str() {
                "node" => field!(node, "node", map.next_value_seed(BoundedString(budget))?),
                "node_address" => field!(node_address, "node_address", map.next_value()?),
                "service_address" => {
                    field!(service_address, "service_address", map.next_value()?)
                }
                "port" => field!(port, "port", map.next_value()?),
                "tags" => field!(tags, "tags", map.next_value_seed(TagsSeed(budget))?),
                "weight" => field!(weight, "weight", map.next_value()?),
                "status" => field!(status, "status", map.next_value()?),
                "hostname" => field!(
                    hostname,
                    "hostname",
                    map.next_value_seed(BoundedString(budget))?
                ),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(InstanceWire {
            node: required(node, "node")?,
            node_address: node_address.unwrap_or_default(),
            service_address: service_address.unwrap_or_default(),
            port: required(port, "port")?,
            tags: required(tags, "tags")?,
            weight: required(weight, "weight")?,
            status: required(status, "status")?,
            hostname,
        })
    }
}

struct TagsSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for TagsSeed<'_> {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TagsSeed<'_> {
    type Value = Vec<String>;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list of tags")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let budget = self.0;
        let mut tags = Vec::new();
        while let Some(tag) = seq.next_element_seed(BoundedString(budget))? {
            budget.check(
                tags.len() + 1,
                budget.limits.tags_per_instance,
                "tags of one instance",
            )?;
            budget.take(&budget.tags, budget.limits.tags, "tags")?;
            tags.push(tag);
        }
        tags.shrink_to_fit();
        Ok(tags)
    }
}

struct NodesSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for NodesSeed<'_> {
    type Value = BTreeMap<String, NodeWire>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NodesSeed<'_> {
    type Value = BTreeMap<String, NodeWire>;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a map of nodes")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let budget = self.0;
        let mut nodes = BTreeMap::new();
        while let Some(key) = map.next_key_seed(BoundedString(budget))? {
            budget.check(nodes.len() + 1, budget.limits.nodes, "nodes")?;
            let node = map.next_value_seed(NodeSeed(budget))?;
            if nodes.insert(key, node).is_some() {
                return Err(de::Error::custom("duplicate node name"));
            }
        }
        Ok(nodes)
    }
}

struct NodeSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = NodeWire;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = NodeWire;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a node")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let budget = self.0;
        let (mut name, mut address, mut hostname) = (None, None, None);
        while let Some(key) = map.next_key_seed(BoundedString(budget))? {
            match key.as_str() {
                "name" => field!(name, "name", map.next_value_seed(BoundedString(budget))?),
                "address" => field!(address, "address", map.next_value()?),
                "hostname" => field!(
                    hostname,
                    "hostname",
                    map.next_value_seed(BoundedString(budget))?
                ),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(NodeWire {
            name: required(name, "name")?,
            address: address.unwrap_or_default(),
            hostname,
        })
    }
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
                        hostname: instance.hostname,
                        details: None,
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
                    hostname: node.hostname,
                    details: None,
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

impl Limits {
    /// The first limit `snapshot` breaks, if any: the publisher refuses to write what
    /// followers would refuse to read.
    pub(crate) fn violation(&self, snapshot: &Snapshot) -> Option<Violation> {
        let over = |count: usize, limit: usize, what: &'static str| {
            (count > limit).then_some(Violation { what, limit })
        };
        let strings = std::iter::once(snapshot.publisher.as_str())
            .chain(std::iter::once(snapshot.datacenter.as_str()))
            .chain(
                snapshot
                    .nodes
                    .iter()
                    .flat_map(|(key, node)| [key.as_str(), node.name.as_str()]),
            )
            .chain(snapshot.services.iter().flat_map(|(name, instances)| {
                std::iter::once(name.as_str()).chain(instances.iter().flat_map(|instance| {
                    std::iter::once(instance.node.as_str())
                        .chain(instance.tags.iter().map(String::as_str))
                }))
            }));
        let mut string_problem = None;
        for string in strings {
            if string.len() > self.string_len {
                string_problem = over(string.len(), self.string_len, "bytes in a string");
                break;
            }
            if string.chars().any(char::is_control) {
                string_problem = Some(Violation {
                    what: "control characters in a string",
                    limit: 0,
                });
                break;
            }
        }
        let instances = snapshot.services.values().flatten();
        over(snapshot.services.len(), self.services, "services")
            .or_else(|| {
                over(
                    snapshot.datacenter.len(),
                    self.datacenter_len,
                    "bytes in the datacenter name",
                )
            })
            .or_else(|| over(snapshot.nodes.len(), self.nodes, "nodes"))
            .or_else(|| {
                over(
                    snapshot.services.values().map(Vec::len).max().unwrap_or(0),
                    self.instances_per_service,
                    "instances of one service",
                )
            })
            .or_else(|| over(snapshot.instance_count(), self.instances, "instances"))
            .or_else(|| {
                over(
                    instances.clone().map(|i| i.tags.len()).max().unwrap_or(0),
                    self.tags_per_instance,
                    "tags of one instance",
                )
            })
            .or_else(|| over(instances.map(|i| i.tags.len()).sum(), self.tags, "tags"))
            .or(string_problem)
    }
}
