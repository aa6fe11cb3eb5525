//! One circuit breaker per datacenter (the agent's own, and each remote one asked
//! for by name), shared by every key of that datacenter: when Consul fails for a
//! datacenter, its keys back off together, so a node asks a struggling Consul one
//! probe at a time instead of one request per cached name, and a remote
//! datacenter that is cut off never holds back the agent's own.
//!
//! Failures of requests that were in flight together are one event: one
//! server restart breaks every streamed watch on an agent at once (each held
//! watch sees one HTTP 500), and counting each would open the breaker, so new
//! names would get SERVFAIL on every node whose agent used that server. A
//! failure counts only if its request started after the last counted failure
//! was recorded; a real outage still opens the circuit, since each retry
//! starts after the failure before it.
//!
//! Only failures that trying again later can cure count
//! ([`dnsfront_consul::Error::is_retryable`]: transport errors, timeouts, 5xx,
//! 429). A 403 or an undecodable answer concerns one name; the cache backs off
//! that name alone.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dnsfront_consul::Backoff;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics;

/// Consecutive retryable failures before the circuit opens. A single blip
/// (one timeout, one leader election) should not turn first queries into SERVFAIL.
const FAILURE_THRESHOLD: u32 = 3;

/// A probe that never reported back (its task was cancelled) stops blocking
/// new probes after this long.
const PROBE_EXPIRY: Duration = Duration::from_secs(10);

/// Most datacenters with a breaker of their own. Datacenter names come from
/// queries, so the map is bounded: breakers with nothing to remember (closed,
/// no failure, not held by a watch loop) are dropped first; past the bound,
/// further datacenters share one overflow breaker.
const MAX_DATACENTERS: usize = 64;

/// The breakers of one cache, by datacenter (`None` = the agent's own).
pub(crate) struct Breakers {
    backoff: Backoff,
    local: Arc<Breaker>,
    remote: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
    overflow: Arc<Breaker>,
    /// Breakers currently open, for the `catalog.consul_circuit_open` gauge.
    open: Arc<AtomicU64>,
}

impl Breakers {
    /// Closed breakers whose openings last `backoff` (jittered, doubling while Consul fails).
    pub(crate) fn new(backoff: Backoff) -> Self {
        let open = Arc::new(AtomicU64::new(0));
        let local = Arc::new(Breaker::new(backoff.clone(), None, Arc::clone(&open)));
        let overflow = Arc::new(Breaker::new(
            backoff.clone(),
            Some("(other datacenters)".into()),
            Arc::clone(&open),
        ));
        Self {
            backoff,
            local,
            remote: Mutex::new(HashMap::new()),
            overflow,
            open,
        }
    }

    /// The agent's own datacenter's breaker.
    pub(crate) fn local(&self) -> &Arc<Breaker> {
        &self.local
    }

    /// The breaker of `datacenter` (lower-case; `None` = the agent's own).
    pub(crate) fn get(&self, datacenter: Option<&Arc<str>>) -> Arc<Breaker> {
        let Some(datacenter) = datacenter else {
            return Arc::clone(&self.local);
        };
        let mut remote = self
            .remote
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(breaker) = remote.get(datacenter) {
            return Arc::clone(breaker);
        }
        if remote.len() >= MAX_DATACENTERS {
            remote.retain(|_, breaker| Arc::strong_count(breaker) > 1 || !breaker.is_idle());
        }
        if remote.len() >= MAX_DATACENTERS {
            return Arc::clone(&self.overflow);
        }
        let breaker = Arc::new(Breaker::new(
            self.backoff.clone(),
            Some(Arc::clone(datacenter)),
            Arc::clone(&self.open),
        ));
        remote.insert(Arc::clone(datacenter), Arc::clone(&breaker));
        breaker
    }

