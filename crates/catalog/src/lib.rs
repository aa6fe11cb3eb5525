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
//! [`View`] is what the DNS front reads: the cache with the hosts snapshot
//! (`dnsfront-snapshot`) behind it, in one fallback order (fresh → stale within
//! `max_stale` → snapshot → unavailable), so a reader sees data and its
//! [`Freshness`], never where it came from.
//!
//! Data leaves this crate as the shared model of `dnsfront-consul`
//! ([`ServiceInstance`], [`Node`], re-exported here), whose rules (health filter,
//! SRV weight, address choice, tag match) are written once there; building DNS
//! messages is the `dns` crate's job.

pub use dnsfront_consul::{Addresses, InstanceStatus, Node, ServiceInstance, TaggedAddresses};

/// How current the data behind an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Refreshed from Consul within the refresh window.
    Fresh,
    /// Consul could not be reached recently; this is the last good data.
    Stale,
    /// Consul is unreachable and the cache has nothing usable: this comes from
    /// the hosts snapshot distributed through Consul KV (see [`View`]).
    Snapshot,
}

impl Freshness {
    /// True when the data may be out of date (stale cache or snapshot): answers
    /// then carry a short TTL and Extended DNS Error 3.
    pub fn is_degraded(self) -> bool {
        !matches!(self, Self::Fresh)
    }
}

/// What owns an address, found by a reverse (PTR) lookup: a node or a service, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOwner {
    /// Node name as registered, or service name (lower-case).
    pub name: String,
    /// Its datacenter (empty when Consul gave none).
    pub datacenter: String,
    /// How current the data it was found in is.
    pub freshness: Freshness,
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

impl<T> Lookup<T> {
    /// The answer when it is fresh: `Some(Some(data))` found, `Some(None)` a fresh
    /// negative, `None` when it is stale, from the snapshot or unavailable.
    pub fn into_fresh(self) -> Option<Option<T>> {
        match self {
            Self::Found(data, Freshness::Fresh) => Some(Some(data)),
            Self::NotFound(Freshness::Fresh) => Some(None),
            _ => None,
        }
    }
}

mod breaker;
mod cache;
mod config;
mod error;
mod info;
pub mod metrics;
mod view;

pub use breaker::{BreakerState, CircuitState};
pub use cache::{Cache, Witness};
pub use config::{Config, MAX_WATCH_WAIT, RefreshMode};
pub use error::Error;
pub use info::{EntryFreshness, EntryInfo, ErrorInfo, RefreshState};
pub use view::{AddressKind, View};
