//! Keeping hot names current: the refresher's pass over the slots (poll mode,
//! and the polled overflow of watch mode), one refresh of a slot, and the
//! per-name watch loop of watch mode.
//!
//! Consul's blocking-query rules (index resets, the clamp to 1, the pace between
//! wake-ups) come from [`consul::Watch`]; the pause after a failure comes from
//! the circuit breaker of the name's datacenter ([`consul::Backoff`]), or from
//! the name's own backoff when it failed alone (403, an undecodable answer).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dnsfront_consul::{self as consul, IndexChange, Pace};
use rand::Rng as _;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Cache, DerivedNode, Entry, Fetched, Inner, Key, LastError, Slot, Value};
use crate::breaker::{Admission, Breaker, CircuitState};
use crate::config::RefreshMode;
use crate::metrics;

/// `mode` tag of requests sent by a watch loop.
pub(super) const MODE_WATCH: &str = "watch";
/// `mode` tag of every other read (first fetches, periodic and on-demand re-reads).
pub(super) const MODE_POLL: &str = "poll";

/// Longest sleep of the refresher while nothing is asked (see [`Cache::run`]).
const IDLE_PASS_INTERVAL: Duration = Duration::from_secs(60);

/// What one pass of the refresher found to do.
#[derive(Default)]
struct Pass {
    /// Idle keys whose data is older than `max_stale`: dropped.
    expired: Vec<Arc<Key>>,
    /// Keys to re-read now.
    due: Vec<(Arc<Key>, Arc<Slot>)>,
    /// Hot keys that get a watch loop (watch mode), each with its `max_watches` permit.
    to_watch: Vec<(Arc<Key>, Arc<Slot>, OwnedSemaphorePermit)>,
    /// Keys whose data changed weight since moka weighed them: re-inserted.
    to_reweigh: Vec<(Arc<Key>, Arc<Slot>)>,
    /// Node keys to answer from cached services' health data if they can
    /// (due ones, and those already answered so when service data changed);
    /// `true` when due: read from Consul if they cannot.
    nodes: Vec<(Arc<Key>, Arc<Slot>, bool)>,
    /// When the next pass is needed (`None`: nothing polled is due).
    wake_at: Option<Instant>,
}

impl Pass {
    fn wake_by(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |wake_at| wake_at.min(at)));
    }
}

/// What a watch loop does before its next request.
enum Pause {
    /// Nothing: the pace decides.
    None,
    /// Sleep this long (an answer without an index: poll).
    Sleep(Duration),
    /// Back off this long, cut short when the circuit closes again.
    Backoff(Duration),
}

impl Cache {
    /// Runs the background refresher until `shutdown` is cancelled.
    ///
    /// Every tick it refreshes the entries that are due and were asked for within
    /// `idle_timeout`, drops entries older than `max_stale` that nobody asks for,
    /// and never has more than a few refreshes in flight. In watch mode it starts
    /// a watch loop for each hot name (up to `max_watches`; the rest are polled);
    /// a loop ends when its name goes idle, leaves the cache, or on shutdown.
    ///
    /// It sleeps between passes until the next refresh is due, or until a
    /// name is cached for the first time or asked again after going idle;
    /// never two passes closer than the busy tick. While names are asked it
    /// looks at least every half `refresh_interval` (hit counts, gauges);
    /// while nothing is asked, only when something is due, or every
    /// [`IDLE_PASS_INTERVAL`] to drop data older than `max_stale`: a resolver
    /// whose hot names are all watched does not wake for nothing (the idle
    /// cost is paid on every VM of a fleet).
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let busy_tick = inner.busy_tick();
        let longest_pause = (inner.config.refresh_interval / 2).max(busy_tick);
        let idle_pause = IDLE_PASS_INTERVAL
            .min(inner.config.max_stale / 2)
            .max(longest_pause);
        let mut next_pass = Instant::now();
        let mut last_pass: Option<Instant> = None;
        let mut gauges = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next_pass) => {}
                () = inner.refresher_wake.notified() => {}
            }
            if let Some(last) = last_pass {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(last + busy_tick) => {}
                }
            }
            let now = Instant::now();
            last_pass = Some(now);
            let asked = inner.flush_hits();
            let wake_at = inner.refresh_due(&shutdown).await;
            next_pass = wake_at.min(now + if asked { longest_pause } else { idle_pause });
            // Gauges only when they change: the exporters keep (and StatsD
            // re-sends) the last value, and an unchanged one is no news.
            let watches = (inner.config.refresh == RefreshMode::Watch).then(|| inner.watch_count());
            let now_gauges = (inner.slots.entry_count(), watches);
            if gauges != Some(now_gauges) {
                gauges = Some(now_gauges);
                metrics::entries(now_gauges.0);
                if let Some(count) = watches {
                    metrics::watches(count);
                }
            }
        }
        inner.flush_hits();
    }
}

