//! Forwarding of non-Consul names to upstream resolvers, with a response cache.
//!
//! [`Forwarder::resolve`] answers one question:
//! 1. by local policy when the name must not be forwarded (`domain_needed`,
//!    `bogus_priv`), unless a per-domain rule covers it;
//! 2. from the cache when a fresh entry exists (TTLs counted down, RRsets shuffled); a
//!    hit in the last 10 % of the TTL starts one background refresh (prefetch);
//! 3. otherwise by asking the upstream set of the longest matching per-domain rule (or
//!    the default upstreams), sequentially with failover or as a race, healthy
//!    upstreams first. Identical concurrent misses share one upstream query; the
//!    number of upstream queries in flight is bounded, and so are the bytes their
//!    answers hold (`budget`);
//! 4. when every upstream fails, from an expired entry within the serve-stale window
//!    (RFC 8767, TTL 30 s, [`Source::Stale`]), refreshing in the background.
//!
//! Rebind protection filters private addresses out of answers for public names.
//! [`Forwarder::reconfigure`] swaps settings without dropping the cache;
//! [`Forwarder::explain`] and [`Forwarder::upstream_stats`] report state.
//!
//! Module map: [`config`] (settings and bounds), `cache` (keys, TTL policy, quick_cache store,
//! stale entries), `budget` (bytes of answers in flight), `upstream` (UDP/TCP exchanges,
//! health, failover and race), `policy` (domain-needed, bogus-priv, rebind), `explain`
//! ([`CacheInfo`]), [`metrics`] (names and descriptions).

pub mod config;
pub mod metrics;

mod budget;
mod cache;
mod explain;
mod policy;
mod upstream;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::{BoxFuture, FutureExt, Shared};
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{Name, Record};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::budget::{Budget, Charge};
use crate::cache::{Entry, InsertOptions, Key, Lookup, ResponseCache, Stored, apply_ttl_policy};
use crate::config::{PREFETCH_FRACTION, PREFETCH_MIN_TTL, normalize};
use crate::upstream::{Failed, HealthPolicy, Plan, Request, Upstream};

pub use crate::config::{Config, DomainRule, Field, InvalidConfig, Strategy};
pub use crate::explain::{CacheInfo, CacheState};
pub use crate::policy::Policy;
pub use crate::upstream::{AttemptError, Exchanged, UpstreamStats, exchange_once};

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The response cache.
    Cache,
    /// An upstream resolver, just now.
    Upstream,
    /// An expired cache entry, because every upstream failed (RFC 8767; the DNS front
    /// adds Extended DNS Error 3, Stale Answer). TTLs are `stale_answer_ttl`.
    Stale,
    /// Local policy answered (NXDOMAIN for `domain_needed`/`bogus_priv`) or emptied
    /// the answer (NOERROR without records for `rebind`); the DNS front may add
    /// Extended DNS Error 15 (Blocked).
    Policy(Policy),
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
    /// Cache, upstream, stale cache or local policy.
    pub source: Source,
}

impl Answer {
    /// An empty answer produced by local policy.
    fn local(response_code: ResponseCode, policy: Policy) -> Self {
        Self {
            response_code,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            authentic_data: false,
            source: Source::Policy(policy),
        }
    }
}

/// Why a query could not be forwarded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No upstream is configured for the name (no default upstreams, no rule).
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    /// Every upstream failed or the deadline passed, and nothing stale was servable.
    #[error("all upstreams failed: {last}")]
    AllFailed {
        /// The last failure seen.
        last: String,
    },
    /// Too many queries in flight, and nothing stale was servable.
    #[error("too many upstream queries in flight")]
    Overloaded,
}

/// An upstream answer on its way to the queries waiting for it: compact wire bytes
/// (each waiter decodes its own copy, as a cache hit does), charged to the in-flight
/// byte budget until the last waiter has dropped it.
#[derive(Debug)]
struct Held {
    response: Stored,
    _charge: Charge,
}

