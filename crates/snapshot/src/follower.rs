//! The follower: watches the snapshot pointer, fetches and verifies every new value, keeps
//! it on disk and in memory, and never replaces a good snapshot with a bad one.
//!
//! One blocking query on the pointer key ([`FollowerConfig::pointer_key`], see
//! [`crate::pointer`]; stale reads when the client is configured with `stale = true`, the
//! default), at most one read per [`FollowerConfig::min_interval`], with jittered exponential
//! backoff on errors. When the pointer names a generation newer than the one held, the value
//! key is read once, after a random delay up to [`FollowerConfig::fetch_spread`] (the first
//! fetch after a start with nothing held goes at once), so a fleet's downloads of the value are spread over that window
//! while only the pointer's few dozen bytes go to every node at once. The value must be the
//! one the pointer names (SHA-256 of its bytes, and its generation); another one (a publish
//! in between, a stale server) is read again after a backoff, at most [`MAX_MISMATCHES`]
//! times. Without a pointer (a publisher from before pointers), or with one this build
//! refuses, the follower blocks on the value key itself and applies values as they come, as
//! it did before pointers, and goes back to the pointer as soon as a usable one appears.
//!
//! A value is applied only when, in this order:
//!
//! 1. the kill-switch key ([`FollowerConfig::stop_key`]) is missing or empty (otherwise the
//!    follower waits on the stop key until it clears, then re-reads the snapshot key);
//! 2. [`crate::codec::decode`] accepts it (format, SHA-256, shape limits, and the Ed25519
//!    signature when [`FollowerConfig::verifying_key`] is set), decoding off the async
//!    workers (`spawn_blocking`);
//! 3. it is trusted: signed and verified, or [`FollowerConfig::allow_unsigned`] is set
//!    (otherwise `unsigned`);
//! 4. its generation is at most [`MAX_GENERATION`], and for a snapshot that was not verified
//!    with a key, at most [`MAX_UNSIGNED_STEP`] above the one in memory (`generation`), so
//!    one bad write cannot push generations out of reach of every later snapshot;
//! 5. its generation is higher than the one in memory (lower = rollback, rejected; equal =
//!    already applied, ignored);
//! 6. it was saved atomically to the state dir ([`crate::store::save`]).
//!
//! Then it is swapped into [`Hosts`] and handed to the [`Delivery`] task (hosts file,
//! after-delivery command), which the DNS path never waits for. Every refusal keeps the
//! previous snapshot, is counted in `snapshot.rejected_total{reason}` and is logged once per
//! distinct reason. Applied and refused snapshots are sent as [`events`] when a sink is
//! configured.
//!
//! Files sent == files delivered: every pointer (or, without one, every value) read is
//! compared (generation and SHA-256 of the value's bytes) with the snapshot held, in
//! `snapshot.behind` (1 while they differ, whether the fetch is waiting within its spread,
//! the value is not applied yet, refused, or held back by the kill switch) and
//! `snapshot.kv_generation`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dnsfront_consul::{self as consul, Backoff, HALF_JITTER, IndexChange, Pace, QueryOptions};
use rand::Rng as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::delivery::{AfterCommand, Delivery, DeliveryConfig, HostsFile};
use crate::events::{self, AlertType, Event, Events, short_sha};
use crate::pointer::{self, Pointer, pointer_key_for};
use crate::retry::ConsulRetry;
use crate::{Error, Hosts, Snapshot, Verified, VerifyingKey, codec, metrics, store};

/// Default KV key holding the snapshot.
pub const DEFAULT_KEY: &str = "dnsfront/hosts";
/// Default blocking wait of the follower's query (Consul's own default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// Default minimum time between two reads of the key.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default random spread of the value fetches after a new pointer: 5,000 nodes fetching a
/// 150 KB value spread over a minute is 12.5 MB/s for Consul instead of 750 MB in a second.
pub const DEFAULT_FETCH_SPREAD: Duration = Duration::from_secs(60);
/// Default ceiling of the error backoff.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Highest generation a follower accepts (2^53, exactly representable in the generation
/// gauge). A publisher adding one per write would need hundreds of millions of years to
/// reach it, so anything above was written to break the fleet; refusing it keeps the room
/// above the current generation that the publisher needs for every later snapshot.
pub const MAX_GENERATION: u64 = 1 << 53;
/// Largest step above the generation in memory that a snapshot not verified with a key may
/// take (2^32: above any realistic jump, a publisher recovering from an undecodable value
/// jumps to the key's raft `ModifyIndex`). Signed snapshots are trusted to jump further.
pub const MAX_UNSIGNED_STEP: u64 = 1 << 32;
/// Floor of the first backoff step: a zero `min_interval` must not make the loop spin.
const BACKOFF_FLOOR: Duration = Duration::from_millis(100);

/// The kill-switch key for a snapshot key: a sibling, `KEY-stop` (`dnsfront/hosts-stop`).
///
/// A sibling rather than a child (`KEY/stop`) so that a recursive read of the data key never
/// returns it. Any non-empty value stops publishers from writing and followers from applying;
/// the value is the reason, and it is logged.
pub fn stop_key_for(key: &str) -> String {
    format!("{key}-stop")
}

