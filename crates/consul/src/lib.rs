//! Typed client for the subset of Consul's HTTP API dnsfront uses.
//!
//! It knows nothing about DNS and caches nothing: every call is one HTTP GET with a deadline,
//! its `X-Consul-*` metadata, and a classified [`Error`]. Blocking-query loops feed the returned
//! index through [`next_index`].

#![warn(missing_docs)]

mod client;
mod config;
mod error;
pub mod metrics;
mod model;
mod query;

pub use client::Client;
pub use config::{Config, DEFAULT_ADDRESS, DEFAULT_REQUEST_TIMEOUT, Token};
pub use error::{BoxError, Error};
pub use model::{
    AgentSelf, AgentService, CatalogNode, HealthCheck, HealthStatus, KvPair, NodeInfo,
    ServiceAddress, ServiceEntry, Weights,
};
pub use query::{QueryMeta, QueryOptions, Response, next_index};
