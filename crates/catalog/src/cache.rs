//! The catalog cache: one slot per key, coalesced first fetches, background
//! refresh of entries that are being asked for (polled, or watched with
//! blocking queries), stale-on-error.
//!
//! This file holds the slots and the query path (lookups, first fetches,
//! witnesses, `describe`); keeping hot names current (the refresher's pass and
//! the per-name watch loops) is in [`refresh`].

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use dnsfront_consul as consul;
use futures::FutureExt as _;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, BreakerState, Breakers};
use crate::info::{EntryFreshness, EntryInfo, ErrorInfo, RefreshState};
use crate::metrics;
use crate::{Config, Error, Freshness, Lookup, Node, ServiceInstance};
use dnsfront_consul::NodeDetails;

mod refresh;
mod reverse;

use refresh::MODE_POLL;

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
    /// One circuit breaker per datacenter.
    breakers: Breakers,
    /// Never-seen names whose first fetch failed for them alone (403, an
    /// undecodable answer): not asked again before their own backoff ends.
    failed_names: moka::sync::Cache<Key, NameFailure>,
    /// Bounds the first fetches (and re-fetches of idle names) in flight to
    /// the agent (`max_concurrent_fetches`): a flood of random names must not
    /// provoke its 429s. Waiting askers are still coalesced per name.
    fetch_permits: Arc<Semaphore>,
    /// Reference point for the slots' `last_access` timestamps.
    epoch: Instant,
    refresh_permits: Arc<Semaphore>,
    /// One permit per running watch loop (`max_watches`).
    watch_permits: Arc<Semaphore>,
    /// Cache hits not yet reported to the metrics recorder: counted here and
    /// flushed once per refresher tick, because a recorder call per hit costs
    /// more than the hit itself on the DNS fast path.
    pending_hits: AtomicU64,
    /// Wakes the refresher when a name is cached for the first time, so that
    /// it needs no frequent tick to find new names (watch mode starts their
    /// watch at once).
    refresher_wake: tokio::sync::Notify,
    /// The agent's datacenter, learned from answers for names asked without one.
    local_datacenter: ArcSwapOption<String>,
    /// Which cached service names a node, so that `NODE.node` is answered from
    /// health data already held (`/v1/catalog/node` is never streamed: each
    /// read is a server RPC). See [`NodeIndex`].
    node_index: NodeIndex,
    /// Set when cached service data changed: the refresher's next pass
    /// rebuilds `node_index` and re-derives the nodes answered from it.
    services_changed: AtomicBool,
}

/// Node name → a cached service whose health data holds that node, keyed by
/// a hash of (datacenter asked, lower-case node name). Entries are added as
/// service data is stored and the map is rebuilt by the refresher after
/// changes; at most `max_entries` nodes (beyond that, nodes are read from
/// Consul as before). A hash collision or an outdated entry only costs a
/// `/v1/catalog/node` read: the service's data is checked before use.
struct NodeIndex {
    hasher: std::collections::hash_map::RandomState,
    services: Mutex<HashMap<u64, Key>>,
    capacity: usize,
}

