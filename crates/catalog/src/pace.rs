//! Rate limit of one watch loop, as Consul's blocking-query docs ask: proceed
//! without waiting in the happy case, allow a couple of quick successive
//! deliveries, then degrade to polling while the result churns.

use std::time::Duration;

use tokio::time::Instant;

/// Requests a watch may send back to back before the churn rate applies
/// (Consul's docs: "a token bucket with burst of 2").
pub(crate) const WATCH_BURST: f64 = 2.0;

/// A token bucket (capacity [`WATCH_BURST`], one token per `refill`) plus a
/// minimum gap between the starts of two requests.
#[derive(Debug)]
pub(crate) struct Pace {
    min_interval: Duration,
    refill: Duration,
    tokens: f64,
    updated: Instant,
    last_start: Option<Instant>,
}

impl Pace {
    /// A full bucket: the first requests go at once.
    pub(crate) fn new(min_interval: Duration, refill: Duration, now: Instant) -> Self {
        Self {
            min_interval,
            refill: refill.max(Duration::from_millis(1)),
            tokens: WATCH_BURST,
            updated: now,
            last_start: None,
        }
    }

    fn top_up(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() / self.refill.as_secs_f64()).min(WATCH_BURST);
        self.updated = now;
    }

    /// The earliest instant the next request may start.
    pub(crate) fn next_start(&mut self, now: Instant) -> Instant {
        self.top_up(now);
        let token_at = if self.tokens >= 1.0 {
            now
        } else {
            now + self.refill.mul_f64(1.0 - self.tokens)
        };
        let spaced = self.last_start.map_or(now, |last| last + self.min_interval);
        token_at.max(spaced)
    }

    /// Records a request starting at `now` (after waiting for [`Pace::next_start`]).
    pub(crate) fn started(&mut self, now: Instant) {
        self.top_up(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
        self.last_start = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `count` requests as fast as the pace allows; returns their offsets in ms.
    fn run(pace: &mut Pace, start: Instant, count: usize) -> Vec<u128> {
        let mut now = start;
        let mut starts = Vec::new();
        for _ in 0..count {
            now = pace.next_start(now);
            pace.started(now);
            // Rounded: the bucket counts in f64.
            starts.push((now.duration_since(start).as_secs_f64() * 1000.0).round() as u128);
        }
        starts
    }

    #[tokio::test(start_paused = true)]
    async fn two_quick_deliveries_then_polling_at_the_refill_rate() {
        let start = Instant::now();
        let mut pace = Pace::new(Duration::from_secs(1), Duration::from_secs(10), start);
        // Burst of two, spaced by the minimum interval, then one per refill period.
        assert_eq!(run(&mut pace, start, 5), [0, 1000, 10000, 20000, 30000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_blocked_long_leaves_the_next_one_free() {
        let start = Instant::now();
        let mut pace = Pace::new(Duration::from_secs(1), Duration::from_secs(10), start);
        pace.started(start);
        // The blocking query returned after 5 minutes: no wait at all.
        let later = start + Duration::from_secs(300);
        assert_eq!(pace.next_start(later), later);
        pace.started(later);
        // A second change 200 ms later waits only for the minimum interval.
        let soon = later + Duration::from_millis(200);
        assert_eq!(pace.next_start(soon), later + Duration::from_secs(1));
    }
}