// === impl Inner: one refresh ===

impl Inner {
    /// Refreshes one slot unless another task is already doing it or already
    /// did it since `seen_fetched_at`. Returns true when the slot holds data
    /// fetched after `seen_fetched_at` on return.
    pub(super) async fn refresh_slot(
        &self,
        key: &Key,
        slot: &Slot,
        seen_fetched_at: Instant,
    ) -> bool {
        let _guard = slot.refresh_lock.lock().await;
        if slot.entry.load().fetched_at > seen_fetched_at {
            // A concurrent asker refreshed it while we queued: no request sent,
            // so give back the probe slot if we were granted it.
            self.breaker(key).cancel_probe();
            return true;
        }
        self.refresh_locked(key, slot).await
    }

    /// The refresh itself; the caller holds the slot's refresh lock.
    ///
    /// A plain read, never `?cached`: a poll answered from the agent's
    /// streaming view would succeed with the last data it holds even while
    /// every server is gone (fail-static), so a polled name would never see
    /// an outage. Read from a server, the poll fails with it: answers go
    /// stale and the breaker opens.
    async fn refresh_locked(&self, key: &Key, slot: &Slot) -> bool {
        let started = Instant::now();
        match self
            .fetch(key, MODE_POLL, &consul::QueryOptions::default())
            .await
        {
            Ok(fetched) => {
                self.breaker(key).record_success();
                metrics::refresh("ok");
                self.store_success(key, slot, fetched);
                true
            }
            Err(error) => {
                metrics::refresh(error.kind());
                debug!(key = ?key, error = %error, "Consul refresh failed, keeping last good data");
                self.record_refresh_failure(&self.breaker(key), slot, &error, started);
                false
            }
        }
    }

    /// Keeps the slot's last good data after a failed refresh. A retryable
    /// failure counts against `breaker` (its datacenter's) and the key is
    /// retried after the breaker's current backoff (spread by
    /// `refresh_jitter`); any other concerns this name alone: the breaker does
    /// not hear of it and the key is retried after its own backoff. Returns
    /// the pause.
    /// `started` is when the failed request was sent (see
    /// [`Breaker::record_failure`]: requests in flight together fail as one).
    fn record_refresh_failure(
        &self,
        breaker: &Breaker,
        slot: &Slot,
        error: &consul::Error,
        started: Instant,
    ) -> Duration {
        if error.is_retryable() {
            breaker.record_failure(error.kind(), error, started);
            let retry_in = self.retry_pause(breaker);
            self.store_failure(slot, error, retry_in, None);
            retry_in
        } else {
            let mut backoff = slot
                .entry
                .load()
                .name_backoff
                .clone()
                .unwrap_or_else(|| self.new_backoff());
            let retry_in = backoff.next_delay();
            self.store_failure(slot, error, retry_in, Some(backoff));
            retry_in
        }
    }

