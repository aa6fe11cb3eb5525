//! The catalog cache: one slot per key, coalesced first fetches, background
//! refresh of entries that are being asked for (polled, or watched with
//! blocking queries), stale-on-error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use dnsfront_consul as consul;
use futures::FutureExt as _;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::breaker::{Admission, Breaker, BreakerState, CircuitState};
use crate::config::RefreshMode;
use crate::info::{EntryFreshness, EntryInfo, ErrorInfo, RefreshState};
use crate::metrics;
use crate::pace::Pace;
use crate::{Config, Error, Freshness, Lookup, Node, ServiceInstance};

/// `mode` tag of requests sent by a watch loop.
const MODE_WATCH: &str = "watch";
/// `mode` tag of every other read (first fetches, periodic and on-demand re-reads).
const MODE_POLL: &str = "poll";

/// Bound on background refreshes running at once, so a burst of due entries
/// becomes a steady trickle of Consul reads rather than a spike.
const MAX_CONCURRENT_REFRESHES: usize = 8;

/// Cheap-to-clone handle on the Consul-backed catalog cache.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    client: consul::Client,
    slots: moka::future::Cache<Key, Arc<Slot>>,
    breaker: Breaker,
    /// Reference point for the slots' `last_access` timestamps.
    epoch: Instant,
    refresh_permits: Arc<Semaphore>,
    /// One permit per running watch loop (`max_watches`).
    watch_permits: Arc<Semaphore>,
    /// Cache hits not yet reported to the metrics recorder: counted here and
    /// flushed once per refresher tick, because a recorder call per hit costs
    /// more than the hit itself on the DNS fast path.
    pending_hits: AtomicU64,
}

/// What a slot caches: a service in a datacenter, or a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Service {
        name: Arc<str>,
        datacenter: Option<Arc<str>>,
    },
    Node {
        name: Arc<str>,
        datacenter: Option<Arc<str>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Services(Arc<[ServiceInstance]>),
    Node(Arc<Node>),
    /// Consul says the name does not exist (or has no healthy instance).
    Missing,
}

/// The last good data of a slot, replaced whole (lock-free reads via ArcSwap).
#[derive(Debug)]
struct Entry {
    value: Value,
    /// When Consul last answered for this key.
    fetched_at: Instant,
    /// When the background refresher should next ask Consul.
    next_refresh: Instant,
    /// The last attempt to refresh failed (Consul trouble).
    last_refresh_failed: bool,
    /// `X-Consul-Index` of `value` (0 when Consul sent none).
    index: u64,
    /// The most recent failure, kept after later successes for `describe`.
    last_error: Option<Arc<LastError>>,
}

/// A failed request, for `describe`.
#[derive(Debug)]
struct LastError {
    kind: &'static str,
    message: String,
    at: Instant,
}

/// A decoded Consul answer and its index (`None` when there was no response
/// to take one from, e.g. an unknown datacenter).
struct Fetched {
    value: Value,
    index: Option<u64>,
}

struct Slot {
    entry: ArcSwap<Entry>,
    /// Milliseconds since `Inner::epoch` of the last query for this key.
    last_access_ms: AtomicU64,
    /// Held while a (non-blocking) refresh of this key is in flight: one request per key.
    refresh_lock: tokio::sync::Mutex<()>,
    /// True while a watch loop keeps this slot current.
    watching: AtomicBool,
    /// Cancelled when the slot leaves the cache: stops its watch loop.
    removed: CancellationToken,
    /// Set with `removed`: an atomic load for the query path, where the
    /// token's `is_cancelled` takes a lock.
    evicted: AtomicBool,
    /// Milliseconds since `Inner::epoch` of the last read through moka (which
    /// keeps the key's place in its eviction order); see [`Witness::holds`].
    recency_ms: AtomicU64,
}

/// Proof, cheap to re-check, that a cached key held certain data fresh: the
/// DNS fast path replays a stored answer only while [`Witness::holds`].
///
/// Re-checking costs a few atomic loads, where a full lookup lower-cases the
/// name, hashes it and walks moka's tables.
#[derive(Clone)]
pub struct Witness {
    inner: Arc<Inner>,
    key: Key,
    slot: Arc<Slot>,
    value: Value,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("key", &self.key)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

/// How often a key answered through witnesses is also read through moka, so
/// that moka's eviction order sees it as used.
const RECENCY_INTERVAL_MS: u64 = 1_000;

impl Witness {
    /// True while the key is still cached with the same data and that data is
    /// fresh. A `true` counts as a cache hit and an access (it keeps the key
    /// refreshed, as a lookup would); no I/O, never waits.
    pub fn holds(&self) -> bool {
        self.holds_at(Instant::now())
    }

