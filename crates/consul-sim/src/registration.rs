//! Builder for registering a node + service instance + checks.

use std::collections::BTreeMap;

use crate::state::Service;

/// A node + service instance + checks to upsert with [`crate::Sim::register`].
///
/// ```
/// use consul_sim::{Registration, Sim};
/// let sim = Sim::new();
/// sim.register(
///     Registration::new("web")
///         .id("web-1")
///         .node("node-1", "10.0.0.1")
///         .port(80)
///         .tags(&["primary"])
///         .check("service:web-1", "passing")
///         .node_check("serfHealth", "passing"),
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub(crate) service: String,
    pub(crate) id: Option<String>,
    pub(crate) node: String,
    pub(crate) node_address: Option<String>,
    pub(crate) node_meta: Option<BTreeMap<String, String>>,
    pub(crate) node_tagged: Option<BTreeMap<String, String>>,
    pub(crate) address: String,
    pub(crate) tagged: BTreeMap<String, String>,
    pub(crate) tagged_ports: BTreeMap<String, u16>,
    pub(crate) port: u16,
    pub(crate) tags: Vec<String>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) weights: Option<(u32, u32)>,
    pub(crate) enable_tag_override: bool,
    pub(crate) checks: Vec<(String, String)>,
    pub(crate) node_checks: Vec<(String, String)>,
    pub(crate) datacenter: Option<String>,
    /// Enterprise namespace and partition (`None`: the defaults).
    pub(crate) namespace: Option<String>,
    pub(crate) partition: Option<String>,
}

impl Registration {
    /// A registration of service `service` (ID defaults to the service name, node to `node-1`
    /// at `127.0.0.1` unless the node already exists, weights to `{1, 1}`, no checks).
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_owned(),
            id: None,
            node: "node-1".to_owned(),
            node_address: None,
            node_meta: None,
            node_tagged: None,
            address: String::new(),
            tagged: BTreeMap::new(),
            tagged_ports: BTreeMap::new(),
            port: 0,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weights: Some((1, 1)),
            enable_tag_override: false,
            checks: Vec::new(),
            node_checks: Vec::new(),
            datacenter: None,
            namespace: None,
            partition: None,
        }
    }

    /// Sets the service instance ID.
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }

    /// Sets the node name and address.
    pub fn node(mut self, node: &str, address: &str) -> Self {
        self.node = node.to_owned();
        self.node_address = Some(address.to_owned());
        self
    }

    /// Sets the node's metadata.
    pub fn node_meta(mut self, key: &str, value: &str) -> Self {
        self.node_meta
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets one of the node's tagged addresses (`lan_ipv6`, `wan`, …), over the ones the
    /// agent fills in from the node address.
    pub fn node_tagged_address(mut self, key: &str, address: &str) -> Self {
        self.node_tagged
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), address.to_owned());
        self
    }

    /// Sets one of the service's tagged addresses (`lan_ipv4`, `lan_ipv6`, `wan`, …;
    /// the port is the service's), over the ones the agent fills in.
    pub fn tagged_address(mut self, key: &str, address: &str) -> Self {
        self.tagged.insert(key.to_owned(), address.to_owned());
        self
    }

    /// Sets one of the service's tagged addresses with its own port (a `wan` address
    /// behind a NAT or gateway often listens on another port than the service).
    pub fn tagged_address_port(mut self, key: &str, address: &str, port: u16) -> Self {
        self.tagged.insert(key.to_owned(), address.to_owned());
        self.tagged_ports.insert(key.to_owned(), port);
        self
    }

    /// A Consul server's registration of the `consul` service (port 8300, passing
    /// `serfHealth`), as every server of a real cluster has: its nodes are the servers
    /// that NS answers name.
    pub fn consul_server(node: &str, address: &str) -> Self {
        Self::new("consul")
            .node(node, address)
            .port(8300)
            .node_meta("consul-version", crate::CONSUL_VERSION)
            .node_check("serfHealth", "passing")
    }

    /// Sets `Service.Address` (empty means "use the node address").
    pub fn address(mut self, address: &str) -> Self {
        self.address = address.to_owned();
        self
    }

    /// Sets the service port (0 is omitted from health JSON, as Consul does).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets the service tags.
    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|tag| (*tag).to_owned()).collect();
        self
    }

    /// Adds one service metadata entry.
    pub fn meta(mut self, key: &str, value: &str) -> Self {
        self.meta.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets `Weights` `{Passing, Warning}`.
    pub fn weights(mut self, passing: u32, warning: u32) -> Self {
        self.weights = Some((passing, warning));
        self
    }

    /// Emits `"Weights": null` (as older registrations do).
    pub fn no_weights(mut self) -> Self {
        self.weights = None;
        self
    }

    /// Sets `EnableTagOverride`.
    pub fn enable_tag_override(mut self, enable: bool) -> Self {
        self.enable_tag_override = enable;
        self
    }

    /// Adds a service-level check with a status (`passing`, `warning` or `critical`).
    pub fn check(mut self, check_id: &str, status: &str) -> Self {
        self.checks.push((check_id.to_owned(), status.to_owned()));
        self
    }

    /// Adds a service check `service:<id>` that is passing.
    pub fn passing(self) -> Self {
        let check_id = format!("service:{}", self.service_id());
        self.check(&check_id, "passing")
    }

    /// Adds a service check `service:<id>` that is warning.
    pub fn warning(self) -> Self {
        let check_id = format!("service:{}", self.service_id());
        self.check(&check_id, "warning")
    }

    /// Adds a service check `service:<id>` that is critical.
    pub fn critical(self) -> Self {
        let check_id = format!("service:{}", self.service_id());
        self.check(&check_id, "critical")
    }

    /// Adds a node-level check (`ServiceID` "") such as `serfHealth`.
    pub fn node_check(mut self, check_id: &str, status: &str) -> Self {
        self.node_checks
            .push((check_id.to_owned(), status.to_owned()));
        self
    }

    /// Registers into an Enterprise namespace (created if unknown; from then on the
    /// simulator accepts `?ns`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// Registers into an Enterprise admin partition (created if unknown).
    pub fn partition(mut self, partition: &str) -> Self {
        self.partition = Some(partition.to_owned());
        self
    }

    /// Registers into another datacenter (created if unknown).
    pub fn datacenter(mut self, datacenter: &str) -> Self {
        self.datacenter = Some(datacenter.to_owned());
        self
    }

    /// The instance ID this registration will use.
    pub fn service_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.service.clone())
    }

    /// The service instance record (its indexes are set when it is upserted).
    pub(crate) fn to_service(&self) -> Service {
        Service {
            node: self.node.clone(),
            id: self.service_id(),
            service: self.service.clone(),
            tags: self.tags.clone(),
            address: self.address.clone(),
            tagged: self.tagged.clone(),
            tagged_ports: self.tagged_ports.clone(),
            meta: self.meta.clone(),
            port: self.port,
            weights: self.weights,
            enable_tag_override: self.enable_tag_override,
            create_index: 0,
            modify_index: 0,
        }
    }
}
