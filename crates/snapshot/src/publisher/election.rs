//! The election: Consul's lock pattern (a session, `PUT KEY.lock?acquire=`), renewals,
//! waiting for a free lock, and watching it while leader.

use std::time::Duration;

use dnsfront_consul::{self as consul, KvPutOptions, Pace, SessionBehavior, SessionRequest};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{LeaderState, Publisher, SESSION_NAME, backoff};
use crate::retry::ConsulRetry;

/// Minimum time between two reads of the lock key (blocking reads return on any change).
const LOCK_READ_INTERVAL: Duration = Duration::from_millis(250);
/// Retry delay after failing to acquire a lock that looks free (lock delay in force).
const LOCK_RETRY_MIN: Duration = Duration::from_millis(500);
const LOCK_RETRY_MAX: Duration = Duration::from_secs(5);
/// Renewal retry delay after a failed renewal.
const RENEW_RETRY: Duration = Duration::from_secs(1);
impl Publisher {
    pub(super) async fn run_inner(&self, shutdown: CancellationToken) {
        let mut state = LeaderState {
            leader: false,
            next_build: Instant::now(),
            skipped: None,
            datacenter: None,
            retry: ConsulRetry::new(backoff()),
            high_water: 0,
            high_water_unsaved: false,
        };
        // Generations: the persisted high-water mark. Unreadable: loud, and the publisher
        // starts from what KV holds, as it did before the mark existed.
        match self.load_high_water().await {
            Ok(high_water) => state.high_water = high_water,
            Err(error) => tracing::error!(
                error = %error,
                "Cannot read the publisher's generation file; starting from the published generation"
            ),
        }
        let request = SessionRequest {
            name: SESSION_NAME.to_owned(),
            ttl: self.config.session_ttl,
            behavior: SessionBehavior::Release,
            lock_delay: self.config.lock_delay,
        };
        loop {
            let created = tokio::select! {
                () = shutdown.cancelled() => return,
                created = self.client.session_create(&request) => created,
            };
            let session = match created {
                Ok(session) => {
                    state.consul_ok();
                    session
                }
                Err(error) => {
                    state.consul_failed("creating the lock session", &error);
                    if !state.sleep_backoff(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            tracing::debug!(session = %session, "Created the lock session");
            let lost = tokio::select! {
                () = shutdown.cancelled() => None,
                reason = self.keep_session(&session) => Some(reason),
                reason = self.lead(&session, &mut state) => Some(reason),
            };
            let was_leader = std::mem::replace(&mut state.leader, false);
            match lost {
                None => {
                    self.release(&session, was_leader).await;
                    return;
                }
                Some(reason) => {
                    if was_leader {
                        tracing::warn!(reason, "Lost the publisher lock, stepping down");
                    } else {
                        tracing::warn!(reason, "Lock session lost while waiting for the lock");
                    }
                    // Best effort: the session is most likely gone already.
                    let _ = self.client.session_destroy(&session).await;
                }
            }
        }
    }

    /// Releases the lock and destroys the session (shutdown).
    async fn release(&self, session: &str, was_leader: bool) {
        let options = KvPutOptions {
            release: Some(session.to_owned()),
            ..KvPutOptions::default()
        };
        if let Err(error) = self
            .client
            .kv_put(
                &self.config.lock_key,
                self.config.identity.as_bytes(),
                &options,
            )
            .await
        {
            tracing::warn!(error = %error, "Releasing the publisher lock failed; it expires with the session");
        }
        if let Err(error) = self.client.session_destroy(session).await {
            tracing::warn!(error = %error, "Destroying the lock session failed; it expires with its TTL");
        }
        if was_leader {
            tracing::info!("Released the publisher lock");
        }
    }

    /// Renews the session every TTL/2; returns why it is lost.
    async fn keep_session(&self, session: &str) -> &'static str {
        let ttl = self.config.session_ttl;
        if ttl.is_zero() {
            return std::future::pending().await;
        }
        let period = ttl / 2;
        let mut last_renewed = Instant::now();
        let mut delay = period;
        loop {
            tokio::time::sleep(delay).await;
            match self.client.session_renew(session).await {
                Ok(true) => {
                    last_renewed = Instant::now();
                    delay = period;
                }
                Ok(false) => return "the session expired",
                Err(error) => {
                    if last_renewed.elapsed() >= ttl {
                        tracing::warn!(error = %error, "Session renewals failed for a whole TTL");
                        return "session renewals failed for a whole TTL";
                    }
                    tracing::debug!(error = %error, "Session renewal failed, retrying");
                    delay = RENEW_RETRY.min(period);
                }
            }
        }
    }

    /// Acquires the lock, then publishes while watching it; returns why leadership ended.
    async fn lead(&self, session: &str, state: &mut LeaderState) -> &'static str {
        let options = KvPutOptions {
            acquire: Some(session.to_owned()),
            ..KvPutOptions::default()
        };
        loop {
            let acquired = self
                .client
                .kv_put(
                    &self.config.lock_key,
                    self.config.identity.as_bytes(),
                    &options,
                )
                .await;
            match acquired {
                Ok(true) => {
                    state.consul_ok();
                    break;
                }
                Ok(false) => {
                    state.consul_ok();
                    self.wait_for_free_lock(state).await;
                }
                Err(error) => {
                    state.consul_failed("acquiring the publisher lock", &error);
                    let delay = state.retry.next_delay();
                    tokio::time::sleep(delay).await;
                }
            }
        }
        state.leader = true;
        tracing::info!(lock_key = %self.config.lock_key, "Acquired the publisher lock, publishing");
        let session_owned = session.to_owned();
        tokio::select! {
            reason = self.watch_lock(&session_owned) => reason,
            never = self.publish_loop(state) => match never {},
        }
    }

    /// A watch on the lock key: blocking up to `catalog_wait`, at most one read per
    /// [`LOCK_READ_INTERVAL`] (blocking reads return on any change).
    fn lock_watch(&self) -> consul::Watch {
        consul::Watch::new(self.config.catalog_wait).paced(Pace::spaced(LOCK_READ_INTERVAL))
    }

    /// One blocking read of the lock key.
    async fn read_lock(
        &self,
        watch: &mut consul::Watch,
    ) -> Result<consul::Response<Option<consul::KvPair>>, consul::Error> {
        let read =
            |options| async move { self.client.kv_get(&self.config.lock_key, &options).await };
        watch.round(read).await.map(|(response, _)| response)
    }

    /// Blocks on the lock key until nobody holds it.
    async fn wait_for_free_lock(&self, state: &mut LeaderState) {
        let mut watch = self.lock_watch();
        let mut first = true;
        loop {
            match self.read_lock(&mut watch).await {
                Ok(response) => {
                    state.consul_ok();
                    let holder = response.value.and_then(|pair| pair.session);
                    if holder.is_none() {
                        if first {
                            // Free, yet the acquire failed: the lock delay is in force.
                            let delay =
                                self.config.lock_delay.clamp(LOCK_RETRY_MIN, LOCK_RETRY_MAX);
                            tokio::time::sleep(delay).await;
                        }
                        return;
                    }
                    first = false;
                }
                Err(error) => {
                    state.consul_failed("watching the publisher lock", &error);
                    let delay = state.retry.next_delay();
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Watches the lock key while leader; returns when another session holds it or it is gone.
    async fn watch_lock(&self, session: &str) -> &'static str {
        let mut watch = self.lock_watch();
        // X-Consul-Index at which the key was seen held by us; older (stale) answers are ignored.
        let mut held_at: Option<u64> = None;
        let mut backoff = backoff();
        loop {
            match self.read_lock(&mut watch).await {
                Ok(response) => {
                    backoff.reset();
                    let ours = response
                        .value
                        .as_ref()
                        .and_then(|pair| pair.session.as_deref())
                        == Some(session);
                    if ours {
                        held_at = Some(response.meta.index);
                    } else if held_at.is_some_and(|held| response.meta.index >= held) {
                        return "the lock key shows another holder or was deleted";
                    }
                }
                Err(error) => {
                    tracing::debug!(error = %error, "Watching the publisher lock failed, retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}