/// The publisher lock key for a snapshot key: a sibling, `KEY.lock` (`dnsfront/hosts.lock`).
pub fn lock_key_for(key: &str) -> String {
    format!("{key}.lock")
}

/// Settings of a [`Follower`].
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// KV key holding the snapshot (default [`DEFAULT_KEY`]).
    pub key: String,
    /// Kill-switch key (default [`stop_key_for`] of `key`, i.e. `dnsfront/hosts-stop`).
    pub stop_key: String,
    /// Pointer key (default [`pointer_key_for`] of `key`, i.e. `dnsfront/hosts.pointer`).
    pub pointer_key: String,
    /// Directory the verified snapshot is saved in ([`crate::store`]).
    pub state_dir: PathBuf,
    /// When set, unsigned or badly signed snapshots are rejected.
    pub verifying_key: Option<VerifyingKey>,
    /// Without a `verifying_key`, accept snapshots nobody verified (default false: then
    /// every snapshot is refused as `unsigned`). Signing is the production setting; this is
    /// for the demo and for fleets that accept that anyone who can write the KV key controls
    /// every node's fallback answers.
    pub allow_unsigned: bool,
    /// Blocking-query wait (default 5m, Consul caps it at 10m).
    pub wait: Duration,
    /// Minimum time between two reads of the key (default 1s).
    pub min_interval: Duration,
    /// Ceiling of the jittered exponential backoff after errors (default 30s).
    pub backoff_max: Duration,
    /// Random delay, up to this, between the pointer naming a newer snapshot and fetching
    /// the value (default [`DEFAULT_FETCH_SPREAD`]): spreads a fleet's downloads of the value
    /// (and its disk writes, after-delivery commands and events) over this window. The
    /// first fetch after a start with nothing held goes at once. Without a pointer, values
    /// are applied as they come.
    pub fetch_spread: Duration,
    /// The hosts file written from each applied snapshot (default none).
    pub hosts_file: Option<HostsFile>,
    /// The command run after each applied snapshot (default none).
    pub after_delivery: Option<AfterCommand>,
    /// Where applied and rejected snapshots are reported (default none).
    pub events: Events,
}

impl FollowerConfig {
    /// The error backoff: from `min_interval` (at least [`BACKOFF_FLOOR`]) doubling up to
    /// `backoff_max`, each delay drawn from the upper half of its step.
    fn backoff(&self) -> Backoff {
        let min = self.min_interval.max(BACKOFF_FLOOR);
        Backoff::try_new(min, self.backoff_max.max(min), HALF_JITTER)
            .expect("the floor is above zero and the ceiling at least the floor")
    }

    /// A watch on `key`: Consul's index rules, blocking up to `wait`, at most one read per
    /// `min_interval`.
    fn watch(&self) -> consul::Watch {
        consul::Watch::new(self.wait).paced(Pace::spaced(self.min_interval))
    }

    /// Whether a decoded snapshot may be applied, whatever its generation relative to the
    /// one in memory: `Err((reason, detail))` when not.
    fn trust(
        &self,
        verified: &Verified,
        current: Option<u64>,
    ) -> Result<(), (&'static str, String)> {
        if self.verifying_key.is_none() && !self.allow_unsigned {
            return Err((
                "unsigned",
                "no snapshot.public_key_file is configured to verify it and \
                 snapshot.allow_unsigned is false"
                    .to_owned(),
            ));
        }
        let generation = verified.snapshot.generation;
        if generation > MAX_GENERATION {
            return Err((
                "generation",
                format!("generation {generation} is above the maximum {MAX_GENERATION}"),
            ));
        }
        if self.verifying_key.is_none()
            && let Some(current) = current
            && generation > current.saturating_add(MAX_UNSIGNED_STEP)
        {
            return Err((
                "generation",
                format!(
                    "unverified snapshot jumps from generation {current} to {generation}, \
                     more than {MAX_UNSIGNED_STEP} at once"
                ),
            ));
        }
        Ok(())
    }

    /// Defaults for everything but the state dir.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            key: DEFAULT_KEY.to_owned(),
            stop_key: stop_key_for(DEFAULT_KEY),
            pointer_key: pointer_key_for(DEFAULT_KEY),
            state_dir,
            verifying_key: None,
            allow_unsigned: false,
            wait: DEFAULT_WAIT,
            min_interval: DEFAULT_MIN_INTERVAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            fetch_spread: DEFAULT_FETCH_SPREAD,
            hosts_file: None,
            after_delivery: None,
            events: None,
        }
    }

    /// What the [`Delivery`] task does; `None` when there is nothing to deliver.
    fn delivery(&self) -> Option<DeliveryConfig> {
        let config = DeliveryConfig {
            hosts_file: self.hosts_file.clone(),
            command: self.after_delivery.clone(),
            state_dir: self.state_dir.clone(),
        };
        (!config.is_empty()).then_some(config)
    }
}

