//! The DNS front of dnsfront: a hickory-server [`RequestHandler`](hickory_server::server::RequestHandler)
//! that answers the Consul domain from the catalog cache, names in the local
//! hosts files from them ([`Router::with_local_hosts`]), and forwards every
//! other name, plus the UDP/TCP listener setup.
//!
//! Settings change live with [`Router::reload`]; [`Router::explain`] routes a
//! question like a query and says where the answer came from, and
//! [`Router::consul_name`] gives the catalog key a Consul name asks for (the
//! grammar lives only here, in `name.rs`); the optional
//! query log ([`QueryLog`]) writes one line per sampled query at target
//! `dnsfront::query`.
//!
//! The query path does no blocking I/O and no HTTP: it reads the catalog cache
//! and the forwarder through [`CatalogView`] and [`Upstream`].
//!
//! UDP is served by our own loops ([`serve_with`], [`UdpOptions`]): several
//! `SO_REUSEPORT` sockets per address, and a wire answer cache (the fast
//! path) in front of the router: a cacheable UDP answer (NOERROR/NXDOMAIN
//! from fresh Consul data, the forwarder or the local hosts files, at most
//! 512 bytes, no TC, every TTL above 0) is kept encoded for at most 1 s and
//! repeated questions get a copy with their ID and name case patched and the
//! Answer records shuffled. A cached Consul answer is re-checked on every hit:
//! the catalog lookup it was built from must still give the same data, fresh
//! (else the general path answers), so Consul changes and outages show at
//! once; forwarded and local answers may show the forwarder's TTL countdown
//! up to 1 s late. [`Router::reload`] clears the cache at
//! once, and the query log (when on) turns it off. Fast-path answers count in
//! `dns.requests_total`, `dns.responses_total` and `dns.fast_path_hits_total` in
//! batches (at most 1 s late) and feed `dns.request_duration_seconds` with one
//! sample per 64 answers. TCP is
//! served by our own accept loops (`tcp.rs`: ACL at accept, global and
//! per-client connection caps, idle timeout, lifetime, bounded pipelining,
//! backoff when fds run out) and never uses the cache.
//!
//! Both encode with every owner name compressed (hickory's encoder stops
//! compressing after 120 names) and fit answers to the transport's limit
//! first: plain UDP 512 bytes, EDNS `min(client, max_udp_payload)`, TCP
//! 65,535; each SRV is kept or dropped with its target's Additional records,
//! and TC is set only over UDP.
//!
//! Behaviour follows Consul 1.16's DNS interface with deliberate differences:
//! - UDP truncation sets TC (never Consul's silent 3-record UDP trim); EDNS clients
//!   get at most `min(their size, max_udp_payload)` and our OPT;
//! - TXT on a service is NODATA (Consul answers it with A records);
//! - the forms we do not answer from our own data (`.query`, `.peer`,
//!   `.connect`, `.ingress`, `.virtual`, `.sameness-group`, Enterprise `.ns`
//!   and `.ap`) are asked of the local agent's DNS interface (`agent_dns`) and
//!   its answer passed on; SERVFAIL when it does not answer or is off;
//! - a hostname address is resolved with the asked type (A or AAAA; A for
//!   ANY and SRV), where Consul always asks its recursors for A;
//! - an `.addr` label that is not 8 or 32 hex digits is NXDOMAIN (Consul:
//!   NOERROR for other lengths), and `.addr` with another qtype is an empty
//!   NOERROR (Consul puts the record in Additional);
//! - answers built from stale catalog data carry EDE 3 (Stale Answer) and a capped TTL;
//! - SOA answers carry no NS records (we are not Consul's servers);
//! - names outside the domain with no forwarder get SERVFAIL, not REFUSED;
//! - a name in the local hosts files is owned by them: A/AAAA/ANY get its
//!   addresses, PTR of a listed address its names, and every other type NODATA
//!   (AA, no SOA); dnsmasq forwards types other than A/AAAA/PTR instead.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod alias;
mod answer;
mod backend;
mod config;
mod encode;
mod explain;
mod fallback;
mod fast;
#[doc(hidden)]
pub mod fuzzing;
mod listen;
mod local;
pub mod metrics;
mod name;
mod ratelimit;
mod reverse;
mod router;
mod tcp;
mod trim;
mod udp;

pub use backend::{CatalogView, Upstream};
pub use config::{Config, QueryLog};
pub use explain::Explanation;
pub use listen::{
    Inherited, Listeners, ServerHandle, ServerOptions, UdpOptions, serve, serve_with,
};
pub use metrics::rcode_name;
pub use name::ConsulName;
pub use router::Router;

use std::net::SocketAddr;

/// Errors of the DNS front (binding and serving; the query path never fails outward).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address is taken by another socket.
    #[error("cannot bind {protocol} {address}: address already in use")]
    AddressInUse {
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The address we tried.
        address: SocketAddr,
    },
    /// Binding a listen socket failed for another reason.
    #[error("cannot bind {protocol} {address}")]
    Bind {
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The address we tried.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Handing a bound socket to the runtime failed.
    #[error("cannot register {protocol} socket with the runtime")]
    Register {
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A server task stopped with an error (e.g. a socket closed unexpectedly).
    #[error("DNS server stopped")]
    Serve {
        /// hickory's error.
        #[source]
        source: hickory_server::net::NetError,
    },
    /// The server task panicked or was cancelled.
    #[error("DNS server task failed: {0}")]
    Task(String),
    /// The sockets passed by the service manager (socket activation) do not
    /// match the listen addresses; the message names the address or socket.
    #[error("socket activation: {0}")]
    Inherited(String),
}
