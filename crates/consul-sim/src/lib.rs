//! consul-sim: an in-memory simulator of the subset of Consul 1.16's HTTP API that dnsfront uses.
//!
//! It serves `/v1/health/service`, `/v1/catalog/*`, `/v1/kv`, `/v1/session/*`, `/v1/status/*`
//! and `/v1/agent/self` with Consul's JSON shapes, headers, status codes and blocking-query
//! semantics, plus scriptable [`Fault`]s and a request log. Its JSON is written from Consul's
//! documentation, never from the client's models, so a client bug cannot hide itself.
//!
//! Two front-ends share one [`Sim`]: in-process ([`Sim::handle`], [`Sim::router`]) and a real
//! HTTP server ([`Sim::serve`] → [`SimServer`]) whose listener can be taken down and back up,
//! also over TLS ([`Sim::serve_tls`], optionally requiring a client certificate) and on a Unix
//! socket ([`Sim::serve_unix`]).
//!
//! It also models client agents in front of shared servers: [`Sim::serve_agent`] binds one
//! listener per agent, and [`Sim::server_stats`] (or `GET /v1/sim/stats`) counts what reached
//! the servers: RPCs, egress, streaming subscriptions and their change events (see `load.rs`
//! for the model and the Consul facts behind it). [`Sim::break_streams`] and
//! [`Sim::restore_snapshot`] play a server restart and a snapshot restore. Paths under
//! `/v1/sim/` are the simulator's own (real Consul has none): they are not logged, faulted or
//! ACL-checked.
//!
//! Simplifications (documented deviations from Consul):
//! - no-leader reads fail at once with `No cluster leader` (Consul first holds them up to 7 s);
//! - lock-delay is applied when a session is invalidated (TTL, destroy, critical node check),
//!   and an `acquire` during the delay returns `false`;
//! - sessions are not checked against the catalog (their node need not exist), and are only
//!   invalidated by TTL expiry, destroy, or one of their `NodeChecks` turning critical;
//! - Enterprise namespaces and partitions (created by registering into one) each keep
//!   their own catalog, KV and sessions, nodes included (Consul shares nodes across the
//!   namespaces of a partition); without any, `?ns`/`?partition` are refused as in CE;
//! - blocking queries wake on any state change and return when the query's index differs from
//!   the requested one (so an index reset returns at once, as in Consul); reads served from a
//!   streaming view return only when it is higher, as Consul's materializer does;
//! - the agent model (`load.rs`) counts server RPCs, subscriptions and events, not server
//!   CPU; a `?cached` read that is not streamed costs one RPC per agent cache MISS only (the
//!   agent cache's background refreshes are not modelled), and a broken stream is subscribed
//!   again on the next read of its view rather than after the materializer's retry wait.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acl;
mod api;
mod duration;
mod fault;
mod fixture;
mod load;
mod model;
mod registration;
mod server;
mod state;
mod tls;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

pub use acl::{Access, AclPolicy, Resource};
pub use fault::Fault;
pub use fixture::FixtureError;
pub use load::{AgentStats, ServerStats};
pub use registration::Registration;
pub use server::SimServer;
pub use tls::TlsOptions;

use state::{Check, Dc, State};

/// A small realistic catalog for `dnsfront demo` (dc1: web, api, db, redis).
pub const DEMO_FIXTURE: &str = include_str!("../fixtures/demo.json");

/// The Consul version the simulator claims to be.
pub const CONSUL_VERSION: &str = "1.16.4";

/// One request as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Request path as sent (not percent-decoded), e.g. `/v1/health/service/web`.
    pub path: String,
    /// Raw query string without `?` (empty when none); a `token=` value is recorded as `redacted`.
    pub query: String,
}