impl NodeIndex {
    fn new(capacity: usize) -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            services: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn hash(&self, datacenter: Option<&Arc<str>>, node: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        datacenter.map(|dc| &**dc).hash(&mut hasher);
        for byte in node.bytes() {
            hasher.write_u8(byte.to_ascii_lowercase());
        }
        hasher.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Key>> {
        self.services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the nodes of `instances`, cached under `service`.
    fn add(&self, service: &Key, instances: &[ServiceInstance]) {
        let hashes: Vec<u64> = instances
            .iter()
            .filter(|instance| instance.node_address.is_some())
            .map(|instance| self.hash(service.datacenter(), &instance.node))
            .collect();
        let mut map = self.lock();
        for hash in hashes {
            if map.len() >= self.capacity && !map.contains_key(&hash) {
                break;
            }
            map.insert(hash, service.clone());
        }
    }

    /// The service that named `node` in `datacenter` when last recorded.
    fn service_of(&self, datacenter: Option<&Arc<str>>, node: &str) -> Option<Key> {
        let hash = self.hash(datacenter, node);
        self.lock().get(&hash).cloned()
    }

    fn replace(&self, map: HashMap<u64, Key>) {
        *self.lock() = map;
    }
}

/// How the agent served a read, from its `X-Consul-Query-Backend`, `X-Cache`
/// and `Age` headers (for `explain`, and `check`'s streaming warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadMeta {
    pub(crate) backend: consul::QueryBackend,
    pub(crate) cache: consul::CacheStatus,
    pub(crate) age: Option<Duration>,
}

impl ReadMeta {
    fn of(meta: &consul::QueryMeta) -> Self {
        Self {
            backend: meta.backend,
            cache: meta.cache,
            age: meta.age,
        }
    }
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
    /// Set while the last refresh failed for this name alone (403, an
    /// undecodable answer): its own backoff, which the breaker's closing does
    /// not cut short.
    name_backoff: Option<consul::Backoff>,
    /// How the agent served the last answer (`None`: no answer headers, e.g.
    /// a node answered from a cached service).
    read: Option<ReadMeta>,
    /// A node answered from this cached service's health data, without a
    /// `/v1/catalog/node` read.
    from_service: Option<Arc<str>>,
}

/// A never-seen name whose first fetch failed for it alone.
#[derive(Debug, Clone)]
struct NameFailure {
    /// No request for it before this.
    retry_at: Instant,
    /// Its own backoff, doubling per failure.
    backoff: consul::Backoff,
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
/// An empty answer from a server that knows no leader (`X-Consul-KnownLeader: false`:
/// stale reads keep working without one) may come from a server that lost its data or has
/// not caught up after a restart or a snapshot restore. One such answer must not replace
/// the data of every node that asks, nor become NXDOMAIN that clients cache: it is read as
/// an outage (Consul's own "No cluster leader"), so known names keep their data, stale, and
/// never-seen names get SERVFAIL until a server with a leader answers.
fn doubt_empty_without_leader(
    value: &Value,
    meta: &consul::QueryMeta,
    endpoint: &str,
) -> Result<(), consul::Error> {
    if matches!(value, Value::Missing) && !meta.known_leader {
        return Err(consul::Error::NoLeader {
            endpoint: endpoint.to_owned(),
        });
    }
    Ok(())
}

/// A node as a cached service's health data holds it.
struct DerivedNode {
    node: Node,
    /// The service whose data it came from.
    service: Arc<str>,
    /// That data's `X-Consul-Index`.
    index: u64,
}

struct Fetched {
    value: Value,
    index: Option<u64>,
    read: Option<ReadMeta>,
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
    /// Estimated bytes of the data moka last weighed this slot with (see
    /// [`weigh_value`]); a refresh whose data weighs much more or less sets
    /// `reweigh`, and the refresher's next pass re-inserts the slot so moka
    /// charges it again (a weight is fixed at insert).
    charged_value: AtomicU64,
    /// Set when the data changed weight; cleared by the re-insert.
    reweigh: AtomicBool,
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
        inner.accessed(&self.slot, now_ms);
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

/// Bytes charged per slot besides its key and data: the slot, its entry,
/// their `Arc`s, moka's node and its place in moka's tables and deques.
const SLOT_OVERHEAD: u64 =
    (size_of::<Slot>() + size_of::<Entry>() + size_of::<Key>() + 4 * 16 + 160) as u64;

/// Bytes of a key's names (the `Key` itself is in [`SLOT_OVERHEAD`]).
fn weigh_key(key: &Key) -> u64 {
    let (Key::Service { name, datacenter } | Key::Node { name, datacenter }) = key;
    (name.len() + datacenter.as_ref().map_or(0, |dc| dc.len())) as u64
}

/// Estimated heap bytes of cached data: each instance's struct, its node and
/// datacenter names and its tags (each `String` rounded up by the allocator's
/// 16-byte steps). Computed when moka weighs a slot and after each refresh,
/// never per lookup.
fn weigh_value(value: &Value) -> u64 {
    let text = |s: &str| s.len().div_ceil(16) * 16;
    let bytes = match value {
        Value::Services(instances) => {
            instances
                .iter()
                .map(|instance| {
                    size_of::<ServiceInstance>()
                        + text(&instance.node)
                        + text(&instance.datacenter)
                        + instance.tags.capacity() * size_of::<String>()
                        + instance.tags.iter().map(|tag| text(tag)).sum::<usize>()
                        + instance.details.as_deref().map_or(0, |details| {
                            size_of::<dnsfront_consul::InstanceDetails>()
                                + meta_bytes(&details.node_meta)
                        })
                })
                .sum::<usize>()
                + 16
        }
        Value::Node(node) => {
            size_of::<Node>()
                + text(&node.name)
                + text(&node.datacenter)
                + node.details.as_deref().map_or(0, |details| {
                    size_of::<NodeDetails>() + meta_bytes(&details.meta)
                })
                + 16
        }
        Value::Missing => 0,
    };
    bytes as u64
}

/// Estimated heap bytes of node metadata (as [`weigh_value`] counts strings).
fn meta_bytes(meta: &[(String, String)]) -> usize {
    let text = |s: &str| s.len().div_ceil(16) * 16;
    size_of_val(meta)
        + meta
            .iter()
            .map(|(key, value)| text(key) + text(value))
            .sum::<usize>()
}

/// True when data now weighing `now` should be charged again: it outgrew
/// what was charged, or shrank to under half of it.
fn needs_reweigh(charged: u64, now: u64) -> bool {
    now > charged || now < charged / 2
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
        // Every slot weighs at least `floor`, so `max_bytes` also holds the
        // count to about `max_entries` (the approach of the forwarder's cache).
        let floor = (config.max_bytes / config.max_entries.saturating_add(1)).max(1);
        let slots = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(move |key: &Key, slot: &Arc<Slot>| {
                let value = weigh_value(&slot.entry.load().value);
                slot.charged_value.store(value, Ordering::Relaxed);
                let weight = (weigh_key(key) + value + SLOT_OVERHEAD).max(floor);
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .eviction_listener(|_key, slot: Arc<Slot>, cause| {
                if cause == moka::notification::RemovalCause::Replaced {
                    // Only a re-weigh inserts over a cached key, with the same slot.
                    return;
                }
                if cause == moka::notification::RemovalCause::Size {
                    metrics::eviction();
                }
                slot.evicted.store(true, Ordering::Release);
                slot.removed.cancel();
            })
            .build();
        let backoff =
            consul::Backoff::try_new(config.backoff_min, config.backoff_max, consul::HALF_JITTER)
                .expect("Config::validate checked backoff_min > 0 and backoff_max >= backoff_min");
        let breakers = Breakers::new(backoff);
        let failed_names = moka::sync::Cache::builder()
            .max_capacity(config.max_entries)
            .time_to_live(config.backoff_max)
            .build();
        let fetch_permits = Arc::new(Semaphore::new(
            config.max_concurrent_fetches.min(Semaphore::MAX_PERMITS),
        ));
        let watch_permits = Arc::new(Semaphore::new(
            config.max_watches.min(Semaphore::MAX_PERMITS),
        ));
        let max_entries = config.max_entries;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                slots,
                breakers,
                failed_names,
                fetch_permits,
                epoch: Instant::now(),
                refresh_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REFRESHES)),
                watch_permits,
                pending_hits: AtomicU64::new(0),
                refresher_wake: tokio::sync::Notify::new(),
                local_datacenter: ArcSwapOption::empty(),
                node_index: NodeIndex::new(usize::try_from(max_entries).unwrap_or(usize::MAX)),
                services_changed: AtomicBool::new(false),
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

    /// True while the circuit breaker of the agent's own datacenter holds
    /// Consul requests back.
    pub fn consul_unavailable(&self) -> bool {
        self.inner.breakers.local().is_open()
    }

    /// Number of cached keys (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.inner.slots.entry_count()
    }

