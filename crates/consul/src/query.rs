//! Query options and response metadata.

use std::time::Duration;

/// Per-call options for reads.
#[derive(Default, Clone, Debug)]
pub struct QueryOptions {
    /// Datacenter to query (`?dc=`); `None` means the agent's own.
    pub datacenter: Option<String>,
    /// Health reads only: drop instances with any non-passing check (`?passing`).
    pub passing: bool,
    /// Blocking query: wait until the result's index exceeds this (`?index=`); 0 or `None` is non-blocking.
    pub index: Option<u64>,
    /// Blocking query: maximum wait (`?wait=`); Consul defaults to 5m and caps at 10m.
    pub wait: Option<Duration>,
}

/// A decoded value plus Consul's response metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<T> {
    /// The decoded body.
    pub value: T,
    /// Index, leader and staleness headers.
    pub meta: QueryMeta,
}

/// Metadata from the `X-Consul-*` response headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index` (0 when absent or unparsable); feed it through [`crate::next_index`] or a [`crate::Watch`].
    pub index: u64,
    /// `X-Consul-KnownLeader` (true unless the server said `false`).
    pub known_leader: bool,
    /// `X-Consul-LastContact`: time since the answering server heard from the leader.
    pub last_contact: Duration,
}

/// Consul's default blocking wait (`default_query_time`).
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// Consul's maximum blocking wait (`max_query_time`).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