/// The outcome of one shared upstream query, as every waiter sees it.
type SharedQuery = Shared<BoxFuture<'static, Result<Arc<Held>, Error>>>;

/// Cheap-to-clone forwarder handle.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

/// A per-domain rule with its upstreams resolved.
struct Route {
    zone: Name,
    upstreams: Vec<Arc<Upstream>>,
}

/// Everything [`Forwarder::reconfigure`] swaps at once.
struct Settings {
    config: Arc<Config>,
    defaults: Vec<Arc<Upstream>>,
    /// Longest zone first, so the first match is the longest suffix.
    routes: Vec<Route>,
    rebind_allow: Vec<Name>,
}

impl Settings {
    /// Resolves addresses to shared [`Upstream`]s, reusing (and so keeping the health
    /// of) those already in `registry`; drops from it the ones no longer configured.
    fn build(config: Config, registry: &mut HashMap<SocketAddr, Arc<Upstream>>) -> Self {
        let mut used = HashSet::new();
        let mut resolve = |addrs: &[SocketAddr]| -> Vec<Arc<Upstream>> {
            addrs
                .iter()
                .map(|&addr| {
                    used.insert(addr);
                    Arc::clone(
                        registry
                            .entry(addr)
                            .or_insert_with(|| Arc::new(Upstream::new(addr))),
                    )
                })
                .collect()
        };
        let defaults = resolve(&config.upstreams);
        let mut routes: Vec<Route> = config
            .rules
            .iter()
            .map(|rule| Route {
                zone: normalize(&rule.zone),
                upstreams: resolve(&rule.upstreams),
            })
            .collect();
        routes.sort_by_key(|route| std::cmp::Reverse(route.zone.num_labels()));
        registry.retain(|addr, _| used.contains(addr));
        let rebind_allow = config.rebind_allow.iter().map(normalize).collect();
        Self {
            config: Arc::new(config),
            defaults,
            routes,
            rebind_allow,
        }
    }

    /// The rule covering `name` (longest zone), if any, and the upstream set to use.
    fn route(&self, name: &Name) -> (Option<&Route>, &[Arc<Upstream>]) {
        match self.routes.iter().find(|route| route.zone.zone_of(name)) {
            Some(route) => (Some(route), &route.upstreams),
            None => (None, &self.defaults),
        }
    }

    /// The policy that keeps an unrouted `name` local, if any.
    fn blocked(&self, name: &Name) -> Option<Policy> {
        if self.config.domain_needed && policy::is_single_label(name) {
            Some(Policy::DomainNeeded)
        } else if self.config.bogus_priv && policy::is_private_reverse(name) {
            Some(Policy::BogusPriv)
        } else {
            None
        }
    }

    /// Whether rebind protection filters answers for `name`.
    fn rebind_applies(&self, name: &Name, routed: bool) -> bool {
        self.config.rebind_protection
            && !routed
            && !self.rebind_allow.iter().any(|domain| domain.zone_of(name))
    }

    fn plan(&self) -> Plan {
        Plan {
            strategy: self.config.strategy,
            tcp_only: self.config.tcp_only,
            attempt_timeout: self.config.attempt_timeout,
            deadline: Instant::now() + self.config.deadline,
            health: HealthPolicy {
                max_fails: self.config.max_fails,
                probe_interval: self.config.probe_interval,
            },
        }
    }
}