/// Follows the snapshot key and keeps [`Hosts`] and the state dir up to date.
#[derive(Debug)]
pub struct Follower {
    config: FollowerConfig,
    client: consul::Client,
    hosts: Hosts,
    /// Generation and payload SHA-256 of the snapshot held, to compare with KV's.
    held: Mutex<Option<Held>>,
}

/// What identifies a snapshot for "files sent == files delivered": what a pointer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    generation: u64,
    /// SHA-256 of the value's bytes (the envelope as stored in KV and in the state dir).
    sha256: [u8; 32],
}

impl Held {
    fn of(verified: &Verified, value: &[u8]) -> Self {
        Self {
            generation: verified.snapshot.generation,
            sha256: pointer::sha256(value),
        }
    }
}

/// What became of a value fetch a pointer asked for.
enum Fetched {
    /// Applied, ignored or refused for good.
    Settled,
    /// Consul or disk trouble: fetch again after a backoff.
    Retry,
    /// The key holds another value than the pointer names.
    Mismatch,
    /// The kill switch was set and has been cleared: read the pointer again at once.
    Reread,
    /// Shutdown was requested.
    Shutdown,
}

/// What happened to one value read from the key.
enum Outcome {
    /// Applied, ignored or rejected for good: do not look at this value again.
    Settled,
    /// Could not be evaluated (Consul or disk trouble): back off and read again.
    Retry,
    /// The kill switch was set and has been cleared: read the key again at once.
    Reread,
    /// Shutdown was requested.
    Shutdown,
}

impl Follower {
    /// A follower writing into `hosts` (share clones of it with the readers).
    pub fn new(config: FollowerConfig, client: consul::Client, hosts: Hosts) -> Self {
        Self {
            config,
            client,
            hosts,
            held: Mutex::new(None),
        }
    }

    fn held(&self) -> Option<Held> {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_held(&self, held: Held) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
    }

    /// Loads the snapshot saved in the state dir into [`Hosts`]; call it before [`Follower::run`]
    /// so a resolver started during an outage answers at once.
    ///
    /// Returns the generation now in memory, or `None` when the state dir has no snapshot.
    /// A corrupt or badly signed file is returned as an error (and counted in
    /// `snapshot.rejected_total`); it is not fatal: [`Follower::run`] replaces it with the next
    /// good value. Does blocking file I/O.
    pub fn load_from_disk(&self) -> Result<Option<u64>, Error> {
        let Some(bytes) = store::load(&self.config.state_dir).inspect_err(|error| {
            metrics::rejected(error.reason());
        })?
        else {
            return Ok(None);
        };
        let verified = codec::decode(&bytes, self.config.verifying_key.as_ref())
            .inspect_err(|error| metrics::rejected(error.reason()))?;
        let generation = verified.snapshot.generation;
        if let Err((reason, _)) = self.config.trust(&verified, None) {
            metrics::rejected(reason);
            return Err(if reason == "unsigned" {
                Error::Untrusted
            } else {
                Error::Generation {
                    generation,
                    reason: "above the maximum",
                }
            });
        }
        if let Some(current) = self.hosts.generation()
            && current >= generation
        {
            return Ok(Some(current));
        }
        set_gauges(&verified.snapshot, verified.encoded_size);
        self.set_held(Held::of(&verified, &bytes));
        self.hosts.replace(Arc::new(verified.snapshot));
        tracing::info!(
            generation,
            size = verified.encoded_size,
            "Loaded hosts snapshot from the state dir"
        );
        Ok(Some(generation))
    }

    /// Follows the key until `shutdown` is cancelled; never fails (every error is retried).
    pub async fn run(self, shutdown: CancellationToken) {
        let config = &self.config;
        match (&config.verifying_key, config.allow_unsigned) {
            (Some(_), _) => {
                tracing::info!("Hosts snapshots must be signed with the configured key")
            }
            (None, true) => tracing::warn!(
                "Hosts snapshots are accepted UNSIGNED (snapshot.allow_unsigned = true): \
                 anyone who can write the snapshot key controls this node's fallback answers; \
                 set snapshot.public_key_file in production"
            ),
            (None, false) => tracing::warn!(
                "No snapshot.public_key_file and snapshot.allow_unsigned = false: \
                 every hosts snapshot will be refused (no outage fallback)"
            ),
        }
        let span = tracing::info_span!("snapshot_follower", key = %self.config.key);
        // The delivery task starts with the snapshot loaded from disk: after a restart it
        // finds the file current and the command already run, and does nothing.
        let deliveries = self.config.delivery().map(|delivery| {
            let (sender, receiver) = watch::channel(self.hosts.current());
            tokio::spawn(
                Delivery::new(delivery)
                    .run(receiver, shutdown.child_token())
                    .instrument(tracing::info_span!("snapshot_delivery")),
            );
            sender
        });
        let mut worker = Worker {
            retry: ConsulRetry::new(self.config.backoff()),
            follower: self,
            deliveries,
            problem: None,
            missing_logged: false,
            fetched: false,
        };
        worker.run(shutdown).instrument(span).await;
    }
}

