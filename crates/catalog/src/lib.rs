//! The Consul-backed view of services and nodes that the DNS front reads.
//!
//! A [`Cache`] holds one entry per looked-up key (a service in a datacenter, or a
//! node). The first query for a key fetches it from Consul (concurrent first
//! queries share one request); after that a background refresher keeps entries
//! that are being asked for fresh, so the query path never waits on Consul for a
//! hot name. When Consul fails, entries keep serving (marked stale) within
//! `max_stale`, and a shared circuit breaker with jittered exponential backoff
//! keeps this node from hammering a struggling Consul.
//!
//! Two refresh modes ([`RefreshMode`]): `poll` re-reads each hot name every
//! `refresh_interval`; `watch` keeps one rate-limited blocking query open per hot
//! name (`?index=&wait=`), so a change arrives within milliseconds and an
//! unchanged name costs one read per `watch_wait`.
//!
//! Data leaves this crate as plain Rust types ([`ServiceInstance`], [`Node`]);
//! building DNS messages is the `dns` crate's job.

use std::net::IpAddr;

/// One healthy instance of a service, as the DNS front needs it.
///
/// Instances arrive already filtered by Consul's DNS health rule (see
/// [`Config::only_passing`]); tag filtering happens per query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInstance {
    /// Consul node name the instance runs on.
    pub node: String,
    /// Datacenter of the node, as Consul reports it.
    pub datacenter: String,
    /// The node's address, when it is an IP address.
    pub node_address: Option<IpAddr>,
    /// The service's own address (`Service.Address`), when set and an IP address.
    pub service_address: Option<IpAddr>,
    /// `Service.Port` (0 when Consul omitted it).
    pub port: u16,
    /// `Service.Tags`, as registered (compare case-insensitively).
    pub tags: Vec<String>,
    /// SRV weight: `Weights.Passing` or `Weights.Warning` by the instance's worst check; 1 when unset.
    pub weight: u16,
}

impl ServiceInstance {
    /// The address DNS answers use: the service address when set, else the node's.
    pub fn address(&self) -> Option<IpAddr> {
        self.service_address.or(self.node_address)
    }

    /// True when the instance carries `tag` (case-insensitive, as Consul compares).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }
}

/// A catalog node, as the DNS front needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name as registered.
    pub name: String,
    /// Datacenter of the node.
    pub datacenter: String,
    /// The node's address, when it is an IP address.
    pub address: Option<IpAddr>,
}

/// How current the data behind an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Refreshed from Consul within the refresh window.
    Fresh,
    /// Consul could not be reached recently; this is the last good data.
    Stale,
    /// Consul is unreachable and the cache has nothing usable: this comes from
    /// the hosts snapshot distributed through Consul KV (see `dnsfront-snapshot`).
    Snapshot,
}

impl Freshness {
    /// True when the data may be out of date (stale cache or snapshot): answers
    /// then carry a short TTL and Extended DNS Error 3.
    pub fn is_degraded(self) -> bool {
        !matches!(self, Self::Fresh)
    }
}

/// The outcome of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup<T> {
    /// Consul knows the name; `T` is what it holds.
    Found(T, Freshness),
    /// Consul answered that the name does not exist (or has no healthy instance,
    /// or its datacenter is unknown): an authoritative negative.
    NotFound(Freshness),
    /// No usable data and Consul cannot be asked right now: never turn this into NXDOMAIN.
    Unavailable,
}

mod breaker;
mod cache;
mod config;
mod error;
mod info;
pub mod metrics;

pub use breaker::{BreakerState, CircuitState};
pub use cache::{Cache, Witness};
pub use config::{Config, MAX_WATCH_WAIT, RefreshMode};
pub use error::Error;
pub use info::{EntryFreshness, EntryInfo, ErrorInfo, RefreshState};