    /// [`Witness::holds`] with the caller's clock reading (one per batch of queries).
    pub fn holds_at(&self, now: Instant) -> bool {
        if self.slot.evicted.load(Ordering::Acquire) {
            return false;
        }
        let entry = self.slot.entry.load();
        if !same_value(&entry.value, &self.value) || entry.last_refresh_failed {
            return false;
        }
        let inner = &self.inner;
        let watching = self.slot.watching.load(Ordering::Relaxed);
        if now.saturating_duration_since(entry.fetched_at) > inner.fresh_window(&entry, watching) {
            return false;
        }
        let now_ms = inner.millis_since_epoch(now);
        self.slot.last_access_ms.store(now_ms, Ordering::Relaxed);
        let recency = self.slot.recency_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(recency) >= RECENCY_INTERVAL_MS {
            self.slot.recency_ms.store(now_ms, Ordering::Relaxed);
            // moka's `get` does not wait in practice; if it ever would, skip
            // this round rather than block the query path.
            let _ = inner.slots.get(&self.key).now_or_never();
        }
        inner.pending_hits.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The same data: the same allocation (cheap), or equal contents.
fn same_value(current: &Value, witnessed: &Value) -> bool {
    match (current, witnessed) {
        (Value::Services(a), Value::Services(b)) => Arc::ptr_eq(a, b),
        (Value::Node(a), Value::Node(b)) => Arc::ptr_eq(a, b),
        (Value::Missing, Value::Missing) => true,
        _ => false,
    }
}

impl Cache {
    /// Builds the cache; call [`Cache::run`] to start background refresh.
    pub fn new(config: Config, client: consul::Client) -> Result<Self, Error> {
        config.validate()?;
        let slots = moka::future::Cache::builder()
            .max_capacity(config.max_entries)
            .eviction_listener(|_key, slot: Arc<Slot>, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    metrics::eviction();
                }
                slot.evicted.store(true, Ordering::Release);
                slot.removed.cancel();
            })
            .build();
        let breaker = Breaker::new(config.backoff_min, config.backoff_max);
        let watch_permits = Arc::new(Semaphore::new(
            config.max_watches.min(Semaphore::MAX_PERMITS),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                slots,
                breaker,
                epoch: Instant::now(),
                refresh_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REFRESHES)),
                watch_permits,
                pending_hits: AtomicU64::new(0),
            }),
        })
    }

    /// Healthy instances of `service` in `datacenter` (None = the agent's).
    pub async fn service(
        &self,
        service: &str,
        datacenter: Option<&str>,
    ) -> Lookup<Arc<[ServiceInstance]>> {
        let key = Key::Service {
            name: service.to_ascii_lowercase().into(),
            datacenter: datacenter.map(|dc| dc.to_ascii_lowercase().into()),
        };
        match self.inner.lookup(key).await {
            Lookup::Found(Value::Services(instances), freshness) => {
                Lookup::Found(instances, freshness)
            }
            Lookup::Found(_, freshness) | Lookup::NotFound(freshness) => {
                Lookup::NotFound(freshness)
            }
            Lookup::Unavailable => Lookup::Unavailable,
        }
    }

    /// The node called `node` in `datacenter` (None = the agent's).
    pub async fn node(&self, node: &str, datacenter: Option<&str>) -> Lookup<Arc<Node>> {
        let key = Key::Node {
            name: node.to_ascii_lowercase().into(),
            datacenter: datacenter.map(|dc| dc.to_ascii_lowercase().into()),
        };
        match self.inner.lookup(key).await {
            Lookup::Found(Value::Node(node), freshness) => Lookup::Found(node, freshness),
            Lookup::Found(_, freshness) | Lookup::NotFound(freshness) => {
                Lookup::NotFound(freshness)
            }
            Lookup::Unavailable => Lookup::Unavailable,
        }
    }

    /// Whether Consul's `only_passing` rule applies (instances in warning are not served).
    pub(crate) fn only_passing(&self) -> bool {
        self.inner.config.only_passing
    }

    /// True while the circuit breaker holds Consul requests back.
    pub fn consul_unavailable(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// Number of cached keys (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.inner.slots.entry_count()
    }

    /// The circuit breaker's position and backoff (no I/O).
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.snapshot()
    }

    /// Number of names currently watched with a blocking query.
    pub fn watch_count(&self) -> usize {
        self.inner.watch_count()
    }

    /// What the cache holds for `service` in `datacenter` (None = the agent's),
    /// or `None` when it is not cached. No I/O; a linear scan, for diagnostics.
    pub fn describe_service(&self, service: &str, datacenter: Option<&str>) -> Option<EntryInfo> {
        let key = Key::Service {
            name: service.to_ascii_lowercase().into(),
            datacenter: datacenter.map(|dc| dc.to_ascii_lowercase().into()),
        };
        self.inner.describe(&key)
    }

    /// What the cache holds for `node` in `datacenter` (None = the agent's),
    /// or `None` when it is not cached. No I/O; a linear scan, for diagnostics.
    pub fn describe_node(&self, node: &str, datacenter: Option<&str>) -> Option<EntryInfo> {
        let key = Key::Node {
            name: node.to_ascii_lowercase().into(),
            datacenter: datacenter.map(|dc| dc.to_ascii_lowercase().into()),
        };
        self.inner.describe(&key)
    }

    /// A [`Witness`] that `service` in `datacenter` is cached, fresh, with
    /// exactly `data` (`None`: cached as not found), as a lookup just returned.
    /// `None` when the cache holds anything else. No I/O.
    pub fn service_witness(
        &self,
        service: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<[ServiceInstance]>>,
    ) -> Option<Witness> {
        let key = Key::Service {
            name: service.to_ascii_lowercase().into(),
            datacenter: datacenter.map(|dc| dc.to_ascii_lowercase().into()),
        };
        let value = data.map_or(Value::Missing, |data| Value::Services(Arc::clone(data)));
        self.inner.witness(key, value)
    }

    /// A [`Witness`] that `node` in `datacenter` is cached, fresh, with exactly
    /// `data` (`None`: cached as not found). `None` when the cache holds
    /// anything else. No I/O.
    pub fn node_witness(
        &self,
        node: &str,
        datacenter: Option<&str>,
        data: Option<&Arc<Node>>,
    ) -> Option<Witness> {
        let key = Key::Node {
            name: node.to_ascii_lowercase().into(),
            datacenter: datacenter.map(|dc| dc.to_ascii_lowercase().into()),
        };
        let value = data.map_or(Value::Missing, |data| Value::Node(Arc::clone(data)));
        self.inner.witness(key, value)
    }

    /// Runs the background refresher until `shutdown` is cancelled.
    ///
    /// Every tick it refreshes the entries that are due and were asked for within
    /// `idle_timeout`, drops entries older than `max_stale` that nobody asks for,
    /// and never has more than a few refreshes in flight. In watch mode it starts
    /// a watch loop for each hot name (up to `max_watches`; the rest are polled);
    /// a loop ends when its name goes idle, leaves the cache, or on shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let tick = (self.inner.config.refresh_interval / 10)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.inner.flush_hits();
                    return;
                }
                _ = interval.tick() => {
                    self.inner.flush_hits();
                    self.inner.refresh_due(&shutdown).await;
                }
            }
        }
    }
}

