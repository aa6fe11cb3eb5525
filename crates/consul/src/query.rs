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
    /// Health reads only: read through the agent's cache (`?cached`). With `index > 0` the
    /// agent serves it from its streaming view (one server subscription per service per
    /// agent, shared by every local reader). Also sent on every health read when the
    /// client's `Config::cached` is set.
    pub cached: bool,
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
    /// `X-Consul-Query-Backend`: how the agent served the read.
    pub backend: QueryBackend,
    /// `X-Cache`: whether the agent's cache answered.
    pub cache: CacheStatus,
    /// `Age` (seconds): how old the agent's cached answer was, when it says.
    pub age: Option<Duration>,
}

/// The agent's `X-Consul-Query-Backend` header (Consul 1.10+).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryBackend {
    /// No header (an older agent, a server, or a proxy that strips it).
    #[default]
    Unknown,
    /// `blocking-query`: one RPC on a server per read.
    BlockingQuery,
    /// `streaming`: served from the agent's materialized view of a server subscription.
    Streaming,
}

impl QueryBackend {
    /// Parses the header value; anything unrecognised is `Unknown`.
    pub fn from_header(value: &str) -> Self {
        match value.trim() {
            v if v.eq_ignore_ascii_case("streaming") => Self::Streaming,
            v if v.eq_ignore_ascii_case("blocking-query") => Self::BlockingQuery,
            _ => Self::Unknown,
        }
    }

    /// A bounded label for metrics and `explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::BlockingQuery => "blocking-query",
            Self::Streaming => "streaming",
        }
    }
}

/// The agent's `X-Cache` header, sent on `?cached` reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheStatus {
    /// No header: the read did not go through the agent's cache.
    #[default]
    Absent,
    /// `HIT`: answered from the agent's cache.
    Hit,
    /// `MISS`: the agent fetched it from a server.
    Miss,
}

impl CacheStatus {
    /// Parses the header value; anything unrecognised is `Absent`.
    pub fn from_header(value: &str) -> Self {
        match value.trim() {
            v if v.eq_ignore_ascii_case("hit") => Self::Hit,
            v if v.eq_ignore_ascii_case("miss") => Self::Miss,
            _ => Self::Absent,
        }
    }

    /// A bounded label for metrics and `explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "none",
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// Consul's default blocking wait (`default_query_time`).
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// Consul's maximum blocking wait (`max_query_time`).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
