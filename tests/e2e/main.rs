//! End-to-end tests: the whole `App` (in-process) or the `dnsfront` binary,
//! against the Consul simulator over HTTP, queried over real UDP and TCP
//! sockets with a real DNS client (and `dig`).

mod binary;
mod catalog;
mod cli;
mod consul_answers;
mod consul_fallback;
mod consul_limits;
mod consul_meta;
mod consul_reload;
mod consul_streaming;
mod consul_tls;
mod diagnostics;
mod dig;
mod forwarding;
mod harness;
mod least_privilege;
mod lifecycle;
mod memory;
mod metrics;
mod metrics_conventions;
mod name_flood;
mod namespaces;
mod rate_limit;
mod reload;
mod robustness;
mod size_limits;
pub(crate) mod snapshot;
mod snapshot_delivery;
mod systemd;
mod tcp_limits;
mod token_rotation;
mod upstream_auth;