// === impl Inner ===

impl Inner {
    async fn lookup(self: &Arc<Self>, key: Key) -> Lookup<Value> {
        if let Some(slot) = self.slots.get(&key).await {
            self.pending_hits.fetch_add(1, Ordering::Relaxed);
            self.touch(&slot);
            return self.answer_from_slot(&key, &slot).await;
        }
        self.first_fetch(key).await
    }

    fn flush_hits(&self) {
        let hits = self.pending_hits.swap(0, Ordering::Relaxed);
        if hits > 0 {
            metrics::cache_hits(hits);
        }
    }

    fn witness(self: &Arc<Self>, key: Key, value: Value) -> Option<Witness> {
        let slot = self.slots.get(&key).now_or_never()??;
        let witness = Witness {
            inner: Arc::clone(self),
            key,
            slot,
            value,
        };
        let entry = witness.slot.entry.load();
        let fresh = !entry.last_refresh_failed
            && Instant::now().saturating_duration_since(entry.fetched_at)
                <= self.fresh_window(&entry, witness.slot.watching.load(Ordering::Relaxed));
        (fresh && same_value(&entry.value, &witness.value)).then_some(witness)
    }

    /// A key never seen (or evicted): fetch it once for all concurrent askers.
    async fn first_fetch(self: &Arc<Self>, key: Key) -> Lookup<Value> {
        if !self.breaker.allow_request() {
            metrics::first_fetch("circuit_open");
            return Lookup::Unavailable;
        }
        let this = Arc::clone(self);
        let init_key = key.clone();
        let result = self
            .slots
            .try_get_with(key, async move {
                let fetched = tokio::time::timeout(
                    this.config.first_fetch_timeout,
                    this.fetch(&init_key, MODE_POLL, 0),
                )
                .await;
                match fetched {
                    Ok(Ok(value)) => {
                        this.breaker.record_success();
                        metrics::first_fetch("ok");
                        Ok(Arc::new(this.new_slot(value)))
                    }
                    Ok(Err(error)) => {
                        metrics::first_fetch(error.kind());
                        this.breaker
                            .record_failure(error.is_retryable(), error.kind(), &error);
                        Err(error.kind())
                    }
                    Err(_elapsed) => {
                        metrics::first_fetch("timeout");
                        this.breaker
                            .record_failure(true, "timeout", &"first fetch timed out");
                        Err("timeout")
                    }
                }
            })
            .await;
        match result {
            Ok(slot) => {
                self.touch(&slot);
                let entry = slot.entry.load();
                to_lookup(&entry.value, Freshness::Fresh)
            }
            Err(_kind) => Lookup::Unavailable,
        }
    }

