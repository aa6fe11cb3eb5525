//! The agent model: what the simulated client agents pass on to the Consul servers.
//!
//! One [`crate::Sim`] plays the servers (one catalog); each listener made with
//! [`crate::Sim::serve_agent`] plays one client agent in front of them. The simulator counts
//! what would reach the servers, as Consul 1.10+ agents behave (facts from
//! `agent/health_endpoint.go`, `agent/rpcclient/health/health.go`, `agent/submatview/` and
//! `agent/consul/stream/` in hashicorp/consul):
//!
//! - Every request is one server RPC (the agent forwards it), except the agent's own
//!   endpoints (`/v1/agent/*`), this simulator's `/v1/sim/*`, reads the agent serves from its
//!   streaming view, and `?cached` reads the agent cache answers (a HIT). A blocking query is
//!   one RPC for its whole life: the server re-runs it on every wake-up itself and answers
//!   once. Its response body is server egress.
//! - A `/v1/health/service` read with `?index > 0` or `?cached` (no `?near`) is served from a
//!   materialized view (`submatview.Store`), keyed by request type, datacenter, token and the
//!   request's cache key (service name, tags, filter, node-meta, namespace, partition; not
//!   `?passing`, which the HTTP handler applies afterwards). Each view is one `Subscribe`
//!   stream to a server, shared by all readers of that key on that agent: creating it costs
//!   one subscription and a snapshot (the full result, counted as egress); after that only
//!   change events cross: the server publishes per service name, so every view of that
//!   service gets one event per change (counted as one instance's JSON).
//! - A view with no readers stays for the store's idle TTL (`idleTTL = 20 * time.Minute`
//!   in `submatview/store.go`) and is then stopped; [`crate::Sim::set_view_idle_ttl`] changes
//!   it. The model expires views lazily, when views are next opened or counted.
//! - A server restart breaks every stream on the agents connected to it. The materializer
//!   hands a non-temporary error to every waiting reader (each held watch gets one HTTP 500)
//!   and re-subscribes after its retry wait; the model tears every view down and creates it
//!   again (a new subscription and snapshot) on the next streamed read of that key.
//! - A snapshot restore force-closes every subscription with a reset (gRPC `Aborted`); the
//!   materializer treats the first one as temporary: it resets the view and re-subscribes at
//!   once without telling readers. Readers wait for an index above the one they asked for,
//!   so a held streamed read returns at its wait timeout with the (lower) restored index,
//!   while a held blocking query wakes on the restored store and returns at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::model;
use crate::state::Dc;

/// `idleTTL` of Consul's `submatview.Store`: how long a view nobody reads keeps its stream.
pub(crate) const DEFAULT_VIEW_IDLE_TTL: Duration = Duration::from_secs(20 * 60);

/// What reached the servers, in all and per agent: [`crate::Sim::server_stats`], and
/// `GET /v1/sim/stats` as JSON with these field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// Server RPCs so far (one per request that is not served by the agent itself).
    pub rpcs: u64,
    /// Bytes the servers sent so far: RPC response bodies, view snapshots and change events.
    pub egress_bytes: u64,
    /// Streaming subscriptions open now (one per agent and view key).
    pub subscriptions: usize,
    /// Subscriptions created so far (first streamed reads, and re-subscriptions after a
    /// broken stream or a snapshot restore).
    pub subscriptions_created: u64,
    /// Change events sent to subscriptions so far (one per subscription per change of its
    /// service).
    pub change_events: u64,
    /// Blocking queries held on the servers now (non-streamed reads waiting for a change).
    pub held_blocking_queries: usize,
    /// Streamed reads held now (waiting on an agent's view; no server cost).
    pub held_streamed_reads: usize,
    /// The same counters per agent id.
    pub agents: BTreeMap<String, AgentStats>,
}

/// One agent's share of [`ServerStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentStats {
    /// Server RPCs this agent made.
    pub rpcs: u64,
    /// Server egress to this agent, in bytes.
    pub egress_bytes: u64,
    /// This agent's subscriptions open now.
    pub subscriptions: usize,
    /// Subscriptions this agent created.
    pub subscriptions_created: u64,
    /// Change events this agent's subscriptions received.
    pub change_events: u64,
    /// HTTP requests this agent received from its local clients, counted when each
    /// arrives (`rpcs` is counted when the answer leaves, so a re-issued blocking query
    /// shows there only when it returns): when a client sent each request.
    pub requests_received: u64,
}

/// A materialized view's key: one agent's request type, datacenter and cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ViewKey {
    pub(crate) agent: String,
    pub(crate) dc: String,
    pub(crate) service: String,
    /// Tags, filter, node-meta, namespace and partition of the read, in a canonical form.
    pub(crate) selector: String,
}

#[derive(Debug)]
struct View {
    readers: usize,
    idle_since: Instant,
    /// The service index the view holds (its last snapshot or event).
    index: u64,
    /// Tags the view filters on (to size its events).
    tags: Vec<String>,
}

/// The counters behind [`ServerStats`], kept in the simulator state.
#[derive(Debug)]
pub(crate) struct ServerLoad {
    agents: BTreeMap<String, AgentStats>,
    views: HashMap<ViewKey, View>,
    held_blocking: usize,
    held_streamed: usize,
    /// Bumped by [`crate::Sim::break_streams`]; streamed reads held across a bump fail.
    pub(crate) stream_epoch: u64,
    pub(crate) idle_ttl: Duration,
}

