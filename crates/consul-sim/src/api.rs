//! Request handling: routing, query parameters, ACLs, faults, blocking queries and endpoints.

// Early returns carry the finished error response; its size is irrelevant off a hot path.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use tokio::time::Instant;

use crate::duration::parse_go_duration;
use crate::fault::Fault;
use crate::model;
use crate::state::{Behavior, Dc, KvEntry, Session, State, under_prefix};
use crate::{CONSUL_VERSION, RequestRecord, Sim};

/// Consul's default `kv_max_value_size` (raft `SuggestedMaxDataSize`).
pub(crate) const KV_MAX_VALUE_SIZE: usize = 524_288;
/// Bodies above this are not read into memory at all.
const MAX_READ_BODY: usize = 8 * 1024 * 1024;
/// `default_query_time`.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// `max_query_time`.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Session TTL bounds (`session_ttl_min` default and `SessionTTLMax`).
const SESSION_TTL_MIN: Duration = Duration::from_secs(10);
const SESSION_TTL_MAX: Duration = Duration::from_secs(86_400);
/// Default and maximum session lock-delay.
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
const LEADER_ADDRESS: &str = "127.0.0.1:8300";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

type Resp = Response<Bytes>;

/// Marks a request whose body was too large to read (the declared or observed size).
#[derive(Debug, Clone, Copy)]
struct BodyTooLarge(u64);

/// Buffers a request's body for [`handle`] (both front-ends use it). A body too large to
/// buffer becomes empty and the request is marked [`BodyTooLarge`] with its declared size
/// (`u64::MAX` when undeclared), so [`handle`] logs it and answers 413.
pub(crate) async fn buffer_request<B>(request: http::Request<B>) -> http::Request<Bytes>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, body) = request.into_parts();
    let body = match read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(_) => {
            let size = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok())
                .unwrap_or(u64::MAX);
            parts.extensions.insert(BodyTooLarge(size));
            Bytes::new()
        }
    };
    http::Request::from_parts(parts, body)
}

/// Reads a request body, refusing to buffer more than [`MAX_READ_BODY`].
async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, Resp>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = content_length(headers);
    if declared.is_some_and(|length| length > MAX_READ_BODY as u64) {
        return Err(too_large(declared.unwrap_or_default()));
    }
    match http_body_util::Limited::new(body, MAX_READ_BODY)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(too_large(declared.unwrap_or(MAX_READ_BODY as u64 + 1))),
    }
}

/// The request arrived but its body could not be buffered: log it and answer 413.
pub(crate) fn too_large(size: u64) -> Resp {
    text(StatusCode::PAYLOAD_TOO_LARGE, &too_large_message(size))
}