    /// A key with data. Fresh data is answered at once. Aged data is answered
    /// stale at once when its last refresh failed (Consul trouble: never make a
    /// query wait when an answer exists). Data that aged only because nobody
    /// asked (so nobody refreshed it) is of unknown age: it is re-fetched like a
    /// first query, bounded by `first_fetch_timeout`, and served stale if that fails.
    async fn answer_from_slot(&self, key: &Key, slot: &Slot) -> Lookup<Value> {
        let entry = slot.entry.load_full();
        let age = Instant::now().saturating_duration_since(entry.fetched_at);
        if age <= self.fresh_window(&entry, slot.watching.load(Ordering::Relaxed)) {
            return to_lookup(&entry.value, Freshness::Fresh);
        }
        if !entry.last_refresh_failed && self.breaker.allow_request() {
            let refreshed = tokio::time::timeout(
                self.config.first_fetch_timeout,
                self.refresh_slot(key, slot, entry.fetched_at),
            )
            .await;
            match refreshed {
                Ok(true) => {
                    let entry = slot.entry.load();
                    return to_lookup(&entry.value, Freshness::Fresh);
                }
                Ok(false) => {} // failure already recorded
                Err(_elapsed) => {
                    self.breaker.record_failure(
                        true,
                        "timeout",
                        &"re-fetch of an idle name timed out",
                    );
                }
            }
        }
        let entry = slot.entry.load();
        let age = Instant::now().saturating_duration_since(entry.fetched_at);
        if age <= self.config.max_stale {
            to_lookup(&entry.value, Freshness::Stale)
        } else {
            Lookup::Unavailable
        }
    }

    /// Refreshes one slot unless another task is already doing it or already
    /// did it since `seen_fetched_at`. Returns true when the slot holds data
    /// fetched after `seen_fetched_at` on return.
    async fn refresh_slot(&self, key: &Key, slot: &Slot, seen_fetched_at: Instant) -> bool {
        let _guard = slot.refresh_lock.lock().await;
        if slot.entry.load().fetched_at > seen_fetched_at {
            // A concurrent asker refreshed it while we queued: no request sent,
            // so give back the probe slot if we were granted it.
            self.breaker.cancel_probe();
            return true;
        }
        self.refresh_locked(key, slot).await
    }

