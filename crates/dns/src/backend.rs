//! The two seams the router reads through: the catalog and the forwarder.
//!
//! Production uses [`dnsfront_catalog::Cache`] and [`dnsfront_forward::Forwarder`];
//! tests plug in in-memory fakes.

use std::future::Future;
use std::sync::Arc;

use dnsfront_catalog::{Cache, Lookup, Node, ServiceInstance};
use dnsfront_forward::{Answer, Forwarder};
use hickory_proto::op::Query;

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
}

/// Resolution of names outside the Consul domain.
pub trait Upstream: Clone + Send + Sync + Unpin + 'static {
    /// Resolves one question (name as the client asked it).
    fn resolve(
        &self,
        query: &Query,
        dnssec_ok: bool,
    ) -> impl Future<Output = Result<Answer, dnsfront_forward::Error>> + Send;
}

impl Upstream for Forwarder {
    fn resolve(
        &self,
        query: &Query,
        dnssec_ok: bool,
    ) -> impl Future<Output = Result<Answer, dnsfront_forward::Error>> + Send {
        Forwarder::resolve(self, query, dnssec_ok)
    }
}