    /// Estimated bytes charged to the cached keys (approximate, as moka
    /// counts): at most [`Config::max_bytes`] once moka has caught up.
    pub fn weighted_size(&self) -> u64 {
        self.inner.slots.weighted_size()
    }

    /// Lets moka apply pending inserts and evictions now (it does so lazily),
    /// so [`Cache::entry_count`] and [`Cache::weighted_size`] are exact.
    pub async fn settle(&self) {
        self.inner.slots.run_pending_tasks().await;
    }

    /// True while the circuit breaker of `datacenter` (`None` = the agent's)
    /// holds Consul requests back. No I/O; a datacenter never failed has none.
    pub fn consul_unavailable_in(&self, datacenter: Option<&str>) -> bool {
        self.inner.breakers.is_open(datacenter)
    }

    /// The position and backoff of the agent's own datacenter's circuit breaker (no I/O).
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breakers.local().snapshot()
    }

    /// Every datacenter's circuit breaker that is not closed and quiet, the
    /// agent's own first (`None`); remote ones by name. No I/O.
    pub fn breaker_states(&self) -> Vec<(Option<String>, BreakerState)> {
        self.inner.breakers.snapshots()
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
}

// === impl Inner ===

impl Inner {
    async fn lookup(self: &Arc<Self>, key: Key) -> Lookup<Value> {
        if let Some(slot) = self.slots.get(&key).await {
            self.pending_hits.fetch_add(1, Ordering::Relaxed);
            self.touch(&slot);
            return self.answer_from_slot(&key, &slot).await;
        }
        if let Some(derived) = self.node_from_services(&key).await {
            // A node a cached service's health data holds: no request.
            metrics::first_fetch("from_health");
            let slot = Arc::new(self.derived_slot(derived));
            self.slots.insert(key, Arc::clone(&slot)).await;
            self.refresher_wake.notify_one();
            let entry = slot.entry.load();
            return to_lookup(&entry.value, Freshness::Fresh);
        }
        self.first_fetch(key).await
    }

