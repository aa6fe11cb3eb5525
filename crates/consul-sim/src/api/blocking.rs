//! Reads: consistency options, blocking until the index moves, and Consul's read headers.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::params::{Params, dc_param};
use super::response::{JSON, Resp, TEXT, bad_request, no_leader, no_path_to_dc};
use super::{Call, ServedByAgent};
use crate::Sim;
use crate::duration::parse_go_duration;
use crate::load::ViewKey;
use crate::state::{Dc, State};

/// `default_query_time`.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// `max_query_time`.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Consistency and blocking options of a read.
#[derive(Debug, Clone)]
struct ReadOpts {
    dc: String,
    index: u64,
    wait: Duration,
    stale: bool,
    consistent: bool,
    cached: bool,
    /// Served from the agent's streaming view (decided per endpoint, after parsing).
    streaming: bool,
}

impl ReadOpts {
    fn parse(state: &State, params: &Params) -> Result<Self, Resp> {
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
                let wait =
                    parse_go_duration(value).ok_or_else(|| bad_request("Invalid wait time"))?;
                if wait.is_zero() {
                    DEFAULT_WAIT
                } else {
                    wait.min(MAX_WAIT)
                }
            }
        };
        let dc = dc_param(state, params)?;
        Ok(Self {
            dc,
            index,
            wait,
            stale,
            consistent,
            cached,
            streaming: false,
        })
    }

    /// `X-Consul-Effective-Consistency`.
    fn consistency(&self) -> &'static str {
        if self.consistent {
            "consistent"
        } else if self.stale {
            "stale"
        } else {
            "leader"
        }
    }
}

/// The outcome of one evaluation of a read.
pub(super) struct Read {
    pub(super) index: u64,
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
    pub(super) content_type: Option<&'static str>,
}

impl Read {
    pub(super) fn json<T: serde::Serialize>(index: u64, value: &T) -> Self {
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
    pub(super) fn listing<T: serde::Serialize>(index: u64, items: &[T]) -> Self {
        if items.is_empty() {
            Self::not_found(index)
        } else {
            Self::json(index, &items)
        }
    }

    pub(super) fn not_found(index: u64) -> Self {
        Self {
            index,
            status: StatusCode::NOT_FOUND,
            body: Bytes::new(),
            content_type: None,
        }
    }
}

/// Runs a read, blocking while its index equals `?index`, then adds Consul's read headers.
/// `cache_key` names the agent-cache entry for `?cached` reads (`None`: not cacheable).
pub(super) async fn blocking_read<F>(call: &Call<'_>, cache_key: Option<&str>, read: F) -> Resp
where
    F: Fn(&Dc) -> Read,
{
    read_with_backend(call, cache_key, None, read).await
}

/// The streaming view a `/v1/health/service` read may be served from.
pub(super) struct StreamView<'a> {
    pub(super) service: &'a str,
    pub(super) tags: &'a [&'a str],
}

/// `/v1/health/service` reads: like [`blocking_read`], but the agent serves them from its
/// streaming view when streaming is on (Consul 1.10+ default `use_streaming_backend`) and
/// the read carries `?index` > 0 or `?cached` and no `?near` (agent/health_endpoint.go,
/// agent/rpcclient/health). Such a read is answered with `X-Consul-Query-Backend:
/// streaming` and, because streaming implies the agent cache, `X-Cache`. It costs no server
/// RPC; its view is one subscription per agent (see `crate::load`). As Consul's
/// materializer, a streamed read waits for an index *above* `?index`, so an index that
/// went lower (a snapshot restore) is only returned when the wait times out.
pub(super) async fn health_service_read<F>(
    call: &Call<'_>,
    cache_key: &str,
    view: StreamView<'_>,
    read: F,
) -> Resp
where
    F: Fn(&Dc) -> Read,
{
    read_with_backend(call, Some(cache_key), Some(view), read).await
}

async fn read_with_backend<F>(
    call: &Call<'_>,
    cache_key: Option<&str>,
    view: Option<StreamView<'_>>,
    read: F,
) -> Resp
where
    F: Fn(&Dc) -> Read,
{
    let sim = call.sim;
    let params = call.params;
    let (opts, jitter) = {
        let state = sim.lock();
        let mut opts = match ReadOpts::parse(&state, params) {
            Ok(opts) => opts,
            Err(response) => return response,
        };
        if !opts.stale && state.no_leader() {
            return no_leader();
        }
        opts.streaming = view.is_some()
            && state.streaming
            && (opts.cached || opts.index > 0)
            && !params.has("near");
        (opts, state.jitter)
    };
    let _view = match &view {
        Some(view) if opts.streaming => Some(ViewReader::open(call, &opts.dc, view)),
        _ => None,
    };
    let stream_epoch = sim.lock().load.stream_epoch;
    let evaluate = |sim: &Sim| -> Option<Read> {
        let state = sim.lock();
        state.dcs.get(&opts.dc).map(&read)
    };
    // Blocking queries return once the index differs; streaming views once it is higher.
    let unchanged = |index: u64| {
        if opts.streaming {
            index.max(1) <= opts.index
        } else {
            index.max(1) == opts.index
        }
    };
    let mut changes = sim.subscribe();
    let Some(mut current) = evaluate(sim) else {
        return no_path_to_dc();
    };
    if opts.index > 0 && unchanged(current.index) {
        let _held = Held::new(sim, opts.streaming);
        let deadline = Instant::now() + wait_with_jitter(opts.wait, jitter);
        loop {
            let woke = tokio::time::timeout_at(deadline, changes.changed()).await;
            if opts.streaming && sim.lock().load.stream_epoch != stream_epoch {
                return stream_broken();
            }
            let Some(next) = evaluate(sim) else {
                return no_path_to_dc();
            };
            current = next;
            if !matches!(woke, Ok(Ok(()))) || !unchanged(current.index) {
                break;
            }
        }
    }
    finish_read(sim, call.agent, &opts, cache_key, current)
}

