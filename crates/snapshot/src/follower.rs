//! The follower: watches the snapshot key, verifies every new value, keeps it on disk and in
//! memory, and never replaces a good snapshot with a bad one.
//!
//! One blocking query on the key (stale reads when the client is configured with
//! `stale = true`, the default), at most one read per [`FollowerConfig::min_interval`], with
//! jittered exponential backoff on errors. A new value is applied only when, in this order:
//!
//! 1. the kill-switch key ([`FollowerConfig::stop_key`]) is missing or empty (otherwise the
//!    follower waits on the stop key until it clears, then re-reads the snapshot key);
//! 2. [`crate::codec::decode`] accepts it (format, SHA-256, and the Ed25519 signature when
//!    [`FollowerConfig::verifying_key`] is set);
//! 3. its generation is higher than the one in memory (lower = rollback, rejected; equal =
//!    already applied, ignored);
//! 4. it was saved atomically to the state dir ([`crate::store::save`]).
//!
//! Then it is swapped into [`Hosts`]. Every refusal keeps the previous snapshot, is counted
//! in `snapshot.rejected{reason}` and is logged once per distinct reason.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dnsfront_consul::{self as consul, QueryOptions, next_index};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{Error, Hosts, Snapshot, VerifyingKey, codec, metrics, store};

/// Default KV key holding the snapshot.
pub const DEFAULT_KEY: &str = "dnsfront/hosts";
/// Default blocking wait of the follower's query (Consul's own default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// Default minimum time between two reads of the key.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default ceiling of the error backoff.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

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
    /// Directory the verified snapshot is saved in ([`crate::store`]).
    pub state_dir: PathBuf,
    /// When set, unsigned or badly signed snapshots are rejected.
    pub verifying_key: Option<VerifyingKey>,
    /// Blocking-query wait (default 5m, Consul caps it at 10m).
    pub wait: Duration,
    /// Minimum time between two reads of the key (default 1s).
    pub min_interval: Duration,
    /// Ceiling of the jittered exponential backoff after errors (default 30s).
    pub backoff_max: Duration,
}

impl FollowerConfig {
    /// Defaults for everything but the state dir.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            key: DEFAULT_KEY.to_owned(),
            stop_key: stop_key_for(DEFAULT_KEY),
            state_dir,
            verifying_key: None,
            wait: DEFAULT_WAIT,
            min_interval: DEFAULT_MIN_INTERVAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// Follows the snapshot key and keeps [`Hosts`] and the state dir up to date.
#[derive(Debug)]
pub struct Follower {
    config: FollowerConfig,
    client: consul::Client,
    hosts: Hosts,
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
        }
    }

    /// Loads the snapshot saved in the state dir into [`Hosts`]; call it before [`Follower::run`]
    /// so a resolver started during an outage answers at once.
    ///
    /// Returns the generation now in memory, or `None` when the state dir has no snapshot.
    /// A corrupt or badly signed file is returned as an error (and counted in
    /// `snapshot.rejected`); it is not fatal: [`Follower::run`] replaces it with the next
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
        if let Some(current) = self.hosts.generation()
            && current >= generation
        {
            return Ok(Some(current));
        }
        set_gauges(&verified.snapshot, verified.encoded_size);
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
        let mut worker = Worker {
            retry: ConsulRetry::new(Backoff::new(
                self.config.min_interval,
                self.config.backoff_max,
            )),
            follower: self,
            problem: None,
            missing_logged: false,
        };
        let span = tracing::info_span!("snapshot_follower", key = %worker.follower.config.key);
        worker.run(shutdown).instrument(span).await;
    }
}

/// The follower's loop and its log-once state.
struct Worker {
    follower: Follower,
    /// Backoff and log-once state of failing Consul calls.
    retry: ConsulRetry,
    /// Reason of the last refusal, so each distinct reason is logged once.
    problem: Option<String>,
    /// The key was found missing and that was logged.
    missing_logged: bool,
}