    /// The pause before a failed key is retried: a uniformly random part of
    /// the breaker's current backoff step ("full jitter"). One server restart
    /// fails every watch of every resolver at once; spread over the whole
    /// step, their retries reach the agents and servers as a trickle, not a
    /// herd (±`refresh_jitter` would bunch them within a tenth of it).
    fn retry_pause(&self, breaker: &Breaker) -> Duration {
        breaker
            .current_backoff()
            .mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Replaces a slot's data with a successful answer.
    fn store_success(&self, key: &Key, slot: &Slot, fetched: Fetched) {
        let now = Instant::now();
        let old = slot.entry.load();
        let next_refresh = now + self.jittered(self.refresh_period(&fetched.value, false));
        if old.value != fetched.value {
            self.service_data_stored(key, &fetched.value);
        }
        // Unchanged data keeps its allocation, so witnesses of it (answers the
        // fast path stored) stay valid across refreshes.
        let value = if old.value == fetched.value {
            old.value.clone()
        } else {
            let charged = slot.charged_value.load(Ordering::Relaxed);
            if super::needs_reweigh(charged, super::weigh_value(&fetched.value)) {
                slot.reweigh.store(true, Ordering::Relaxed);
            }
            fetched.value
        };
        slot.entry.store(Arc::new(Entry {
            value,
            fetched_at: now,
            next_refresh,
            last_refresh_failed: false,
            index: fetched.index.unwrap_or(0),
            last_error: old.last_error.clone(),
            name_backoff: None,
            read: fetched.read,
            from_service: None,
        }));
    }

    /// Replaces a node slot's data with the node as a cached service's health
    /// data holds it (no request was sent).
    pub(super) fn store_derived(&self, slot: &Slot, derived: DerivedNode) {
        let now = Instant::now();
        let old = slot.entry.load();
        let node = Value::Node(Arc::new(derived.node));
        // Unchanged data keeps its allocation (witnesses stay valid).
        let value = if old.value == node {
            old.value.clone()
        } else {
            node
        };
        slot.entry.store(Arc::new(Entry {
            value,
            fetched_at: now,
            next_refresh: now + self.jittered(self.config.refresh_interval),
            last_refresh_failed: false,
            index: derived.index,
            last_error: old.last_error.clone(),
            name_backoff: None,
            read: None,
            from_service: Some(derived.service),
        }));
    }

    /// Keeps a slot's last good data, marked failed, retried after `retry_in`;
    /// `name_backoff` when the failure concerns this name alone.
    fn store_failure(
        &self,
        slot: &Slot,
        error: &consul::Error,
        retry_in: Duration,
        name_backoff: Option<consul::Backoff>,
    ) {
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
            name_backoff,
            read: old.read,
            from_service: old.from_service.clone(),
        }));
    }
}

// === impl Inner: the refresher's pass ===

impl Inner {
    /// The pass period while entries wait for Consul to answer again (they
    /// are retried as soon as it does) or for their refresh to finish.
    fn busy_tick(&self) -> Duration {
        (self.config.refresh_interval / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// One background pass over the slots; returns when the next one is
    /// needed (at the latest).
    async fn refresh_due(self: &Arc<Self>, shutdown: &CancellationToken) -> Instant {
        let now = Instant::now();
        let services_changed = self.services_changed.swap(false, Ordering::AcqRel);
        if services_changed {
            self.rebuild_node_index();
        }
        let mut pass = self.plan_pass(now, services_changed);
        for (key, slot, due) in std::mem::take(&mut pass.nodes) {
            if let Some(derived) = self.node_from_services(&key).await {
                self.store_derived(&slot, derived);
            } else if due || slot.entry.load().from_service.is_some() {
                // No cached service names it (any more): ask Consul.
                pass.due.push((key, slot));
            }
        }
        // Nothing polled: the caller's pause decides.
        let wake_at = pass.wake_at.unwrap_or(now + IDLE_PASS_INTERVAL);
        for (key, slot, permit) in pass.to_watch {
            let this = Arc::clone(self);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                this.watch(Key::clone(&key), slot, permit, shutdown).await;
            });
        }
        self.refresh_all(pass.due).await;
        for key in pass.expired {
            self.slots.invalidate(&*key).await;
        }
        for (key, slot) in pass.to_reweigh {
            // Evicted since the pass began: leave it out rather than bring it back.
            if !slot.evicted.load(Ordering::Acquire) {
                self.slots.insert(Key::clone(&key), slot).await;
            }
        }
        wake_at
    }

