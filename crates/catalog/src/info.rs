//! What `explain`-style tooling shows about one cached key (no I/O to build).

/// The state of one cached service or node, as [`crate::Cache::describe_service`]
/// and [`crate::Cache::describe_node`] report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryInfo {
    /// `service` or `node`.
    pub kind: &'static str,
    /// The name as cached (lower-case).
    pub name: String,
    /// The datacenter asked for (`None` = the agent's).
    pub datacenter: Option<String>,
    /// How current the data is.
    pub freshness: EntryFreshness,
    /// Milliseconds since Consul last answered for this key.
    pub age_ms: u64,
    /// `X-Consul-Index` of the data (0 when Consul sent none, e.g. unknown datacenter).
    pub consul_index: u64,
    /// Healthy instances (services), or 1 / 0 (node found / not found).
    pub instances: usize,
    /// Whether the key is being kept current, and how.
    pub refresh: RefreshState,
    /// Milliseconds since a query last asked for this key.
    pub last_query_ms: u64,
    /// The most recent failed Consul request for this key, if any (it may have
    /// succeeded since: compare `age_ms` with the error's).
    pub last_error: Option<ErrorInfo>,
    /// How the agent served the last answer: `X-Consul-Query-Backend`
    /// (`streaming`, `blocking-query`, or `unknown` without the header);
    /// `None` when no answer came with headers (a node answered from a
    /// cached service, an unknown datacenter).
    pub query_backend: Option<&'static str>,
    /// The last answer's `X-Cache` (`hit`, `miss`; `none` on reads without `?cached`).
    pub agent_cache: Option<&'static str>,
    /// The last answer's `Age` in seconds, when the agent sent one.
    pub agent_cache_age_s: Option<u64>,
    /// A node answered from this cached service's health data (no
    /// `/v1/catalog/node` read).
    pub from_service: Option<String>,
}

/// How current a cached key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryFreshness {
    /// Recently confirmed by Consul, and Consul has the name.
    Fresh,
    /// Recently confirmed by Consul: the name does not exist (or has no healthy instance).
    Negative,
    /// Older than the refresh window without a failure (nobody asked, so nobody refreshed).
    Stale,
    /// The last refresh failed: answers come from the last good data.
    Failed,
}

/// How a cached key is kept current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefreshState {
    /// A blocking query is open for it (watch mode).
    Watching,
    /// Re-read periodically (poll mode, or more hot names than `max_watches`).
    Polling,
    /// Nobody asked within `idle_timeout`: not refreshed until asked again.
    Idle,
}

/// A failed Consul request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErrorInfo {
    /// Bounded error kind (`unreachable`, `timeout`, `no_leader`, ...).
    pub kind: &'static str,
    /// The error message (never contains the ACL token).
    pub message: String,
    /// Milliseconds since it happened.
    pub age_ms: u64,
}