impl Worker {
    async fn run(&mut self, shutdown: CancellationToken) {
        let config = self.follower.config.clone();
        let mut index = 0;
        // ModifyIndex of the last value settled, so a wake-up without a change does nothing.
        let mut settled: Option<u64> = None;
        let mut next_read = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next_read) => {}
            }
            next_read = Instant::now() + config.min_interval;
            let options = QueryOptions {
                index: Some(index),
                wait: Some(config.wait),
                ..QueryOptions::default()
            };
            let response = tokio::select! {
                () = shutdown.cancelled() => return,
                response = self.follower.client.kv_get(&config.key, &options) => response,
            };
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    self.consul_failed("reading the snapshot key", &error);
                    if !self.sleep_backoff(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            self.consul_ok();
            index = next_index(index, response.meta.index);
            if let Some(current) = self.follower.hosts.current() {
                metrics::set_age_seconds(age_seconds(&current));
            }
            let Some(pair) = response.value else {
                if !self.missing_logged {
                    tracing::info!("No hosts snapshot published yet, waiting for the key");
                    self.missing_logged = true;
                }
                settled = None;
                continue;
            };
            self.missing_logged = false;
            if settled == Some(pair.modify_index) {
                continue;
            }
            match self
                .evaluate(pair.value.unwrap_or_default(), &shutdown)
                .await
            {
                Outcome::Settled => {
                    settled = Some(pair.modify_index);
                    self.retry.backoff.reset();
                }
                Outcome::Retry => {
                    index = 0;
                    if !self.sleep_backoff(&shutdown).await {
                        return;
                    }
                }
                Outcome::Reread => {
                    index = 0;
                    settled = None;
                }
                Outcome::Shutdown => return,
            }
        }
    }

    /// Checks the kill switch, verifies, persists and swaps in one value.
    async fn evaluate(&mut self, value: Vec<u8>, shutdown: &CancellationToken) -> Outcome {
        match self.stop_reason().await {
            Err(error) => {
                self.consul_failed("reading the kill-switch key", &error);
                return Outcome::Retry;
            }
            Ok(Some(reason)) => {
                metrics::rejected("kill_switch");
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
        if value.is_empty() {
            self.reject("empty", "snapshot key holds an empty value");
            return Outcome::Settled;
        }
        let verified = match codec::decode(&value, self.follower.config.verifying_key.as_ref()) {
            Ok(verified) => verified,
            Err(error) => {
                self.reject(error.reason(), &error.to_string());
                return Outcome::Settled;
            }
        };
        let generation = verified.snapshot.generation;
        if let Some(current) = self.follower.hosts.current() {
            if generation < current.generation {
                self.reject(
                    "rollback",
                    &format!(
                        "generation {generation} is older than the current generation {}",
                        current.generation
                    ),
                );
                return Outcome::Settled;
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
                return Outcome::Settled;
            }
        }
        let state_dir = self.follower.config.state_dir.clone();
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
        let size = verified.encoded_size;
        set_gauges(&verified.snapshot, size);
        let services = verified.snapshot.services.len();
        let nodes = verified.snapshot.nodes.len();
        let publisher = verified.snapshot.publisher.clone();
        self.follower.hosts.replace(Arc::new(verified.snapshot));
        metrics::applied();
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
        let mut index = 0;
        let mut next_read = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Outcome::Shutdown,
                () = tokio::time::sleep_until(next_read) => {}
            }
            next_read = Instant::now() + config.min_interval;
            let options = QueryOptions {
                index: Some(index),
                wait: Some(config.wait),
                ..QueryOptions::default()
            };
            let response = tokio::select! {
                () = shutdown.cancelled() => return Outcome::Shutdown,
                response = self.follower.client.kv_get(&config.stop_key, &options) => response,
            };
            match response {
                Ok(response) => {
                    self.consul_ok();
                    index = next_index(index, response.meta.index);
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

/// Backoff after failed Consul calls, logging the first failure and the
/// recovery once each (state changes, not every retry). Shared by the follower
/// and the publisher.
pub(crate) struct ConsulRetry {
    pub(crate) backoff: Backoff,
    failures: u32,
}

impl ConsulRetry {
    pub(crate) fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: 0,
        }
    }

    pub(crate) fn failed(
        &mut self,
        what: &'static str,
        error: &consul::Error,
        message: &'static str,
    ) {
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(error = %error, what, "{message}");
        } else {
            tracing::debug!(error = %error, what, attempt = self.failures, "Consul call failed again");
        }
    }

    pub(crate) fn ok(&mut self) {
        if self.failures > 0 {
            tracing::info!(failed_attempts = self.failures, "Consul reachable again");
            self.failures = 0;
            self.backoff.reset();
        }
    }

    /// Sleeps one backoff step; false when shutdown was requested.
    pub(crate) async fn sleep(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.backoff.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// Jittered exponential backoff: each step doubles up to `max`, and the actual delay is drawn
/// from the upper half of the step (so retries from many nodes spread out).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Floor of the first step; a zero `min` would spin.
    const FLOOR: Duration = Duration::from_millis(100);

    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Self::FLOOR);
        let max = max.max(min);
        Self {
            min,
            max,
            step: min,
        }
    }

    /// The next delay, then doubles the step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::random_range(0..=jitter_ms))
    }

    /// Back to the first step after a success.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let second = backoff.next_delay();
        assert!(second >= Duration::from_millis(200) && second <= Duration::from_millis(400));
        for _ in 0..10 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(200));
    }

    #[test]
    fn backoff_never_spins_on_zero() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(backoff.next_delay() >= Duration::from_millis(50));
    }

    #[test]
    fn sibling_keys() {
        assert_eq!(stop_key_for(DEFAULT_KEY), "dnsfront/hosts-stop");
        assert_eq!(lock_key_for(DEFAULT_KEY), "dnsfront/hosts.lock");
        let config = FollowerConfig::new(PathBuf::from("/var/lib/dnsfront"));
        assert_eq!(config.stop_key, "dnsfront/hosts-stop");
    }
}