struct Inner {
    settings: ArcSwap<Settings>,
    /// Every configured upstream by address (health survives `reconfigure`).
    registry: Mutex<HashMap<SocketAddr, Arc<Upstream>>>,
    cache: ResponseCache,
    /// Upstream queries currently running, by key (coalescing, one refresh per key).
    in_flight: Mutex<HashMap<Key, SharedQuery>>,
    /// One permit per upstream query in flight (`max_in_flight`).
    permits: Arc<Semaphore>,
    /// Bytes of answers in flight (`max_in_flight_bytes`).
    budget: Arc<Budget>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("config", &self.inner.settings.load().config)
            .field("cached_entries", &self.inner.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// What joining the in-flight map gave.
enum Joined {
    /// A fresh entry appeared between the first look and taking the lock.
    Cached(Answer),
    /// The upstream query to wait for (joined or just started).
    Wait(SharedQuery),
    /// No query could be started.
    Refused(Error),
}

impl Forwarder {
    /// Builds a forwarder (no I/O; sockets are opened per upstream query).
    ///
    /// The config is expected to have passed [`Config::validate`]; a name with no
    /// upstreams (no default, no rule) fails with [`Error::NoUpstreams`].
    pub fn new(config: Config) -> Self {
        let cache = ResponseCache::new(&config);
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let budget = Budget::new(config.max_in_flight_bytes);
        let mut registry = HashMap::new();
        let settings = Settings::build(config, &mut registry);
        Self {
            inner: Arc::new(Inner {
                settings: ArcSwap::from_pointee(settings),
                registry: Mutex::new(registry),
                cache,
                in_flight: Mutex::new(HashMap::new()),
                permits,
                budget,
            }),
        }
    }

    /// True when a per-domain rule covers `name` (the DNS front forwards such names even
    /// inside the Consul domain, e.g. `query.consul` to the agent's DNS port).
    pub fn has_rule_for(&self, name: &Name) -> bool {
        let settings = self.inner.settings.load();
        !settings.routes.is_empty() && settings.route(name).0.is_some()
    }

    /// The settings in effect (after [`reconfigure`](Self::reconfigure), with the
    /// restart-only values still as started).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.inner.settings.load().config)
    }

    /// Approximate number of responses in the cache (fresh or expired).
    pub fn cached_entries(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Bytes charged to the cache (its weighted size): at most
    /// [`Config::cache_max_bytes`].
    pub fn cached_bytes(&self) -> u64 {
        self.inner.cache.charged_bytes()
    }

    /// Health and counters of every configured upstream (defaults first, then rules;
    /// each address once), for SIGUSR1 and `check`.
    pub fn upstream_stats(&self) -> Vec<UpstreamStats> {
        let settings = self.inner.settings.load();
        let mut seen = HashSet::new();
        settings
            .defaults
            .iter()
            .chain(settings.routes.iter().flat_map(|route| &route.upstreams))
            .filter(|upstream| seen.insert(upstream.addr))
            .map(|upstream| upstream.stats())
            .collect()
    }

    /// Swaps upstreams, rules, strategy, policy, timeouts, TTL clamps and serve-stale
    /// settings atomically, keeping the cache, upstream health and queries in flight
    /// (those finish with the settings they started with).
    ///
    /// Returns the fields that cannot change while running and kept their old
    /// value ([`Field::CacheSize`], [`Field::CacheMaxBytes`], [`Field::MaxInFlight`],
    /// [`Field::MaxInFlightBytes`]),
    /// for a "needs restart" log.
    /// Entries already cached keep the serve-stale retention they were stored with.
    pub fn reconfigure(&self, mut config: Config) -> Vec<Field> {
        let mut registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.inner.settings.load();
        let mut ignored = Vec::new();
        if config.cache_size != current.config.cache_size {
            ignored.push(Field::CacheSize);
            config.cache_size = current.config.cache_size;
        }
        if config.cache_max_bytes != current.config.cache_max_bytes {
            ignored.push(Field::CacheMaxBytes);
            config.cache_max_bytes = current.config.cache_max_bytes;
        }
        if config.max_in_flight != current.config.max_in_flight {
            ignored.push(Field::MaxInFlight);
            config.max_in_flight = current.config.max_in_flight;
        }
        if config.max_in_flight_bytes != current.config.max_in_flight_bytes {
            ignored.push(Field::MaxInFlightBytes);
            config.max_in_flight_bytes = current.config.max_in_flight_bytes;
        }
        let settings = Settings::build(config, &mut registry);
        self.inner.settings.store(Arc::new(settings));
        ignored
    }

    /// Resolves one question through policy, the cache and the upstreams.
    ///
    /// `dnssec_ok` sets the DO bit upstream and is part of the cache key. Fails with
    /// [`Error::AllFailed`] when no upstream answered NOERROR/NXDOMAIN within the deadline
    /// (never cached), or [`Error::Overloaded`] when `max_in_flight` queries are running
    /// or the answer did not fit `max_in_flight_bytes`, unless an expired entry within the
    /// serve-stale window can be served instead.
    pub async fn resolve(&self, query: &Query, dnssec_ok: bool) -> Result<Answer, Error> {
        let settings = self.inner.settings.load_full();
        let name = cache::question_name(query);
        let key = Key::for_name(&name, query.query_type(), query.query_class(), dnssec_ok);
        let (route, upstreams) = settings.route(&name);
        if route.is_none()
            && let Some(policy) = settings.blocked(&name)
        {
            ::metrics::counter!(metrics::POLICY_ANSWERS, metrics::TAG_POLICY => policy.as_str())
                .increment(1);
            return Ok(Answer::local(ResponseCode::NXDomain, policy));
        }
        if upstreams.is_empty() {
            return Err(Error::NoUpstreams);
        }
        let rebind = settings.rebind_applies(&name, route.is_some());
        let config = &settings.config;
        let now = Instant::now();
        match self.inner.cache.lookup(&key, now) {
            Lookup::Fresh(entry, age) => {
                if let Some(answer) = entry.response.to_answer(age, Source::Cache) {
                    ::metrics::counter!(metrics::CACHE_HITS).increment(1);
                    if wants_prefetch(&entry, age, config) {
                        self.inner
                            .refresh(&settings, key.clone(), query, upstreams, true);
                    }
                    return Ok(filter(answer, rebind));
                }
            }
            Lookup::Expired(entry) => {
                // A refresh failed recently: serve stale now, refresh in the background.
                if let Some(retry_at) = entry.retry_after()
                    && let Some(stale) = entry.stale_choice(now, config.serve_stale)
                    && let Some(answer) = serve_stale(stale, config)
                {
                    if now >= retry_at {
                        entry.set_retry_after(now + config.stale_answer_ttl);
                        self.inner.refresh(&settings, key, query, upstreams, false);
                    }
                    return Ok(filter(answer, rebind));
                }
            }
            Lookup::Absent => {}
        }
        let joined = self
            .inner
            .join_or_fetch(&settings, key.clone(), query, upstreams);
        let error = match joined {
            Joined::Cached(answer) => return Ok(filter(answer, rebind)),
            Joined::Refused(error) => error,
            Joined::Wait(shared) => match shared.await {
                Ok(held) => match held.response.to_answer(Duration::ZERO, Source::Upstream) {
                    Some(answer) => return Ok(filter(answer, rebind)),
                    None => Error::AllFailed {
                        last: "the answer does not decode again".to_owned(),
                    },
                },
                Err(error) => error,
            },
        };
        // Every upstream failed (or we are overloaded): RFC 8767 serve-stale.
        let now = Instant::now();
        match self.inner.cache.lookup(&key, now) {
            Lookup::Fresh(entry, age) => entry
                .response
                .to_answer(age, Source::Cache)
                .map(|answer| filter(answer, rebind))
                .ok_or(error),
            Lookup::Expired(entry) => {
                match entry
                    .stale_choice(now, config.serve_stale)
                    .and_then(|stale| serve_stale(stale, config))
                {
                    Some(answer) => {
                        entry.set_retry_after(now + config.stale_answer_ttl);
                        Ok(filter(answer, rebind))
                    }
                    None => Err(error),
                }
            }
            Lookup::Absent => Err(error),
        }
    }

    /// Reports the cache entry, route and policy verdict of a question (no I/O, no
    /// effect on the cache's counters beyond one read).
    pub fn explain(&self, query: &Query, dnssec_ok: bool) -> CacheInfo {
        let settings = self.inner.settings.load();
        let name = cache::question_name(query);
        let key = Key::for_name(&name, query.query_type(), query.query_class(), dnssec_ok);
        let (route, upstreams) = settings.route(&name);
        let policy = route.is_none().then(|| settings.blocked(&name)).flatten();
        let in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&key);
        let mut info = CacheInfo {
            name: name.to_string(),
            record_type: query.query_type().to_string(),
            dnssec_ok,
            policy,
            rebind_filtered: settings.rebind_applies(&name, route.is_some()),
            rule: route.map(|route| route.zone.to_string()),
            upstreams: upstreams.iter().map(|upstream| upstream.addr).collect(),
            state: CacheState::Absent,
            response_code: None,
            age_secs: None,
            ttl_secs: None,
            remaining_ttl_secs: None,
            stale_remaining_secs: None,
            stale_response_code: None,
            answered_by: None,
            retry_after_secs: None,
            in_flight,
        };
        let now = Instant::now();
        let entry = match self.inner.cache.lookup(&key, now) {
            Lookup::Absent => return info,
            Lookup::Fresh(entry, _) | Lookup::Expired(entry) => entry,
        };
        let serve_stale = settings.config.serve_stale;
        let age = entry.age(now);
        let stale = entry.stale_choice(now, serve_stale);
        info.state = if age < entry.ttl {
            CacheState::Fresh
        } else if stale.is_some() {
            CacheState::Stale
        } else {
            CacheState::Expired
        };
        info.response_code = Some(format!("{:?}", entry.response.response_code));
        info.age_secs = Some(age.as_secs());
        info.ttl_secs = Some(entry.ttl.as_secs());
        // as the TTLs handed out count down: whole seconds elapsed
        info.remaining_ttl_secs = Some(entry.ttl.as_secs().saturating_sub(age.as_secs()));
        if let Some(stale) = stale {
            let end = stale.ttl.saturating_add(serve_stale);
            info.stale_remaining_secs = Some(end.saturating_sub(stale.age(now)).as_secs());
            info.stale_response_code = Some(format!("{:?}", stale.response.response_code));
        }
        info.answered_by = entry.upstream;
        info.retry_after_secs = entry
            .retry_after()
            .map(|at| at.saturating_duration_since(now).as_secs());
        info
    }
}

/// Whether a fresh hit at `age` should start a prefetch.
fn wants_prefetch(entry: &Entry, age: Duration, config: &Config) -> bool {
    config.prefetch
        && entry.ttl >= PREFETCH_MIN_TTL
        && entry.ttl.saturating_sub(age) * PREFETCH_FRACTION <= entry.ttl
}

/// Renders a stale answer and counts it.
fn serve_stale(entry: &Entry, config: &Config) -> Option<Answer> {
    let answer = entry.response.to_stale_answer(config.stale_answer_ttl)?;
    ::metrics::counter!(metrics::STALE_ANSWERS).increment(1);
    Some(answer)
}

/// Applies rebind protection: private A/AAAA records are dropped; when no address is
/// left the answer becomes NOERROR without records, as dnsmasq's `--stop-dns-rebind`
/// does (it empties every section and keeps the rcode).
fn filter(mut answer: Answer, rebind: bool) -> Answer {
    if !rebind {
        return answer;
    }
    let dropped = policy::drop_private_addresses(&mut answer.answers)
        + policy::drop_private_addresses(&mut answer.additionals);
    if dropped == 0 {
        return answer;
    }
    ::metrics::counter!(metrics::POLICY_ANSWERS, metrics::TAG_POLICY => Policy::Rebind.as_str())
        .increment(1);
    if policy::has_addresses(&answer.answers) {
        answer
    } else {
        Answer::local(ResponseCode::NoError, Policy::Rebind)
    }
}

impl Inner {
    /// Joins the upstream query in flight for `key` or starts one.
    fn join_or_fetch(
        self: &Arc<Self>,
        settings: &Arc<Settings>,
        key: Key,
        query: &Query,
        upstreams: &[Arc<Upstream>],
    ) -> Joined {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = in_flight.get(&key) {
            ::metrics::counter!(metrics::CACHE_MISSES).increment(1);
            ::metrics::counter!(metrics::COALESCED).increment(1);
            return Joined::Wait(running.clone());
        }
        if let Lookup::Fresh(entry, age) = self.cache.lookup(&key, Instant::now())
            && let Some(answer) = entry.response.to_answer(age, Source::Cache)
        {
            // The query that filled the cache finished between our two looks.
            ::metrics::counter!(metrics::CACHE_HITS).increment(1);
            return Joined::Cached(answer);
        }
        ::metrics::counter!(metrics::CACHE_MISSES).increment(1);
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            ::metrics::counter!(metrics::OVERLOADED).increment(1);
            return Joined::Refused(Error::Overloaded);
        };
        let shared = self.spawn_fetch(settings, key.clone(), query.clone(), upstreams, permit);
        in_flight.insert(key, shared.clone());
        Joined::Wait(shared)
    }

