//! The publisher: one elected writer per datacenter turns the catalog into a snapshot and
//! writes it to the snapshot key, only when the content changed.
//!
//! # Election
//!
//! Consul's lock pattern (`api/lock.go`, `consul lock`): create a session (TTL,
//! behavior `release`, lock delay), then `PUT KEY.lock?acquire=SESSION` with the identity as
//! value. Not acquired: block on the lock key until its `Session` is empty, then try again.
//! The session is renewed every TTL/2; if a renewal reports it gone (or renewals keep failing
//! for a whole TTL), or the lock key shows another holder, the publisher steps down and starts
//! over with a new session. On shutdown the lock is released and the session destroyed; a
//! publisher that dies without that loses the lock when Consul expires its session (after up
//! to 2×TTL), and another one takes over.
//!
//! # Publishing
//!
//! While leader: four blocking queries in flight side by side, `/v1/catalog/services` (its
//! index moves on service registration changes), `/v1/health/state/critical` and
//! `/v1/health/state/warning` (check state changes, which the catalog index does not show;
//! not `any`, which carries every check in the datacenter on each update) and
//! `/v1/catalog/nodes` (the nodes table index, which moves when a node's address changes;
//! none of the others does), each paced like every watch (two reads back to back, then
//! at most one per [`PublisherConfig::min_interval`]) and re-armed no sooner than the next
//! build may start. Each time the catalog query returns (a change, or the
//! `catalog_wait` timeout, which bounds the age of anything no index shows) or another
//! index moves, and never more often than [`PublisherConfig::min_interval`] (nor sooner
//! after a round than the round took), the publisher checks the kill switch, builds a
//! [`Snapshot`] (healthy instances of every service under the DNS health rule, every node,
//! datacenter, Consul index, time, identity), and writes it only when:
//!
//! - its [`Snapshot::content_checksum`] differs from the published one;
//! - it has at least [`PublisherConfig::min_services`] services with a healthy instance, and
//!   does not drop more than [`PublisherConfig::max_drop_fraction`] of the published
//!   services that had one (both guards are bypassed by [`PublisherConfig::force`]);
//! - it fits in one value ([`crate::codec::MAX_VALUE_SIZE`]; otherwise an error with the
//!   numbers is logged and nothing is written).
//!
//! The write is a check-and-set on the published value's `ModifyIndex` (0 when none),
//! followed by the pointer ([`crate::pointer`], `KEY.pointer`: generation and SHA-256 of the
//! value) with a check-and-set on the pointer's `ModifyIndex` read in the same round. Value
//! first, so a pointer never names a value that is not there; a round that finds the content
//! unchanged but the pointer not naming the published value (a crash or a lost write between
//! the two, or a publisher of an older version that writes no pointer) rewrites the pointer.
//! The generation is one above the highest of: the publisher's own high-water mark (kept in
//! [`PublisherConfig::state_dir`], written before each write, so nothing read from KV can
//! set it back: a replayed old envelope changes nothing), and the published generation.
//! A published value that does not decode (corrupt or signed with another key) counts as
//! its `ModifyIndex`: every good generation was at most the raft index of its own write, so
//! this is still higher than anything a follower has applied. A published generation out of
//! reach (above [`crate::follower::MAX_GENERATION`], or more than
//! [`crate::follower::MAX_UNSIGNED_STEP`] above the high-water mark) is ignored with a
//! warning, as followers refuse it too; arithmetic is checked, and a publisher whose next
//! generation would pass the maximum refuses to write (`generation_exhausted`) rather than
//! wrap. A lost check-and-set is retried on the next round.
//!
//! The election lives in `publisher/election.rs`, the leader's four watches in
//! `publisher/watches.rs`; this file holds the settings, one publish round and the build.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dnsfront_consul::{
    self as consul, Backoff, HALF_JITTER, KvPutOptions, Node, QueryOptions, ServiceInstance,
};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::follower::{DEFAULT_KEY, MAX_GENERATION, MAX_UNSIGNED_STEP, lock_key_for, stop_key_for};
use crate::pointer::{Pointer, pointer_key_for};
use crate::retry::ConsulRetry;
use crate::{Error, SigningKey, Snapshot, codec, metrics};

mod election;
mod watches;

