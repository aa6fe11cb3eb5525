//! The HTTP client: request building, deadlines, header parsing, error mapping and metrics.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http::header::{CONTENT_TYPE, HeaderMap};
use reqwest::Url;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{BoxError, Error, classify_status};
use crate::model::{
    AgentSelf, AgentSelfWire, CatalogNode, HealthCheck, KvPair, NodeInfo, ServiceEntry,
};
use crate::query::{
    CacheStatus, DEFAULT_WAIT, MAX_WAIT, QueryBackend, QueryMeta, QueryOptions, Response,
};
use crate::token::{Credential, TokenSource};
use crate::transport::Transport;
use crate::write::{KvPutOptions, SessionRequest};

const TOKEN_HEADER: &str = "x-consul-token";
const INDEX_HEADER: &str = "x-consul-index";
const KNOWN_LEADER_HEADER: &str = "x-consul-knownleader";
const LAST_CONTACT_HEADER: &str = "x-consul-lastcontact";
const QUERY_BACKEND_HEADER: &str = "x-consul-query-backend";
const CACHE_HEADER: &str = "x-cache";
const AGE_HEADER: &str = "age";

/// The least a blocking read is given beyond its `wait` and Consul's `wait/16` of jitter,
/// whatever `request_timeout` says: the agent retries a failed server RPC for up to
/// `rpc_hold_timeout` (7 s by default) before it answers, so a shorter allowance would
/// give up on answers that are on their way, during exactly the server restarts and
/// elections when every node's watches are affected at once.
const BLOCKING_READ_SLACK: Duration = Duration::from_secs(10);

/// The endpoints we call; their tags are the bounded `endpoint` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    HealthService,
    HealthState,
    CatalogNode,
    CatalogServices,
    CatalogNodes,
    Kv,
    KvPut,
    KvDelete,
    Session,
    StatusLeader,
    AgentSelf,
}

/// Largest response body read from a per-name or small endpoint (health and
/// catalog of one name, KV, sessions, status, agent). A health answer of a
/// few thousand instances is a few MiB; reading stops at this size and the
/// call fails as [`Error::Decode`], which is not retryable: the answer is as
/// wrong as garbage would be, whoever sent it.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Largest response body of a whole-catalog read (`/v1/catalog/services`,
/// `/v1/catalog/nodes`, `/v1/health/state/*`), which only the snapshot
/// publisher sends, on Consul server nodes.
pub const MAX_BULK_RESPONSE_BYTES: usize = 256 << 20;

impl Endpoint {
    /// The most body bytes read from this endpoint.
    fn max_body(self) -> usize {
        match self {
            Endpoint::HealthState | Endpoint::CatalogServices | Endpoint::CatalogNodes => {
                MAX_BULK_RESPONSE_BYTES
            }
            _ => MAX_RESPONSE_BYTES,
        }
    }

    /// Whether the call is a read whose answer carries Consul's query metadata
    /// (`X-Consul-Index`, `X-Consul-Query-Backend`, `X-Cache`).
    fn is_read(self) -> bool {
        matches!(
            self,
            Endpoint::HealthService
                | Endpoint::HealthState
                | Endpoint::CatalogNode
                | Endpoint::CatalogServices
                | Endpoint::CatalogNodes
                | Endpoint::Kv
        )
    }

    fn tag(self) -> &'static str {
        match self {
            Endpoint::HealthService => "health_service",
            Endpoint::HealthState => "health_state",
            Endpoint::CatalogNode => "catalog_node",
            Endpoint::CatalogServices => "catalog_services",
            Endpoint::CatalogNodes => "catalog_nodes",
            Endpoint::Kv => "kv",
            Endpoint::KvPut => "kv_put",
            Endpoint::KvDelete => "kv_delete",
            Endpoint::Session => "session",
            Endpoint::StatusLeader => "status_leader",
            Endpoint::AgentSelf => "agent_self",
        }
    }
}