/// The follower's loop and its log-once state.
struct Worker {
    follower: Follower,
    /// Feeds the delivery task each applied snapshot (`None`: nothing to deliver).
    deliveries: Option<watch::Sender<Option<Arc<Snapshot>>>>,
    /// Backoff and log-once state of failing Consul calls.
    retry: ConsulRetry,
    /// Reason of the last refusal, so each distinct reason is logged once.
    problem: Option<String>,
    /// The key was found missing and that was logged.
    missing_logged: bool,
    /// A value fetch was made since start (the next ones are spread even with nothing held).
    fetched: bool,
}

/// What the follower blocks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The pointer key; the value is fetched only when the pointer names a newer snapshot.
    Pointer,
    /// The value key itself: no pointer (a publisher from before pointers) or one this
    /// build refuses. The pointer is looked for again on every answer.
    Value,
}

/// A value fetch waiting for its moment.
#[derive(Debug, Clone, Copy)]
struct Pending {
    pointer: Pointer,
    at: Instant,
    /// Fetches of this pointer that found another value (a stale server, or a publish in
    /// between): retried a few times, then refused.
    mismatches: u32,
}

/// Fetches of one pointer that may find another value before it is refused
/// (`snapshot.rejected_total{reason="pointer_mismatch"}`).
pub const MAX_MISMATCHES: u32 = 3;

impl Worker {
    async fn run(&mut self, shutdown: CancellationToken) {
        let mut mode = Mode::Pointer;
        loop {
            let next = match mode {
                Mode::Pointer => self.follow_pointer(&shutdown).await,
                Mode::Value => self.follow_value(&shutdown).await,
            };
            match next {
                Some(next) => mode = next,
                None => return,
            }
        }
    }

