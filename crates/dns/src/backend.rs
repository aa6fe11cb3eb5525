//! The two seams the router reads through: the catalog and the forwarder.
//!
//! Production uses [`dnsfront_catalog::View`] (the cache with the hosts snapshot
//! behind it; the fallback order lives there) and [`dnsfront_forward::Forwarder`];
//! tests plug in in-memory fakes. Nothing here decides where data comes from.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use dnsfront_catalog::{AddressKind, AddressOwner, Lookup, Node, ServiceInstance, View, Witness};
use dnsfront_forward::{Answer, Forwarder};
use hickory_proto::op::Query;
use hickory_proto::rr::Name;

/// Read access to the Consul catalog, as the router needs it.
///
/// Implementations must not block: the futures run on the query path.
pub trait CatalogView: Clone + Send + Sync + Unpin + 'static {
    /// Healthy instances of `service` (lower-case) in `datacenter` (None = the agent's).
    fn service(
        &self,
        service: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<[ServiceInstance]>>> + Send;

    /// The node called `node` (lower-case) in `datacenter` (None = the agent's).
    fn node(
        &self,
        node: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<Node>>> + Send;

    /// A cheap re-check that `service` still gives `data` (what a lookup just
    /// returned), fresh. `None`: none available; the fast path then repeats the lookup.
    fn service_witness(
        &self,
        _service: &str,
        _datacenter: Option<&str>,
        _data: Option<&Arc<[ServiceInstance]>>,
    ) -> Option<Witness> {
        None
    }

    /// As [`CatalogView::service_witness`], for a node.
    fn node_witness(
        &self,
        _node: &str,
        _datacenter: Option<&str>,
        _data: Option<&Arc<Node>>,
    ) -> Option<Witness> {
        None
    }

    /// What owns `ip` (a node's address first, else a service address), from data
    /// already held; for PTR answers. Never waits.
    fn owner_of(&self, _ip: IpAddr) -> Option<(AddressKind, AddressOwner)> {
        None
    }

    /// The agent's own datacenter when known (answers for any other use `wan`
    /// addresses under `translate_wan_addrs`).
    fn local_datacenter(&self) -> Option<Arc<String>> {
        None
    }
}

impl CatalogView for View {
    fn service(
        &self,
        service: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<[ServiceInstance]>>> + Send {
        View::service(self, service, datacenter)
    }

    fn node(
        &self,
        node: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<Node>>> + Send {
        View::node(self, node, datacenter)
    }

    fn service_witness(
        &self,
        service: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<[ServiceInstance]>>,
    ) -> Option<Witness> {
        View::service_witness(self, service, datacenter, data)
    }

    fn node_witness(
        &self,
        node: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<Node>>,
    ) -> Option<Witness> {
        View::node_witness(self, node, datacenter, data)
    }

    fn owner_of(&self, ip: IpAddr) -> Option<(AddressKind, AddressOwner)> {
        View::owner_of(self, ip)
    }

    fn local_datacenter(&self) -> Option<Arc<String>> {
        View::local_datacenter(self)
    }
}

/// Resolution of names outside the Consul domain.
pub trait Upstream: Clone + Send + Sync + Unpin + 'static {
    /// Resolves one question (name as the client asked it).
    fn resolve(
        &self,
        query: &Query,
        dnssec_ok: bool,
    ) -> impl Future<Output = Result<Answer, dnsfront_forward::Error>> + Send;

    /// True when a per-domain rule sends `name` upstream even though it lies in the
    /// Consul domain (`query.consul` to the agent's DNS port).
    fn has_rule_for(&self, _name: &Name) -> bool {
        false
    }
}

impl Upstream for Forwarder {
    fn has_rule_for(&self, name: &Name) -> bool {
        Forwarder::has_rule_for(self, name)
    }

    fn resolve(
        &self,
        query: &Query,
        dnssec_ok: bool,
    ) -> impl Future<Output = Result<Answer, dnsfront_forward::Error>> + Send {
        Forwarder::resolve(self, query, dnssec_ok)
    }
}
