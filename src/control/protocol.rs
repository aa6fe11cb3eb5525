//! The control protocol: request lines and the reports sent back (the JSON
//! contract scripts rely on).

use serde::{Deserialize, Serialize};

use crate::reload::LastReload;

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Where the answer for `name` comes from right now.
    Explain {
        /// The name asked about.
        name: String,
        /// Record type (default A).
        #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
        qtype: Option<String>,
    },
    /// Cache, Consul, snapshot and reload state.
    Stats,
    /// Re-read the configuration now (as SIGHUP does) and say what changed.
    Reload,
}

impl Request {
    /// The `cmd` tag, which also names the response's payload field.
    pub fn cmd(&self) -> &'static str {
        match self {
            Self::Explain { .. } => "explain",
            Self::Stats => "stats",
            Self::Reload => "reload",
        }
    }
}

/// The answer our own listener gave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsAnswer {
    /// Where the query went.
    pub server: String,
    /// `udp`, or `tcp` after a truncated UDP answer.
    pub transport: String,
    /// NOERROR, NXDOMAIN, SERVFAIL, ...
    pub rcode: String,
    /// Round trip, in milliseconds.
    pub rtt_ms: f64,
    /// Answer section.
    pub answers: Vec<RecordLine>,
    /// Authority section (SOA of negative answers).
    pub authority: Vec<RecordLine>,
    /// Extended DNS Error info codes (3 = Stale Answer).
    pub ede: Vec<u16>,
}

/// One resource record, for display.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordLine {
    /// Owner name.
    pub name: String,
    /// Record type.
    #[serde(rename = "type")]
    pub rtype: String,
    /// TTL in seconds.
    pub ttl: u32,
    /// Presentation form of the data.
    pub data: String,
}

/// What the catalog cache holds for the Consul key behind a name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatalogDetails {
    /// `service` or `node`.
    pub kind: String,
    /// Service or node name.
    pub name: String,
    /// The tag filter of a service name (None = every instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Datacenter asked for (None = the agent's).
    pub datacenter: Option<String>,
    /// fresh, stale, snapshot, not_found (fresh|stale), or unavailable.
    pub state: String,
    /// Healthy instances (services) held.
    pub instances: Option<usize>,
    /// Age of the cached data (when the catalog can tell).
    pub age_seconds: Option<f64>,
    /// Consul index of the cached data (when the catalog can tell).
    pub consul_index: Option<u64>,
    /// How the entry is kept current: watching, polling or idle.
    pub refresh: Option<String>,
    /// The most recent failed Consul request for it, if any.
    pub last_error: Option<String>,
    /// How the agent served its last read: `X-Consul-Query-Backend`
    /// (`streaming`, `blocking-query`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_backend: Option<String>,
    /// Its last read's `X-Cache` (`hit`, `miss`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_cache: Option<String>,
    /// Its last read's `Age` (seconds), when the agent sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_cache_age_seconds: Option<u64>,
    /// A node answered from this cached service's health data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_service: Option<String>,
}

/// The hosts snapshot in memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its generation.
    pub generation: u64,
    /// Seconds since the publisher built it.
    pub age_seconds: u64,
    /// Consul index it was built from.
    pub consul_index: u64,
    /// Its datacenter.
    pub datacenter: String,
    /// Services it holds.
    pub services: usize,
    /// Nodes it holds.
    pub nodes: usize,
    /// Whether it knows the explained name (explain only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_name: Option<bool>,
}

/// What `explain` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExplainReport {
    /// The name, as a FQDN.
    pub name: String,
    /// Record type.
    #[serde(rename = "type")]
    pub qtype: String,
    /// `consul` (our domain), `local` (hosts files) or `forward`.
    pub zone: String,
    /// For names the Consul zone answers, what the router parsed: service,
    /// node, addr, apex, unsupported or invalid.
    pub kind: Option<String>,
    /// Where the answer came from: fresh, stale, snapshot (catalog), cache,
    /// upstream (forwarder), local (hosts files), or none (synthesised or failed).
    pub source: String,
    /// The router's remark on this answer (why it is stale, why it failed).
    pub note: Option<String>,
    /// The real answer from our own listener.
    pub answer: Option<DnsAnswer>,
    /// Why no answer came back.
    pub answer_error: Option<String>,
    /// True while the circuit breaker of the name's datacenter holds Consul
    /// requests back.
    pub consul_unavailable: bool,
    /// The catalog cache entry (Consul names).
    pub catalog: Option<CatalogDetails>,
    /// The hosts snapshot in memory (Consul names).
    pub snapshot: Option<SnapshotInfo>,
    /// The upstreams (forwarded names).
    pub upstreams: Option<Vec<String>>,
    /// The forwarder's cache entry, route and policy verdict (forwarded names).
    pub forward_cache: Option<serde_json::Value>,
}

/// What `stats` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Running version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// Bound DNS addresses.
    pub listen: Vec<String>,
    /// The config file it was started with.
    pub config_file: Option<String>,
    /// Cached services and nodes.
    pub catalog_entries: u64,
    /// True while the circuit breaker of the agent's own datacenter holds
    /// Consul requests back.
    pub consul_unavailable: bool,
    /// Responses in the forwarder's cache.
    pub forward_cache_entries: u64,
    /// Upstream resolvers.
    pub upstreams: Vec<String>,
    /// The hosts snapshot in memory.
    pub snapshot: Option<SnapshotInfo>,
    /// The most recent reload.
    pub last_reload: Option<LastReload>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_with_a_cmd() {
        let explain: Request =
            serde_json::from_str(r#"{"cmd":"explain","name":"web.service.consul","type":"A"}"#)
                .expect("parses");
        assert_eq!(
            explain,
            Request::Explain {
                name: "web.service.consul".into(),
                qtype: Some("A".into())
            }
        );
        let stats: Request = serde_json::from_str(r#"{"cmd":"stats"}"#).expect("parses");
        assert_eq!(stats, Request::Stats);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rm -rf"}"#).is_err());
    }
}