    /// Blocks on the pointer key and fetches the value it names when it is newer than the
    /// snapshot held: at once when nothing is held, else after a random delay up to
    /// `fetch_spread`. Returns [`Mode::Value`] when there is no usable pointer, `None` on
    /// shutdown.
    async fn follow_pointer(&mut self, shutdown: &CancellationToken) -> Option<Mode> {
        let config = self.follower.config.clone();
        // A clone, so the pinned read does not borrow `self`.
        let client = self.follower.client.clone();
        let mut watch = config.watch();
        let start = watch.start_at(Instant::now());
        let read = read_key_at(&client, &config.pointer_key, watch.options(), start);
        tokio::pin!(read);
        // ModifyIndex of the last pointer taken in, so a wake-up without a change does nothing.
        let mut settled: Option<u64> = None;
        let mut pending: Option<Pending> = None;
        // The spread was already waited (a fetch held back by the kill switch until it was
        // cleared): the next fetch goes at once.
        let mut waited = false;
        loop {
            let fetch_at = pending.map(|pending| pending.at);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                response = &mut read => {
                    let delay = match response {
                        Ok(response) => {
                            self.consul_ok();
                            watch.observe(response.meta.index);
                            if let Some(current) = self.follower.hosts.current() {
                                metrics::set_age_seconds(age_seconds(&current));
                            }
                            let Some(pair) = response.value else {
                                metrics::pointer_read("missing");
                                tracing::info!(
                                    pointer_key = %config.pointer_key,
                                    "No snapshot pointer (a publisher older than pointers?), \
                                     watching the snapshot key itself"
                                );
                                return Some(Mode::Value);
                            };
                            if settled == Some(pair.modify_index) {
                                metrics::pointer_read("unchanged");
                            } else {
                                settled = Some(pair.modify_index);
                                let pointer = match Pointer::decode(
                                    pair.value.as_deref().unwrap_or_default(),
                                ) {
                                    Ok(pointer) => pointer,
                                    Err(error) => {
                                        metrics::pointer_read("invalid");
                                        metrics::set_behind(true);
                                        self.reject(error.reason(), &error.to_string());
                                        return Some(Mode::Value);
                                    }
                                };
                                pending = self.take_pointer(pointer, pending, &mut waited);
                            }
                            Duration::ZERO
                        }
                        Err(error) => {
                            self.consul_failed("reading the snapshot pointer", &error);
                            self.retry.next_delay()
                        }
                    };
                    let start = watch.start_at(Instant::now() + delay);
                    read.set(read_key_at(&client, &config.pointer_key, watch.options(), start));
                }
                () = sleep_until_some(fetch_at), if fetch_at.is_some() => {
                    let Some(mut fetch) = pending.take() else { continue };
                    match self.fetch(fetch.pointer, shutdown).await {
                        Fetched::Settled => self.retry.reset_backoff(),
                        Fetched::Retry => {
                            fetch.at = Instant::now() + self.retry.next_delay();
                            pending = Some(fetch);
                        }
                        Fetched::Mismatch => {
                            fetch.mismatches += 1;
                            if fetch.mismatches < MAX_MISMATCHES {
                                fetch.at = Instant::now() + self.retry.next_delay();
                                pending = Some(fetch);
                            } else {
                                self.reject(
                                    "pointer_mismatch",
                                    &format!(
                                        "the snapshot key does not hold the value the pointer \
                                         names (generation {}) after {MAX_MISMATCHES} reads",
                                        fetch.pointer.generation
                                    ),
                                );
                            }
                            // A publish since the pointer was read: take the new pointer now
                            // (it replaces this fetch, keeping its moment).
                            watch.restart();
                            let start = watch.start_at(Instant::now());
                            read.set(read_key_at(&client, &config.pointer_key, watch.options(), start));
                        }
                        Fetched::Reread => {
                            waited = true;
                            settled = None;
                            watch.restart();
                            let start = watch.start_at(Instant::now());
                            read.set(read_key_at(&client, &config.pointer_key, watch.options(), start));
                        }
                        Fetched::Shutdown => return None,
                    }
                }
            }
        }
    }

    /// Takes in a pointer that changed: compares it with the snapshot held
    /// (`snapshot.behind`), and returns the fetch to wait for (`None`: nothing to fetch).
    fn take_pointer(
        &mut self,
        pointer: Pointer,
        pending: Option<Pending>,
        waited: &mut bool,
    ) -> Option<Pending> {
        metrics::set_kv_generation(pointer.generation);
        let held = self.follower.held();
        // Only the first fetch since start, on a node holding nothing (first start, empty
        // state dir), skips the spread: a node that keeps refusing values (no key
        // configured) must not fetch each one at the same instant as the rest of the fleet.
        let at_once = std::mem::take(waited) || (held.is_none() && !self.fetched);
        let named = Held {
            generation: pointer.generation,
            sha256: pointer.sha256,
        };
        metrics::set_behind(held != Some(named));
        if let Some(held) = held {
            if held == named {
                metrics::pointer_read("held");
                return None;
            }
            // Refused without fetching: the value could only be refused too.
            if pointer.generation <= held.generation {
                metrics::pointer_read("held");
                let (reason, detail) = if pointer.generation < held.generation {
                    (
                        "rollback",
                        format!(
                            "the pointer names generation {}, older than the current generation {}",
                            pointer.generation, held.generation
                        ),
                    )
                } else {
                    (
                        "same_generation",
                        format!(
                            "the pointer names generation {} with another SHA-256 than the one held",
                            pointer.generation
                        ),
                    )
                };
                self.reject(reason, &detail);
                return None;
            }
        }
        metrics::pointer_read("new");
        // A fetch already waiting keeps its moment: a newer pointer does not restart the spread.
        if let Some(pending) = pending {
            return Some(Pending {
                pointer,
                mismatches: 0,
                ..pending
            });
        }
        let spread = self.follower.config.fetch_spread;
        let delay = if at_once || spread.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=spread)
        };
        metrics::set_fetch_delay(delay);
        tracing::debug!(
            generation = pointer.generation,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "The pointer names a newer snapshot, fetching it after the spread"
        );
        Some(Pending {
            pointer,
            at: Instant::now() + delay,
            mismatches: 0,
        })
    }

    /// Reads the value key once and, when it is the value `pointer` names, evaluates it.
    async fn fetch(&mut self, pointer: Pointer, shutdown: &CancellationToken) -> Fetched {
        self.fetched = true;
        let key = self.follower.config.key.clone();
        let response = match self
            .follower
            .client
            .kv_get(&key, &QueryOptions::default())
            .await
        {
            Ok(response) => response,
            Err(error) => {
                metrics::value_fetch("failed");
                self.consul_failed("reading the snapshot key", &error);
                return Fetched::Retry;
            }
        };
        self.consul_ok();
        let Some(value) = response.value.map(|pair| pair.value.unwrap_or_default()) else {
            metrics::value_fetch("missing");
            metrics::set_behind(true);
            self.reject(
                "value_missing",
                &format!(
                    "the pointer names generation {} but the snapshot key is missing",
                    pointer.generation
                ),
            );
            return Fetched::Settled;
        };
        if !pointer.names(&value) {
            metrics::value_fetch("mismatch");
            tracing::debug!(
                generation = pointer.generation,
                "The snapshot key holds another value than the pointer names"
            );
            return Fetched::Mismatch;
        }
        metrics::value_fetch("ok");
        match self.evaluate(value, shutdown, Some(pointer)).await {
            Outcome::Settled => Fetched::Settled,
            Outcome::Retry => Fetched::Retry,
            Outcome::Reread => Fetched::Reread,
            Outcome::Shutdown => Fetched::Shutdown,
        }
    }

    /// Whether the pointer key holds a pointer this build reads (one non-blocking read;
    /// an error counts as no).
    async fn pointer_usable(&self) -> bool {
        let read = self
            .follower
            .client
            .kv_get(&self.follower.config.pointer_key, &QueryOptions::default())
            .await;
        read.ok()
            .and_then(|response| response.value)
            .and_then(|pair| pair.value)
            .is_some_and(|value| Pointer::decode(&value).is_ok())
    }

    /// Blocks on the value key itself, as before pointers, applying each new value as it
    /// comes (its bytes are already here: spreading would save Consul nothing). After every
    /// answer it looks for a usable pointer and returns [`Mode::Pointer`] once there is one;
    /// `None` on shutdown.
    async fn follow_value(&mut self, shutdown: &CancellationToken) -> Option<Mode> {
        let config = self.follower.config.clone();
        // A clone, so the loop can borrow the client while `self` changes.
        let client = &self.follower.client.clone();
        let key = &config.key;
        let mut watch = config.watch();
        // ModifyIndex of the last value settled, so a wake-up without a change does nothing.
        let mut settled: Option<u64> = None;
        loop {
            let read = watch.round(|options| async move { client.kv_get(key, &options).await });
            let response = tokio::select! {
                () = shutdown.cancelled() => return None,
                response = read => response,
            };
            let (response, change) = match response {
                Ok(answer) => answer,
                Err(error) => {
                    self.consul_failed("reading the snapshot key", &error);
                    if !self.sleep_backoff(shutdown).await {
                        return None;
                    }
                    continue;
                }
            };
            self.consul_ok();
            if let Some(current) = self.follower.hosts.current() {
                metrics::set_age_seconds(age_seconds(&current));
            }
            let Some(pair) = response.value else {
                if !self.missing_logged {
                    tracing::info!("No hosts snapshot published yet, waiting for the key");
                    self.missing_logged = true;
                }
                // Nothing sent, so nothing to be behind on.
                metrics::set_behind(false);
                settled = None;
                // Not on a backwards index: a snapshot restore wakes every node at once,
                // and the next answer (after the watch's spread) looks instead.
                if change != IndexChange::Reset && self.pointer_usable().await {
                    return Some(Mode::Pointer);
                }
                continue;
            };
            self.missing_logged = false;
            if settled != Some(pair.modify_index) {
                match self
                    .evaluate(pair.value.unwrap_or_default(), shutdown, None)
                    .await
                {
                    Outcome::Settled => {
                        settled = Some(pair.modify_index);
                        self.retry.reset_backoff();
                    }
                    Outcome::Retry => {
                        watch.restart();
                        if !self.sleep_backoff(shutdown).await {
                            return None;
                        }
                        continue;
                    }
                    Outcome::Reread => {
                        watch.restart();
                        settled = None;
                    }
                    Outcome::Shutdown => return None,
                }
            }
            // A publisher that writes pointers took over: follow the pointer from now on
            // (not looked for on a backwards index, which wakes the whole fleet at once).
            if change != IndexChange::Reset && self.pointer_usable().await {
                tracing::info!(
                    pointer_key = %config.pointer_key,
                    "Snapshot pointer found, following it instead of the snapshot key"
                );
                return Some(Mode::Pointer);
            }
        }
    }

    /// Checks the kill switch, verifies (against `pointer` too, when it was fetched for
    /// one), persists and swaps in one value.
    async fn evaluate(
        &mut self,
        value: Vec<u8>,
        shutdown: &CancellationToken,
        pointer: Option<Pointer>,
    ) -> Outcome {
        match self.stop_reason().await {
            Err(error) => {
                self.consul_failed("reading the kill-switch key", &error);
                return Outcome::Retry;
            }
            Ok(Some(reason)) => {
                self.observe_held_back(value).await;
                metrics::rejected("kill_switch");
                let key = &self.follower.config.key;
                events::emit(&self.follower.config.events, || Event {
                    title: "dnsfront snapshot held back".to_owned(),
                    text: format!(
                        "The kill switch {} is set ({reason}): new hosts snapshots are not applied",
                        self.follower.config.stop_key
                    ),
                    alert: AlertType::Warning,
                    tags: events::tags("kill_switch", key),
                });
                tracing::warn!(
                    stop_key = %self.follower.config.stop_key,
                    reason = %reason,
                    "Snapshot kill switch is set, not applying new snapshots"
                );
                self.problem = Some("kill_switch".to_owned());
                return self.wait_for_stop_cleared(shutdown).await;
            }
            Ok(None) => {}
        }
        let (verified, value) = match self.verify(value, pointer).await {
            Ok(verified) => verified,
            Err(outcome) => return outcome,
        };
        self.apply(verified, value).await
    }

    /// Decodes a value (on a blocking thread: inflating and parsing up to
    /// [`codec::MAX_INFLATED_SIZE`] must not hold an async worker) and checks its trust and
    /// generation against the one in memory; `Err` when it must not be applied (refused and
    /// counted, or already applied).
    async fn verify(
        &mut self,
        value: Vec<u8>,
        pointer: Option<Pointer>,
    ) -> Result<(Verified, Vec<u8>), Outcome> {
        if value.is_empty() {
            metrics::set_behind(true);
            self.reject("empty", "snapshot key holds an empty value");
            return Err(Outcome::Settled);
        }
        let (verified, value) = match self.decode(value).await {
            Ok(decoded) => decoded,
            Err((reason, detail)) => {
                metrics::set_behind(true);
                self.reject(reason, &detail);
                return Err(Outcome::Settled);
            }
        };
        if let Some(pointer) = pointer
            && pointer.generation != verified.snapshot.generation
        {
            metrics::set_behind(true);
            self.reject(
                "pointer_mismatch",
                &format!(
                    "the pointer names generation {} but the value it names holds generation {}",
                    pointer.generation, verified.snapshot.generation
                ),
            );
            return Err(Outcome::Settled);
        }
        self.observe(&verified, &value);
        let current = self.follower.hosts.current();
        if let Err((reason, detail)) = self
            .follower
            .config
            .trust(&verified, current.as_ref().map(|c| c.generation))
        {
            self.reject(reason, &detail);
            return Err(Outcome::Settled);
        }
        let generation = verified.snapshot.generation;
        let Some(current) = current else {
            return Ok((verified, value));
        };
        if generation < current.generation {
            self.reject(
                "rollback",
                &format!(
                    "generation {generation} is older than the current generation {}",
                    current.generation
                ),
            );
            return Err(Outcome::Settled);
        }
        if generation == current.generation {
            if verified.snapshot.content_checksum() != current.content_checksum() {
                self.reject(
                    "same_generation",
                    &format!("generation {generation} is already applied with other content"),
                );
            } else {
                tracing::debug!(generation, "Snapshot generation already applied");
            }
            return Err(Outcome::Settled);
        }
        Ok((verified, value))
    }

    /// Decodes a value off the async workers: `Err((reason, detail))` when it does not decode.
    async fn decode(&self, value: Vec<u8>) -> Result<(Verified, Vec<u8>), (&'static str, String)> {
        let key = self.follower.config.verifying_key;
        let decoded = tokio::task::spawn_blocking(move || {
            let result = codec::decode(&value, key.as_ref());
            (result, value)
        })
        .await;
        match decoded {
            Ok((Ok(verified), value)) => Ok((verified, value)),
            Ok((Err(error), _)) => Err((error.reason(), error.to_string())),
            Err(join_error) => Err(("decode_panic", format!("decoding panicked: {join_error}"))),
        }
    }

    /// Records what KV holds against what this follower holds (`snapshot.behind`).
    fn observe(&self, verified: &Verified, value: &[u8]) {
        metrics::set_kv_generation(verified.snapshot.generation);
        let held = self.follower.held();
        metrics::set_behind(held != Some(Held::of(verified, value)));
    }

    /// [`Worker::observe`] for a value the kill switch holds back (decoded for that only).
    async fn observe_held_back(&self, value: Vec<u8>) {
        match self.decode(value).await {
            Ok((verified, value)) => self.observe(&verified, &value),
            Err(_) => metrics::set_behind(true),
        }
    }

    /// Saves a verified value to the state dir, then swaps it into [`Hosts`].
    async fn apply(&mut self, verified: Verified, value: Vec<u8>) -> Outcome {
        let state_dir = self.follower.config.state_dir.clone();
        let held = Held::of(&verified, &value);
        let saved = tokio::task::spawn_blocking(move || store::save(&state_dir, &value)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.reject(error.reason(), &error.to_string());
                return Outcome::Retry;
            }
            Err(join_error) => {
                self.reject("io", &format!("saving the snapshot panicked: {join_error}"));
                return Outcome::Retry;
            }
        }
        let generation = verified.snapshot.generation;
        let size = verified.encoded_size;
        set_gauges(&verified.snapshot, size);
        let services = verified.snapshot.services.len();
        let nodes = verified.snapshot.nodes.len();
        let publisher = verified.snapshot.publisher.clone();
        let snapshot = Arc::new(verified.snapshot);
        self.follower.hosts.replace(Arc::clone(&snapshot));
        self.follower.set_held(held);
        metrics::set_behind(false);
        metrics::applied();
        if let Some(deliveries) = &self.deliveries {
            deliveries.send_replace(Some(snapshot));
        }
        events::emit(&self.follower.config.events, || Event {
            title: "dnsfront snapshot applied".to_owned(),
            text: format!(
                "Hosts snapshot generation {generation} (sha256 {}) from {publisher} applied: \
                 {services} services, {nodes} nodes, {size} bytes",
                short_sha(&held.sha256)
            ),
            alert: AlertType::Info,
            tags: events::tags("applied", &self.follower.config.key),
        });
        if let Some(previous) = self.problem.take() {
            tracing::info!(previous_problem = %previous, "Hosts snapshots are accepted again");
        }
        tracing::info!(
            generation,
            size,
            services,
            nodes,
            publisher = %publisher,
            "Hosts snapshot applied"
        );
        Outcome::Settled
    }

    /// The kill-switch reason: `None` when the stop key is missing or empty.
    async fn stop_reason(&self) -> Result<Option<String>, consul::Error> {
        let response = self
            .follower
            .client
            .kv_get(&self.follower.config.stop_key, &QueryOptions::default())
            .await?;
        Ok(stop_value(response.value))
    }

    /// Blocks on the stop key until it is cleared; then the snapshot key is read again.
    async fn wait_for_stop_cleared(&mut self, shutdown: &CancellationToken) -> Outcome {
        let config = self.follower.config.clone();
        let client = &self.follower.client.clone();
        let stop_key = &config.stop_key;
        let mut watch = config.watch();
        loop {
            let read =
                watch.round(|options| async move { client.kv_get(stop_key, &options).await });
            let response = tokio::select! {
                () = shutdown.cancelled() => return Outcome::Shutdown,
                response = read => response,
            };
            match response {
                Ok((response, _)) => {
                    self.consul_ok();
                    if stop_value(response.value).is_none() {
                        tracing::info!(
                            stop_key = %config.stop_key,
                            "Snapshot kill switch cleared, following the key again"
                        );
                        self.problem = None;
                        return Outcome::Reread;
                    }
                }
                Err(error) => {
                    self.consul_failed("reading the kill-switch key", &error);
                    if !self.sleep_backoff(shutdown).await {
                        return Outcome::Shutdown;
                    }
                }
            }
        }
    }

    /// Counts a refusal and logs it when its reason differs from the previous one.
    fn reject(&mut self, reason: &'static str, detail: &str) {
        metrics::rejected(reason);
        events::emit(&self.follower.config.events, || Event {
            title: "dnsfront snapshot rejected".to_owned(),
            text: format!("Hosts snapshot rejected ({reason}), keeping the previous one: {detail}"),
            alert: AlertType::Error,
            tags: {
                let mut tags = events::tags("rejected", &self.follower.config.key);
                tags.push(format!("reason:{reason}"));
                tags
            },
        });
        if self.problem.as_deref() != Some(reason) {
            tracing::warn!(
                reason,
                detail,
                "Hosts snapshot rejected, keeping the previous one"
            );
            self.problem = Some(reason.to_owned());
        } else {
            tracing::debug!(reason, detail, "Hosts snapshot rejected again");
        }
    }

    fn consul_failed(&mut self, what: &'static str, error: &consul::Error) {
        self.retry.failed(
            what,
            error,
            "Consul call failed, keeping the current snapshot and retrying",
        );
    }

    fn consul_ok(&mut self) {
        self.retry.ok();
    }

    /// Sleeps one backoff step; false when shutdown was requested.
    async fn sleep_backoff(&mut self, shutdown: &CancellationToken) -> bool {
        self.retry.sleep(shutdown).await
    }
}