/// One HTTP call to make.
struct Call<'a> {
    endpoint: Endpoint,
    /// `GET` for reads, `PUT`/`DELETE` for writes.
    method: Method,
    /// API path segments after the base URL (each percent-encoded on its own).
    segments: Vec<&'a str>,
    /// Query pairs; `None` values are sent as bare keys (`?stale`).
    query: Vec<(&'static str, Option<String>)>,
    datacenter: Option<&'a str>,
    /// The `wait` of a blocking query: its deadline is `wait + wait/16 +
    /// max(request_timeout, 10 s)` ([`Client::deadline`]).
    blocking_wait: Option<Duration>,
    /// Request body and its content type (writes only).
    body: Option<(Bytes, &'static str)>,
    /// Hand a 404 to the decoder instead of mapping it to an error.
    pass_not_found: bool,
}

impl<'a> Call<'a> {
    /// A call without query, datacenter, body or blocking wait.
    fn new(endpoint: Endpoint, method: Method, segments: Vec<&'a str>) -> Self {
        Call {
            endpoint,
            method,
            segments,
            query: Vec::new(),
            datacenter: None,
            blocking_wait: None,
            body: None,
            pass_not_found: false,
        }
    }

    /// The path named in errors: unencoded, never with the query string.
    fn path(&self) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            path.push_str(segment);
        }
        path
    }
}

/// What came back before decoding.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// Typed client for the Consul HTTP API; cheap to clone (one shared connection pool).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    base: Url,
    token: TokenSource,
    /// The local datacenter refused the token as unknown (`ACL not found`):
    /// logged once when it starts, once when it ends.
    token_rejected: AtomicBool,
    request_timeout: Duration,
    stale: bool,
    cached: bool,
    /// `("ns", …)` and `("partition", …)`, added to every request.
    scope: Vec<(&'static str, String)>,
    /// One permit per request open to the agent (`max_concurrent_requests`), taken
    /// before connecting and held until the answer is read.
    slots: Semaphore,
    /// Requests holding a slot, for the in-flight gauge.
    in_flight: AtomicUsize,
}

/// A slot of [`Inner::slots`]: counted in flight while held.
struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    in_flight: &'a AtomicUsize,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let now = self.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
        ::metrics::gauge!(crate::metrics::REQUESTS_IN_FLIGHT).set(now as f64);
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.inner.base.as_str())
            .field("token", &self.inner.token)
            .field("request_timeout", &self.inner.request_timeout)
            .field("free_request_slots", &self.inner.slots.available_permits())
            .field("stale", &self.inner.stale)
            .field("cached", &self.inner.cached)
            .field("scope", &self.inner.scope)
            .finish()
    }
}