    /// Whether `datacenter`'s breaker (any case; `None` = the agent's) is open,
    /// without creating one.
    pub(crate) fn is_open(&self, datacenter: Option<&str>) -> bool {
        let Some(datacenter) = datacenter else {
            return self.local.is_open();
        };
        let remote = self
            .remote
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match remote.get(datacenter.to_ascii_lowercase().as_str()) {
            Some(breaker) => breaker.is_open(),
            None => remote.len() >= MAX_DATACENTERS && self.overflow.is_open(),
        }
    }

    /// Every breaker that is not closed-and-quiet, by datacenter (`None` = the
    /// agent's own, always listed first).
    pub(crate) fn snapshots(&self) -> Vec<(Option<String>, BreakerState)> {
        let mut all = vec![(None, self.local.snapshot())];
        let remote = self
            .remote
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut others: Vec<_> = remote
            .iter()
            .map(|(dc, breaker)| (dc.to_string(), breaker))
            .chain(std::iter::once((
                "(other datacenters)".to_owned(),
                &self.overflow,
            )))
            .filter(|(_, breaker)| !breaker.is_idle())
            .map(|(dc, breaker)| (Some(dc), breaker.snapshot()))
            .collect();
        others.sort_by(|a, b| a.0.cmp(&b.0));
        all.extend(others);
        all
    }
}

pub(crate) struct Breaker {
    /// The datacenter it guards, for logs (`None` = the agent's own).
    datacenter: Option<Arc<str>>,
    /// Shared count of open breakers (the gauge).
    open_count: Arc<AtomicU64>,
    state: Mutex<State>,
    /// Bumped each time the circuit closes again, so that waiting watch loops
    /// resume at once instead of sleeping out their backoff.
    closed: tokio::sync::watch::Sender<u64>,
}

/// The answer to "may a request go to Consul now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: go ahead.
    Go,
    /// Open, and this request is the one probe: it must be quick (never a
    /// blocking query), report its outcome, or give the slot back.
    Probe,
    /// Open: hold back.
    Denied,
}

/// The circuit breaker as `explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BreakerState {
    /// `closed`, `open` (holding requests back) or `probing` (one request in flight).
    pub state: CircuitState,
    /// Failure events in a row (failures of requests that were in flight
    /// together count once).
    pub consecutive_failures: u32,
    /// Pause the next failure opens the circuit for, before jitter (milliseconds).
    pub backoff_ms: u64,
    /// While open: time until the next probe may go (milliseconds; 0 = now).
    pub retry_in_ms: Option<u64>,
}

/// Circuit breaker position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// Requests are held back until the backoff ends.
    Open,
    /// Open, with one probe request in flight.
    Probing,
}

#[derive(Debug)]
struct State {
    /// Failure events in a row (requests in flight together count once).
    consecutive_failures: u32,
    /// When the last counted failure was recorded: a failure of a request
    /// sent before it is part of the same event.
    last_counted: Option<Instant>,
    /// Set while open: no request before this instant, then one probe.
    open_until: Option<Instant>,
    probe_started: Option<Instant>,
    /// Pause of the next opening: doubles per opening or failed probe.
    backoff: Backoff,
}