/// At `start_at`, one read of `key` with `options` (a watch's).
async fn read_key_at(
    client: &consul::Client,
    key: &str,
    options: QueryOptions,
    start_at: Instant,
) -> Result<consul::Response<Option<consul::KvPair>>, consul::Error> {
    tokio::time::sleep_until(start_at).await;
    client.kv_get(key, &options).await
}

/// Sleeps until `at`; never returns when `None` (the caller guards on `is_some`).
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The stop key's value as a reason, `None` when missing or blank.
fn stop_value(pair: Option<consul::KvPair>) -> Option<String> {
    let value = pair?.value?;
    let reason = String::from_utf8_lossy(&value).trim().to_owned();
    (!reason.is_empty()).then_some(reason)
}

/// Sets the generation, size and age gauges for a snapshot now in memory.
fn set_gauges(snapshot: &Snapshot, encoded_size: usize) {
    metrics::set_generation(snapshot.generation);
    metrics::set_size_bytes(encoded_size);
    metrics::set_age_seconds(age_seconds(snapshot));
}

/// Seconds since the snapshot was created (0 when its clock is ahead of ours).
fn age_seconds(snapshot: &Snapshot) -> f64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    now_ms.saturating_sub(snapshot.created_unix_ms) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_never_spins_on_zero() {
        let config = FollowerConfig {
            min_interval: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..FollowerConfig::new(PathBuf::from("/var/lib/dnsfront"))
        };
        let mut backoff = config.backoff();
        assert!(backoff.next_delay() >= Duration::from_millis(50));
    }

    #[test]
    fn backoff_runs_from_min_interval_to_backoff_max() {
        let config = FollowerConfig {
            min_interval: Duration::from_millis(200),
            backoff_max: Duration::from_secs(1),
            ..FollowerConfig::new(PathBuf::from("/var/lib/dnsfront"))
        };
        let mut backoff = config.backoff();
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        for _ in 0..10 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
    }

    #[test]
    fn sibling_keys() {
        assert_eq!(stop_key_for(DEFAULT_KEY), "dnsfront/hosts-stop");
        assert_eq!(lock_key_for(DEFAULT_KEY), "dnsfront/hosts.lock");
        let config = FollowerConfig::new(PathBuf::from("/var/lib/dnsfront"));
        assert_eq!(config.stop_key, "dnsfront/hosts-stop");
    }
}