impl Client {
    /// Validates `config` and builds the client (no network I/O happens here).
    pub fn new(config: Config) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidConfig { reason };
        let (base, unix_socket) = parse_address(&config.address)?;
        if base.host_str().is_none_or(str::is_empty) || base.cannot_be_a_base() {
            return Err(invalid(format!("address {:?} has no host", config.address)));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(format!(
                "address {:?} must not have a query string or fragment",
                config.address
            )));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(invalid(
                "address must not contain credentials; use token".to_owned(),
            ));
        }
        if config.request_timeout.is_zero() {
            return Err(invalid("request_timeout must be greater than 0".to_owned()));
        }
        if config.max_concurrent_requests == 0 {
            return Err(invalid(
                "max_concurrent_requests must be at least 1".to_owned(),
            ));
        }
        let token = match (config.token_file, config.token) {
            (Some(path), _) => TokenSource::file(path.clone())
                .map_err(|error| invalid(format!("token file {}: {error}", path.display())))?,
            (None, Some(token)) => {
                TokenSource::Fixed(Arc::new(Credential::new(token).ok_or_else(|| {
                    invalid("token must be non-empty visible ASCII".to_owned())
                })?))
            }
            (None, None) => TokenSource::None,
        };
        let tls = (base.scheme() == "https").then(|| config.tls.clone());
        let transport = Transport::new(unix_socket, tls).map_err(invalid)?;
        Ok(Self {
            inner: Arc::new(Inner {
                transport,
                base,
                token,
                token_rejected: AtomicBool::new(false),
                request_timeout: config.request_timeout,
                stale: config.stale,
                cached: config.cached,
                scope: [("ns", config.namespace), ("partition", config.partition)]
                    .into_iter()
                    .filter_map(|(key, value)| Some((key, value.filter(|v| !v.is_empty())?)))
                    .collect(),
                slots: Semaphore::new(config.max_concurrent_requests.min(Semaphore::MAX_PERMITS)),
                in_flight: AtomicUsize::new(0),
            }),
        })
    }

    /// `GET /v1/health/service/:service`: every instance with its checks (filter critical yourself unless `passing`).
    pub async fn health_service(
        &self,
        service: &str,
        opts: &QueryOptions,
    ) -> Result<Response<Vec<ServiceEntry>>, Error> {
        let call = self.read_call(
            Endpoint::HealthService,
            vec!["v1", "health", "service", service],
            opts,
            true,
        );
        self.run(call, |path, raw| {
            Ok(Response {
                value: decode(path, &raw.body)?,
                meta: meta(&raw.headers),
            })
        })
        .await
    }

    /// `GET /v1/health/state/:state`: every check in `state` (`passing`, `warning`,
    /// `critical`, or `any` for all). Its index is the checks table's: it moves on any check
    /// change, so blocking on `any` wakes on health changes the catalog indexes miss.
    /// Consul answers an unknown state with an empty list, not an error.
    pub async fn health_state(
        &self,
        state: &str,
        opts: &QueryOptions,
    ) -> Result<Response<Vec<HealthCheck>>, Error> {
        let call = self.read_call(
            Endpoint::HealthState,
            vec!["v1", "health", "state", state],
            opts,
            false,
        );
        self.run(call, |path, raw| {
            let checks: Option<Vec<HealthCheck>> = decode(path, &raw.body)?;
            Ok(Response {
                value: checks.unwrap_or_default(),
                meta: meta(&raw.headers),
            })
        })
        .await
    }

    /// `GET /v1/catalog/node/:node`: the node and its services; `None` when the node is unknown.
    pub async fn catalog_node(
        &self,
        node: &str,
        opts: &QueryOptions,
    ) -> Result<Response<Option<CatalogNode>>, Error> {
        let call = self.read_call(
            Endpoint::CatalogNode,
            vec!["v1", "catalog", "node", node],
            opts,
            false,
        );
        self.run(call, |path, raw| {
            Ok(Response {
                value: decode(path, &raw.body)?,
                meta: meta(&raw.headers),
            })
        })
        .await
    }

    /// `GET /v1/catalog/services`: service name → union of its tags.
    pub async fn catalog_services(
        &self,
        opts: &QueryOptions,
    ) -> Result<Response<BTreeMap<String, Vec<String>>>, Error> {
        let call = self.read_call(
            Endpoint::CatalogServices,
            vec!["v1", "catalog", "services"],
            opts,
            false,
        );
        self.run(call, |path, raw| {
            let services: BTreeMap<String, Option<Vec<String>>> = decode(path, &raw.body)?;
            Ok(Response {
                value: services
                    .into_iter()
                    .map(|(name, tags)| (name, tags.unwrap_or_default()))
                    .collect(),
                meta: meta(&raw.headers),
            })
        })
        .await
    }

    /// `GET /v1/catalog/nodes`: every node in the datacenter.
    pub async fn catalog_nodes(
        &self,
        opts: &QueryOptions,
    ) -> Result<Response<Vec<NodeInfo>>, Error> {
        let call = self.read_call(
            Endpoint::CatalogNodes,
            vec!["v1", "catalog", "nodes"],
            opts,
            false,
        );
        self.run(call, |path, raw| {
            let nodes: Option<Vec<NodeInfo>> = decode(path, &raw.body)?;
            Ok(Response {
                value: nodes.unwrap_or_default(),
                meta: meta(&raw.headers),
            })
        })
        .await
    }

    /// `GET /v1/kv/:key`: one key; a missing key (404) is `Ok` with `None` and the index to block on.
    ///
    /// Slashes in `key` separate path segments; every other reserved character is percent-encoded.
    pub async fn kv_get(
        &self,
        key: &str,
        opts: &QueryOptions,
    ) -> Result<Response<Option<KvPair>>, Error> {
        let mut call = self.read_call(Endpoint::Kv, kv_segments(key), opts, false);
        call.pass_not_found = true;
        self.run(call, |path, raw| {
            let meta = meta(&raw.headers);
            if raw.status == 404 {
                return Ok(Response { value: None, meta });
            }
            let pairs: Option<Vec<KvPair>> = decode(path, &raw.body)?;
            Ok(Response {
                value: pairs.and_then(|pairs| pairs.into_iter().next()),
                meta,
            })
        })
        .await
    }

    /// `GET /v1/status/leader`: the leader's `ip:port`, or an empty string when there is none.
    pub async fn status_leader(&self) -> Result<String, Error> {
        let call = Call::new(
            Endpoint::StatusLeader,
            Method::GET,
            vec!["v1", "status", "leader"],
        );
        self.run(call, |path, raw| {
            let leader: Option<String> = decode(path, &raw.body)?;
            Ok(leader.unwrap_or_default())
        })
        .await
    }

    /// `GET /v1/agent/self`: the local agent's datacenter, node name, version and role.
    pub async fn agent_self(&self) -> Result<AgentSelf, Error> {
        let call = Call::new(
            Endpoint::AgentSelf,
            Method::GET,
            vec!["v1", "agent", "self"],
        );
        self.run(call, |path, raw| {
            let wire: AgentSelfWire = decode(path, &raw.body)?;
            Ok(AgentSelf::from(wire))
        })
        .await
    }

    /// `PUT /v1/kv/:key`: writes `value`; `Ok(false)` when a `cas`, `acquire` or `release`
    /// condition did not hold (nothing was written).
    ///
    /// Writes always go to the leader (never `?stale`). A value over Consul's
    /// `kv_max_value_size` (512 KiB by default) is [`Error::Status`] 413 with Consul's message,
    /// which names the size.
    pub async fn kv_put(
        &self,
        key: &str,
        value: &[u8],
        opts: &KvPutOptions,
    ) -> Result<bool, Error> {
        let mut call = Call::new(Endpoint::KvPut, Method::PUT, kv_segments(key));
        if let Some(flags) = opts.flags {
            call.query.push(("flags", Some(flags.to_string())));
        }
        if let Some(cas) = opts.cas {
            call.query.push(("cas", Some(cas.to_string())));
        }
        if let Some(session) = &opts.acquire {
            call.query.push(("acquire", Some(session.clone())));
        }
        if let Some(session) = &opts.release {
            call.query.push(("release", Some(session.clone())));
        }
        call.body = Some((Bytes::copy_from_slice(value), "application/octet-stream"));
        self.run(call, |path, raw| decode(path, &raw.body)).await
    }

    /// `DELETE /v1/kv/:key`: deletes one key (deleting a missing key succeeds); with `cas`,
    /// `Ok(false)` when the key's `ModifyIndex` no longer matches.
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, Error> {
        let mut call = Call::new(Endpoint::KvDelete, Method::DELETE, kv_segments(key));
        if let Some(cas) = cas {
            call.query.push(("cas", Some(cas.to_string())));
        }
        self.run(call, |path, raw| decode(path, &raw.body)).await
    }

    /// `PUT /v1/session/create`: creates a session on the agent's node and returns its ID.
    pub async fn session_create(&self, request: &SessionRequest) -> Result<String, Error> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let body = serde_json::to_vec(request)
            .expect("a session request has string keys and plain values, so it always serializes");
        let mut call = Call::new(
            Endpoint::Session,
            Method::PUT,
            vec!["v1", "session", "create"],
        );
        call.body = Some((Bytes::from(body), "application/json"));
        self.run(call, |path, raw| {
            let created: Created = decode(path, &raw.body)?;
            Ok(created.id)
        })
        .await
    }

    /// `PUT /v1/session/renew/:id`: resets the TTL; `Ok(false)` when the session no longer
    /// exists (expired or destroyed: create a new one and re-acquire).
    pub async fn session_renew(&self, id: &str) -> Result<bool, Error> {
        let mut call = Call::new(
            Endpoint::Session,
            Method::PUT,
            vec!["v1", "session", "renew", id],
        );
        call.pass_not_found = true;
        let credential = self.inner.token.current();
        let secret = credential
            .as_ref()
            .map(|credential| credential.token.expose());
        self.run(call, |path, raw| {
            if raw.status != 404 {
                return Ok(true);
            }
            let message = String::from_utf8_lossy(&raw.body);
            if message.contains("Session id") && message.contains("not found") {
                Ok(false)
            } else {
                Err(classify_status(path, None, raw.status, &raw.body, secret))
            }
        })
        .await
    }

    /// `PUT /v1/session/destroy/:id`: invalidates the session (releasing or deleting its
    /// locks); destroying an unknown session succeeds.
    pub async fn session_destroy(&self, id: &str) -> Result<(), Error> {
        let call = Call::new(
            Endpoint::Session,
            Method::PUT,
            vec!["v1", "session", "destroy", id],
        );
        self.run(call, |_, _| Ok(())).await
    }

    /// Looks at the TLS certificate files now instead of at the next call
    /// after [`crate::TLS_CHECK_INTERVAL`] (a reload): `Ok(true)` when they
    /// changed and new connections use them, `Ok(false)` when unchanged or
    /// without TLS. An error names the file; the previous certificates stay.
    pub fn reload_tls(&self) -> Result<bool, Error> {
        self.inner
            .transport
            .reload()
            .map_err(|reason| Error::InvalidConfig { reason })
    }

    /// Builds a catalog/health/KV read with consistency, datacenter and blocking parameters.
    ///
    /// Every read the client makes is built here, and sends only `dc`, `stale`, `cached`,
    /// `passing`, `index` and `wait` (plus `ns`/`partition` from [`Client::url`]). Never
    /// add `near`, `filter`, `tag` or `node-meta`: each makes the agent leave its streaming
    /// view for a blocking RPC on a server (and a distinct filter would be a subscription
    /// of its own), which multiplied by a fleet is the load this client exists to avoid;
    /// tags and health are filtered on our side (`instance.rs`). Never add `max_stale`:
    /// during an election it sends every agent's reads to the new leader at once.
    /// `tests/read_parameters.rs` holds every read to this list.
    fn read_call<'a>(
        &self,
        endpoint: Endpoint,
        segments: Vec<&'a str>,
        opts: &'a QueryOptions,
        health: bool,
    ) -> Call<'a> {
        let mut query = Vec::new();
        let datacenter = opts.datacenter.as_deref().filter(|dc| !dc.is_empty());
        if let Some(datacenter) = datacenter {
            query.push(("dc", Some(datacenter.to_owned())));
        }
        if self.inner.stale {
            query.push(("stale", None));
        }
        if health && (self.inner.cached || opts.cached) {
            query.push(("cached", None));
        }
        if health && opts.passing {
            query.push(("passing", None));
        }
        let mut blocking_wait = None;
        if let Some(index) = opts.index.filter(|index| *index > 0) {
            query.push(("index", Some(index.to_string())));
            if let Some(wait) = opts.wait {
                query.push(("wait", Some(format!("{}ms", wait.as_millis().max(1)))));
            }
            blocking_wait = Some(opts.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT));
        }
        Call {
            query,
            datacenter,
            blocking_wait,
            ..Call::new(endpoint, Method::GET, segments)
        }
    }

    /// Runs one call with its deadline, decodes it and records metrics.
    async fn run<T>(
        &self,
        call: Call<'_>,
        decode: impl FnOnce(&str, Raw) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let slot = self.slot().await;
        let started = Instant::now();
        let path = call.path();
        let endpoint = call.endpoint.tag();
        let result = match self.fetch(&call, &path).await {
            Ok(raw) => {
                if call.endpoint.is_read() {
                    count_read(endpoint, &raw.headers);
                }
                decode(&path, raw)
            }
            Err(error) => Err(error),
        };
        drop(slot);
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.kind(),
        };
        ::metrics::counter!(crate::metrics::REQUESTS, "endpoint" => endpoint, "outcome" => outcome)
            .increment(1);
        ::metrics::histogram!(crate::metrics::REQUEST_DURATION_SECONDS, "endpoint" => endpoint)
            .record(elapsed.as_secs_f64());
        self.note_token(&call, &path, &result);
        match &result {
            Ok(_) => tracing::trace!(endpoint = %path, ?elapsed, "Consul call succeeded"),
            Err(error) => {
                tracing::debug!(endpoint = %path, ?elapsed, error = %error, "Consul call failed");
            }
        }
        result
    }

    /// Waits for a slot under `max_concurrent_requests` (counted when none was free).
    async fn slot(&self) -> Slot<'_> {
        let inner = &*self.inner;
        let permit = match inner.slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                ::metrics::counter!(crate::metrics::REQUEST_SLOT_WAITS).increment(1);
                inner
                    .slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let now = inner.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        ::metrics::gauge!(crate::metrics::REQUESTS_IN_FLIGHT).set(now as f64);
        Slot {
            _permit: permit,
            in_flight: &inner.in_flight,
        }
    }

    /// How long one call may take: `request_timeout`, or for a blocking read its `wait`,
    /// Consul's jitter of up to `wait/16` and [`BLOCKING_READ_SLACK`] at least.
    fn deadline(&self, call: &Call<'_>) -> Duration {
        match call.blocking_wait {
            None => self.inner.request_timeout,
            Some(wait) => wait + wait / 16 + self.inner.request_timeout.max(BLOCKING_READ_SLACK),
        }
    }

    /// Follows whether the local datacenter accepts the token: every refusal
    /// is counted, the change of state is logged once each way (never per
    /// request). Calls to other datacenters say nothing about it (a token local
    /// to this one is unknown there), nor do calls that need no token.
    fn note_token<T>(&self, call: &Call<'_>, path: &str, result: &Result<T, Error>) {
        if call.datacenter.is_some() || call.endpoint == Endpoint::StatusLeader {
            return;
        }
        match result {
            Err(error) if error.token_rejected() => {
                ::metrics::counter!(crate::metrics::TOKEN_REJECTIONS).increment(1);
                if !self.inner.token_rejected.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %path,
                        error = %error,
                        "Consul rejects the ACL token (expired, revoked or unknown): names answered before are served stale, new names get SERVFAIL until the token is replaced"
                    );
                }
            }
            Ok(_) => {
                if self.inner.token_rejected.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %path, "Consul accepts the ACL token again");
                }
            }
            Err(_) => {}
        }
    }

    /// Whether a token is sent (fixed or from a file).
    pub fn has_token(&self) -> bool {
        self.inner.token.is_some()
    }

    /// Reads the token file again on the next request, even if it looks
    /// unchanged (configuration reload). No effect without a token file.
    pub fn reread_token(&self) {
        self.inner.token.reread();
    }

    /// Sends the request and reads the body within the deadline; maps non-success statuses.
    async fn fetch(&self, call: &Call<'_>, path: &str) -> Result<Raw, Error> {
        let url = self.url(call);
        let mut request = self
            .inner
            .transport
            .client()
            .request(call.method.clone(), url);
        let credential = self.inner.token.current();
        if let Some(credential) = &credential {
            request = request.header(TOKEN_HEADER, credential.header.clone());
        }
        if let Some((body, content_type)) = &call.body {
            request = request
                .header(CONTENT_TYPE, *content_type)
                .body(body.clone());
        }
        let deadline = self.deadline(call);
        let max_body = call.endpoint.max_body();
        let exchange = async {
            let mut response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = read_capped(&mut response, max_body).await?;
            Ok::<_, reqwest::Error>(body.map(|body| Raw {
                status,
                headers,
                body,
            }))
        };
        let raw = match tokio::time::timeout(deadline, exchange).await {
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    endpoint: path.to_owned(),
                });
            }
            Ok(Err(error)) if error.is_timeout() => {
                return Err(Error::Timeout {
                    endpoint: path.to_owned(),
                });
            }
            Ok(Err(error)) => {
                if let Some(reason) = crate::tls::failure(&error) {
                    return Err(Error::Tls {
                        endpoint: path.to_owned(),
                        reason,
                    });
                }
                let source: BoxError = Arc::new(error.without_url());
                return Err(Error::Unreachable {
                    endpoint: path.to_owned(),
                    source,
                });
            }
            Ok(Ok(Some(raw))) => raw,
            Ok(Ok(None)) => {
                return Err(Error::Decode {
                    endpoint: path.to_owned(),
                    source: Arc::new(serde::de::Error::custom(format_args!(
                        "response body larger than {max_body} bytes"
                    ))),
                });
            }
        };
        let success = (200..300).contains(&raw.status);
        let not_found = call.pass_not_found && raw.status == 404;
        if success || not_found {
            return Ok(raw);
        }
        Err(classify_status(
            path,
            call.datacenter,
            raw.status,
            &raw.body,
            credential
                .as_ref()
                .map(|credential| credential.token.expose()),
        ))
    }

    /// The full URL: base path + percent-encoded segments + query string.
    fn url(&self, call: &Call<'_>) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            // Validated in `new`: an http URL with a host always has path segments.
            segments.pop_if_empty().extend(&call.segments);
        }
        if !call.query.is_empty() || !self.inner.scope.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in &call.query {
                match value {
                    Some(value) => pairs.append_pair(key, value),
                    None => pairs.append_key_only(key),
                };
            }
            for (key, value) in &self.inner.scope {
                pairs.append_pair(key, value);
            }
        }
        url
    }
}

