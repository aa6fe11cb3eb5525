//! The hosts snapshot: the whole catalog in one Consul KV value, the outage fallback.
//!
//! One publisher (elected with a Consul session lock) builds a [`Snapshot`] of every
//! service's healthy instances and every node's address (the shared model,
//! `dnsfront_consul::ServiceInstance` and `Node`), encodes it with [`codec::encode`]
//! and writes it to one KV key. Every resolver follows that key, verifies the value with
//! [`codec::decode`] (format, SHA-256, optional Ed25519 signature), keeps it in its state dir
//! ([`store`]) and serves it from memory through [`Hosts`] while Consul is unreachable.
//!
//! # Size limit: fail loudly, never split
//!
//! Consul refuses values over 512 KiB ([`codec::MAX_VALUE_SIZE`]). The envelope is gzip of a
//! compact JSON document, so a 2,000-node × 500-service catalog is far below the limit (see
//! the README for measured sizes). When a catalog does not fit, [`codec::encode`] returns
//! [`Error::TooLarge`] with the encoded size and the service, instance and node counts, and
//! nothing is published; the snapshot is deliberately not split over several keys, so a
//! follower can never see half of one.
//!
//! # Modules
//!
//! - [`codec`]: the envelope (deterministic encoding, checksum, signature, zip-bomb guard,
//!   the shape [`codec::LIMITS`] checked while the JSON is read, so decoding is bounded
//!   whatever the input).
//! - [`keys`]: Ed25519 key files.
//! - [`pointer`]: the small pointer key followers block on (generation + SHA-256).
//! - [`store`]: atomic save/load in the state dir.
//! - [`hosts`]: the lock-free in-memory view and the dnsmasq `addn-hosts` export.
//! - [`metrics`]: metric names and descriptions.
//! - [`publisher`], [`follower`]: the Consul side.
//! - [`delivery`]: the hosts file and after-delivery command of an applied snapshot.
//! - [`events`]: published/applied/rejected events for an event stream (DogStatsD in `src/`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod delivery;
mod error;
pub mod events;
pub mod follower;
pub mod hosts;
pub mod keys;
pub mod metrics;
mod model;
pub mod pointer;
pub mod publisher;
mod retry;
pub mod store;
mod wire;

pub use codec::{Verified, decode, encode};
pub use error::Error;
pub use hosts::{Hosts, to_hosts_file};
pub use model::Snapshot;

/// Re-exported so callers can name key types without depending on `ed25519-dalek`.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