    /// Sorts the slots into expired, due for a re-read, and newly watched.
    /// Node keys go to `nodes` (answered from cached health data where
    /// possible), all of those answered so when `services_changed`.
    fn plan_pass(&self, now: Instant, services_changed: bool) -> Pass {
        let watch_mode = self.config.refresh == RefreshMode::Watch;
        let mut pass = Pass::default();
        // Not due yet, but soon enough to join this pass if it reads anything.
        let mut soon = Vec::new();
        for (key, slot) in self.slots.iter() {
            if slot.reweigh.swap(false, Ordering::Relaxed) {
                pass.to_reweigh.push((Arc::clone(&key), Arc::clone(&slot)));
            }
            let entry = slot.entry.load();
            if self.is_idle(&slot, now) {
                // Nobody asks: stop costing Consul anything (a watch loop ends by
                // itself). Keep the data as a stale fallback until it is too old.
                if now.saturating_duration_since(entry.fetched_at) > self.config.max_stale {
                    pass.expired.push(Arc::clone(&key));
                }
                continue;
            }
            let is_node = matches!(*key, Key::Node { .. });
            // Only services that hold data are watched: a negative (a typo,
            // a service gone) is polled every negative_ttl with plain reads,
            // so it leaves no streaming subscription behind on the agent, and
            // `/v1/catalog/node` is never streamed.
            let watchable = !is_node && matches!(entry.value, Value::Services(_));
            if watch_mode && watchable {
                if slot.watching.load(Ordering::Acquire) {
                    continue; // its loop keeps it current
                }
                if let Ok(permit) = Arc::clone(&self.watch_permits).try_acquire_owned() {
                    if !slot.watching.swap(true, Ordering::AcqRel) {
                        pass.to_watch.push((key, slot, permit));
                    }
                    continue;
                }
                // More hot names than `max_watches`: this one is polled.
            }
            // Once Consul answers again for their datacenter, entries that failed
            // with it are retried at once rather than after their (long)
            // backoff: answers turn fresh quickly. A name that failed alone
            // waits out its own backoff.
            let breaker_closed = || !self.breaker(&key).is_open();
            let waits_for_datacenter = entry.last_refresh_failed && entry.name_backoff.is_none();
            let due = now >= entry.next_refresh || (waits_for_datacenter && breaker_closed());
            if is_node && (due || (services_changed && entry.from_service.is_some())) {
                pass.nodes.push((key, slot, due));
                pass.wake_by(now + self.busy_tick());
            } else if due {
                pass.due.push((key, slot));
                // Looked at again soon: its refresh sets the next date.
                pass.wake_by(now + self.busy_tick());
            } else if waits_for_datacenter {
                pass.wake_by(now + self.busy_tick());
            } else if !entry.last_refresh_failed
                && entry.next_refresh
                    <= now + self.refresh_period(&entry.value, entry.from_service.is_some()) / 2
            {
                soon.push((key, slot, is_node));
            } else {
                // Up to a busy tick late, as a ticking refresher was: the
                // names due within it are read in one pass.
                pass.wake_by(entry.next_refresh + self.busy_tick());
            }
        }
        // Names due within half their period are read with a pass that reads
        // anything anyway, so a resolver's polled names fall into step and
        // cost one wake-up per period instead of one each (30 hot names polled
        // every 10 s: about one pass per 10 s instead of three a second). Each
        // is read early at most once, when it joins; the fleet stays spread
        // because each resolver's step has its own random phase and jitter.
        let batch = !pass.due.is_empty() || pass.nodes.iter().any(|(_, _, due)| *due);
        for (key, slot, is_node) in soon {
            if batch {
                if is_node {
                    pass.nodes.push((key, slot, true));
                } else {
                    pass.due.push((key, slot));
                }
            } else {
                pass.wake_by(slot.entry.load().next_refresh + self.busy_tick());
            }
        }
        pass
    }

