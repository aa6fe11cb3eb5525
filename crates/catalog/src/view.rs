//! The view the DNS front reads: the catalog cache with the hosts snapshot behind it.

use std::net::IpAddr;
use std::sync::Arc;

use dnsfront_snapshot::{Hosts, Snapshot};

use crate::{AddressOwner, Cache, Freshness, Lookup, Node, ServiceInstance, Witness};

/// What kind of thing owns an address found by [`View::owner_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// A node's address: PTR to `NODE.node.DC.domain`.
    Node,
    /// A service address: PTR to `NAME.service.DC.domain`.
    Service,
}

/// The catalog cache with the hosts snapshot behind it, in one fallback order for a
/// Consul name: fresh cache → stale cache (within `max_stale`) → snapshot → unavailable.
///
/// The snapshot only answers for the datacenter it was built in, and only names it
/// holds: anything else stays [`Lookup::Unavailable`] (SERVFAIL, never NXDOMAIN,
/// during an outage). Readers learn where data came from only through [`Freshness`].
/// Cheap to clone; every clone reads the same cache and snapshot.
#[derive(Clone)]
pub struct View {
    cache: Cache,
    hosts: Hosts,
}

impl View {
    /// Reads `cache` first and `hosts` (the followed snapshot) when the cache has nothing
    /// usable. Snapshot data follows the cache's `only_passing` rule.
    pub fn new(cache: Cache, hosts: Hosts) -> Self {
        Self { cache, hosts }
    }

    /// The cache alone.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Healthy instances of `service` in `datacenter` (None = the agent's).
    pub async fn service(
        &self,
        service: &str,
        datacenter: Option<&str>,
    ) -> Lookup<Arc<[ServiceInstance]>> {
        match self.cache.service(service, datacenter).await {
            Lookup::Unavailable => self.snapshot_service(service, datacenter),
            known => known,
        }
    }

    /// The node called `node` in `datacenter` (None = the agent's).
    pub async fn node(&self, node: &str, datacenter: Option<&str>) -> Lookup<Arc<Node>> {
        match self.cache.node(node, datacenter).await {
            Lookup::Unavailable => self.snapshot_node(node, datacenter),
            known => known,
        }
    }

    /// What owns `ip`, for a PTR answer, from the data already held (never asking
    /// Consul, whose load must not grow with reverse lookups): a node whose address it
    /// is, in the cache or the snapshot; else a service with an instance at that
    /// service address (Consul's order: nodes first).
    pub fn owner_of(&self, ip: IpAddr) -> Option<(AddressKind, AddressOwner)> {
        let (cached_node, cached_service) = self.cache.owners_of(ip);
        let from_snapshot = |(name, datacenter)| AddressOwner {
            name,
            datacenter,
            freshness: Freshness::Snapshot,
        };
        cached_node
            .or_else(|| self.hosts.node_at(ip).map(from_snapshot))
            .map(|owner| (AddressKind::Node, owner))
            .or_else(|| {
                cached_service
                    .or_else(|| self.hosts.service_at(ip).map(from_snapshot))
                    .map(|owner| (AddressKind::Service, owner))
            })
    }

    /// The agent's own datacenter: learned from the cache's answers, else the
    /// snapshot's (`None` before either is known).
    pub fn local_datacenter(&self) -> Option<Arc<String>> {
        self.cache.local_datacenter().or_else(|| {
            self.hosts
                .current()
                .filter(|snapshot| !snapshot.datacenter.is_empty())
                .map(|snapshot| Arc::new(snapshot.datacenter.clone()))
        })
    }

    /// [`Cache::service_witness`]: only fresh cache data has witnesses.
    pub fn service_witness(
        &self,
        service: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<[ServiceInstance]>>,
    ) -> Option<Witness> {
        self.cache.service_witness(service, datacenter, data)
    }

    /// [`Cache::node_witness`]: only fresh cache data has witnesses.
    pub fn node_witness(
        &self,
        node: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<Node>>,
    ) -> Option<Witness> {
        self.cache.node_witness(node, datacenter, data)
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
        // The snapshot holds instances in warning too; the resolver's own rule decides.
        let only_passing = self.cache.only_passing();
        let instances: Vec<ServiceInstance> = instances
            .iter()
            .filter(|instance| instance.status.is_served(only_passing))
            .cloned()
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
            Some(node) => Lookup::Found(Arc::new(node.clone()), Freshness::Snapshot),
            None => Lookup::Unavailable,
        }
    }
}