    /// The node `key` names, as the fresh health data of a cached service of
    /// its datacenter holds it (every health entry carries its node: address,
    /// tagged addresses, meta), with that service's name. `None` for a
    /// service key, or when no such data is at hand (then Consul is asked).
    /// A node whose address is not an IP is left to `/v1/catalog/node`: an
    /// instance does not keep a node hostname apart from its own.
    pub(super) async fn node_from_services(&self, key: &Key) -> Option<DerivedNode> {
        let Key::Node { name, datacenter } = key else {
            return None;
        };
        let service_key = self.node_index.service_of(datacenter.as_ref(), name)?;
        let slot = self.slots.get(&service_key).await?;
        let entry = slot.entry.load();
        let fresh = !entry.last_refresh_failed
            && Instant::now().saturating_duration_since(entry.fetched_at)
                <= self.fresh_window(&entry, slot.watching.load(Ordering::Relaxed));
        let Value::Services(instances) = &entry.value else {
            return None;
        };
        if !fresh {
            return None;
        }
        let instance = instances.iter().find(|instance| {
            instance.node_address.is_some() && instance.node.eq_ignore_ascii_case(name)
        })?;
        let details = NodeDetails {
            meta: instance.node_meta().to_vec(),
            tagged: instance
                .details
                .as_deref()
                .map(|details| details.node_tagged)
                .unwrap_or_default(),
        };
        let node = Node {
            name: instance.node.clone(),
            datacenter: instance.datacenter.clone(),
            address: instance.node_address,
            hostname: None,
            details: (details != NodeDetails::default()).then(|| Arc::new(details)),
        };
        let Key::Service { name: service, .. } = &service_key else {
            return None;
        };
        Some(DerivedNode {
            node,
            service: Arc::clone(service),
            index: entry.index,
        })
    }

    /// A slot for a node answered from a cached service's health data.
    fn derived_slot(&self, derived: DerivedNode) -> Slot {
        let slot = self.new_slot(Fetched {
            value: Value::Missing,
            index: None,
            read: None,
        });
        self.store_derived(&slot, derived);
        slot
    }

