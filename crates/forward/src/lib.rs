//! Forwarding of non-Consul names to upstream resolvers, with a response cache.
//!
//! [`Forwarder::resolve`] answers one question: from the cache when a fresh entry exists
//! (TTLs counted down, RRsets shuffled), otherwise by asking the configured upstreams in
//! order. Identical concurrent misses share one upstream query, and the number of
//! upstream queries in flight is bounded.
//!
//! Module map: [`config`] (settings and bounds), `cache` (keys, TTL policy, moka),
//! `upstream` (UDP/TCP exchanges, failover), [`metrics`] (names and descriptions).

pub mod config;
pub mod metrics;

mod cache;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::Record;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::cache::{Key, Lookup, Response, ResponseCache, apply_ttl_policy};
use crate::upstream::{Request, Upstream};

pub use crate::config::Config;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The response cache.
    Cache,
    /// An upstream resolver, just now.
    Upstream,
}

/// An upstream answer, ready for the DNS front to send (TTLs already counted down).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The upstream's response code (NOERROR, NXDOMAIN, ...).
    pub response_code: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authorities: Vec<Record>,
    /// Additional section, without OPT.
    pub additionals: Vec<Record>,
    /// The upstream's AD bit.
    pub authentic_data: bool,
    /// Cache or upstream.
    pub source: Source,
}

/// Why a query could not be forwarded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No upstream is configured.
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    /// Every upstream failed or the deadline passed.
    #[error("all upstreams failed: {last}")]
    AllFailed {
        /// The last failure seen.
        last: String,
    },
    /// Too many queries in flight.
    #[error("too many upstream queries in flight")]
    Overloaded,
    /// A setting is out of range (from [`Config::validate`]).
    #[error("{key}: {reason}")]
    InvalidConfig {
        /// The offending key, e.g. `forward.udp_payload`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The outcome of one shared upstream query, as every waiter sees it.
type SharedQuery = Shared<BoxFuture<'static, Result<Arc<Response>, Error>>>;

/// Cheap-to-clone forwarder handle.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    upstreams: Vec<Upstream>,
    cache: ResponseCache,
    /// Misses currently being asked upstream, by key (coalescing).
    in_flight: Mutex<HashMap<Key, SharedQuery>>,
    /// One permit per upstream query in flight (`max_in_flight`).
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("config", &self.inner.config)
            .field("cached_entries", &self.inner.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Builds a forwarder (no I/O; sockets are opened per upstream query).
    ///
    /// The config is expected to have passed [`Config::validate`]; an empty upstream list
    /// makes every [`resolve`](Self::resolve) fail with [`Error::NoUpstreams`].
    pub fn new(config: Config) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .copied()
            .map(Upstream::new)
            .collect();
        let cache = ResponseCache::new(&config);
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        Self {
            inner: Arc::new(Inner {
                config,
                upstreams,
                cache,
                in_flight: Mutex::new(HashMap::new()),
                permits,
            }),
        }
    }

    /// The settings this forwarder runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Approximate number of responses in the cache (fresh or expired).
    pub fn cached_entries(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Resolves one question through the cache and the upstreams.
    ///
    /// `dnssec_ok` sets the DO bit upstream and is part of the cache key. Fails with
    /// [`Error::AllFailed`] when no upstream answered NOERROR/NXDOMAIN within the deadline
    /// (never cached), or [`Error::Overloaded`] when `max_in_flight` queries are running.
    pub async fn resolve(&self, query: &Query, dnssec_ok: bool) -> Result<Answer, Error> {
        if self.inner.upstreams.is_empty() {
            return Err(Error::NoUpstreams);
        }
        let key = Key::new(query, dnssec_ok);
        if let Some(answer) = self.inner.cached(&key) {
            return Ok(answer);
        }
        let shared = {
            let mut in_flight = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(running) = in_flight.get(&key) {
                ::metrics::counter!(metrics::CACHE_MISSES).increment(1);
                ::metrics::counter!(metrics::COALESCED).increment(1);
                running.clone()
            } else if let Some(answer) = self.inner.cached(&key) {
                // The query that filled the cache finished between our two looks.
                return Ok(answer);
            } else {
                ::metrics::counter!(metrics::CACHE_MISSES).increment(1);
                let Ok(permit) = Arc::clone(&self.inner.permits).try_acquire_owned() else {
                    ::metrics::counter!(metrics::OVERLOADED).increment(1);
                    return Err(Error::Overloaded);
                };
                let shared = Inner::spawn_fetch(&self.inner, key.clone(), query.clone(), permit);
                in_flight.insert(key, shared.clone());
                shared
            }
        };
        let response = shared.await?;
        Ok(response.to_answer(Duration::ZERO, Source::Upstream))
    }
}

impl Inner {
    /// A fresh cached answer, counting the hit.
    fn cached(&self, key: &Key) -> Option<Answer> {
        match self.cache.lookup(key, Instant::now()) {
            Lookup::Fresh(entry, age) => {
                ::metrics::counter!(metrics::CACHE_HITS).increment(1);
                Some(entry.response.to_answer(age, Source::Cache))
            }
            Lookup::Expired | Lookup::Absent => None,
        }
    }

    /// Starts the upstream query for `key` as its own task, so a client that gives up
    /// does not cancel it for the others waiting on it.
    ///
    /// The task caches a cacheable answer, then leaves the in-flight map; errors go to
    /// every waiter and are not cached.
    fn spawn_fetch(
        inner: &Arc<Self>,
        key: Key,
        query: Query,
        permit: OwnedSemaphorePermit,
    ) -> SharedQuery {
        let inner = Arc::clone(inner);
        let task = tokio::spawn(async move {
            let result = inner.fetch(&query, key.dnssec_ok()).await;
            let result = result.map(|response| {
                let (response, ttl) = apply_ttl_policy(response, &inner.config);
                if let Some(ttl) = ttl {
                    inner
                        .cache
                        .insert(key.clone(), response.clone(), ttl, Instant::now());
                }
                Arc::new(response)
            });
            inner
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            drop(permit);
            result
        });
        task.map(|joined| {
            joined.unwrap_or_else(|error| {
                Err(Error::AllFailed {
                    last: format!("upstream query task ended: {error}"),
                })
            })
        })
        .boxed()
        .shared()
    }

    /// Asks the upstreams in order within the deadline.
    async fn fetch(&self, query: &Query, dnssec_ok: bool) -> Result<Response, Error> {
        let deadline = Instant::now() + self.config.deadline;
        let request = Request {
            query,
            dnssec_ok,
            udp_payload: self.config.udp_payload,
        };
        upstream::query_in_order(
            &self.upstreams,
            request,
            self.config.attempt_timeout,
            deadline,
        )
        .await
        .map_err(|last| Error::AllFailed { last })
    }
}