    /// The refresh itself; the caller holds the slot's refresh lock.
    async fn refresh_locked(&self, key: &Key, slot: &Slot) -> bool {
        match self.fetch(key, MODE_POLL, 0).await {
            Ok(fetched) => {
                self.breaker.record_success();
                metrics::refresh("ok");
                self.store_success(slot, fetched);
                true
            }
            Err(error) => {
                metrics::refresh(error.kind());
                debug!(key = ?key, error = %error, "Consul refresh failed, keeping last good data");
                self.breaker
                    .record_failure(error.is_retryable(), error.kind(), &error);
                let retry_in = self.jittered(self.breaker.current_backoff());
                self.store_failure(slot, &error, retry_in);
                false
            }
        }
    }

    /// Replaces a slot's data with a successful answer.
    fn store_success(&self, slot: &Slot, fetched: Fetched) {
        let now = Instant::now();
        let old = slot.entry.load();
        let next_refresh = now + self.jittered(self.refresh_period(&fetched.value));
        // Unchanged data keeps its allocation, so witnesses of it (answers the
        // fast path stored) stay valid across refreshes.
        let value = if old.value == fetched.value {
            old.value.clone()
        } else {
            fetched.value
        };
        slot.entry.store(Arc::new(Entry {
            value,
            fetched_at: now,
            next_refresh,
            last_refresh_failed: false,
            index: fetched.index.unwrap_or(0),
            last_error: old.last_error.clone(),
        }));
    }

    /// Keeps a slot's last good data, marked failed, retried after `retry_in`.
    fn store_failure(&self, slot: &Slot, error: &consul::Error, retry_in: Duration) {
        let now = Instant::now();
        let old = slot.entry.load();
        slot.entry.store(Arc::new(Entry {
            value: old.value.clone(),
            fetched_at: old.fetched_at,
            next_refresh: now + retry_in,
            last_refresh_failed: true,
            index: old.index,
            last_error: Some(Arc::new(LastError {
                kind: error.kind(),
                message: error.to_string(),
                at: now,
            })),
        }));
    }

