//! The catalog cache: one slot per key, coalesced first fetches, background
//! refresh of entries that are being asked for, stale-on-error.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use dnsfront_consul as consul;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::breaker::Breaker;
use crate::metrics;
use crate::{Config, Error, Freshness, Lookup, Node, ServiceInstance};

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

#[derive(Debug, Clone)]
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
}

struct Slot {
    entry: ArcSwap<Entry>,
    /// Milliseconds since `Inner::epoch` of the last query for this key.
    last_access_ms: AtomicU64,
    /// Held while a refresh of this key is in flight: one request per key.
    refresh_lock: tokio::sync::Mutex<()>,
}

impl Cache {
    /// Builds the cache; call [`Cache::run`] to start background refresh.
    pub fn new(config: Config, client: consul::Client) -> Result<Self, Error> {
        config.validate()?;
        let slots = moka::future::Cache::builder()
            .max_capacity(config.max_entries)
            .build();
        let breaker = Breaker::new(config.backoff_min, config.backoff_max);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                slots,
                breaker,
                epoch: Instant::now(),
                refresh_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REFRESHES)),
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

    /// True while the circuit breaker holds Consul requests back.
    pub fn consul_unavailable(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// Number of cached keys (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.inner.slots.entry_count()
    }

    /// Runs the background refresher until `shutdown` is cancelled.
    ///
    /// Every tick it refreshes the entries that are due and were asked for within
    /// `idle_timeout`, drops entries older than `max_stale` that nobody asks for,
    /// and never has more than a few refreshes in flight.
    pub async fn run(self, shutdown: CancellationToken) {
        let tick = (self.inner.config.refresh_interval / 10)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => self.inner.refresh_due().await,
            }
        }
    }
}

// === impl Inner ===

impl Inner {
    async fn lookup(self: &Arc<Self>, key: Key) -> Lookup<Value> {
        if let Some(slot) = self.slots.get(&key).await {
            self.touch(&slot);
            return self.answer_from_slot(&key, &slot).await;
        }
        self.first_fetch(key).await
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
                let fetched =
                    tokio::time::timeout(this.config.first_fetch_timeout, this.fetch(&init_key))
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
        if age <= self.fresh_window(&entry.value) {
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
        let result = self.fetch(key).await;
        let now = Instant::now();
        match result {
            Ok(value) => {
                self.breaker.record_success();
                metrics::refresh("ok");
                let next_refresh = now + self.jittered(self.refresh_period(&value));
                slot.entry.store(Arc::new(Entry {
                    value,
                    fetched_at: now,
                    next_refresh,
                    last_refresh_failed: false,
                }));
                true
            }
            Err(error) => {
                metrics::refresh(error.kind());
                debug!(key = ?key, error = %error, "Consul refresh failed, keeping last good data");
                self.breaker
                    .record_failure(error.is_retryable(), error.kind(), &error);
                let old = slot.entry.load();
                let retry_in = self.jittered(self.breaker.current_backoff());
                slot.entry.store(Arc::new(Entry {
                    value: old.value.clone(),
                    fetched_at: old.fetched_at,
                    next_refresh: now + retry_in,
                    last_refresh_failed: true,
                }));
                false
            }
        }
    }

    /// One background pass over the slots.
    async fn refresh_due(self: &Arc<Self>) {
        let now = Instant::now();
        let now_ms = self.millis_since_epoch(now);
        let idle_ms = u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let consul_healthy = !self.breaker.is_open();
        let mut expired = Vec::new();
        let mut due = Vec::new();
        for (key, slot) in self.slots.iter() {
            let entry = slot.entry.load();
            let idle = now_ms.saturating_sub(slot.last_access_ms.load(Ordering::Relaxed)) > idle_ms;
            if idle {
                // Nobody asks: stop costing Consul anything. Keep the data as a
                // stale fallback until it is too old to be of use.
                if now.saturating_duration_since(entry.fetched_at) > self.config.max_stale {
                    expired.push(Arc::clone(&key));
                }
                continue;
            }
            // Once Consul answers again, entries that failed are retried at once
            // rather than after their (long) backoff: answers turn fresh quickly.
            if now >= entry.next_refresh || (entry.last_refresh_failed && consul_healthy) {
                due.push((key, slot));
            }
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
    }

    async fn fetch(&self, key: &Key) -> Result<Value, consul::Error> {
        match key {
            Key::Service { name, datacenter } => {
                let options = consul::QueryOptions {
                    datacenter: datacenter.as_deref().map(str::to_owned),
                    passing: self.config.only_passing,
                    ..Default::default()
                };
                match self.client.health_service(name, &options).await {
                    Ok(response) => {
                        let instances: Vec<ServiceInstance> = response
                            .value
                            .into_iter()
                            .filter(|entry| entry.passes_dns_health(self.config.only_passing))
                            .map(to_instance)
                            .collect();
                        if instances.is_empty() {
                            Ok(Value::Missing)
                        } else {
                            Ok(Value::Services(instances.into()))
                        }
                    }
                    Err(consul::Error::UnknownDatacenter { .. }) => Ok(Value::Missing),
                    Err(error) => Err(error),
                }
            }
            Key::Node { name, datacenter } => {
                let options = consul::QueryOptions {
                    datacenter: datacenter.as_deref().map(str::to_owned),
                    ..Default::default()
                };
                match self.client.catalog_node(name, &options).await {
                    Ok(response) => Ok(match response.value {
                        Some(catalog_node) => Value::Node(Arc::new(Node {
                            name: catalog_node.node.node.clone(),
                            datacenter: catalog_node.node.datacenter.clone(),
                            address: parse_ip(&catalog_node.node.address),
                        })),
                        None => Value::Missing,
                    }),
                    Err(consul::Error::UnknownDatacenter { .. }) => Ok(Value::Missing),
                    Err(error) => Err(error),
                }
            }
        }
    }

    fn new_slot(&self, value: Value) -> Slot {
        let now = Instant::now();
        let next_refresh = now + self.jittered(self.refresh_period(&value));
        Slot {
            entry: ArcSwap::from_pointee(Entry {
                value,
                fetched_at: now,
                next_refresh,
                last_refresh_failed: false,
            }),
            last_access_ms: AtomicU64::new(self.millis_since_epoch(now)),
            refresh_lock: tokio::sync::Mutex::new(()),
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
    /// successful refresh: one failed refresh does not mark answers stale.
    fn fresh_window(&self, value: &Value) -> Duration {
        self.refresh_period(value) * 2
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

fn to_lookup(value: &Value, freshness: Freshness) -> Lookup<Value> {
    match value {
        Value::Missing => Lookup::NotFound(freshness),
        other => Lookup::Found(other.clone(), freshness),
    }
}

fn to_instance(entry: consul::ServiceEntry) -> ServiceInstance {
    let warning = entry.has_warning();
    let weight = match &entry.service.weights {
        Some(weights) if warning => weights.warning,
        Some(weights) => weights.passing,
        None => 1,
    };
    ServiceInstance {
        node: entry.node.node,
        datacenter: entry.node.datacenter,
        node_address: parse_ip(&entry.node.address),
        service_address: parse_ip(&entry.service.address),
        port: entry.service.port,
        tags: entry.service.tags,
        weight,
    }
}

/// Consul addresses may be hostnames; DNS answers here use IP addresses only.
fn parse_ip(address: &str) -> Option<IpAddr> {
    if address.is_empty() {
        return None;
    }
    match address.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            // Per fetch, so debug: the operator sees it once in `dnsfront explain`-style tooling.
            debug!(
                address,
                "Consul address is not an IP address; hostname addresses are not served yet"
            );
            None
        }
    }
}