    /// Records that `key` (a service) now holds `value`: its nodes go into
    /// the node index, and the refresher re-derives the nodes answered from
    /// cached services.
    fn service_data_stored(&self, key: &Key, value: &Value) {
        if let (Key::Service { .. }, Value::Services(instances)) = (key, value) {
            self.node_index.add(key, instances);
            self.services_changed.store(true, Ordering::Release);
            self.refresher_wake.notify_one();
        }
    }

    /// Rebuilds the node index from the cached services.
    pub(super) fn rebuild_node_index(&self) {
        let mut map = HashMap::new();
        for (key, slot) in self.slots.iter() {
            if map.len() >= self.node_index.capacity {
                break;
            }
            if let Value::Services(instances) = &slot.entry.load().value {
                for instance in instances.iter().filter(|i| i.node_address.is_some()) {
                    let hash = self.node_index.hash(key.datacenter(), &instance.node);
                    map.entry(hash).or_insert_with(|| Key::clone(&key));
                }
            }
        }
        self.node_index.replace(map);
    }

    /// Counts the hits since the last call; true when there were any.
    fn flush_hits(&self) -> bool {
        let hits = self.pending_hits.swap(0, Ordering::Relaxed);
        if hits > 0 {
            metrics::cache_hits(hits);
        }
        hits > 0
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

    /// A key never seen (or evicted): fetch it once for all concurrent askers,
    /// within `first_fetch_timeout` (waiting for a fetch permit included).
    async fn first_fetch(self: &Arc<Self>, key: Key) -> Lookup<Value> {
        if self
            .failed_names
            .get(&key)
            .is_some_and(|failure| Instant::now() < failure.retry_at)
        {
            metrics::first_fetch("name_backoff");
            return Lookup::Unavailable;
        }
        let breaker = self.breaker(&key);
        if !breaker.allow_request() {
            metrics::first_fetch("circuit_open");
            return Lookup::Unavailable;
        }
        let this = Arc::clone(self);
        let init_key = key.clone();
        let result = self
            .slots
            .try_get_with(key, async move {
                // A plain read (never `?cached`): a name nobody may ask for
                // again must leave no streaming subscription behind.
                let fetched = this
                    .fetch_with_permit(&breaker, &init_key, |key| async {
                        this.fetch(key, MODE_POLL, &consul::QueryOptions::default())
                            .await
                    })
                    .await;
                match fetched {
                    Ok(value) => {
                        breaker.record_success();
                        this.failed_names.invalidate(&init_key);
                        metrics::first_fetch("ok");
                        this.service_data_stored(&init_key, &value.value);
                        Ok(Arc::new(this.new_slot(value)))
                    }
                    Err(FetchFailure::Consul { error, started }) => {
                        metrics::first_fetch(error.kind());
                        if error.is_retryable() {
                            breaker.record_failure(error.kind(), &error, started);
                        } else {
                            this.name_failed(&init_key);
                        }
                        Err(error.kind())
                    }
                    Err(FetchFailure::Busy) => {
                        metrics::first_fetch("busy");
                        Err("busy")
                    }
                    Err(FetchFailure::TimedOut { started }) => {
                        metrics::first_fetch("timeout");
                        breaker.record_failure("timeout", &"first fetch timed out", started);
                        Err("timeout")
                    }
                }
            })
            .await;
        match result {
            Ok(slot) => {
                self.touch(&slot);
                self.refresher_wake.notify_one();
                let entry = slot.entry.load();
                to_lookup(&entry.value, Freshness::Fresh)
            }
            Err(_kind) => Lookup::Unavailable,
        }
    }

    /// Runs `fetch` once a fetch permit is free, all within
    /// `first_fetch_timeout`. Time spent waiting for a permit is this node's
    /// own queue, not Consul's fault: running out of time there is `Busy`. When
    /// no request is sent, a probe slot `breaker` granted is given back.
    async fn fetch_with_permit<'a, T, F>(
        &self,
        breaker: &Breaker,
        key: &'a Key,
        fetch: impl FnOnce(&'a Key) -> F,
    ) -> Result<T, FetchFailure>
    where
        F: Future<Output = Result<T, consul::Error>>,
    {
        let deadline = Instant::now() + self.config.first_fetch_timeout;
        let permit =
            tokio::time::timeout_at(deadline, Arc::clone(&self.fetch_permits).acquire_owned())
                .await;
        let Ok(Ok(_permit)) = permit else {
            breaker.cancel_probe();
            return Err(FetchFailure::Busy);
        };
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, fetch(key)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(FetchFailure::Consul { error, started }),
            Err(_elapsed) => Err(FetchFailure::TimedOut { started }),
        }
    }

