//! One circuit breaker per catalog, shared by every key: when Consul fails, all
//! keys back off together, so a node asks a struggling Consul one probe at a
//! time instead of one request per cached name.

use std::fmt::Display;
use std::sync::Mutex;
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

pub(crate) struct Breaker {
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
    /// Failed Consul requests in a row.
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
    consecutive_failures: u32,
    /// Set while open: no request before this instant, then one probe.
    open_until: Option<Instant>,
    probe_started: Option<Instant>,
    /// Pause of the next opening: doubles per opening or failed probe.
    backoff: Backoff,
}

impl Breaker {
    /// A closed breaker whose openings last `backoff` (jittered, doubling while Consul fails).
    pub(crate) fn new(backoff: Backoff) -> Self {
        Self {
            state: Mutex::new(State {
                consecutive_failures: 0,
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
            info!("Consul reachable again, answers are fresh");
            metrics::circuit_open(false);
            self.closed.send_modify(|generation| *generation += 1);
        }
    }

    /// Records a failed request. Retryable errors open the circuit after
    /// [`FAILURE_THRESHOLD`] in a row; others (403, malformed replies) at once,
    /// since they hit every name alike. The backoff doubles once per opening or
    /// failed probe, not once per request that was already in flight.
    pub(crate) fn record_failure(&self, retryable: bool, kind: &str, error: &dyn Display) {
        let now = Instant::now();
        let mut state = self.lock();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.probe_started = None;
        let was_open = state.open_until.is_some();
        if state.open_until.is_some_and(|until| now < until) {
            return; // a request from before the opening: already accounted for
        }
        if was_open || !retryable || state.consecutive_failures >= FAILURE_THRESHOLD {
            let pause = state.backoff.next_delay();
            state.open_until = Some(now + pause);
            let attempts = state.consecutive_failures;
            drop(state);
            if !was_open {
                warn!(
                    error = %error,
                    kind,
                    attempts,
                    retry_in = ?pause,
                    "Consul unavailable, serving cached answers and backing off"
                );
                metrics::circuit_open(true);
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
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_lets_one_probe_through_after_backoff() {
        let breaker = breaker(Duration::from_secs(1), Duration::from_secs(8));
        for _ in 0..FAILURE_THRESHOLD - 1 {
            breaker.record_failure(true, "timeout", &"boom");
            assert!(breaker.allow_request(), "still closed below the threshold");
        }
        breaker.record_failure(true, "timeout", &"boom");
        assert!(breaker.is_open());
        assert!(!breaker.allow_request(), "open: no request during backoff");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(breaker.allow_request(), "one probe after the backoff");
        assert!(!breaker.allow_request(), "only one probe at a time");
        breaker.record_failure(true, "timeout", &"boom");
        assert!(!breaker.allow_request(), "failed probe reopens");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(breaker.allow_request());
        breaker.record_success();
        assert!(!breaker.is_open());
        assert!(breaker.allow_request() && breaker.allow_request());
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_error_opens_at_once() {
        let breaker = breaker(Duration::from_secs(1), Duration::from_secs(60));
        breaker.record_failure(false, "forbidden", &"ACL not found");
        assert!(breaker.is_open());
        assert!(!breaker.allow_request());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(
            breaker.allow_request(),
            "exponential backoff from the minimum"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_requests_in_flight_before_opening_do_not_double_the_backoff() {
        let breaker = breaker(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..FAILURE_THRESHOLD {
            breaker.record_failure(true, "timeout", &"boom");
        }
        let after_opening = breaker.current_backoff();
        for _ in 0..8 {
            breaker.record_failure(true, "timeout", &"boom");
        }
        assert_eq!(breaker.current_backoff(), after_opening);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_ceiling() {
        let breaker = breaker(Duration::from_secs(1), Duration::from_secs(4));
        for _ in 0..10 {
            breaker.record_failure(true, "timeout", &"boom");
            tokio::time::advance(Duration::from_secs(5)).await; // each one a failed probe
        }
        assert_eq!(breaker.current_backoff(), Duration::from_secs(4));
    }
}