/// Default minimum time between two snapshot builds (and so between two writes): each
/// write makes every follower fetch the value within `snapshot.fetch_spread`, so a fleet's
/// bytes per hour are the value size × nodes × writes per hour; a build reads every
/// service's health. The snapshot is the outage fallback, minutes old is fresh enough.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(120);
/// Default session TTL (Consul accepts 10s..24h).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(15);
/// Default lock delay after the session is invalidated (Consul's default).
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// Default blocking wait of the catalog and health-check watches.
pub const DEFAULT_CATALOG_WAIT: Duration = Duration::from_secs(5 * 60);
/// Default share of the published services a new snapshot may drop.
pub const DEFAULT_MAX_DROP_FRACTION: f64 = 0.5;
/// Name of the publisher's sessions in `/v1/session/list`.
pub const SESSION_NAME: &str = "dnsfront-publisher";

/// Backoff bounds after a failed Consul call.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Health reads in flight while building a snapshot.
const BUILD_CONCURRENCY: usize = 8;

/// Settings of a [`Publisher`].
#[derive(Clone)]
pub struct PublisherConfig {
    /// KV key the snapshot is written to (default `dnsfront/hosts`).
    pub key: String,
    /// Lock key (default `KEY.lock`, see [`lock_key_for`]).
    pub lock_key: String,
    /// Kill-switch key (default `KEY-stop`, see [`stop_key_for`]); non-empty = do not write.
    pub stop_key: String,
    /// Pointer key (default `KEY.pointer`, see [`pointer_key_for`]), written after the value.
    pub pointer_key: String,
    /// Who publishes (node name or hostname); stored in the lock key and the snapshot.
    pub identity: String,
    /// Signs snapshots when set; followers configured with the public key require it.
    pub signing_key: Option<SigningKey>,
    /// Minimum time between two snapshot builds and writes (default 2m); the leader's
    /// watches are re-armed no sooner than the next build may start.
    pub min_interval: Duration,
    /// Session TTL (default 15s; Consul accepts 10s..24h).
    pub session_ttl: Duration,
    /// Lock delay of the session (default 15s; 0..60s).
    pub lock_delay: Duration,
    /// Fewest services with a healthy instance a snapshot must have to be written (default 1).
    pub min_services: usize,
    /// Largest share (0..=1) of the published services a new snapshot may drop (default 0.5).
    pub max_drop_fraction: f64,
    /// Write even when a guard (`min_services`, `max_drop_fraction`) says no.
    pub force: bool,
    /// Drop instances with a warning check too (Consul's `dns_config.only_passing`).
    pub only_passing: bool,
    /// Blocking wait of the catalog and health-check watches (default 5m).
    pub catalog_wait: Duration,
    /// Directory keeping the publisher's generation high-water mark ([`HIGH_WATER_FILE`]);
    /// `None` keeps it in memory only (then a restarted publisher trusts KV again).
    pub state_dir: Option<PathBuf>,
    /// Where each write is reported (default none).
    pub events: crate::events::Events,
}

/// File of the publisher's high-water mark inside its state dir (decimal, one line).
pub const HIGH_WATER_FILE: &str = "publisher-generation";

/// Reads the high-water mark; 0 when there is none yet.
pub fn load_high_water(dir: &Path) -> Result<u64, Error> {
    let path = dir.join(HIGH_WATER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| Error::Malformed {
            reason: "the publisher's generation file is not a number",
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(Error::io(path, source)),
    }
}

/// Writes the high-water mark atomically (temp file, fsync, rename).
fn save_high_water(dir: &Path, generation: u64) -> Result<(), Error> {
    crate::store::save_file(dir, HIGH_WATER_FILE, format!("{generation}\n").as_bytes())
}

impl PublisherConfig {
    /// Defaults for the key `dnsfront/hosts`, publishing as `identity`.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            key: DEFAULT_KEY.to_owned(),
            lock_key: lock_key_for(DEFAULT_KEY),
            stop_key: stop_key_for(DEFAULT_KEY),
            pointer_key: pointer_key_for(DEFAULT_KEY),
            identity: identity.into(),
            signing_key: None,
            min_interval: DEFAULT_MIN_INTERVAL,
            session_ttl: DEFAULT_SESSION_TTL,
            lock_delay: DEFAULT_LOCK_DELAY,
            min_services: 1,
            max_drop_fraction: DEFAULT_MAX_DROP_FRACTION,
            force: false,
            only_passing: false,
            catalog_wait: DEFAULT_CATALOG_WAIT,
            state_dir: None,
            events: None,
        }
    }
}