impl Default for ServerLoad {
    fn default() -> Self {
        Self {
            agents: BTreeMap::new(),
            views: HashMap::new(),
            held_blocking: 0,
            held_streamed: 0,
            stream_epoch: 0,
            idle_ttl: DEFAULT_VIEW_IDLE_TTL,
        }
    }
}

impl ServerLoad {
    fn agent(&mut self, agent: &str) -> &mut AgentStats {
        self.agents.entry(agent.to_owned()).or_default()
    }

    /// A local client's request reached `agent`.
    pub(crate) fn count_request(&mut self, agent: &str) {
        self.agent(agent).requests_received += 1;
    }

    /// One server RPC answered with `body_bytes`.
    pub(crate) fn count_rpc(&mut self, agent: &str, body_bytes: usize) {
        let stats = self.agent(agent);
        stats.rpcs += 1;
        stats.egress_bytes += body_bytes as u64;
    }

    /// A reader starts using the view `key`; creates it (a subscription and its snapshot)
    /// when the agent has none.
    pub(crate) fn open_view(&mut self, key: &ViewKey, tags: &[&str], dcs: &BTreeMap<String, Dc>) {
        let now = Instant::now();
        self.expire_idle(now);
        if let Some(view) = self.views.get_mut(key) {
            view.readers += 1;
            return;
        }
        let (index, snapshot) = view_snapshot(dcs, key, tags);
        let stats = self.agent(&key.agent);
        stats.subscriptions_created += 1;
        stats.egress_bytes += snapshot as u64;
        self.views.insert(
            key.clone(),
            View {
                readers: 1,
                idle_since: now,
                index,
                tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
            },
        );
    }

    /// A reader is done with the view `key` (gone already after a broken stream).
    pub(crate) fn close_view(&mut self, key: &ViewKey) {
        if let Some(view) = self.views.get_mut(key) {
            view.readers = view.readers.saturating_sub(1);
            if view.readers == 0 {
                view.idle_since = Instant::now();
            }
        }
    }

    fn expire_idle(&mut self, now: Instant) {
        let ttl = self.idle_ttl;
        self.views.retain(|_, view| {
            view.readers > 0 || now.saturating_duration_since(view.idle_since) < ttl
        });
    }

    /// Sends one change event to every view whose service index moved (called after every
    /// state change).
    pub(crate) fn publish(&mut self, dcs: &BTreeMap<String, Dc>) {
        let mut events: Vec<(String, u64)> = Vec::new();
        for (key, view) in &mut self.views {
            let Some(dc) = dcs.get(&key.dc) else { continue };
            let index = dc.service_query_index(&key.service);
            if index == view.index {
                continue;
            }
            view.index = index;
            let tags: Vec<&str> = view.tags.iter().map(String::as_str).collect();
            events.push((key.agent.clone(), event_size(dc, &key.service, &tags)));
        }
        for (agent, bytes) in events {
            let stats = self.agent(&agent);
            stats.change_events += 1;
            stats.egress_bytes += bytes;
        }
    }

    /// A server restart: every view's stream breaks and is torn down.
    pub(crate) fn break_streams(&mut self) {
        self.stream_epoch += 1;
        self.views.clear();
    }

    /// A snapshot restore: every view re-subscribes at once and gets a new snapshot.
    pub(crate) fn resubscribe_all(&mut self, dcs: &BTreeMap<String, Dc>) {
        let mut snapshots = Vec::new();
        for (key, view) in &mut self.views {
            let tags: Vec<&str> = view.tags.iter().map(String::as_str).collect();
            let (index, bytes) = view_snapshot(dcs, key, &tags);
            view.index = index;
            snapshots.push((key.agent.clone(), bytes));
        }
        for (agent, bytes) in snapshots {
            let stats = self.agent(&agent);
            stats.subscriptions_created += 1;
            stats.egress_bytes += bytes as u64;
        }
    }

    pub(crate) fn hold(&mut self, streamed: bool, delta: isize) {
        let held = if streamed {
            &mut self.held_streamed
        } else {
            &mut self.held_blocking
        };
        *held = held.saturating_add_signed(delta);
    }

    pub(crate) fn stats(&mut self) -> ServerStats {
        self.expire_idle(Instant::now());
        let mut agents = self.agents.clone();
        for key in self.views.keys() {
            agents.entry(key.agent.clone()).or_default().subscriptions += 1;
        }
        let mut stats = ServerStats {
            subscriptions: self.views.len(),
            held_blocking_queries: self.held_blocking,
            held_streamed_reads: self.held_streamed,
            ..ServerStats::default()
        };
        for agent in agents.values() {
            stats.rpcs += agent.rpcs;
            stats.egress_bytes += agent.egress_bytes;
            stats.subscriptions_created += agent.subscriptions_created;
            stats.change_events += agent.change_events;
        }
        stats.agents = agents;
        stats
    }
}

/// The view's service index and the size of its snapshot (the full result as JSON).
fn view_snapshot(dcs: &BTreeMap<String, Dc>, key: &ViewKey, tags: &[&str]) -> (u64, usize) {
    let Some(dc) = dcs.get(&key.dc) else {
        return (0, 0);
    };
    let entries = model::health_service(dc, &key.service, tags, false);
    let bytes = serde_json::to_vec(&entries).map_or(0, |body| body.len());
    (dc.service_query_index(&key.service), bytes)
}

/// One change event: about one instance's entry (the result's size over its entries).
fn event_size(dc: &Dc, service: &str, tags: &[&str]) -> u64 {
    let entries = model::health_service(dc, service, tags, false);
    let bytes = serde_json::to_vec(&entries).map_or(0, |body| body.len());
    (bytes / entries.len().max(1)) as u64
}