/// What an agent answers a held streamed read when its server stream fails (the gRPC error
/// of a server that went away, as a 500).
fn stream_broken() -> Resp {
    super::response::server_error(
        "rpc error: code = Unavailable desc = error reading from server: EOF",
    )
}

/// One reader of an agent's streaming view, from its first evaluation until it answers
/// (or its client goes away).
struct ViewReader<'a> {
    sim: &'a Sim,
    key: ViewKey,
    /// The stream epoch the view was opened in: after [`Sim::break_streams`] it is gone.
    epoch: u64,
}

impl<'a> ViewReader<'a> {
    fn open(call: &Call<'a>, dc: &str, view: &StreamView<'_>) -> Self {
        let key = ViewKey {
            agent: call.agent.to_owned(),
            dc: dc.to_owned(),
            service: view.service.to_owned(),
            selector: view_selector(call.params),
        };
        let mut state = call.sim.lock();
        let State { load, dcs, .. } = &mut *state;
        load.open_view(&key, view.tags, dcs);
        let epoch = load.stream_epoch;
        Self {
            sim: call.sim,
            key,
            epoch,
        }
    }
}

impl Drop for ViewReader<'_> {
    fn drop(&mut self) {
        let mut state = self.sim.lock();
        if state.load.stream_epoch == self.epoch {
            state.load.close_view(&self.key);
        }
    }
}

/// The parameters that make a separate view (and subscription) in Consul's cache key:
/// tags, filter, node-meta, namespace, partition (`?passing` is applied after the view).
fn view_selector(params: &Params) -> String {
    let mut selector = Vec::new();
    for name in ["tag", "filter", "node-meta", "ns", "partition"] {
        let mut values = params.all(name);
        values.sort_unstable();
        selector.extend(values.into_iter().map(|value| format!("{name}={value}")));
    }
    selector.join("&")
}

/// Counts a read held waiting for a change (a blocking query on a server, or a streamed
/// read on an agent) while it lives.
struct Held<'a> {
    sim: &'a Sim,
    streamed: bool,
}

impl<'a> Held<'a> {
    fn new(sim: &'a Sim, streamed: bool) -> Self {
        sim.lock().load.hold(streamed, 1);
        Self { sim, streamed }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.sim.lock().load.hold(self.streamed, -1);
    }
}

/// Consul adds up to wait/16 to a blocking query's wait so that many do not wake together.
fn wait_with_jitter(wait: Duration, jitter: bool) -> Duration {
    if !jitter {
        return wait;
    }
    let max_jitter = u64::try_from((wait / 16).as_millis()).unwrap_or(0);
    if max_jitter == 0 {
        return wait;
    }
    wait + Duration::from_millis(rand::random_range(0..=max_jitter))
}

fn finish_read(
    sim: &Sim,
    agent: &str,
    opts: &ReadOpts,
    cache_key: Option<&str>,
    read: Read,
) -> Resp {
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
    headers.insert(
        HeaderName::from_static("x-consul-effective-consistency"),
        HeaderValue::from_static(opts.consistency()),
    );
    // Every read carries its backend (Consul 1.10+ `setMeta`).
    let backend = if opts.streaming {
        "streaming"
    } else {
        "blocking-query"
    };
    headers.insert(
        HeaderName::from_static("x-consul-query-backend"),
        HeaderValue::from_static(backend),
    );
    let mut served_by_agent = opts.streaming;
    if (opts.cached || opts.streaming)
        && let Some(key) = cache_key
    {
        // Each agent has its own cache.
        let hit = insert_cache_headers(&mut state, &format!("{agent} {key}"), headers);
        served_by_agent |= hit;
    }
    if served_by_agent {
        response.extensions_mut().insert(ServedByAgent);
    }
    response
}

/// `X-Cache` and `Age` of a `?cached` read: the first read of a key fills the agent cache
/// (MISS, age 0); later ones are HITs aged from that fill. Returns whether it was a HIT.
fn insert_cache_headers(state: &mut State, key: &str, headers: &mut HeaderMap) -> bool {
    let now = Instant::now();
    let (hit, age) = match state.cache_fill.get(key) {
        Some(filled) => ("HIT", now.saturating_duration_since(*filled).as_secs()),
        None => {
            state.cache_fill.insert(key.to_owned(), now);
            ("MISS", 0)
        }
    };
    headers.insert(
        HeaderName::from_static("x-cache"),
        HeaderValue::from_static(hit),
    );
    headers.insert(http::header::AGE, HeaderValue::from(age));
    hit == "HIT"
}

/// Key for the agent cache: the path plus the query minus blocking/caching parameters.
pub(super) fn cache_key(raw_path: &str, raw_query: &str) -> String {
    let kept: Vec<&str> = raw_query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            !matches!(key, "index" | "wait" | "cached" | "")
        })
        .collect();
    format!("{raw_path}?{}", kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_ignores_blocking_params() {
        assert_eq!(
            cache_key("/v1/health/service/web", "cached&index=5&passing&wait=1s"),
            cache_key("/v1/health/service/web", "passing&cached")
        );
    }
}