impl fmt::Debug for PublisherConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherConfig")
            .field("key", &self.key)
            .field("lock_key", &self.lock_key)
            .field("stop_key", &self.stop_key)
            .field("pointer_key", &self.pointer_key)
            .field("identity", &self.identity)
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(|_| "<redacted>"),
            )
            .field("min_interval", &self.min_interval)
            .field("session_ttl", &self.session_ttl)
            .field("lock_delay", &self.lock_delay)
            .field("min_services", &self.min_services)
            .field("max_drop_fraction", &self.max_drop_fraction)
            .field("force", &self.force)
            .field("only_passing", &self.only_passing)
            .field("catalog_wait", &self.catalog_wait)
            .field("state_dir", &self.state_dir)
            .field("events", &self.events.is_some())
            .finish()
    }
}

/// Elects itself with a Consul session lock and publishes the catalog snapshot while leader.
#[derive(Debug)]
pub struct Publisher {
    config: PublisherConfig,
    client: consul::Client,
}

/// What the publisher knows about the value currently in the key.
struct Published {
    /// `ModifyIndex` of the key (the check-and-set index).
    modify_index: u64,
    /// The decoded snapshot, `None` when the value does not decode.
    snapshot: Option<Snapshot>,
    /// SHA-256 of the value's bytes (what the pointer names).
    sha256: [u8; 32],
}

/// What the publisher knows about the pointer key.
struct PublishedPointer {
    /// `ModifyIndex` of the pointer key (0 when there is none: the check-and-set index).
    modify_index: u64,
    /// The pointer, `None` when missing or refused.
    pointer: Option<Pointer>,
}

/// The generation of the next write: one above the highest of `high_water` and what the
/// key holds (its generation, or its `ModifyIndex` when it does not decode), ignoring a
/// value out of reach. `Err` when the next one would pass [`MAX_GENERATION`].
fn next_generation(published: Option<&Published>, high_water: u64) -> Result<u64, Error> {
    let read = match published {
        None => 0,
        Some(Published {
            snapshot: Some(previous),
            ..
        }) => previous.generation,
        Some(Published {
            modify_index,
            snapshot: None,
            ..
        }) => *modify_index,
    };
    let reachable = read <= MAX_GENERATION && read <= high_water.saturating_add(MAX_UNSIGNED_STEP);
    if !reachable {
        tracing::warn!(
            published_generation = read,
            high_water,
            "The published snapshot's generation is out of reach, ignoring it \
             (followers refuse it too)"
        );
    }
    let base = if reachable {
        read.max(high_water)
    } else {
        high_water
    };
    base.checked_add(1)
        .filter(|next| *next <= MAX_GENERATION)
        .ok_or(Error::Generation {
            generation: base,
            reason: "no generation left below the maximum",
        })
}

/// Result of one publish round.
enum Round {
    /// Written, unchanged, or refused by a guard: wait for the next catalog or check change.
    Done,
    /// Kill switch, lost check-and-set or a Consul error: try again after `min_interval`.
    Retry,
}

/// State that survives leadership changes: log-once flags and the build rate limit.
struct LeaderState {
    leader: bool,
    next_build: Instant,
    /// Reason of the last skipped round, so each distinct reason is logged once.
    skipped: Option<&'static str>,
    datacenter: Option<String>,
    /// Backoff and log-once state of failing Consul calls.
    retry: ConsulRetry,
    /// Highest generation this publisher has written (or was about to), persisted in
    /// [`PublisherConfig::state_dir`].
    high_water: u64,
    /// The last attempt to persist `high_water` failed (logged once).
    high_water_unsaved: bool,
}

/// The backoff after a failed Consul call: 500ms doubling up to 30s, each delay drawn from
/// the upper half of its step.
fn backoff() -> Backoff {
    Backoff::try_new(BACKOFF_MIN, BACKOFF_MAX, HALF_JITTER).expect("constant bounds are valid")
}