/// Shared simulator state; cheap to clone (all clones see the same state).
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Requests being handled now, and the most ever at once.
    in_flight: AtomicUsize,
    in_flight_high_water: AtomicUsize,
    /// Bytes of [`Fault::HugeBody`] bodies handed to the HTTP server so far.
    huge_body_bytes_sent: Arc<AtomicU64>,
    /// Bytes of every response body built so far (the Consul-side cost a benchmark reports).
    response_body_bytes: AtomicU64,
    /// Bumped after every state change; blocking queries wait on it.
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("datacenter", &self.datacenter())
            .finish_non_exhaustive()
    }
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    /// A simulator for datacenter `dc1`, agent node `sim-agent`, leader present, ACLs off, jitter off.
    pub fn new() -> Self {
        Self::with_datacenter("dc1")
    }

    /// A simulator whose agent lives in `datacenter`.
    pub fn with_datacenter(datacenter: &str) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            inner: Arc::new(Shared {
                state: Mutex::new(State::new(datacenter)),
                in_flight: AtomicUsize::new(0),
                in_flight_high_water: AtomicUsize::new(0),
                huge_body_bytes_sent: Arc::new(AtomicU64::new(0)),
                response_body_bytes: AtomicU64::new(0),
                changed,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Applies `change` under the lock, then wakes blocking queries if it reports a change.
    fn update(&self, change: impl FnOnce(&mut State) -> bool) {
        let changed = change(&mut self.lock());
        if changed {
            self.notify();
        }
    }

    /// Sends the change events of a state change to the streaming views, then wakes
    /// blocking queries.
    pub(crate) fn notify(&self) {
        {
            let mut state = self.lock();
            let State { load, dcs, .. } = &mut *state;
            load.publish(dcs);
        }
        self.inner
            .changed
            .send_modify(|generation| *generation += 1);
    }

    /// The agent's datacenter.
    pub fn datacenter(&self) -> String {
        self.lock().default_dc.clone()
    }

    /// The agent's node name.
    pub fn agent_node(&self) -> String {
        self.lock().agent_node.clone()
    }

    /// Adds another datacenter with its own empty catalog and KV; `?dc=name` reads it.
    pub fn add_datacenter(&self, name: &str) {
        self.lock().dc_mut(name);
    }

    /// Turns the blocking-query jitter (up to wait/16, as Consul adds) on or off; off by default.
    pub fn set_jitter(&self, enabled: bool) {
        self.lock().jitter = enabled;
    }

    /// Turns the agent's streaming backend on (the default, as Consul 1.10+) or off
    /// (`use_streaming_backend = false`: every read is `X-Consul-Query-Backend: blocking-query`).
    pub fn set_streaming(&self, enabled: bool) {
        self.lock().streaming = enabled;
    }

    /// Changes Consul's session TTL multiplier (default 2: a session is invalidated after 2×TTL).
    pub fn set_session_ttl_multiplier(&self, multiplier: u32) {
        self.lock().session_ttl_multiplier = multiplier.max(1);
    }

    /// The current raft index of the agent's datacenter.
    pub fn raft_index(&self) -> u64 {
        self.lock().agent_dc().map_or(0, |dc| dc.raft_index)
    }

    /// A simulator whose agent lives in the fixture's `datacenter` (`dc1` when it
    /// names none), with the fixture loaded.
    pub fn from_fixture(json: &str) -> Result<Self, FixtureError> {
        let fixture: fixture::Fixture = serde_json::from_str(json)?;
        let sim = Self::with_datacenter(fixture.datacenter.as_deref().unwrap_or("dc1"));
        sim.load_fixture(json)?;
        Ok(sim)
    }

    /// Loads a JSON fixture (see the crate's `fixtures/demo.json` for the format); a fixture
    /// with an error changes nothing.
    pub fn load_fixture(&self, json: &str) -> Result<(), FixtureError> {
        let fixture: fixture::Fixture = serde_json::from_str(json)?;
        fixture.apply(&mut self.lock())?;
        self.notify();
        Ok(())
    }

    /// Upserts a node, a service instance on it and their checks (one raft index).
    pub fn register(&self, reg: Registration) {
        self.update(|state| {
            let dc_name = reg
                .datacenter
                .clone()
                .unwrap_or_else(|| state.default_dc.clone());
            state.dc_mut(&dc_name);
            let dc = state.scope_mut(
                &dc_name,
                reg.partition.as_deref().unwrap_or("default"),
                reg.namespace.as_deref().unwrap_or("default"),
            );
            let index = dc.next_index();
            dc.upsert_node(
                &reg.node,
                reg.node_address.as_deref(),
                reg.node_meta.as_ref(),
                None,
                index,
            );
            if let Some(tagged) = &reg.node_tagged {
                dc.set_node_tagged(&reg.node, tagged, index);
            }
            for (check_id, status) in &reg.node_checks {
                dc.upsert_check(Check::new(&reg.node, check_id, status, None), index);
            }
            let service = reg.to_service();
            let owner = (service.id.clone(), service.service.clone());
            dc.upsert_service(service, index);
            for (check_id, status) in &reg.checks {
                let check = Check::new(&reg.node, check_id, status, Some((&owner.0, &owner.1)));
                dc.upsert_check(check, index);
            }
            true
        });
    }

    /// Shorthand for [`Registration::new`]; pass the result to [`Sim::register`].
    pub fn service(&self, name: &str) -> Registration {
        Registration::new(name)
    }

    /// Removes a service instance and its checks from the agent's datacenter.
    pub fn deregister(&self, node: &str, service_id: &str) {
        self.update(|state| state.agent_dc_mut().remove_service(node, service_id));
    }

    /// Sets a check's status (`passing`, `warning` or `critical`) in any datacenter; bumps indexes.
    /// A critical node check invalidates sessions that list it.
    pub fn set_check(&self, node: &str, check_id: &str, status: &str) {
        if !fixture::valid_status(status) {
            tracing::warn!(node, check_id, status, "Ignoring invalid check status");
            return;
        }
        self.update(|state| {
            let now = tokio::time::Instant::now();
            let mut changed = false;
            for dc in state.dcs.values_mut() {
                if dc.set_check_status(node, check_id, status) {
                    changed = true;
                    if status == "critical" {
                        invalidate_sessions_for_check(dc, node, check_id, now);
                    }
                }
            }
            changed
        });
    }

    /// Changes a node's address in any datacenter; bumps the indexes of its services.
    pub fn set_node_address(&self, node: &str, address: &str) {
        self.update(|state| {
            let mut changed = false;
            for dc in state.dcs.values_mut() {
                if dc.nodes.contains_key(node) {
                    let index = dc.next_index();
                    changed |= dc.upsert_node(node, Some(address), None, None, index);
                }
            }
            changed
        });
    }

    /// Writes a KV entry in the agent's datacenter (like a plain `PUT`; keeps any lock).
    pub fn kv_put(&self, key: &str, value: impl Into<Bytes>) {
        let value = value.into();
        self.update(|state| {
            let dc = state.agent_dc_mut();
            let index = dc.next_index();
            dc.kv_set(key, value, 0, index);
            true
        });
    }

    /// Reads a KV value from the agent's datacenter.
    pub fn kv_get(&self, key: &str) -> Option<Bytes> {
        let state = self.lock();
        let entry = state.agent_dc()?.kv.get(key)?;
        Some(entry.value.clone())
    }

    /// The session holding a KV key's lock, if any.
    pub fn kv_session(&self, key: &str) -> Option<String> {
        let state = self.lock();
        state.agent_dc()?.kv.get(key)?.session.clone()
    }

    /// Sets the valid ACL tokens; an empty list turns ACLs off (the default).
    /// Each token gets every permission (`global-management`).
    pub fn set_acl_tokens(&self, tokens: &[&str]) {
        self.lock().acl_tokens = tokens
            .iter()
            .map(|secret| {
                (
                    (*secret).to_owned(),
                    acl::AclToken::new(AclPolicy::management()),
                )
            })
            .collect();
    }

    /// Adds (or replaces) one token carrying `policy`; ACLs are on from then on.
    pub fn set_acl_token(&self, secret: &str, policy: AclPolicy) {
        self.lock()
            .acl_tokens
            .insert(secret.to_owned(), acl::AclToken::new(policy));
    }

    /// Every call a token's policy refused (403 `Permission denied`) or filtered
    /// (entries left out), as `METHOD PATH: why`, oldest first. Unknown tokens
    /// (`ACL not found`) are not listed.
    pub fn acl_denials(&self) -> Vec<String> {
        self.lock().acl_denials.clone()
    }

    /// Deletes one token (revoked, or expired): Consul then answers
    /// `403 ACL not found` to it. ACLs stay on.
    pub fn revoke_acl_token(&self, secret: &str) {
        self.lock().acl_tokens.remove(secret);
    }

    /// What the agents passed on to the servers so far, in all and per agent id (see the
    /// crate docs); also `GET /v1/sim/stats`.
    pub fn server_stats(&self) -> ServerStats {
        self.lock().load.stats()
    }

    /// How long a streaming view nobody reads keeps its subscription (Consul: 20 minutes).
    pub fn set_view_idle_ttl(&self, ttl: std::time::Duration) {
        self.lock().load.idle_ttl = ttl;
    }

    /// A server restart: every streaming subscription of every agent breaks at once. Each
    /// streamed read held now returns one HTTP 500 (as an agent answers when its stream
    /// fails), and each view is subscribed again on its next streamed read. Blocking queries
    /// and later reads are not affected. Also `PUT /v1/sim/break-streams`.
    pub fn break_streams(&self) {
        self.lock().load.break_streams();
        self.inner
            .changed
            .send_modify(|generation| *generation += 1);
    }

    /// A snapshot restore on the servers: every index of every datacenter goes lower (the
    /// raft log goes on), held blocking queries return at once with the lower index, and
    /// every streaming view re-subscribes (its held reads return at their wait timeout, as
    /// Consul's view only answers an index above the one asked for). Also
    /// `PUT /v1/sim/restore-snapshot`.
    pub fn restore_snapshot(&self) {
        {
            let mut state = self.lock();
            state.dcs.values_mut().for_each(Dc::restore_lower_indexes);
            let State { load, dcs, .. } = &mut *state;
            load.resubscribe_all(dcs);
        }
        self.inner
            .changed
            .send_modify(|generation| *generation += 1);
    }

    /// Activates a fault.
    pub fn inject(&self, fault: Fault) {
        self.update(|state| {
            state.faults.push(fault);
            true
        });
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.update(|state| {
            state.faults.clear();
            true
        });
    }

    /// The request log in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// Bytes of all response bodies built so far (headers not counted).
    pub fn response_body_bytes(&self) -> u64 {
        self.inner.response_body_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn count_response_body(&self, bytes: usize) {
        self.inner
            .response_body_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// How many logged requests have a path starting with `path_prefix`.
    pub fn request_count(&self, path_prefix: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|record| record.path.starts_with(path_prefix))
            .count()
    }

    /// Clears the request log.
    pub fn reset_requests(&self) {
        self.lock().requests.clear();
    }

    /// An axum router over this simulator, for in-process use.
    pub fn router(&self) -> axum::Router {
        let sim = self.clone();
        axum::Router::new().fallback(move |request: axum::extract::Request| {
            let sim = sim.clone();
            async move { sim.handle_axum(request).await }
        })
    }

    async fn handle_axum(
        &self,
        request: axum::extract::Request,
    ) -> http::Response<axum::body::Body> {
        let request = api::buffer_request(request).await;
        self.handle(request).await.map(axum::body::Body::from)
    }

    /// Handles one request in-process (the core both front-ends use).
    pub async fn handle(&self, request: http::Request<Bytes>) -> http::Response<Bytes> {
        let shared = &self.inner;
        let now = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        shared.in_flight_high_water.fetch_max(now, Ordering::AcqRel);
        let _done = InFlight(&shared.in_flight);
        api::handle(self, request).await
    }

    /// The most requests the simulator was handling at once (a request counts from
    /// its arrival, through any injected delay, until its response is ready).
    pub fn in_flight_high_water(&self) -> usize {
        self.inner.in_flight_high_water.load(Ordering::Acquire)
    }

    /// Bytes of [`Fault::huge_body`] bodies the HTTP server has handed to clients so
    /// far (what they read, plus what fits in socket buffers).
    pub fn huge_body_bytes_sent(&self) -> u64 {
        self.inner.huge_body_bytes_sent.load(Ordering::Acquire)
    }

    pub(crate) fn huge_body_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.inner.huge_body_bytes_sent)
    }

    /// Serves over HTTP/1.1 on `addr` (`127.0.0.1:0` picks a free port) until the server is
    /// shut down or dropped.
    pub async fn serve(&self, addr: std::net::SocketAddr) -> std::io::Result<SimServer> {
        SimServer::start(self.clone(), server::Endpoint::Tcp(addr), None)
    }

    /// Serves over HTTP/1.1 on `addr` as the client agent `agent`: several agents of one
    /// simulator share its servers (one catalog), and [`Sim::server_stats`] counts their
    /// load apart. [`Sim::serve`] is the agent named after [`Sim::agent_node`].
    pub async fn serve_agent(
        &self,
        addr: std::net::SocketAddr,
        agent: &str,
    ) -> std::io::Result<SimServer> {
        SimServer::start_agent(
            self.clone(),
            server::Endpoint::Tcp(addr),
            None,
            Some(agent.into()),
        )
    }

    /// Serves HTTPS on `addr` with `tls` (a server certificate, and the CA a
    /// client certificate must chain to when one is required).
    pub async fn serve_tls(
        &self,
        addr: std::net::SocketAddr,
        tls: &TlsOptions,
    ) -> std::io::Result<SimServer> {
        SimServer::start(self.clone(), server::Endpoint::Tcp(addr), Some(tls))
    }

    /// Serves HTTP/1.1 on a Unix socket at `path` (a stale socket file there is replaced),
    /// as agents with `addresses.http = "unix:///run/consul/http.sock"` do.
    pub async fn serve_unix(&self, path: &std::path::Path) -> std::io::Result<SimServer> {
        SimServer::start(self.clone(), server::Endpoint::Unix(path.to_owned()), None)
    }

    pub(crate) fn expire_session(&self, dc_name: &str, session_id: &str) {
        self.update(|state| {
            let now = tokio::time::Instant::now();
            let Some(dc) = state.dcs.get_mut(dc_name) else {
                return false;
            };
            let expired = dc
                .sessions
                .get(session_id)
                .and_then(|session| session.expires_at)
                .is_some_and(|expires_at| expires_at <= now);
            let invalidated = expired && dc.invalidate_session(session_id, now);
            if invalidated {
                tracing::debug!(session = session_id, "Session TTL expired");
            }
            invalidated
        });
    }
}

fn invalidate_sessions_for_check(
    dc: &mut Dc,
    node: &str,
    check_id: &str,
    now: tokio::time::Instant,
) {
    let doomed: Vec<String> = dc
        .sessions
        .values()
        .filter(|session| session.node == node && session.node_checks.iter().any(|c| c == check_id))
        .map(|session| session.id.clone())
        .collect();
    for session_id in doomed {
        dc.invalidate_session(&session_id, now);
    }
}

/// Counts a request out of [`Sim::handle`] however it ends (a dropped connection included).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
