//! Reads: consistency options, blocking until the index moves, and Consul's read headers.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::params::{Params, dc_param};
use super::response::{JSON, Resp, TEXT, bad_request, no_leader, no_path_to_dc};
use crate::Sim;
use crate::duration::parse_go_duration;
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
pub(super) async fn blocking_read<F>(
    sim: &Sim,
    params: &Params,
    cache_key: Option<&str>,
    read: F,
) -> Resp
where
    F: Fn(&Dc) -> Read,
{
    read_with_backend(sim, params, cache_key, false, read).await
}

/// `/v1/health/service` reads: like [`blocking_read`], but the agent serves them from its
/// streaming view when streaming is on (Consul 1.10+ default `use_streaming_backend`) and
/// the read carries `?index` > 0 or `?cached` and no `?near` (agent/health_endpoint.go,
/// agent/rpcclient/health). Such a read is answered with `X-Consul-Query-Backend:
/// streaming` and, because streaming implies the agent cache, `X-Cache`.
pub(super) async fn health_service_read<F>(
    sim: &Sim,
    params: &Params,
    cache_key: &str,
    read: F,
) -> Resp
where
    F: Fn(&Dc) -> Read,
{
    read_with_backend(sim, params, Some(cache_key), true, read).await
}

async fn read_with_backend<F>(
    sim: &Sim,
    params: &Params,
    cache_key: Option<&str>,
    streamable: bool,
    read: F,
) -> Resp
where
    F: Fn(&Dc) -> Read,
{
    let (mut opts, jitter) = {
        let state = sim.lock();
        let opts = match ReadOpts::parse(&state, params) {
            Ok(opts) => opts,
            Err(response) => return response,
        };
        if !opts.stale && state.no_leader() {
            return no_leader();
        }
        (opts, state.jitter)
    };
    opts.streaming = streamable
        && sim.lock().streaming
        && (opts.cached || opts.index > 0)
        && !params.has("near");
    let evaluate = |sim: &Sim| -> Option<Read> {
        let state = sim.lock();
        state.dcs.get(&opts.dc).map(&read)
    };
    let mut changes = sim.subscribe();
    let Some(mut current) = evaluate(sim) else {
        return no_path_to_dc();
    };
    if opts.index > 0 && current.index.max(1) == opts.index {
        let deadline = Instant::now() + wait_with_jitter(opts.wait, jitter);
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
    if (opts.cached || opts.streaming)
        && let Some(key) = cache_key
    {
        insert_cache_headers(&mut state, key, headers);
    }
    response
}

/// `X-Cache` and `Age` of a `?cached` read: the first read of a key fills the agent cache
/// (MISS, age 0); later ones are HITs aged from that fill.
fn insert_cache_headers(state: &mut State, key: &str, headers: &mut HeaderMap) {
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