impl Breaker {
    /// A closed breaker whose openings last `backoff` (jittered, doubling while Consul fails).
    fn new(backoff: Backoff, datacenter: Option<Arc<str>>, open_count: Arc<AtomicU64>) -> Self {
        Self {
            datacenter,
            open_count,
            state: Mutex::new(State {
                consecutive_failures: 0,
                last_counted: None,
                open_until: None,
                probe_started: None,
                backoff,
            }),
            closed: tokio::sync::watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is plain data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    /// Closed with no failure: nothing to remember.
    fn is_idle(&self) -> bool {
        let state = self.lock();
        state.open_until.is_none() && state.consecutive_failures == 0
    }

    fn datacenter(&self) -> &str {
        self.datacenter.as_deref().unwrap_or("(agent's)")
    }

    /// May a request go to Consul now? Closed: yes. Open: only one probe once
    /// the backoff has passed.
    pub(crate) fn allow_request(&self) -> bool {
        self.admit() != Admission::Denied
    }

    /// Like [`Breaker::allow_request`], telling a probe from a normal request.
    pub(crate) fn admit(&self) -> Admission {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(open_until) = state.open_until else {
            return Admission::Go;
        };
        if now < open_until {
            return Admission::Denied;
        }
        match state.probe_started {
            Some(started) if now.saturating_duration_since(started) < PROBE_EXPIRY => {
                Admission::Denied
            }
            _ => {
                state.probe_started = Some(now);
                Admission::Probe
            }
        }
    }

    /// A receiver that changes each time the circuit closes again.
    pub(crate) fn subscribe_closed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.closed.subscribe()
    }

    /// A snapshot for diagnostics.
    pub(crate) fn snapshot(&self) -> BreakerState {
        let now = Instant::now();
        let state = self.lock();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let probing = state
            .probe_started
            .is_some_and(|started| now.saturating_duration_since(started) < PROBE_EXPIRY);
        let (position, retry_in_ms) = match state.open_until {
            None => (CircuitState::Closed, None),
            Some(_) if probing => (CircuitState::Probing, Some(0)),
            Some(until) => (
                CircuitState::Open,
                Some(millis(until.saturating_duration_since(now))),
            ),
        };
        BreakerState {
            state: position,
            consecutive_failures: state.consecutive_failures,
            backoff_ms: millis(state.backoff.current()),
            retry_in_ms,
        }
    }

    /// A probe slot was taken but no request was sent.
    pub(crate) fn cancel_probe(&self) {
        self.lock().probe_started = None;
    }

    /// The pause before retrying a failed key.
    pub(crate) fn current_backoff(&self) -> Duration {
        self.lock().backoff.current()
    }

    pub(crate) fn record_success(&self) {
        let mut state = self.lock();
        let was_open = state.open_until.take().is_some();
        state.consecutive_failures = 0;
        state.probe_started = None;
        state.backoff.reset();
        drop(state);
        if was_open {
            info!(
                datacenter = self.datacenter(),
                "Consul reachable again, answers are fresh"
            );
            let open = self
                .open_count
                .fetch_sub(1, Ordering::Relaxed)
                .saturating_sub(1);
            metrics::circuits_open(open);
            self.closed.send_modify(|generation| *generation += 1);
        }
    }

    /// Records a failed request sent at `started`; only retryable errors come
    /// here (the others concern one name). A request sent before the last
    /// counted failure was recorded was in flight with it: the same event,
    /// not counted again. The circuit opens after [`FAILURE_THRESHOLD`]
    /// events in a row. The backoff doubles once per opening or failed probe,
    /// not once per request that was already in flight.
    pub(crate) fn record_failure(&self, kind: &str, error: &dyn Display, started: Instant) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.last_counted.is_some_and(|counted| started < counted) {
            return; // in flight with a failure already counted
        }
        state.last_counted = Some(now);
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.probe_started = None;
        let was_open = state.open_until.is_some();
        if state.open_until.is_some_and(|until| now < until) {
            return; // a request from before the opening: already accounted for
        }
        if was_open || state.consecutive_failures >= FAILURE_THRESHOLD {
            let pause = state.backoff.next_delay();
            state.open_until = Some(now + pause);
            let attempts = state.consecutive_failures;
            drop(state);
            if !was_open {
                warn!(
                    datacenter = self.datacenter(),
                    error = %error,
                    kind,
                    attempts,
                    retry_in = ?pause,
                    "Consul unavailable, serving cached answers and backing off"
                );
                let open = self.open_count.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::circuits_open(open);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalog's backoff: jitter in [d/2, d], so that many resolvers that
    /// lost Consul together do not come back in lockstep.
    fn breaker(min: Duration, max: Duration) -> Breaker {
        Breaker::new(
            Backoff::try_new(min, max, dnsfront_consul::HALF_JITTER).expect("valid bounds"),
            None,
            Arc::new(AtomicU64::new(0)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_lets_one_probe_through_after_backoff() {
        let breaker = breaker(Duration::from_secs(1), Duration::from_secs(8));
        for _ in 0..FAILURE_THRESHOLD - 1 {
            breaker.record_failure("timeout", &"boom", Instant::now());
            assert!(breaker.allow_request(), "still closed below the threshold");
        }
        breaker.record_failure("timeout", &"boom", Instant::now());
        assert!(breaker.is_open());
        assert!(!breaker.allow_request(), "open: no request during backoff");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(breaker.allow_request(), "one probe after the backoff");
        assert!(!breaker.allow_request(), "only one probe at a time");
        breaker.record_failure("timeout", &"boom", Instant::now());
        assert!(!breaker.allow_request(), "failed probe reopens");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(breaker.allow_request());
        breaker.record_success();
        assert!(!breaker.is_open());
        assert!(breaker.allow_request() && breaker.allow_request());
    }

    #[tokio::test(start_paused = true)]
    async fn datacenters_have_their_own_breakers_and_the_map_is_bounded() {
        let breakers = Breakers::new(
            Backoff::try_new(
                Duration::from_secs(1),
                Duration::from_secs(8),
                dnsfront_consul::HALF_JITTER,
            )
            .expect("valid bounds"),
        );
        let dc2: Arc<str> = "dc2".into();
        for _ in 0..FAILURE_THRESHOLD {
            breakers
                .get(Some(&dc2))
                .record_failure("timeout", &"boom", Instant::now());
        }
        assert!(breakers.get(Some(&dc2)).is_open());
        assert!(!breakers.local().is_open(), "dc2 never opens the agent's");
        assert!(breakers.get(None).allow_request());
        // Quiet breakers make room; failing ones are kept, the rest overflow.
        for n in 0..(MAX_DATACENTERS * 2) {
            let dc: Arc<str> = format!("quiet-{n}").into();
            assert!(breakers.get(Some(&dc)).allow_request());
        }
        assert!(breakers.remote.lock().expect("lock").len() <= MAX_DATACENTERS);
        assert!(
            breakers.get(Some(&dc2)).is_open(),
            "a failing one is remembered"
        );
        let listed = breakers.snapshots();
        assert_eq!(listed[0].0, None);
        assert!(
            listed.iter().any(
                |(dc, state)| dc.as_deref() == Some("dc2") && state.state == CircuitState::Open
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_requests_in_flight_before_opening_do_not_double_the_backoff() {
        let breaker = breaker(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..FAILURE_THRESHOLD {
            breaker.record_failure("timeout", &"boom", Instant::now());
        }
        let after_opening = breaker.current_backoff();
        for _ in 0..8 {
            breaker.record_failure("timeout", &"boom", Instant::now());
        }
        assert_eq!(breaker.current_backoff(), after_opening);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_requests_in_flight_together_are_one_event() {
        let breaker = breaker(Duration::from_secs(1), Duration::from_secs(60));
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        // A server restart: every held watch fails at once.
        for _ in 0..50 {
            breaker.record_failure("server_error", &"stream reset", sent);
        }
        assert_eq!(breaker.snapshot().consecutive_failures, 1);
        assert!(!breaker.is_open(), "one event does not open the circuit");
        // A sustained outage: each retry starts after the failure before it.
        for _ in 1..FAILURE_THRESHOLD {
            tokio::time::advance(Duration::from_millis(100)).await;
            breaker.record_failure("server_error", &"down", Instant::now());
        }
        assert!(breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_ceiling() {
        let breaker = breaker(Duration::from_secs(1), Duration::from_secs(4));
        for _ in 0..10 {
            breaker.record_failure("timeout", &"boom", Instant::now());
            tokio::time::advance(Duration::from_secs(5)).await; // each one a failed probe
        }
        assert_eq!(breaker.current_backoff(), Duration::from_secs(4));
    }
}