impl Publisher {
    /// A publisher using `client` (writes always go to the leader; reads may be stale).
    pub fn new(config: PublisherConfig, client: consul::Client) -> Self {
        Self { config, client }
    }

    /// Runs the election and, while leader, the publish loop, until `shutdown` is cancelled;
    /// then releases the lock and destroys the session. Consul errors are retried with
    /// backoff, so this returns `Ok` once shut down.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let span = tracing::info_span!(
            "snapshot_publisher",
            key = %self.config.key,
            identity = %self.config.identity
        );
        self.run_inner(shutdown).instrument(span).await;
        Ok(())
    }

    /// Builds the snapshot and writes it if every check passes.
    async fn publish_round(
        &self,
        service_names: Vec<String>,
        consul_index: u64,
        state: &mut LeaderState,
    ) -> Round {
        if let Some(round) = self.kill_switch_round(state).await {
            return round;
        }
        let snapshot = match self.build(service_names, consul_index, state).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                state.consul_failed("reading the catalog", &error);
                return Round::Retry;
            }
        };
        let published = match self.read_published().await {
            Ok(published) => published,
            Err(error) => {
                state.consul_failed("reading the published snapshot", &error);
                return Round::Retry;
            }
        };
        let pointer = match self.read_pointer().await {
            Ok(pointer) => pointer,
            Err(error) => {
                state.consul_failed("reading the snapshot pointer", &error);
                return Round::Retry;
            }
        };
        let previous = published.as_ref().and_then(|p| p.snapshot.as_ref());
        if let Some(previous) = previous
            && previous.content_checksum() == snapshot.content_checksum()
        {
            tracing::debug!(
                generation = previous.generation,
                "Catalog unchanged since the published snapshot"
            );
            metrics::publish_skipped("unchanged");
            state.skipped = None;
            // A publisher that stopped between the value and the pointer (crash, lost
            // lock, failed write), or one of an older version, left the pointer behind:
            // point it at the value that is there.
            let wanted = Pointer {
                generation: previous.generation,
                sha256: published.as_ref().map_or([0; 32], |p| p.sha256),
            };
            if pointer.pointer != Some(wanted) {
                tracing::info!(
                    generation = wanted.generation,
                    "The snapshot pointer does not name the published value, rewriting it"
                );
                return self
                    .write_pointer(wanted, pointer.modify_index, state)
                    .await;
            }
            return Round::Done;
        }
        if !self.config.force
            && let Some((reason, detail)) = self.guard(&snapshot, previous)
        {
            if state.skipped != Some(reason) {
                tracing::warn!(
                    reason,
                    detail = %detail,
                    "Snapshot not published: guard refused it (set force to override)"
                );
            }
            state.skip(reason);
            return Round::Done;
        }
        self.write(snapshot, published.as_ref(), &pointer, state)
            .await
    }

    /// `Some` when the round must not go ahead: the kill switch is set (logged once), or it
    /// could not be read.
    async fn kill_switch_round(&self, state: &mut LeaderState) -> Option<Round> {
        match self.stop_reason().await {
            Err(error) => {
                state.consul_failed("reading the kill-switch key", &error);
                Some(Round::Retry)
            }
            Ok(Some(reason)) => {
                if state.skipped != Some("kill_switch") {
                    tracing::warn!(
                        stop_key = %self.config.stop_key,
                        reason = %reason,
                        "Snapshot kill switch is set, not publishing"
                    );
                }
                state.skip("kill_switch");
                Some(Round::Retry)
            }
            Ok(None) => None,
        }
    }

    /// Numbers, encodes and writes a snapshot with a check-and-set on the published value,
    /// then the pointer naming it (the value first, so a pointer never names a value that is
    /// not there yet; a pointer left behind is rewritten by the next round).
    async fn write(
        &self,
        mut snapshot: Snapshot,
        published: Option<&Published>,
        pointer: &PublishedPointer,
        state: &mut LeaderState,
    ) -> Round {
        snapshot.generation = match next_generation(published, state.high_water) {
            Ok(generation) => generation,
            Err(error) => {
                if state.skipped != Some("generation_exhausted") {
                    tracing::error!(
                        error = %error,
                        "Snapshot not published: generations are exhausted; delete the \
                         snapshot key and the publisher's generation file to start over"
                    );
                }
                state.skip("generation_exhausted");
                return Round::Done;
            }
        };
        // Persisted before the write: a crash after it cannot let a replayed value set the
        // counter back.
        // Failing to persist is loud but does not stop publishing: the mark still holds in
        // memory, and a fleet without new snapshots would be worse.
        if let Err(error) = self.save_high_water(snapshot.generation).await {
            if !state.high_water_unsaved {
                tracing::error!(
                    error = %error,
                    "Cannot persist the publisher's generation; publishing with the mark in memory only"
                );
            }
            state.high_water_unsaved = true;
        } else {
            state.high_water_unsaved = false;
        }
        state.high_water = snapshot.generation;
        let encoded = match codec::encode(&snapshot, self.config.signing_key.as_ref()) {
            Ok(encoded) => encoded,
            Err(error) => {
                if state.skipped != Some(error.reason()) {
                    tracing::error!(error = %error, "Snapshot not published: encoding failed");
                }
                state.skip(error.reason());
                return Round::Done;
            }
        };
        let options = KvPutOptions {
            cas: Some(published.map_or(0, |p| p.modify_index)),
            ..KvPutOptions::default()
        };
        match self
            .client
            .kv_put(&self.config.key, &encoded, &options)
            .await
        {
            Ok(true) => {
                state.consul_ok();
                state.skipped = None;
                metrics::published();
                metrics::set_size_bytes(encoded.len());
                tracing::info!(
                    generation = snapshot.generation,
                    size = encoded.len(),
                    services = snapshot.services.len(),
                    nodes = snapshot.nodes.len(),
                    consul_index = snapshot.consul_index,
                    "Hosts snapshot published"
                );
                crate::events::emit(&self.config.events, || crate::events::Event {
                    title: "dnsfront snapshot published".to_owned(),
                    text: format!(
                        "Hosts snapshot generation {} published by {}: {} services, {} nodes, {} bytes",
                        snapshot.generation,
                        self.config.identity,
                        snapshot.services.len(),
                        snapshot.nodes.len(),
                        encoded.len()
                    ),
                    alert: crate::events::AlertType::Info,
                    tags: crate::events::tags("published", &self.config.key),
                });
                let named = Pointer::of(snapshot.generation, &encoded);
                self.write_pointer(named, pointer.modify_index, state).await
            }
            Ok(false) => {
                tracing::debug!("Snapshot key changed under us (check-and-set failed), retrying");
                state.skip("cas_conflict");
                Round::Retry
            }
            Err(error) => {
                state.consul_failed("writing the snapshot", &error);
                Round::Retry
            }
        }
    }

    /// Writes the pointer with a check-and-set on the `ModifyIndex` read this round, so a
    /// publisher that lost the lock cannot set back a pointer its successor wrote. A lost
    /// check-and-set or an error is retried: the next round finds the pointer behind the
    /// value and rewrites it.
    async fn write_pointer(&self, pointer: Pointer, cas: u64, state: &mut LeaderState) -> Round {
        let options = KvPutOptions {
            cas: Some(cas),
            ..KvPutOptions::default()
        };
        match self
            .client
            .kv_put(&self.config.pointer_key, &pointer.encode(), &options)
            .await
        {
            Ok(true) => {
                state.consul_ok();
                tracing::debug!(generation = pointer.generation, "Snapshot pointer written");
                Round::Done
            }
            Ok(false) => {
                tracing::debug!("Pointer key changed under us (check-and-set failed), retrying");
                state.skip("cas_conflict");
                Round::Retry
            }
            Err(error) => {
                state.consul_failed("writing the snapshot pointer", &error);
                Round::Retry
            }
        }
    }

    /// Reads the pointer key; a pointer that does not parse is logged and will be replaced.
    async fn read_pointer(&self) -> Result<PublishedPointer, consul::Error> {
        let response = self
            .client
            .kv_get(&self.config.pointer_key, &QueryOptions::default())
            .await?;
        let Some(pair) = response.value else {
            return Ok(PublishedPointer {
                modify_index: 0,
                pointer: None,
            });
        };
        let pointer = match Pointer::decode(pair.value.as_deref().unwrap_or_default()) {
            Ok(pointer) => Some(pointer),
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    pointer_key = %self.config.pointer_key,
                    "The snapshot pointer does not parse, it will be replaced"
                );
                None
            }
        };
        Ok(PublishedPointer {
            modify_index: pair.modify_index,
            pointer,
        })
    }

    /// The size and shrink guards: `Some((reason, detail))` when the snapshot must not be written.
    fn guard(
        &self,
        snapshot: &Snapshot,
        previous: Option<&Snapshot>,
    ) -> Option<(&'static str, String)> {
        let current = healthy_services(snapshot);
        if current.len() < self.config.min_services {
            return Some((
                "too_small",
                format!(
                    "{} services with a healthy instance, minimum {}",
                    current.len(),
                    self.config.min_services
                ),
            ));
        }
        let before = previous.map(healthy_services).unwrap_or_default();
        if before.is_empty() {
            return None;
        }
        let dropped = before.difference(&current).count();
        let fraction = dropped as f64 / before.len() as f64;
        (fraction > self.config.max_drop_fraction).then(|| {
            (
                "shrink_guard",
                format!(
                    "drops {dropped} of {} published services ({:.0}%), maximum {:.0}%",
                    before.len(),
                    fraction * 100.0,
                    self.config.max_drop_fraction * 100.0
                ),
            )
        })
    }

    /// The kill-switch reason: `None` when the stop key is missing or empty.
    async fn stop_reason(&self) -> Result<Option<String>, consul::Error> {
        let response = self
            .client
            .kv_get(&self.config.stop_key, &QueryOptions::default())
            .await?;
        let Some(value) = response.value.and_then(|pair| pair.value) else {
            return Ok(None);
        };
        let reason = String::from_utf8_lossy(&value).trim().to_owned();
        Ok((!reason.is_empty()).then_some(reason))
    }

    /// Reads and decodes the value currently in the snapshot key.
    async fn read_published(&self) -> Result<Option<Published>, consul::Error> {
        let response = self
            .client
            .kv_get(&self.config.key, &QueryOptions::default())
            .await?;
        let Some(pair) = response.value else {
            return Ok(None);
        };
        let verifying_key = self
            .config
            .signing_key
            .as_ref()
            .map(SigningKey::verifying_key);
        let bytes = pair.value.unwrap_or_default();
        let sha256 = crate::pointer::sha256(&bytes);
        let decoded =
            tokio::task::spawn_blocking(move || codec::decode(&bytes, verifying_key.as_ref()))
                .await
                .unwrap_or(Err(Error::Malformed {
                    reason: "decoding panicked",
                }));
        let snapshot = match decoded {
            Ok(verified) => Some(verified.snapshot),
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    modify_index = pair.modify_index,
                    "The published snapshot does not decode, it will be replaced"
                );
                None
            }
        };
        Ok(Some(Published {
            modify_index: pair.modify_index,
            snapshot,
            sha256,
        }))
    }

    /// Loads the persisted high-water mark (0 without a state dir or file).
    pub(super) async fn load_high_water(&self) -> Result<u64, Error> {
        let Some(dir) = self.config.state_dir.clone() else {
            return Ok(0);
        };
        tokio::task::spawn_blocking(move || load_high_water(&dir))
            .await
            .unwrap_or(Err(Error::Malformed {
                reason: "reading the generation file panicked",
            }))
    }

    async fn save_high_water(&self, generation: u64) -> Result<(), Error> {
        let Some(dir) = self.config.state_dir.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || save_high_water(&dir, generation))
            .await
            .unwrap_or(Err(Error::Malformed {
                reason: "writing the generation file panicked",
            }))
    }

    /// Reads every service's instances and every node, and builds a normalized snapshot.
    async fn build(
        &self,
        service_names: Vec<String>,
        consul_index: u64,
        state: &mut LeaderState,
    ) -> Result<Snapshot, consul::Error> {
        let datacenter = match &state.datacenter {
            Some(datacenter) => datacenter.clone(),
            None => {
                let datacenter = self.client.agent_self().await?.datacenter;
                state.datacenter = Some(datacenter.clone());
                datacenter
            }
        };
        let mut services: BTreeMap<String, Vec<ServiceInstance>> = BTreeMap::new();
        let mut pending = service_names.into_iter();
        let mut reads = JoinSet::new();
        loop {
            while reads.len() < BUILD_CONCURRENCY {
                let Some(name) = pending.next() else {
                    break;
                };
                let client = self.client.clone();
                reads.spawn(async move {
                    let response = client.health_service(&name, &QueryOptions::default()).await;
                    (name, response)
                });
            }
            let Some(joined) = reads.join_next().await else {
                break;
            };
            let (name, response) = joined.expect("health reads never panic");
            let entries = response?.value;
            let instances = entries
                .iter()
                .filter_map(|entry| ServiceInstance::from_entry(entry, self.config.only_passing))
                .collect();
            services.insert(name, instances);
        }
        let nodes = self
            .client
            .catalog_nodes(&QueryOptions::default())
            .await?
            .value
            .into_iter()
            .map(|info| {
                let node = Node::from_info(&info);
                (node.name.clone(), node)
            })
            .collect();
        let created_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let mut snapshot = Snapshot {
            generation: 0,
            consul_index,
            created_unix_ms,
            publisher: self.config.identity.clone(),
            datacenter,
            services,
            nodes,
        };
        snapshot.normalize();
        Ok(snapshot)
    }
}