fn too_large_message(size: u64) -> String {
    format!(
        "Request body({size} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. See https://developer.hashicorp.com/consul/docs/agent/config/config-files#kv_max_value_size."
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

// === responses ===

fn text(status: StatusCode, body: &str) -> Resp {
    let mut response = Response::new(Bytes::from(body.to_owned()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    response
}

fn json_bytes(body: Vec<u8>) -> Resp {
    let mut response = Response::new(Bytes::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

fn json_value<T: serde::Serialize>(value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(body),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

fn bad_request(message: &str) -> Resp {
    text(StatusCode::BAD_REQUEST, message)
}

fn server_error(message: &str) -> Resp {
    text(StatusCode::INTERNAL_SERVER_ERROR, message)
}

fn not_found_page() -> Resp {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

fn method_not_allowed(method: &Method, allow: &'static str) -> Resp {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method {method} not allowed"),
    );
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    response
}

fn no_leader() -> Resp {
    server_error("No cluster leader")
}

fn no_path_to_dc() -> Resp {
    server_error("No path to datacenter")
}

// === query parameters ===

/// Parsed query string; a bare `?passing` is `Some("")`.
#[derive(Debug, Default)]
struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    fn parse(query: &str) -> Self {
        let pairs = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) => (decode(key, true), decode(value, true)),
                None => (decode(pair, true), String::new()),
            })
            .collect();
        Self { pairs }
    }

    fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Percent-decodes; `plus_as_space` for query components.
fn decode(input: &str, plus_as_space: bool) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string with any `token=` value replaced, so tokens never reach the request log.
fn redact_token(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("token", _)) => "token=redacted",
            _ => pair,
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Consistency and blocking options of a read.
#[derive(Debug, Clone)]
struct ReadOpts {
    dc: String,
    index: u64,
    wait: Duration,
    stale: bool,
    consistent: bool,
    cached: bool,
}

fn read_opts(state: &State, params: &Params) -> Result<ReadOpts, Resp> {
    let stale = params.has("stale") || params.has("max_stale");
    let consistent = params.has("consistent");
    let cached = params.has("cached");
    if stale && consistent {
        return Err(bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    if cached && consistent {
        return Err(bad_request(
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
        ));
    }
    let index = match params.get("index") {
        None | Some("") => 0,
        Some(value) => value
            .parse::<u64>()
            .map_err(|_| bad_request("Invalid index"))?,
    };
    let wait = match params.get("wait") {
        None | Some("") => DEFAULT_WAIT,
        Some(value) => {
            let wait = parse_go_duration(value).ok_or_else(|| bad_request("Invalid wait time"))?;
            if wait.is_zero() {
                DEFAULT_WAIT
            } else {
                wait.min(MAX_WAIT)
            }
        }
    };
    let dc = dc_param(state, params)?;
    Ok(ReadOpts {
        dc,
        index,
        wait,
        stale,
        consistent,
        cached,
    })
}

/// The datacenter a request addresses; unknown ⇒ 500 `No path to datacenter`.
fn dc_param(state: &State, params: &Params) -> Result<String, Resp> {
    let dc = params
        .get("datacenter")
        .filter(|dc| !dc.is_empty())
        .or_else(|| params.get("dc").filter(|dc| !dc.is_empty()))
        .map_or_else(|| state.default_dc.clone(), str::to_owned);
    if state.dcs.contains_key(&dc) {
        Ok(dc)
    } else {
        Err(no_path_to_dc())
    }
}

/// The datacenter a write addresses; without a leader ⇒ 500 `No cluster leader` first.
fn write_dc(state: &State, params: &Params) -> Result<String, Resp> {
    if state.no_leader() {
        return Err(no_leader());
    }
    dc_param(state, params)
}

/// The optional `?cas=` index of a KV write or delete.
fn cas_param(params: &Params) -> Result<Option<u64>, Resp> {
    params
        .get("cas")
        .map(|value| {
            value
                .parse::<u64>()
                .map_err(|_| bad_request("Invalid cas index"))
        })
        .transpose()
}

fn request_token(headers: &HeaderMap, params: &Params) -> Option<String> {
    if let Some(token) = headers
        .get("x-consul-token")
        .and_then(|value| value.to_str().ok())
        .filter(|token| !token.is_empty())
    {
        return Some(token.to_owned());
    }
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    {
        let mut parts = value.split_whitespace();
        if parts
            .next()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer"))
            && let Some(token) = parts.next()
        {
            return Some(token.to_owned());
        }
    }
    params
        .get("token")
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
}

// === fault plan ===

#[derive(Debug, Default)]
struct FaultPlan {
    hang: bool,
    delay: Duration,
    status: Option<(u16, String)>,
    garbage: bool,
    truncated: bool,
    index_backwards: bool,
    index_zero: bool,
}

impl FaultPlan {
    fn collect(state: &mut State, path: &str) -> Self {
        let mut plan = Self::default();
        let mut exhausted = None;
        for (position, fault) in state.faults.iter_mut().enumerate() {
            if !fault.matches(path) {
                continue;
            }
            match fault {
                Fault::Status {
                    status,
                    body,
                    count,
                    ..
                } => {
                    if plan.status.is_some() {
                        continue;
                    }
                    match count {
                        Some(0) => continue,
                        Some(remaining) => {
                            *remaining -= 1;
                            if *remaining == 0 {
                                exhausted = Some(position);
                            }
                        }
                        None => {}
                    }
                    plan.status = Some((*status, body.clone()));
                }
                Fault::Delay { delay, .. } => plan.delay += *delay,
                Fault::Hang { .. } => plan.hang = true,
                Fault::Garbage { .. } => plan.garbage = true,
                Fault::Truncated { .. } => plan.truncated = true,
                Fault::IndexBackwards { .. } => plan.index_backwards = true,
                Fault::IndexZero { .. } => plan.index_zero = true,
                Fault::NoLeader | Fault::LastContact { .. } => {}
            }
        }
        if let Some(position) = exhausted {
            state.faults.remove(position);
        }
        plan
    }
}

// === entry point ===

/// Handles one request end to end.
pub(crate) async fn handle(sim: &Sim, request: http::Request<Bytes>) -> Resp {
    let (parts, body) = request.into_parts();
    let raw_path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let plan = {
        let mut state = sim.lock();
        state.requests.push(RequestRecord {
            method: parts.method.to_string(),
            path: raw_path.clone(),
            query: redact_token(&raw_query),
        });
        FaultPlan::collect(&mut state, &raw_path)
    };
    tracing::trace!(method = %parts.method, path = %raw_path, "Simulated Consul request");
    if plan.hang {
        std::future::pending::<()>().await;
    }
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    let mut response = match plan.status.clone() {
        Some((status, body)) => text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &body,
        ),
        None => {
            if let Some(BodyTooLarge(size)) = parts.extensions.get::<BodyTooLarge>() {
                too_large(*size)
            } else {
                let params = Params::parse(&raw_query);
                route(sim, &parts, &raw_path, &raw_query, &params, body).await
            }
        }
    };
    post_process(sim, &raw_path, &plan, &mut response);
    response
}

fn post_process(sim: &Sim, path: &str, plan: &FaultPlan, response: &mut Resp) {
    let mut state = sim.lock();
    let policy = if state.acl_tokens.is_empty() {
        "allow"
    } else {
        "deny"
    };
    response.headers_mut().insert(
        HeaderName::from_static("x-consul-default-acl-policy"),
        HeaderValue::from_static(policy),
    );
    let index_header = HeaderName::from_static("x-consul-index");
    let current = response
        .headers()
        .get(&index_header)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if plan.index_zero {
        response
            .headers_mut()
            .insert(index_header.clone(), HeaderValue::from_static("0"));
    } else if plan.index_backwards {
        let last = state.last_index.get(path).copied().or(current).unwrap_or(2);
        response
            .headers_mut()
            .insert(index_header.clone(), HeaderValue::from(last / 2));
    } else if let Some(index) = current {
        state.last_index.insert(path.to_owned(), index);
    }
    drop(state);
    if plan.garbage {
        *response.status_mut() = StatusCode::OK;
        *response.body_mut() = Bytes::from_static(b"{\"Node\": {\"ID\": <<<this is not json>>>");
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    } else if plan.truncated {
        let body = response.body().clone();
        *response.body_mut() = body.slice(..body.len() / 2);
    }
    response.headers_mut().remove(CONTENT_LENGTH);
}

async fn route(
    sim: &Sim,
    parts: &http::request::Parts,
    raw_path: &str,
    raw_query: &str,
    params: &Params,
    body: Bytes,
) -> Resp {
    let path = decode(raw_path, false);
    let method = &parts.method;
    if !path.starts_with("/v1/status/") {
        let state = sim.lock();
        if !state.acl_tokens.is_empty() {
            let token = request_token(&parts.headers, params);
            if !token.is_some_and(|token| state.acl_tokens.contains(&token)) {
                return text(StatusCode::FORBIDDEN, "ACL not found");
            }
        }
    }
    let is_get = *method == Method::GET || *method == Method::HEAD;
    let is_put = *method == Method::PUT;
    if let Some(check_state) = path.strip_prefix("/v1/health/state/") {
        if !is_get {
            return method_not_allowed(method, "GET");
        }
        return health_state(sim, check_state, params).await;
    }
    if let Some(name) = path.strip_prefix("/v1/health/service/") {
        if !is_get {
            return method_not_allowed(method, "GET");
        }
        return health_service(sim, name, params, raw_path, raw_query).await;
    }
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        return match *method {
            Method::GET | Method::HEAD => kv_get(sim, key, params).await,
            Method::PUT => kv_put(sim, key, params, raw_query, &parts.headers, body),
            Method::DELETE => kv_delete(sim, key, params),
            _ => method_not_allowed(method, "GET,PUT,DELETE"),
        };
    }
    if path == "/v1/kv" {
        return match *method {
            Method::GET | Method::HEAD => kv_get(sim, "", params).await,
            _ => bad_request("Missing key name"),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/catalog/") {
        if !is_get {
            return method_not_allowed(method, "GET");
        }
        return match rest.split_once('/') {
            None if rest == "services" => catalog_services(sim, params).await,
            None if rest == "nodes" => catalog_nodes(sim, params).await,
            None if rest == "datacenters" => {
                let names: Vec<String> = sim.lock().dcs.keys().cloned().collect();
                json_value(&names)
            }
            Some(("service", name)) => catalog_service(sim, name, params).await,
            Some(("node", name)) => catalog_node(sim, name, params).await,
            _ => not_found_page(),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/session/") {
        let (action, argument) = rest.split_once('/').unwrap_or((rest, ""));
        return match action {
            "create" if is_put => session_create(sim, params, &body),
            "renew" if is_put => session_renew(sim, argument, params),
            "destroy" if is_put => session_destroy(sim, argument, params),
            "info" | "node" | "list" if is_get => session_read(sim, action, argument, params).await,
            "create" | "renew" | "destroy" => method_not_allowed(method, "PUT"),
            "info" | "node" | "list" => method_not_allowed(method, "GET"),
            _ => not_found_page(),
        };
    }
    match path.as_str() {
        "/v1/status/leader" if is_get => {
            let leader = if sim.lock().no_leader() {
                ""
            } else {
                LEADER_ADDRESS
            };
            json_value(&leader)
        }
        "/v1/status/peers" if is_get => json_value(&[LEADER_ADDRESS]),
        "/v1/agent/self" if is_get => agent_self(sim),
        "/v1/status/leader" | "/v1/status/peers" | "/v1/agent/self" => {
            method_not_allowed(method, "GET")
        }
        _ => not_found_page(),
    }
}

// === blocking reads ===

/// The outcome of one evaluation of a read.
struct Read {
    index: u64,
    status: StatusCode,
    body: Bytes,
    content_type: Option<&'static str>,
}

impl Read {
    fn json<T: serde::Serialize>(index: u64, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                index,
                status: StatusCode::OK,
                body: Bytes::from(body),
                content_type: Some(JSON),
            },
            Err(error) => Self {
                index,
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: Bytes::from(error.to_string()),
                content_type: Some(TEXT),
            },
        }
    }

    /// A KV listing: the items as JSON, or an empty 404 when there are none.
    fn listing<T: serde::Serialize>(index: u64, items: &[T]) -> Self {
        if items.is_empty() {
            Self::not_found(index)
        } else {
            Self::json(index, &items)
        }
    }

    fn not_found(index: u64) -> Self {
        Self {
            index,
            status: StatusCode::NOT_FOUND,
            body: Bytes::new(),
            content_type: None,
        }
    }
}

/// Runs a read, blocking while its index equals `?index`, then adds Consul's read headers.
async fn blocking_read<F>(sim: &Sim, params: &Params, cache_key: Option<&str>, read: F) -> Resp
where
    F: Fn(&Dc) -> Read,
{
    let (opts, jitter) = {
        let state = sim.lock();
        let opts = match read_opts(&state, params) {
            Ok(opts) => opts,
            Err(response) => return response,
        };
        if !opts.stale && state.no_leader() {
            return no_leader();
        }
        (opts, state.jitter)
    };
    let evaluate = |sim: &Sim| -> Option<Read> {
        let state = sim.lock();
        state.dcs.get(&opts.dc).map(&read)
    };
    let mut changes = sim.subscribe();
    let Some(mut current) = evaluate(sim) else {
        return no_path_to_dc();
    };
    if opts.index > 0 && current.index.max(1) == opts.index {
        let mut wait = opts.wait;
        if jitter {
            let max_jitter = u64::try_from((wait / 16).as_millis()).unwrap_or(0);
            if max_jitter > 0 {
                wait += Duration::from_millis(rand::random_range(0..=max_jitter));
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            let woke = tokio::time::timeout_at(deadline, changes.changed()).await;
            let Some(next) = evaluate(sim) else {
                return no_path_to_dc();
            };
            current = next;
            if !matches!(woke, Ok(Ok(()))) || current.index.max(1) != opts.index {
                break;
            }
        }
    }
    finish_read(sim, &opts, cache_key, current)
}

fn finish_read(sim: &Sim, opts: &ReadOpts, cache_key: Option<&str>, read: Read) -> Resp {
    let mut state = sim.lock();
    let mut response = Response::new(read.body);
    *response.status_mut() = read.status;
    let headers = response.headers_mut();
    if let Some(content_type) = read.content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert(
        HeaderName::from_static("x-consul-index"),
        HeaderValue::from(read.index.max(1)),
    );
    let known_leader = if state.no_leader() { "false" } else { "true" };
    headers.insert(
        HeaderName::from_static("x-consul-knownleader"),
        HeaderValue::from_static(known_leader),
    );
    headers.insert(
        HeaderName::from_static("x-consul-lastcontact"),
        HeaderValue::from(state.last_contact()),
    );
    let consistency = if opts.consistent {
        "consistent"
    } else if opts.stale {
        "stale"
    } else {
        "leader"
    };
    headers.insert(
        HeaderName::from_static("x-consul-effective-consistency"),
        HeaderValue::from_static(consistency),
    );
    if opts.cached
        && let Some(key) = cache_key
    {
        let now = Instant::now();
        match state.cache_fill.get(key) {
            Some(filled) => {
                let age = now.saturating_duration_since(*filled).as_secs();
                headers.insert(
                    HeaderName::from_static("x-cache"),
                    HeaderValue::from_static("HIT"),
                );
                headers.insert(http::header::AGE, HeaderValue::from(age));
            }
            None => {
                headers.insert(
                    HeaderName::from_static("x-cache"),
                    HeaderValue::from_static("MISS"),
                );
                headers.insert(http::header::AGE, HeaderValue::from_static("0"));
                state.cache_fill.insert(key.to_owned(), now);
            }
        }
    }
    response
}

/// Key for the agent cache: the path plus the query minus blocking/caching parameters.
fn cache_key(raw_path: &str, raw_query: &str) -> String {
    let kept: Vec<&str> = raw_query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            !matches!(key, "index" | "wait" | "cached" | "")
        })
        .collect();
    format!("{raw_path}?{}", kept.join("&"))
}

// === health and catalog ===

async fn health_service(
    sim: &Sim,
    name: &str,
    params: &Params,
    raw_path: &str,
    raw_query: &str,
) -> Resp {
    let passing_only = match params.get("passing") {
        None => false,
        Some("") => true,
        Some(value) => match parse_go_bool(value) {
            Some(passing) => passing,
            None => return bad_request("Invalid value for ?passing"),
        },
    };
    if name.is_empty() {
        return bad_request("Missing service name");
    }
    let tags = params.all("tag");
    let key = cache_key(raw_path, raw_query);
    blocking_read(sim, params, Some(&key), |dc| {
        let entries = model::health_service(dc, name, &tags, passing_only);
        Read::json(dc.service_query_index(name), &entries)
    })
    .await
}

/// `/v1/health/state/:state`. As in Consul 1.16, only an empty state is refused; any other
/// unknown state matches no check (Consul looks it up in the status index), so it is `200 []`.
async fn health_state(sim: &Sim, check_state: &str, params: &Params) -> Resp {
    if check_state.is_empty() {
        return bad_request("Missing check state");
    }
    let node_meta = node_meta_filters(params);
    blocking_read(sim, params, None, |dc| {
        Read::json(
            dc.checks_index,
            &model::health_state(dc, check_state, &node_meta),
        )
    })
    .await
}

/// `?node-meta=key:value` filters (all must match); a pair without `:` has an empty value,
/// as Consul's `parseMetaPair`.
fn node_meta_filters(params: &Params) -> Vec<(String, String)> {
    params
        .all("node-meta")
        .into_iter()
        .map(|filter| {
            let (key, value) = filter.split_once(':').unwrap_or((filter, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

async fn catalog_services(sim: &Sim, params: &Params) -> Resp {
    blocking_read(sim, params, Some("/v1/catalog/services"), |dc| {
        Read::json(dc.services_index, &model::catalog_services(dc))
    })
    .await
}

async fn catalog_service(sim: &Sim, name: &str, params: &Params) -> Resp {
    if name.is_empty() {
        return bad_request("Missing service name");
    }
    let tags = params.all("tag");
    let key = format!("/v1/catalog/service/{name}?{}", tags.join(","));
    blocking_read(sim, params, Some(&key), |dc| {
        Read::json(
            dc.service_query_index(name),
            &model::catalog_service(dc, name, &tags),
        )
    })
    .await
}

async fn catalog_nodes(sim: &Sim, params: &Params) -> Resp {
    blocking_read(sim, params, None, |dc| {
        let nodes: Vec<model::NodeJson<'_>> = dc
            .nodes
            .values()
            .map(|node| model::NodeJson::new(node, &dc.name))
            .collect();
        Read::json(dc.nodes_index, &nodes)
    })
    .await
}

async fn catalog_node(sim: &Sim, name: &str, params: &Params) -> Resp {
    blocking_read(sim, params, None, |dc| {
        Read::json(
            dc.nodes_index.max(dc.services_index),
            &model::catalog_node(dc, name),
        )
    })
    .await
}

fn agent_self(sim: &Sim) -> Resp {
    let state = sim.lock();
    let body = serde_json::json!({
        "Config": {
            "Datacenter": state.default_dc,
            "PrimaryDatacenter": state.default_dc,
            "NodeName": state.agent_node,
            "NodeID": state.agent_node_id,
            "Server": true,
            "Revision": "b71d0a2b",
            "Version": CONSUL_VERSION,
            "BuildDate": "2023-12-14T20:00:00Z",
        },
        "Member": {
            "Name": state.agent_node,
            "Addr": "127.0.0.1",
            "Port": 8301,
            "Tags": {
                "build": format!("{CONSUL_VERSION}:b71d0a2b"),
                "dc": state.default_dc,
                "id": state.agent_node_id,
                "role": "consul",
                "port": "8300",
                "vsn": "2",
            },
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        },
        "Meta": {},
    });
    json_value(&body)
}

// === KV ===

async fn kv_get(sim: &Sim, key: &str, params: &Params) -> Resp {
    if params.has("keys") {
        let separator = params.get("separator").unwrap_or_default().to_owned();
        return blocking_read(sim, params, None, |dc| {
            let index = dc.kv_prefix_index(key);
            let mut keys: Vec<String> = Vec::new();
            for (entry_key, _) in under_prefix(&dc.kv, key) {
                let rest = &entry_key[key.len()..];
                let listed = match rest.find(separator.as_str()) {
                    Some(position) if !separator.is_empty() => {
                        format!("{key}{}", &rest[..position + separator.len()])
                    }
                    _ => entry_key.clone(),
                };
                if keys.last() != Some(&listed) {
                    keys.push(listed);
                }
            }
            Read::listing(index, &keys)
        })
        .await;
    }
    if params.has("recurse") {
        return blocking_read(sim, params, None, |dc| {
            let index = dc.kv_prefix_index(key);
            let entries: Vec<model::KvJson<'_>> = under_prefix(&dc.kv, key)
                .map(|(_, entry)| model::KvJson::new(entry))
                .collect();
            Read::listing(index, &entries)
        })
        .await;
    }
    let raw = params.has("raw");
    let mut response = blocking_read(sim, params, None, |dc| match dc.kv.get(key) {
        None => Read::not_found(dc.kv_table_index()),
        Some(entry) if raw => Read {
            index: entry.modify_index,
            status: StatusCode::OK,
            body: entry.value.clone(),
            content_type: Some("text/plain"),
        },
        Some(entry) => Read::json(entry.modify_index, &[model::KvJson::new(entry)]),
    })
    .await;
    if raw && response.status() == StatusCode::OK {
        let headers = response.headers_mut();
        headers.insert(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static("sandbox"),
        );
    }
    response
}

/// A plain KV set: keeps `LockIndex` and `Session`, replaces value and flags.
pub(crate) fn kv_write(dc: &mut Dc, key: &str, value: Bytes, flags: u64, index: u64) {
    match dc.kv.get_mut(key) {
        Some(entry) => {
            entry.value = value;
            entry.flags = flags;
            entry.modify_index = index;
        }
        None => {
            dc.kv.insert(
                key.to_owned(),
                KvEntry {
                    key: key.to_owned(),
                    value,
                    flags,
                    lock_index: 0,
                    session: None,
                    create_index: index,
                    modify_index: index,
                },
            );
        }
    }
    dc.tombstones.remove(key);
    dc.kvs_index = index;
}

fn kv_put(
    sim: &Sim,
    key: &str,
    params: &Params,
    raw_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Resp {
    if key.is_empty() {
        return bad_request("Missing key name");
    }
    let size = content_length(headers).unwrap_or(body.len() as u64);
    if size > KV_MAX_VALUE_SIZE as u64 || body.len() > KV_MAX_VALUE_SIZE {
        return too_large(size.max(body.len() as u64));
    }
    let modes = ["cas", "acquire", "release"]
        .iter()
        .filter(|mode| params.has(mode))
        .count();
    if modes > 1 {
        return bad_request(&format!("Conflicting flags: {raw_query}"));
    }
    let flags = match params.get("flags") {
        None | Some("") => 0,
        Some(value) => match value.parse::<u64>() {
            Ok(flags) => flags,
            Err(_) => return bad_request("Invalid flags"),
        },
    };
    let cas = match cas_param(params) {
        Ok(cas) => cas,
        Err(response) => return response,
    };
    let mut state = sim.lock();
    let dc_name = match write_dc(&state, params) {
        Ok(dc) => dc,
        Err(response) => return response,
    };
    let dc = state.dc_mut(&dc_name);
    let now = Instant::now();
    let applied = if let Some(cas) = cas {
        let matches = match dc.kv.get(key) {
            None => cas == 0,
            Some(entry) => cas != 0 && entry.modify_index == cas,
        };
        if matches {
            let index = dc.next_index();
            kv_write(dc, key, body, flags, index);
        }
        matches
    } else if let Some(session_id) = params.get("acquire") {
        if !dc.sessions.contains_key(session_id) {
            return server_error(&format!("invalid session {session_id:?}"));
        }
        let delayed = dc.lock_delays.get(key).is_some_and(|until| *until > now);
        let held_by_other = dc
            .kv
            .get(key)
            .and_then(|entry| entry.session.as_deref())
            .is_some_and(|holder| holder != session_id);
        if delayed || held_by_other {
            false
        } else {
            let index = dc.next_index();
            let already_held = dc
                .kv
                .get(key)
                .is_some_and(|entry| entry.session.as_deref() == Some(session_id));
            kv_write(dc, key, body, flags, index);
            if let Some(entry) = dc.kv.get_mut(key) {
                if !already_held {
                    entry.lock_index += 1;
                }
                entry.session = Some(session_id.to_owned());
            }
            true
        }
    } else if let Some(session_id) = params.get("release") {
        let held = dc
            .kv
            .get(key)
            .is_some_and(|entry| entry.session.as_deref() == Some(session_id));
        if held {
            let index = dc.next_index();
            kv_write(dc, key, body, flags, index);
            if let Some(entry) = dc.kv.get_mut(key) {
                entry.session = None;
            }
        }
        held
    } else {
        let index = dc.next_index();
        kv_write(dc, key, body, flags, index);
        true
    };
    drop(state);
    if applied {
        sim.notify();
    }
    json_value(&applied)
}

fn kv_delete(sim: &Sim, key: &str, params: &Params) -> Resp {
    let recurse = params.has("recurse");
    if key.is_empty() && !recurse {
        return bad_request("Missing key name");
    }
    let cas = match cas_param(params) {
        Ok(cas) => cas,
        Err(response) => return response,
    };
    let mut state = sim.lock();
    let dc_name = match write_dc(&state, params) {
        Ok(dc) => dc,
        Err(response) => return response,
    };
    let dc = state.dc_mut(&dc_name);
    let (result, changed) = if recurse {
        let doomed: Vec<String> = under_prefix(&dc.kv, key).map(|(k, _)| k.clone()).collect();
        if doomed.is_empty() {
            (true, false)
        } else {
            let index = dc.next_index();
            for doomed_key in doomed {
                dc.kv_delete_key(&doomed_key, index);
            }
            (true, true)
        }
    } else if let Some(cas) = cas {
        match dc.kv.get(key) {
            None => (true, false),
            Some(entry) if entry.modify_index == cas => {
                let index = dc.next_index();
                dc.kv_delete_key(key, index);
                (true, true)
            }
            Some(_) => (false, false),
        }
    } else if dc.kv.contains_key(key) {
        let index = dc.next_index();
        dc.kv_delete_key(key, index);
        (true, true)
    } else {
        (true, false)
    };
    drop(state);
    if changed {
        sim.notify();
    }
    json_value(&result)
}

// === sessions ===

/// `LockDelay` may be a Go duration string or a number (seconds below 1000, else nanoseconds).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LockDelayJson {
    Text(String),
    Number(u64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionCreate {
    #[serde(default)]
    name: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    lock_delay: Option<LockDelayJson>,
    #[serde(default)]
    behavior: String,
    #[serde(default, rename = "TTL")]
    ttl: String,
    #[serde(default)]
    node_checks: Option<Vec<String>>,
    #[serde(default)]
    checks: Option<Vec<String>>,
}

fn session_create(sim: &Sim, params: &Params, body: &Bytes) -> Resp {
    let request: SessionCreate = if body.iter().all(u8::is_ascii_whitespace) {
        SessionCreate::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(error) => return bad_request(&format!("Request decode failed: {error}")),
        }
    };
    let ttl = if request.ttl.is_empty() {
        None
    } else {
        match parse_go_duration(&request.ttl) {
            Some(ttl) => Some(ttl),
            None => {
                return bad_request(&format!(
                    "Request decode failed: time: invalid duration {:?}",
                    request.ttl
                ));
            }
        }
    };
    if let Some(ttl) = ttl
        && !ttl.is_zero()
        && (ttl < SESSION_TTL_MIN || ttl > SESSION_TTL_MAX)
    {
        return server_error(&format!(
            "Invalid Session TTL '{}', must be between [10s=24h0m0s]",
            ttl.as_nanos()
        ));
    }
    let lock_delay = match &request.lock_delay {
        None => DEFAULT_LOCK_DELAY,
        Some(LockDelayJson::Number(number)) if *number < 1000 => Duration::from_secs(*number),
        Some(LockDelayJson::Number(nanos)) => Duration::from_nanos(*nanos),
        Some(LockDelayJson::Text(text)) => match parse_go_duration(text) {
            Some(delay) => delay,
            None => {
                return bad_request(&format!(
                    "Request decode failed: time: invalid duration {text:?}"
                ));
            }
        },
    };
    if lock_delay > MAX_LOCK_DELAY {
        return server_error("Lock delay must be less than 1m0s");
    }
    let behavior = match request.behavior.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => return server_error(&format!("Invalid Behavior setting '{other}'")),
    };
    let mut state = sim.lock();
    let dc_name = match write_dc(&state, params) {
        Ok(dc) => dc,
        Err(response) => return response,
    };
    let node = if request.node.is_empty() {
        state.agent_node.clone()
    } else {
        request.node.clone()
    };
    let multiplier = state.session_ttl_multiplier;
    let expires_at = ttl
        .filter(|ttl| !ttl.is_zero())
        .map(|ttl| Instant::now() + ttl * multiplier);
    let dc = state.dc_mut(&dc_name);
    let index = dc.next_index();
    let id = crate::state::random_uuid();
    dc.sessions.insert(
        id.clone(),
        Session {
            id: id.clone(),
            name: request.name,
            node,
            lock_delay,
            behavior,
            ttl: ttl.filter(|ttl| !ttl.is_zero()),
            node_checks: request
                .node_checks
                .or(request.checks)
                .unwrap_or_else(|| vec!["serfHealth".to_owned()]),
            expires_at,
            create_index: index,
            modify_index: index,
        },
    );
    dc.sessions_index = index;
    drop(state);
    if let Some(expires_at) = expires_at {
        schedule_expiry(sim, &dc_name, &id, expires_at);
    }
    sim.notify();
    json_value(&serde_json::json!({ "ID": id }))
}

fn schedule_expiry(sim: &Sim, dc_name: &str, session_id: &str, at: Instant) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let sim = sim.clone();
    let dc_name = dc_name.to_owned();
    let session_id = session_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        sim.expire_session(&dc_name, &session_id);
    });
}

fn session_renew(sim: &Sim, session_id: &str, params: &Params) -> Resp {
    let mut state = sim.lock();
    let dc_name = match write_dc(&state, params) {
        Ok(dc) => dc,
        Err(response) => return response,
    };
    let multiplier = state.session_ttl_multiplier;
    let dc = state.dc_mut(&dc_name);
    let Some(session) = dc.sessions.get_mut(session_id) else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("Session id '{session_id}' not found"),
        );
    };
    let expires_at = session.ttl.map(|ttl| Instant::now() + ttl * multiplier);
    session.expires_at = expires_at;
    let response = json_value(&[model::SessionJson::new(session)]);
    drop(state);
    if let Some(expires_at) = expires_at {
        schedule_expiry(sim, &dc_name, session_id, expires_at);
    }
    response
}

fn session_destroy(sim: &Sim, session_id: &str, params: &Params) -> Resp {
    if session_id.is_empty() {
        return bad_request("Missing session");
    }
    let mut state = sim.lock();
    let dc_name = match write_dc(&state, params) {
        Ok(dc) => dc,
        Err(response) => return response,
    };
    let changed = state
        .dc_mut(&dc_name)
        .invalidate_session(session_id, Instant::now());
    drop(state);
    if changed {
        sim.notify();
    }
    json_value(&true)
}

async fn session_read(sim: &Sim, action: &str, argument: &str, params: &Params) -> Resp {
    blocking_read(sim, params, None, |dc| {
        let sessions: Vec<model::SessionJson<'_>> = dc
            .sessions
            .values()
            .filter(|session| match action {
                "info" => session.id == argument,
                "node" => session.node == argument,
                _ => true,
            })
            .map(model::SessionJson::new)
            .collect();
        Read::json(dc.sessions_index, &sessions)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_and_repeated_params() {
        let params = Params::parse("passing&tag=a&tag=B%20c&dc=dc1&x=1+2");
        assert_eq!(params.get("passing"), Some(""));
        assert_eq!(params.all("tag"), vec!["a", "B c"]);
        assert_eq!(params.get("x"), Some("1 2"));
        assert!(!params.has("stale"));
    }

    #[test]
    fn redacts_tokens_from_logged_queries() {
        assert_eq!(
            redact_token("stale&token=s3cret&tag=a"),
            "stale&token=redacted&tag=a"
        );
        assert_eq!(redact_token(""), "");
    }

    #[test]
    fn decodes_percent_sequences() {
        assert_eq!(decode("a%2Fb", false), "a/b");
        assert_eq!(decode("a+b", false), "a+b");
        assert_eq!(decode("100%", false), "100%");
        assert_eq!(decode("%zz", false), "%zz");
    }

    #[test]
    fn cache_key_ignores_blocking_params() {
        assert_eq!(
            cache_key("/v1/health/service/web", "cached&index=5&passing&wait=1s"),
            cache_key("/v1/health/service/web", "passing&cached")
        );
    }
}
