//! Typed client for the subset of Consul's HTTP API dnsfront uses.
//!
//! It knows nothing about DNS and caches nothing: every call is one HTTP request with a deadline,
//! its `X-Consul-*` metadata, and a classified [`Error`]. Reads are GETs; KV writes and the
//! session calls used for the publisher's lock are PUT/DELETE and always go to the leader.
//! Blocking-query loops keep their index in a [`Watch`] (Consul's index rules, a [`Pace`]
//! between wake-ups) and back off after errors with the one jittered [`Backoff`].
//!
//! [`ServiceInstance`] and [`Node`] are the one model of Consul data that the rest of
//! dnsfront reads (catalog cache, hosts snapshot, DNS answers), with Consul's DNS rules
//! (health filter, SRV weight, address choice, tag match) written once, in `instance.rs`.

#![warn(missing_docs)]

mod backoff;
mod client;
mod config;
mod error;
mod instance;
pub mod metrics;
mod model;
mod query;
mod tls;
mod token;
mod transport;
mod watch;
mod write;

pub use backoff::{Backoff, FULL_JITTER, HALF_JITTER, InvalidBackoff};
pub use client::{Client, MAX_BULK_RESPONSE_BYTES, MAX_RESPONSE_BYTES};
pub use config::{
    Config, DEFAULT_ADDRESS, DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_REQUEST_TIMEOUT, Token,
};
pub use error::{BoxError, Error};
pub use instance::{
    Addresses, InstanceDetails, InstanceStatus, Node, NodeDetails, ServiceInstance, TaggedAddresses,
};
pub use model::{
    AgentSelf, AgentService, CatalogNode, HealthCheck, HealthStatus, KvPair, NodeInfo,
    ServiceEntry, Weights,
};
pub use query::{CacheStatus, QueryBackend, QueryMeta, QueryOptions, Response};
pub use tls::TlsConfig;
pub use transport::TLS_CHECK_INTERVAL;
pub use watch::{IndexChange, Pace, Watch, next_index};
pub use write::{KvPutOptions, SessionBehavior, SessionRequest};