    /// Re-reads the due keys, a few at a time, while their datacenter's
    /// breaker lets requests through.
    async fn refresh_all(self: &Arc<Self>, due: Vec<(Arc<Key>, Arc<Slot>)>) {
        for (key, slot) in due {
            let breaker = self.breaker(&key);
            if !breaker.allow_request() {
                continue; // open: at most one probe, already on its way
            }
            // Wait for a free permit rather than skipping: a large set of hot
            // names is refreshed at the pace Consul answers, never left to age.
            let Ok(permit) = Arc::clone(&self.refresh_permits).acquire_owned().await else {
                breaker.cancel_probe();
                return;
            };
            let this = Arc::clone(self);
            let key = Key::clone(&key);
            tokio::spawn(async move {
                let _permit = permit;
                if let Ok(_guard) = slot.refresh_lock.try_lock() {
                    this.refresh_locked(&key, &slot).await;
                } else {
                    breaker.cancel_probe();
                }
            });
        }
    }
}

// === impl Inner: the watch loop ===

impl Inner {
    /// Keeps one slot current with blocking queries until its name goes idle,
    /// it leaves the cache, or `shutdown`.
    ///
    /// The index rules and the pace are [`consul::Watch`]'s: the first request
    /// (and the first after a reset) is a non-blocking read, each later one
    /// blocks on the last index; requests go at once in the happy case, in a
    /// burst of 2, then one per `refresh_interval` while the result churns, never
    /// closer than `watch_min_interval`. Every request passes the shared circuit
    /// breaker; a probe through an open breaker, and the first request after a
    /// failure, are plain non-blocking reads so that they report back at once.
    /// The blocking reads carry `?cached`: the agent serves them from its
    /// streaming view, so a watched name costs the servers nothing while it
    /// does not change.
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
        let breaker = self.breaker(&key);
        let mut closed = breaker.subscribe_closed();
        // Never spaced wider than a poll would be: with a refresh_interval
        // below watch_min_interval (a test, a small fleet), the interval wins.
        let pace = Pace::new(
            self.config
                .watch_min_interval
                .min(self.config.refresh_interval),
            self.config.refresh_interval,
            Instant::now(),
        );
        let mut watch = consul::Watch::new(self.config.watch_wait)
            .from_index(slot.entry.load().index)
            .paced(pace);
        debug!(key = ?key, index = watch.index(), "Watching Consul for changes");
        // Set after a failed request: the next one is a plain non-blocking
        // read, which reports at once whether the servers answer again (a
        // blocking read would hold the name "failed", its answers degraded,
        // until the next change or `watch_wait`), asked of a server (an
        // answer from the agent's view proves nothing about them).
        let mut resync = false;
        loop {
            let start_at = watch.next_start();
            if start_at > Instant::now() {
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep_until(start_at) => {}
                }
            }
            let admission = breaker.admit();
            let pause = if admission == Admission::Denied {
                closed.borrow_and_update();
                Pause::Backoff(self.denied_pause(&breaker))
            } else {
                // A probe is non-blocking, and plain: it must report back at
                // once, and what the servers say (an answer from the agent's
                // view would close the breaker while they are still gone).
                // A blocking read carries `?cached`, so the agent serves it
                // from its streaming view.
                let options = match admission {
                    Admission::Probe => consul::QueryOptions::default(),
                    _ if resync => consul::QueryOptions::default(),
                    _ => {
                        let options = watch.options();
                        consul::QueryOptions {
                            cached: options.index.is_some_and(|index| index > 0),
                            ..options
                        }
                    }
                };
                watch.started();
                let started = Instant::now();
                let result = tokio::select! {
                    () = &mut stop => {
                        if admission == Admission::Probe {
                            breaker.cancel_probe();
                        }
                        break;
                    }
                    result = self.fetch(&key, MODE_WATCH, &options) => result,
                };
                resync = result.is_err();
                let pause = self.watch_answered(
                    &key,
                    &breaker,
                    &slot,
                    &mut watch,
                    &mut closed,
                    result.map_err(|error| (error, started)),
                );
                if matches!(slot.entry.load().value, Value::Missing) {
                    // Gone: a negative is polled, not watched.
                    break;
                }
                pause
            };
            tokio::select! {
                () = &mut stop => break,
                () = self.pause(pause, &mut closed) => {}
            }
        }
        debug!(key = ?key, "Stopped watching");
    }

    /// Takes one answer (or failure, with when its request was sent) of a
    /// watch loop; returns what to do before the next request.
    fn watch_answered(
        &self,
        key: &Key,
        breaker: &Breaker,
        slot: &Slot,
        watch: &mut consul::Watch,
        closed: &mut tokio::sync::watch::Receiver<u64>,
        result: Result<Fetched, (consul::Error, Instant)>,
    ) -> Pause {
        match result {
            Ok(fetched) => {
                breaker.record_success();
                metrics::refresh("ok");
                let returned = fetched.index;
                let poll_in = self.jittered(self.refresh_period(&fetched.value, false));
                self.store_success(key, slot, fetched);
                let Some(returned) = returned else {
                    // No index to block on (e.g. unknown datacenter): poll.
                    watch.restart();
                    return Pause::Sleep(poll_in);
                };
                let previous = watch.index();
                if watch.observe(returned) == IndexChange::Reset {
                    metrics::watch_index_reset();
                    debug!(key = ?key, previous, returned, "Consul index went backwards, blocking on the index returned");
                }
                Pause::None
            }
            Err((error, started)) => {
                metrics::refresh(error.kind());
                debug!(key = ?key, error = %error, "Consul watch failed, keeping last good data");
                let pause = self.record_refresh_failure(breaker, slot, &error, started);
                closed.borrow_and_update();
                Pause::Backoff(pause)
            }
        }
    }

    /// How long a watch loop the breaker held back waits: until the next probe
    /// may go (whichever loop wakes first sends it), spread so the loops do not
    /// wake together; while a probe is in flight, until it closes the circuit,
    /// or a backoff.
    fn denied_pause(&self, breaker: &Breaker) -> Duration {
        let state = breaker.snapshot();
        match (state.state, state.retry_in_ms) {
            (CircuitState::Open, Some(ms)) if ms > 0 => {
                let spread = self
                    .config
                    .backoff_min
                    .mul_f64(rand::rng().random_range(0.0..=0.5));
                Duration::from_millis(ms) + spread
            }
            _ => self.retry_pause(breaker),
        }
    }

    /// Sleeps as `pause` says.
    async fn pause(&self, pause: Pause, closed: &mut tokio::sync::watch::Receiver<u64>) {
        match pause {
            Pause::None => {}
            Pause::Sleep(duration) => tokio::time::sleep(duration).await,
            Pause::Backoff(duration) => self.backoff_pause(duration, closed).await,
        }
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
}

/// Clears a slot's `watching` flag when its watch loop ends, however it ends.
struct WatchingFlag(Arc<Slot>);

impl Drop for WatchingFlag {
    fn drop(&mut self) {
        self.0.watching.store(false, Ordering::Release);
    }
}