/// Names of the services that have at least one healthy instance.
fn healthy_services(snapshot: &Snapshot) -> BTreeSet<&str> {
    snapshot
        .services
        .iter()
        .filter(|(_, instances)| !instances.is_empty())
        .map(|(name, _)| name.as_str())
        .collect()
}

impl LeaderState {
    /// Records a skipped round (counted every time, logged by the caller on change).
    fn skip(&mut self, reason: &'static str) {
        metrics::publish_skipped(reason);
        self.skipped = Some(reason);
    }

    fn consul_failed(&mut self, what: &'static str, error: &consul::Error) {
        self.retry
            .failed(what, error, "Consul call failed, retrying");
    }

    fn consul_ok(&mut self) {
        self.retry.ok();
    }

    /// Sleeps one backoff step; false when shutdown was requested.
    async fn sleep_backoff(&mut self, shutdown: &CancellationToken) -> bool {
        self.retry.sleep(shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn snapshot_with(services: &[(&str, usize)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (name, count) in services {
            let instances = (0..*count)
                .map(|n| ServiceInstance {
                    node: format!("n{n}"),
                    datacenter: String::new(),
                    node_address: Some(IpAddr::from([10, 0, 0, 1])),
                    service_address: None,
                    port: 80,
                    tags: Vec::new(),
                    weight: 1,
                    status: consul::InstanceStatus::Passing,
                    hostname: None,
                    details: None,
                })
                .collect();
            snapshot.services.insert((*name).to_owned(), instances);
        }
        snapshot
    }

    fn publisher(config: PublisherConfig) -> Publisher {
        let client = consul::Client::new(consul::Config::default()).expect("default config");
        Publisher::new(config, client)
    }

    #[test]
    fn guard_refuses_too_few_services() {
        let publisher = publisher(PublisherConfig {
            min_services: 2,
            ..PublisherConfig::new("p")
        });
        let one = snapshot_with(&[("web", 1), ("db", 0)]);
        assert_eq!(publisher.guard(&one, None).map(|g| g.0), Some("too_small"));
        let two = snapshot_with(&[("web", 1), ("db", 1)]);
        assert_eq!(publisher.guard(&two, None), None);
    }

    #[test]
    fn guard_refuses_dropping_more_than_the_fraction() {
        let publisher = publisher(PublisherConfig::new("p"));
        let before = snapshot_with(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        let half = snapshot_with(&[("a", 1), ("b", 1)]);
        assert_eq!(
            publisher.guard(&half, Some(&before)),
            None,
            "50% is allowed"
        );
        let quarter = snapshot_with(&[("a", 1), ("b", 0), ("c", 0), ("e", 1)]);
        assert_eq!(
            publisher.guard(&quarter, Some(&before)).map(|g| g.0),
            Some("shrink_guard")
        );
    }

    #[test]
    fn debug_redacts_the_signing_key() {
        let config = PublisherConfig {
            signing_key: Some(SigningKey::from_bytes(&[7; 32])),
            ..PublisherConfig::new("p")
        };
        let debug = format!("{config:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