    /// A never-seen name failed for itself alone: not asked again before its
    /// own (doubling) backoff ends.
    fn name_failed(&self, key: &Key) {
        let mut backoff = self
            .failed_names
            .get(key)
            .map_or_else(|| self.new_backoff(), |failure| failure.backoff);
        let retry_at = Instant::now() + backoff.next_delay();
        self.failed_names
            .insert(key.clone(), NameFailure { retry_at, backoff });
    }

    fn new_backoff(&self) -> consul::Backoff {
        consul::Backoff::try_new(
            self.config.backoff_min,
            self.config.backoff_max,
            consul::HALF_JITTER,
        )
        .expect("Config::validate checked backoff_min > 0 and backoff_max >= backoff_min")
    }

    /// The circuit breaker of `key`'s datacenter.
    fn breaker(&self, key: &Key) -> Arc<Breaker> {
        self.breakers.get(key.datacenter())
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
        if let Some(derived) = self.node_from_services(key).await {
            // An idle node that a cached service names: no request.
            self.store_derived(slot, derived);
            return to_lookup(&slot.entry.load().value, Freshness::Fresh);
        }
        let breaker = self.breaker(key);
        if !entry.last_refresh_failed && breaker.allow_request() {
            let refreshed = self
                .fetch_with_permit(&breaker, key, |key| async {
                    Ok::<_, consul::Error>(self.refresh_slot(key, slot, entry.fetched_at).await)
                })
                .await;
            match refreshed {
                Ok(true) => {
                    let entry = slot.entry.load();
                    return to_lookup(&entry.value, Freshness::Fresh);
                }
                // Failure already recorded, or no request sent.
                Ok(false) | Err(FetchFailure::Busy | FetchFailure::Consul { .. }) => {}
                Err(FetchFailure::TimedOut { started }) => {
                    breaker.record_failure(
                        "timeout",
                        &"re-fetch of an idle name timed out",
                        started,
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
            query_backend: entry.read.map(|read| read.backend.as_str()),
            agent_cache: entry.read.map(|read| read.cache.as_str()),
            agent_cache_age_s: entry
                .read
                .and_then(|read| read.age)
                .map(|age| age.as_secs()),
            from_service: entry.from_service.as_deref().map(str::to_owned),
        })
    }

    /// One read of `key`; `blocking` carries a watch's index and wait (the
    /// defaults: a plain read).
    async fn fetch(
        &self,
        key: &Key,
        mode: &'static str,
        blocking: &consul::QueryOptions,
    ) -> Result<Fetched, consul::Error> {
        let (index, wait) = (blocking.index, blocking.wait);
        let (endpoint, result) = match key {
            Key::Service { name, datacenter } => {
                let options = consul::QueryOptions {
                    datacenter: datacenter.as_deref().map(str::to_owned),
                    passing: self.config.only_passing,
                    index,
                    wait,
                    cached: blocking.cached,
                };
                let result = self.client.health_service(name, &options).await;
                let value = result.and_then(|response| {
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
                    doubt_empty_without_leader(&value, &response.meta, "/v1/health/service")?;
                    Ok((value, response.meta.index, ReadMeta::of(&response.meta)))
                });
                ("health_service", value)
            }
            Key::Node { name, datacenter } => {
                let options = consul::QueryOptions {
                    datacenter: datacenter.as_deref().map(str::to_owned),
                    index,
                    wait,
                    ..Default::default()
                };
                let result = self.client.catalog_node(name, &options).await;
                let value = result.and_then(|response| {
                    let value = match response.value {
                        Some(catalog_node) => {
                            Value::Node(Arc::new(Node::from_info(&catalog_node.node)))
                        }
                        None => Value::Missing,
                    };
                    doubt_empty_without_leader(&value, &response.meta, "/v1/catalog/node")?;
                    Ok((value, response.meta.index, ReadMeta::of(&response.meta)))
                });
                ("catalog_node", value)
            }
        };
        metrics::consul_request(endpoint, mode, outcome(&result));
        match result {
            Ok((value, index, read)) => {
                self.learn_datacenter(key, &value);
                Ok(Fetched {
                    value,
                    index: Some(index),
                    read: Some(read),
                })
            }
            // Consul's DNS answers NXDOMAIN for an unknown datacenter; so do we.
            Err(consul::Error::UnknownDatacenter { .. }) => Ok(Fetched {
                value: Value::Missing,
                index: None,
                read: None,
            }),
            Err(error) => Err(error),
        }
    }

    fn new_slot(&self, fetched: Fetched) -> Slot {
        let now = Instant::now();
        let next_refresh = now + self.jittered(self.refresh_period(&fetched.value, false));
        Slot {
            entry: ArcSwap::from_pointee(Entry {
                value: fetched.value,
                fetched_at: now,
                next_refresh,
                last_refresh_failed: false,
                index: fetched.index.unwrap_or(0),
                last_error: None,
                name_backoff: None,
                read: fetched.read,
                from_service: None,
            }),
            last_access_ms: AtomicU64::new(self.millis_since_epoch(now)),
            refresh_lock: tokio::sync::Mutex::new(()),
            watching: AtomicBool::new(false),
            removed: CancellationToken::new(),
            evicted: AtomicBool::new(false),
            recency_ms: AtomicU64::new(self.millis_since_epoch(now)),
            charged_value: AtomicU64::new(0),
            reweigh: AtomicBool::new(false),
        }
    }

    /// Services are re-read every `refresh_interval`; a negative every
    /// `negative_ttl`; a node read from `/v1/catalog/node` (never streamed) every
    /// `node_refresh_interval`, one answered from a cached service's health
    /// data (`derived`, no request) re-derived every `refresh_interval`.
    fn refresh_period(&self, value: &Value, derived: bool) -> Duration {
        match value {
            Value::Missing => self.config.negative_ttl,
            Value::Node(_) if !derived => self.config.node_refresh_interval,
            Value::Services(_) | Value::Node(_) => self.config.refresh_interval,
        }
    }

    /// Data stays "fresh" until two refresh periods passed without a
    /// successful refresh: one failed refresh does not mark answers stale. A
    /// healthy watch answers at least every `watch_wait` (+ Consul's wait/16
    /// jitter), so a watched entry whose last request did not fail gets that long on top.
    fn fresh_window(&self, entry: &Entry, watching: bool) -> Duration {
        let poll_window = self.refresh_period(&entry.value, entry.from_service.is_some()) * 2;
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
        self.accessed(slot, self.millis_since_epoch(Instant::now()));
    }

    /// Records an access at `now_ms`. A name asked again after it went idle
    /// wakes the refresher, which sleeps long while nothing is asked (see
    /// [`Cache::run`]): its watch or poll starts again at once.
    fn accessed(&self, slot: &Slot, now_ms: u64) {
        let idle_ms = u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let previous = slot.last_access_ms.load(Ordering::Relaxed);
        slot.last_access_ms.store(now_ms, Ordering::Relaxed);
        if now_ms.saturating_sub(previous) > idle_ms && !slot.watching.load(Ordering::Relaxed) {
            self.refresher_wake.notify_one();
        }
    }

    fn millis_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

/// Why a fetch from the query path gave no answer.
enum FetchFailure {
    /// Consul failed the request sent at `started`.
    Consul {
        error: consul::Error,
        started: Instant,
    },
    /// No request was sent: every fetch permit stayed taken until the deadline.
    Busy,
    /// The request sent at `started` did not complete before the deadline.
    TimedOut { started: Instant },
}

impl Key {
    /// The datacenter asked for (lower-case; `None` = the agent's).
    fn datacenter(&self) -> Option<&Arc<str>> {
        match self {
            Key::Service { datacenter, .. } | Key::Node { datacenter, .. } => datacenter.as_ref(),
        }
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
