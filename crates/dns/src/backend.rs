//! The two seams the router reads through: the catalog and the forwarder.
//!
//! Production uses [`dnsfront_catalog::Cache`] and [`dnsfront_forward::Forwarder`];
//! tests plug in in-memory fakes.

use std::future::Future;
use std::sync::Arc;

use dnsfront_catalog::{Cache, Freshness, Lookup, Node, ServiceInstance, Witness};
use dnsfront_forward::{Answer, Forwarder};
use dnsfront_snapshot::{Hosts, InstanceStatus, Snapshot};
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
}

impl CatalogView for Cache {
    fn service(
        &self,
        service: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<[ServiceInstance]>>> + Send {
        Cache::service(self, service, datacenter)
    }

    fn node(
        &self,
        node: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<Node>>> + Send {
        Cache::node(self, node, datacenter)
    }

    fn service_witness(
        &self,
        service: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<[ServiceInstance]>>,
    ) -> Option<Witness> {
        Cache::service_witness(self, service, datacenter, data)
    }

    fn node_witness(
        &self,
        node: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<Node>>,
    ) -> Option<Witness> {
        Cache::node_witness(self, node, datacenter, data)
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

/// The catalog cache with the hosts snapshot behind it. The fallback order for a
/// Consul name: fresh cache → stale cache (within `catalog.max_stale`) →
/// snapshot → SERVFAIL. The snapshot only answers for the datacenter it was
/// built in, and only names it holds: anything else stays `Unavailable`.
#[derive(Clone)]
pub struct CatalogWithFallback {
    cache: Cache,
    hosts: Hosts,
    only_passing: bool,
}

impl CatalogWithFallback {
    /// `only_passing` applies Consul's `only_passing` rule to snapshot data,
    /// which also holds instances in warning.
    pub fn new(cache: Cache, hosts: Hosts, only_passing: bool) -> Self {
        Self {
            cache,
            hosts,
            only_passing,
        }
    }

    /// The cache alone (no snapshot loaded yet or ever).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn snapshot_for(&self, datacenter: Option<&str>) -> Option<Arc<Snapshot>> {
        let snapshot = self.hosts.current()?;
        match datacenter {
            Some(dc) if !dc.eq_ignore_ascii_case(&snapshot.datacenter) => None,
            _ => Some(snapshot),
        }
    }

    fn snapshot_service(
        &self,
        service: &str,
        datacenter: Option<&str>,
    ) -> Lookup<Arc<[ServiceInstance]>> {
        let Some(snapshot) = self.snapshot_for(datacenter) else {
            return Lookup::Unavailable;
        };
        let Some(instances) = snapshot.service(service) else {
            return Lookup::Unavailable; // unknown during an outage: SERVFAIL, never NXDOMAIN
        };
        let instances: Vec<ServiceInstance> = instances
            .iter()
            .filter(|instance| !self.only_passing || instance.status == InstanceStatus::Passing)
            .map(|instance| ServiceInstance {
                node: instance.node.clone(),
                datacenter: snapshot.datacenter.clone(),
                node_address: instance.node_address,
                service_address: instance.service_address,
                port: instance.port,
                tags: instance.tags.clone(),
                weight: instance.weight,
            })
            .collect();
        if instances.is_empty() {
            Lookup::NotFound(Freshness::Snapshot)
        } else {
            Lookup::Found(instances.into(), Freshness::Snapshot)
        }
    }

    fn snapshot_node(&self, node: &str, datacenter: Option<&str>) -> Lookup<Arc<Node>> {
        let Some(snapshot) = self.snapshot_for(datacenter) else {
            return Lookup::Unavailable;
        };
        match snapshot.node(node) {
            Some(entry) => Lookup::Found(
                Arc::new(Node {
                    name: entry.name.clone(),
                    datacenter: snapshot.datacenter.clone(),
                    address: entry.address,
                }),
                Freshness::Snapshot,
            ),
            None => Lookup::Unavailable,
        }
    }
}

impl CatalogView for CatalogWithFallback {
    async fn service(
        &self,
        service: &str,
        datacenter: Option<&str>,
    ) -> Lookup<Arc<[ServiceInstance]>> {
        match self.cache.service(service, datacenter).await {
            Lookup::Unavailable => self.snapshot_service(service, datacenter),
            known => known,
        }
    }

    async fn node(&self, node: &str, datacenter: Option<&str>) -> Lookup<Arc<Node>> {
        match self.cache.node(node, datacenter).await {
            Lookup::Unavailable => self.snapshot_node(node, datacenter),
            known => known,
        }
    }

    fn service_witness(
        &self,
        service: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<[ServiceInstance]>>,
    ) -> Option<Witness> {
        self.cache.service_witness(service, datacenter, data)
    }

    fn node_witness(
        &self,
        node: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<Node>>,
    ) -> Option<Witness> {
        self.cache.node_witness(node, datacenter, data)
    }
}