/// The base URL of the API and, for `unix://PATH`, the socket to connect
/// to (requests then go to `http://localhost`). `http://` and `https://`
/// need a host; nothing else is accepted.
fn parse_address(address: &str) -> Result<(Url, Option<std::path::PathBuf>), Error> {
    let invalid = |reason: String| Error::InvalidConfig { reason };
    let trimmed = address.trim();
    if let Some(path) = trimmed.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "address {address:?}: a Unix socket address needs an absolute path \
                 (unix:///run/consul/http.sock)"
            )));
        }
        let base = Url::parse("http://localhost/").expect("a constant, valid URL");
        return Ok((base, Some(std::path::PathBuf::from(path))));
    }
    let base = Url::parse(trimmed)
        .map_err(|error| invalid(format!("address {address:?} is not a valid URL: {error}")))?;
    match base.scheme() {
        "http" | "https" => Ok((base, None)),
        other => Err(invalid(format!(
            "address {address:?} has scheme {other:?}, expected http://, https:// or unix://"
        ))),
    }
}

/// Reads a response body of at most `max` bytes, chunk by chunk; `None` (and
/// the rest left unread, the connection dropped) as soon as it is larger.
async fn read_capped(
    response: &mut reqwest::Response,
    max: usize,
) -> Result<Option<Bytes>, reqwest::Error> {
    let announced = response.content_length().unwrap_or(0);
    if usize::try_from(announced).map_or(true, |announced| announced > max) {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// `v1/kv` plus the key split on `/` (each piece is percent-encoded on its own).
fn kv_segments(key: &str) -> Vec<&str> {
    let mut segments = vec!["v1", "kv"];
    segments.extend(key.split('/'));
    segments
}

/// Decodes a JSON body, mapping failures to [`Error::Decode`].
fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|source| Error::Decode {
        endpoint: path.to_owned(),
        source: Arc::new(source),
    })
}