    /// One background pass over the slots.
    async fn refresh_due(self: &Arc<Self>, shutdown: &CancellationToken) {
        let now = Instant::now();
        let consul_healthy = !self.breaker.is_open();
        let watch_mode = self.config.refresh == RefreshMode::Watch;
        let mut expired = Vec::new();
        let mut due = Vec::new();
        let mut to_watch = Vec::new();
        for (key, slot) in self.slots.iter() {
            let entry = slot.entry.load();
            if self.is_idle(&slot, now) {
                // Nobody asks: stop costing Consul anything (a watch loop ends by
                // itself). Keep the data as a stale fallback until it is too old.
                if now.saturating_duration_since(entry.fetched_at) > self.config.max_stale {
                    expired.push(Arc::clone(&key));
                }
                continue;
            }
            if watch_mode {
                if slot.watching.load(Ordering::Acquire) {
                    continue; // its loop keeps it current
                }
                if let Ok(permit) = Arc::clone(&self.watch_permits).try_acquire_owned() {
                    if !slot.watching.swap(true, Ordering::AcqRel) {
                        to_watch.push((key, slot, permit));
                    }
                    continue;
                }
                // More hot names than `max_watches`: this one is polled.
            }
            // Once Consul answers again, entries that failed are retried at once
            // rather than after their (long) backoff: answers turn fresh quickly.
            if now >= entry.next_refresh || (entry.last_refresh_failed && consul_healthy) {
                due.push((key, slot));
            }
        }
        for (key, slot, permit) in to_watch {
            let this = Arc::clone(self);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                this.watch(Key::clone(&key), slot, permit, shutdown).await;
            });
        }
        for (key, slot) in due {
            if !self.breaker.allow_request() {
                break; // open: at most one probe, already on its way
            }
            // Wait for a free permit rather than skipping: a large set of hot
            // names is refreshed at the pace Consul answers, never left to age.
            let Ok(permit) = Arc::clone(&self.refresh_permits).acquire_owned().await else {
                self.breaker.cancel_probe();
                return;
            };
            let this = Arc::clone(self);
            let key = Key::clone(&key);
            tokio::spawn(async move {
                let _permit = permit;
                if let Ok(_guard) = slot.refresh_lock.try_lock() {
                    this.refresh_locked(&key, &slot).await;
                } else {
                    this.breaker.cancel_probe();
                }
            });
        }
        for key in expired {
            self.slots.invalidate(&*key).await;
        }
        metrics::entries(self.slots.entry_count());
        if watch_mode {
            metrics::watches(self.watch_count());
        }
    }

    /// Keeps one slot current with blocking queries until its name goes idle,
    /// it leaves the cache, or `shutdown`.
    ///
    /// Consul's rules (reference §b.3): the first request (and the first after a
    /// reset) is a non-blocking read; each later one blocks on the last
    /// `X-Consul-Index`, an index that went backwards resets to 0, one below 1 is
    /// clamped to 1 ([`consul::next_index`]). Requests are paced by [`Pace`]
    /// (no wait in the happy case, burst of 2, then one per `refresh_interval`
    /// while the result churns, never closer than `watch_min_interval`), and
    /// every request passes the shared circuit breaker; a probe through an open
    /// breaker is non-blocking so that it reports back at once.
    async fn watch(
        self: Arc<Self>,
        key: Key,
        slot: Arc<Slot>,
        permit: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let _permit = permit;
        let _watching = WatchingFlag(Arc::clone(&slot));
        let stop = self.watch_stopped(&slot, &shutdown);
        tokio::pin!(stop);
        let mut closed = self.breaker.subscribe_closed();
        let mut pace = Pace::new(
            self.config.watch_min_interval,
            self.config.refresh_interval,
            Instant::now(),
        );
        let mut index = slot.entry.load().index;
        debug!(key = ?key, index, "Watching Consul for changes");
        loop {
            let start_at = pace.next_start(Instant::now());
            if start_at > Instant::now() {
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep_until(start_at) => {}
                }
            }
            let admission = self.breaker.admit();
            if admission == Admission::Denied {
                closed.borrow_and_update();
                // Wake when the next probe may go (whichever loop wakes first
                // sends it); while a probe is in flight, wait for it to close
                // the circuit, or a backoff.
                let breaker = self.breaker.snapshot();
                let pause = match (breaker.state, breaker.retry_in_ms) {
                    (CircuitState::Open, Some(ms)) if ms > 0 => {
                        let spread = self
                            .config
                            .backoff_min
                            .mul_f64(rand::rng().random_range(0.0..=0.5));
                        Duration::from_millis(ms) + spread
                    }
                    _ => self.jittered(self.breaker.current_backoff()),
                };
                tokio::select! {
                    () = &mut stop => break,
                    () = self.backoff_pause(pause, &mut closed) => {}
                }
                continue;
            }
            let send_index = if admission == Admission::Probe {
                0
            } else {
                index
            };
            pace.started(Instant::now());
            let result = tokio::select! {
                () = &mut stop => {
                    if admission == Admission::Probe {
                        self.breaker.cancel_probe();
                    }
                    break;
                }
                result = self.fetch(&key, MODE_WATCH, send_index) => result,
            };
            match result {
                Ok(fetched) => {
                    self.breaker.record_success();
                    metrics::refresh("ok");
                    let returned = fetched.index;
                    let poll_in = self.jittered(self.refresh_period(&fetched.value));
                    self.store_success(&slot, fetched);
                    let Some(returned) = returned else {
                        // No index to block on (e.g. unknown datacenter): poll.
                        index = 0;
                        tokio::select! {
                            () = &mut stop => break,
                            () = tokio::time::sleep(poll_in) => {}
                        }
                        continue;
                    };
                    let next = consul::next_index(index, returned);
                    if next == 0 {
                        metrics::watch_index_reset();
                        debug!(key = ?key, previous = index, returned, "Consul index went backwards, re-reading from scratch");
                    }
                    index = next;
                }
                Err(error) => {
                    metrics::refresh(error.kind());
                    debug!(key = ?key, error = %error, "Consul watch failed, keeping last good data");
                    self.breaker
                        .record_failure(error.is_retryable(), error.kind(), &error);
                    let pause = self.jittered(self.breaker.current_backoff());
                    self.store_failure(&slot, &error, pause);
                    closed.borrow_and_update();
                    tokio::select! {
                        () = &mut stop => break,
                        () = self.backoff_pause(pause, &mut closed) => {}
                    }
                }
            }
        }
        debug!(key = ?key, "Stopped watching");
    }

    /// Completes when a watch loop must end.
    async fn watch_stopped(&self, slot: &Slot, shutdown: &CancellationToken) {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = slot.removed.cancelled() => {}
            () = self.until_idle(slot) => {}
        }
    }

    /// Completes once nobody asked for the slot during `idle_timeout`.
    async fn until_idle(&self, slot: &Slot) {
        loop {
            let last_access =
                self.epoch + Duration::from_millis(slot.last_access_ms.load(Ordering::Relaxed));
            let deadline = last_access + self.config.idle_timeout + Duration::from_millis(1);
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Sleeps `pause`, cut short when the circuit closes again (then after a
    /// random spread, so that the watch loops do not resume in lockstep).
    async fn backoff_pause(&self, pause: Duration, closed: &mut tokio::sync::watch::Receiver<u64>) {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            Ok(()) = closed.changed() => {
                let spread = self
                    .config
                    .backoff_min
                    .min(pause)
                    .mul_f64(rand::rng().random_range(0.0..=1.0));
                tokio::time::sleep(spread).await;
            }
        }
    }

    fn watch_count(&self) -> usize {
        self.config
            .max_watches
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.watch_permits.available_permits())
    }

    fn is_idle(&self, slot: &Slot, now: Instant) -> bool {
        let idle_ms = u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        self.millis_since_epoch(now)
            .saturating_sub(slot.last_access_ms.load(Ordering::Relaxed))
            > idle_ms
    }

    /// A diagnostic view of one key (linear scan: `get` would count as a read).
    fn describe(&self, key: &Key) -> Option<EntryInfo> {
        let (_, slot) = self.slots.iter().find(|(cached, _)| **cached == *key)?;
        let now = Instant::now();
        let entry = slot.entry.load();
        let watching = slot.watching.load(Ordering::Relaxed);
        let age = now.saturating_duration_since(entry.fetched_at);
        let freshness = if entry.last_refresh_failed {
            EntryFreshness::Failed
        } else if age > self.fresh_window(&entry, watching) {
            EntryFreshness::Stale
        } else if matches!(entry.value, Value::Missing) {
            EntryFreshness::Negative
        } else {
            EntryFreshness::Fresh
        };
        let refresh = if watching {
            RefreshState::Watching
        } else if self.is_idle(&slot, now) {
            RefreshState::Idle
        } else {
            RefreshState::Polling
        };
        let (kind, name, datacenter) = match key {
            Key::Service { name, datacenter } => ("service", name, datacenter),
            Key::Node { name, datacenter } => ("node", name, datacenter),
        };
        let last_query_ms = self
            .millis_since_epoch(now)
            .saturating_sub(slot.last_access_ms.load(Ordering::Relaxed));
        Some(EntryInfo {
            kind,
            name: name.to_string(),
            datacenter: datacenter.as_deref().map(str::to_owned),
            freshness,
            age_ms: millis(age),
            consul_index: entry.index,
            instances: match &entry.value {
                Value::Services(instances) => instances.len(),
                Value::Node(_) => 1,
                Value::Missing => 0,
            },
            refresh,
            last_query_ms,
            last_error: entry.last_error.as_ref().map(|error| ErrorInfo {
                kind: error.kind,
                message: error.message.clone(),
                age_ms: millis(now.saturating_duration_since(error.at)),
            }),
        })
    }

    /// One read of `key`; blocking on `index` (with `watch_wait`) when it is above 0.
    async fn fetch(
        &self,
        key: &Key,
        mode: &'static str,
        index: u64,
    ) -> Result<Fetched, consul::Error> {
        let (index, wait) = if index > 0 {
            (Some(index), Some(self.config.watch_wait))
        } else {
            (None, None)
        };
        match key {
            Key::Service { name, datacenter } => {
                let options = consul::QueryOptions {
                    datacenter: datacenter.as_deref().map(str::to_owned),
                    passing: self.config.only_passing,
                    index,
                    wait,
                };
                let result = self.client.health_service(name, &options).await;
                metrics::consul_request("health_service", mode, outcome(&result));
                match result {
                    Ok(response) => {
                        let instances: Vec<ServiceInstance> = response
                            .value
                            .iter()
                            .filter_map(|entry| {
                                ServiceInstance::from_entry(entry, self.config.only_passing)
                            })
                            .collect();
                        let value = if instances.is_empty() {
                            Value::Missing
                        } else {
                            Value::Services(instances.into())
                        };
                        Ok(Fetched {
                            value,
                            index: Some(response.meta.index),
                        })
                    }
                    Err(consul::Error::UnknownDatacenter { .. }) => Ok(Fetched {
                        value: Value::Missing,
                        index: None,
                    }),
                    Err(error) => Err(error),
                }
            }
            Key::Node { name, datacenter } => {
                let options = consul::QueryOptions {
                    datacenter: datacenter.as_deref().map(str::to_owned),
                    index,
                    wait,
                    ..Default::default()
                };
                let result = self.client.catalog_node(name, &options).await;
                metrics::consul_request("catalog_node", mode, outcome(&result));
                match result {
                    Ok(response) => {
                        let value = match response.value {
                            Some(catalog_node) => {
                                Value::Node(Arc::new(Node::from_info(&catalog_node.node)))
                            }
                            None => Value::Missing,
                        };
                        Ok(Fetched {
                            value,
                            index: Some(response.meta.index),
                        })
                    }
                    Err(consul::Error::UnknownDatacenter { .. }) => Ok(Fetched {
                        value: Value::Missing,
                        index: None,
                    }),
                    Err(error) => Err(error),
                }
            }
        }
    }

    fn new_slot(&self, fetched: Fetched) -> Slot {
        let now = Instant::now();
        let next_refresh = now + self.jittered(self.refresh_period(&fetched.value));
        Slot {
            entry: ArcSwap::from_pointee(Entry {
                value: fetched.value,
                fetched_at: now,
                next_refresh,
                last_refresh_failed: false,
                index: fetched.index.unwrap_or(0),
                last_error: None,
            }),
            last_access_ms: AtomicU64::new(self.millis_since_epoch(now)),
            refresh_lock: tokio::sync::Mutex::new(()),
            watching: AtomicBool::new(false),
            removed: CancellationToken::new(),
            evicted: AtomicBool::new(false),
            recency_ms: AtomicU64::new(self.millis_since_epoch(now)),
        }
    }

    /// Positive data is re-read every `refresh_interval`; a negative every `negative_ttl`.
    fn refresh_period(&self, value: &Value) -> Duration {
        match value {
            Value::Missing => self.config.negative_ttl,
            Value::Services(_) | Value::Node(_) => self.config.refresh_interval,
        }
    }

    /// Data stays "fresh" until two refresh periods passed without a
    /// successful refresh: one failed refresh does not mark answers stale. A
    /// healthy watch answers at least every `watch_wait` (+ Consul's wait/16
    /// jitter), so a watched entry whose last request did not fail gets that long on top.
    fn fresh_window(&self, entry: &Entry, watching: bool) -> Duration {
        let poll_window = self.refresh_period(&entry.value) * 2;
        if watching && !entry.last_refresh_failed {
            let wait = self.config.watch_wait;
            poll_window + wait + wait / 16
        } else {
            poll_window
        }
    }

    fn jittered(&self, period: Duration) -> Duration {
        let jitter = self.config.refresh_jitter;
        if jitter <= 0.0 {
            return period;
        }
        let factor = rand::rng().random_range((1.0 - jitter)..=(1.0 + jitter));
        period.mul_f64(factor)
    }

    fn touch(&self, slot: &Slot) {
        slot.last_access_ms
            .store(self.millis_since_epoch(Instant::now()), Ordering::Relaxed);
    }

    fn millis_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

/// Clears a slot's `watching` flag when its watch loop ends, however it ends.
struct WatchingFlag(Arc<Slot>);

impl Drop for WatchingFlag {
    fn drop(&mut self) {
        self.0.watching.store(false, Ordering::Release);
    }
}

fn outcome<T>(result: &Result<T, consul::Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(error) => error.kind(),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn to_lookup(value: &Value, freshness: Freshness) -> Lookup<Value> {
    match value {
        Value::Missing => Lookup::NotFound(freshness),
        other => Lookup::Found(other.clone(), freshness),
    }
}