    /// Starts a background refresh of `key` (prefetch or stale refresh) unless one is
    /// already in flight or no permit is free.
    fn refresh(
        self: &Arc<Self>,
        settings: &Arc<Settings>,
        key: Key,
        query: &Query,
        upstreams: &[Arc<Upstream>],
        prefetch: bool,
    ) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if in_flight.contains_key(&key) {
            return;
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return;
        };
        if prefetch {
            ::metrics::counter!(metrics::PREFETCHES).increment(1);
        }
        let shared = self.spawn_fetch(settings, key.clone(), query.clone(), upstreams, permit);
        in_flight.insert(key, shared);
    }

    /// Starts the upstream query for `key` as its own task, so a client that gives up
    /// does not cancel it for the others waiting on it.
    ///
    /// The task caches a cacheable answer (with who answered), then leaves the
    /// in-flight map; errors go to every waiter and are not cached.
    fn spawn_fetch(
        self: &Arc<Self>,
        settings: &Arc<Settings>,
        key: Key,
        query: Query,
        upstreams: &[Arc<Upstream>],
        permit: OwnedSemaphorePermit,
    ) -> SharedQuery {
        let inner = Arc::clone(self);
        let settings = Arc::clone(settings);
        let upstreams = upstreams.to_vec();
        let task = tokio::spawn(async move {
            let request = Request {
                query: &query,
                dnssec_ok: key.dnssec_ok(),
                udp_payload: settings.config.udp_payload,
                budget: Some(&inner.budget),
            };
            let result = upstream::query(&upstreams, request, settings.plan())
                .await
                .map_err(|failed| match failed {
                    Failed::OverBudget => Error::Overloaded,
                    Failed::Upstreams(last) => Error::AllFailed { last },
                });
            let result = result.and_then(|(response, answered_by)| {
                let config = &settings.config;
                let (response, ttl) = apply_ttl_policy(response, config);
                let Some(stored) = Stored::encode(&response) else {
                    return Err(Error::AllFailed {
                        last: format!("{answered_by}: the answer cannot be encoded again"),
                    });
                };
                // The decoded records go here; from now on only the wire bytes are held.
                drop(response);
                // TTL 0 is stored only to be served stale (dnsmasq does the same with
                // --use-stale-cache); without serve-stale it is not cached at all.
                if let Some(ttl) = ttl.filter(|ttl| !ttl.is_zero() || !config.serve_stale.is_zero())
                {
                    let options = InsertOptions {
                        ttl,
                        serve_stale: config.serve_stale,
                        upstream: Some(answered_by),
                    };
                    inner
                        .cache
                        .insert_stored(key.clone(), stored.clone(), options, Instant::now());
                }
                // Waiters that find no room here fall back to the cache (just filled,
                // under its own budget), then to serve-stale.
                let charge = inner
                    .budget
                    .charge(stored.wire_len() + budget::HELD_OVERHEAD)
                    .ok_or(Error::Overloaded)?;
                Ok(Arc::new(Held {
                    response: stored,
                    _charge: charge,
                }))
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
}