/// Counts a successful read by how the agent served it (bounded labels: the endpoint tag,
/// [`QueryBackend::as_str`], [`CacheStatus::as_str`]).
fn count_read(endpoint: &'static str, headers: &HeaderMap) {
    let meta = meta(headers);
    ::metrics::counter!(
        crate::metrics::READS,
        "endpoint" => endpoint,
        "backend" => meta.backend.as_str(),
        "cache" => meta.cache.as_str()
    )
    .increment(1);
}

/// Reads `X-Consul-Index`, `X-Consul-KnownLeader`, `X-Consul-LastContact`,
/// `X-Consul-Query-Backend`, `X-Cache` and `Age`.
fn meta(headers: &HeaderMap) -> QueryMeta {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    QueryMeta {
        index: text(INDEX_HEADER)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0),
        // Only an explicit "false" says the server knows no leader: a reply without the
        // header (a proxy that strips it) is not doubted.
        known_leader: !text(KNOWN_LEADER_HEADER)
            .is_some_and(|value| value.eq_ignore_ascii_case("false")),
        last_contact: Duration::from_millis(
            text(LAST_CONTACT_HEADER)
                .and_then(|value| value.parse().ok())
                .unwrap_or(0),
        ),
        backend: text(QUERY_BACKEND_HEADER)
            .map_or(QueryBackend::Unknown, QueryBackend::from_header),
        cache: text(CACHE_HEADER).map_or(CacheStatus::Absent, CacheStatus::from_header),
        age: text(AGE_HEADER)
            .and_then(|value| value.parse().ok())
            .map(Duration::from_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Token;
    use http::HeaderValue;

    fn client(config: Config) -> Client {
        Client::new(config).expect("valid config")
    }

    #[test]
    fn accepts_https_and_unix_socket_addresses() {
        let https = client(Config {
            address: "https://consul.example:8501".to_owned(),
            ..Config::default()
        });
        let call = Call::new(
            Endpoint::StatusLeader,
            Method::GET,
            vec!["v1", "status", "leader"],
        );
        assert_eq!(
            https.url(&call).as_str(),
            "https://consul.example:8501/v1/status/leader"
        );
        let unix = client(Config {
            address: "unix:///run/consul/http.sock".to_owned(),
            ..Config::default()
        });
        assert_eq!(
            unix.url(&call).as_str(),
            "http://localhost/v1/status/leader"
        );
        for address in ["unix://relative.sock", "unix://", "ftp://x"] {
            let error = Client::new(Config {
                address: address.to_owned(),
                ..Config::default()
            })
            .expect_err(address);
            assert_eq!(error.kind(), "config", "{address}");
        }
    }

    #[test]
    fn rejects_bad_addresses_timeouts_and_tokens() {
        for address in [
            "",
            "127.0.0.1:8500",
            "ftp://x",
            "http://",
            "http://h:1/?a=b",
        ] {
            let result = Client::new(Config {
                address: address.to_owned(),
                ..Config::default()
            });
            assert!(result.is_err(), "accepted {address:?}");
        }
        assert!(
            Client::new(Config {
                request_timeout: Duration::ZERO,
                ..Config::default()
            })
            .is_err()
        );
        let error = Client::new(Config {
            token: Some(Token::new("bad\ntoken-s3cret".to_owned())),
            ..Config::default()
        })
        .expect_err("newline in token");
        assert!(!error.to_string().contains("s3cret"));
    }

    #[test]
    fn client_debug_redacts_the_token() {
        let client = client(Config {
            token: Some(Token::new("s3cret-token".to_owned())),
            ..Config::default()
        });
        let debug = format!("{client:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn builds_encoded_urls_with_read_parameters() {
        let client = client(Config {
            address: "http://127.0.0.1:8500".to_owned(),
            cached: true,
            ..Config::default()
        });
        let opts = QueryOptions {
            datacenter: Some("dc 2".to_owned()),
            passing: true,
            index: Some(77),
            wait: Some(Duration::from_secs(30)),
            cached: false,
        };
        let call = client.read_call(
            Endpoint::HealthService,
            vec!["v1", "health", "service", "a b/c?d#e%f"],
            &opts,
            true,
        );
        assert_eq!(
            client.url(&call).as_str(),
            "http://127.0.0.1:8500/v1/health/service/a%20b%2Fc%3Fd%23e%25f\
             ?dc=dc+2&stale&cached&passing&index=77&wait=30000ms"
        );
        assert_eq!(call.path(), "/v1/health/service/a b/c?d#e%f");
        assert_eq!(call.blocking_wait, Some(Duration::from_secs(30)));
    }

    #[test]
    fn non_blocking_reads_omit_index_and_wait_and_health_only_flags() {
        let client = client(Config {
            address: "http://consul.local:8500/prefix/".to_owned(),
            stale: false,
            cached: true,
            ..Config::default()
        });
        let opts = QueryOptions {
            passing: true,
            index: Some(0),
            wait: Some(Duration::from_secs(30)),
            ..QueryOptions::default()
        };
        let mut segments = vec!["v1", "kv"];
        segments.extend("dnsfront/hosts/data".split('/'));
        let call = client.read_call(Endpoint::Kv, segments, &opts, false);
        assert_eq!(
            client.url(&call).as_str(),
            "http://consul.local:8500/prefix/v1/kv/dnsfront/hosts/data"
        );
        assert_eq!(call.blocking_wait, None);
    }

    #[test]
    fn blocking_without_wait_uses_consul_default_deadline() {
        let client = client(Config::default());
        let opts = QueryOptions {
            index: Some(5),
            ..QueryOptions::default()
        };
        let call = client.read_call(
            Endpoint::CatalogServices,
            vec!["v1", "catalog", "services"],
            &opts,
            false,
        );
        assert_eq!(call.blocking_wait, Some(DEFAULT_WAIT));
        // wait + wait/16 + max(request_timeout, 10 s): 300 + 18.75 + 10 s.
        assert_eq!(client.deadline(&call), Duration::from_millis(328_750));
        assert_eq!(
            client.url(&call).as_str(),
            "http://127.0.0.1:8500/v1/catalog/services?stale&index=5"
        );
    }

    #[test]
    fn meta_reads_consul_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Consul-Index", HeaderValue::from_static("1920301"));
        headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
        headers.insert("X-Consul-LastContact", HeaderValue::from_static("12"));
        assert_eq!(
            meta(&headers),
            QueryMeta {
                index: 1920301,
                known_leader: true,
                last_contact: Duration::from_millis(12),
                ..QueryMeta::default()
            }
        );
        headers.insert(
            "X-Consul-Query-Backend",
            HeaderValue::from_static("streaming"),
        );
        headers.insert("X-Cache", HeaderValue::from_static("HIT"));
        headers.insert("Age", HeaderValue::from_static("7"));
        let streamed = meta(&headers);
        assert_eq!(streamed.backend, QueryBackend::Streaming);
        assert_eq!(streamed.cache, CacheStatus::Hit);
        assert_eq!(streamed.age, Some(Duration::from_secs(7)));
        headers.insert(
            "X-Consul-Query-Backend",
            HeaderValue::from_static("blocking-query"),
        );
        headers.insert("X-Cache", HeaderValue::from_static("MISS"));
        headers.insert("Age", HeaderValue::from_static("soon"));
        let blocking = meta(&headers);
        assert_eq!(blocking.backend, QueryBackend::BlockingQuery);
        assert_eq!(blocking.cache, CacheStatus::Miss);
        assert_eq!(blocking.age, None);
        // Without the header nothing is doubted: only a server's explicit "false" counts.
        assert_eq!(
            meta(&HeaderMap::new()),
            QueryMeta {
                known_leader: true,
                ..QueryMeta::default()
            }
        );
        headers.insert("X-Consul-Index", HeaderValue::from_static("garbage"));
        headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("false"));
        assert_eq!(meta(&headers).index, 0);
        assert!(!meta(&headers).known_leader);
    }
}
