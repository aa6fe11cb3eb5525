//! Blocking queries: Consul's index rules, the pace between wake-ups, and one round.
//!
//! Every loop that keeps something current with blocking queries (the catalog's per-name
//! watches, the publisher's catalog, health, node and lock watches, the follower's key
//! watches) holds a [`Watch`]: it owns the index to block on and applies Consul's rules to
//! each returned one, and a [`Pace`] spaces its requests. What to do with the answer, and
//! how to back off after an error ([`crate::Backoff`]), stays with the loop.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Error, QueryOptions, Response};

/// Computes the index for the next blocking query from the previous one and the returned one.
///
/// Consul's rules (blocking queries): an index below 1 is clamped to 1 so the caller never
/// busy-loops, and an index that goes backwards (snapshot restore, a server that lost its
/// state, stale reads from another server) is taken as it is. The answer that carried it is
/// already a full, current read, so the next request blocks on that lower index; resetting to
/// 0 instead would send a second, non-blocking full read of the same data, and a restore or a
/// server restart does that on every watch of every node at once. `previous` is no longer
/// needed for the result; [`Watch::observe`] compares the two to report the backward step.
pub fn next_index(_previous: u64, returned: u64) -> u64 {
    returned.max(1)
}

/// What one answer did to a watch's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexChange {
    /// Same index as before: the wait ran out, or a wake-up without a change.
    Unchanged,
    /// The index moved forward (including the first answer after 0).
    Moved,
    /// The index went backwards (the answer is a full read after a restore or a server
    /// change): the next read blocks on the lower index just returned. The name is kept from
    /// when this re-read from scratch.
    Reset,
}

impl IndexChange {
    /// True unless the index stayed where it was.
    pub fn changed(self) -> bool {
        self != Self::Unchanged
    }
}

/// Requests a paced watch may send back to back before the refill rate applies
/// (Consul's docs: "a token bucket with burst of 2").
const WATCH_BURST: f64 = 2.0;

/// The rate limit of one watch loop, as Consul's blocking-query docs ask: proceed without
/// waiting in the happy case, allow a couple of quick successive deliveries, then degrade to
/// polling while the result churns.
///
/// A token bucket (capacity 2, one token per `refill`) plus a minimum gap
/// between the starts of two requests. With `refill` equal to the gap ([`Pace::spaced`]) the
/// bucket never binds: the requests are simply at least `min_interval` apart.
#[derive(Debug, Clone)]
pub struct Pace {
    min_interval: Duration,
    refill: Duration,
    tokens: f64,
    updated: Instant,
    last_start: Option<Instant>,
}

impl Pace {
    /// A full bucket: the first requests go at once.
    pub fn new(min_interval: Duration, refill: Duration, now: Instant) -> Self {
        Self {
            min_interval,
            refill: refill.max(Duration::from_millis(1)),
            tokens: WATCH_BURST,
            updated: now,
            last_start: None,
        }
    }

    /// Requests at least `min_interval` apart, no burst allowance beyond that.
    pub fn spaced(min_interval: Duration) -> Self {
        Self::new(min_interval, min_interval, Instant::now())
    }

    fn top_up(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() / self.refill.as_secs_f64()).min(WATCH_BURST);
        self.updated = now;
    }

    /// The earliest instant the next request may start.
    pub fn next_start(&mut self, now: Instant) -> Instant {
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
    pub fn started(&mut self, now: Instant) {
        self.top_up(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
        self.last_start = Some(now);
    }
}

/// One blocking query kept in flight over and over: the index to block on (Consul's rules
/// applied to every answer), the `wait` to send with it, and an optional [`Pace`].
///
/// The first read (and one after [`Watch::restart`]) is non-blocking (index 0 is never
/// sent); each later one blocks on the last index returned, which is at least 1, also when
/// it went backwards.
///
/// After an index goes backwards, the next read waits a random delay up to `wait / 16`
/// (Consul's own spread for blocking waits). A snapshot restore makes every held query on
/// every agent return at once with a lower index; without the spread the whole fleet would
/// re-issue its watches in the same few milliseconds. The answer in hand is already a
/// full read, and a change made during the delay is returned at once by the next read, so
/// the delay costs at most `wait / 16` of freshness and loses nothing.
#[derive(Debug, Clone)]
pub struct Watch {
    index: u64,
    wait: Duration,
    pace: Option<Pace>,
    /// Set after an index went backwards: no request before this instant.
    not_before: Option<Instant>,
}

impl Watch {
    /// A watch whose first read is non-blocking and whose later reads wait up to `wait`.
    pub fn new(wait: Duration) -> Self {
        Self {
            index: 0,
            wait,
            pace: None,
            not_before: None,
        }
    }

    /// Starts from an index already known (0: non-blocking first read).
    pub fn from_index(mut self, index: u64) -> Self {
        self.index = index;
        self
    }

    /// Spaces the requests with `pace` ([`Watch::ready`]).
    pub fn paced(mut self, pace: Pace) -> Self {
        self.pace = Some(pace);
        self
    }

    /// The index the next read blocks on (0: the next read is non-blocking).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Options for the next read: blocking on the index with the watch's wait, or a
    /// non-blocking read while the index is 0. Other fields are the defaults.
    pub fn options(&self) -> QueryOptions {
        if self.index == 0 {
            return QueryOptions::default();
        }
        QueryOptions {
            index: Some(self.index),
            wait: Some(self.wait),
            ..QueryOptions::default()
        }
    }

    /// Takes the index of an answer, by Consul's rules ([`next_index`]).
    pub fn observe(&mut self, returned: u64) -> IndexChange {
        let previous = self.index;
        self.index = next_index(previous, returned);
        if self.index < previous {
            self.not_before = Some(Instant::now() + self.reset_spread());
            IndexChange::Reset
        } else if self.index != previous {
            IndexChange::Moved
        } else {
            IndexChange::Unchanged
        }
    }

    /// Forgets the index: the next read is non-blocking (e.g. after an answer that carried no
    /// index, or when the caller wants the current value at once).
    pub fn restart(&mut self) {
        self.index = 0;
    }

    /// A random delay up to `wait / 16` before the read after a backwards index.
    fn reset_spread(&self) -> Duration {
        let max = u64::try_from((self.wait / 16).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=max))
    }

    /// The earliest instant the pace lets the next request start (now when unpaced), and
    /// not before the spread after a backwards index.
    pub fn next_start(&mut self) -> Instant {
        let now = Instant::now();
        let paced = self.pace.as_mut().map_or(now, |pace| pace.next_start(now));
        self.not_before
            .map_or(paced, |not_before| paced.max(not_before))
    }

    /// Records that a request starts now (after waiting for [`Watch::next_start`]).
    pub fn started(&mut self) {
        self.not_before = None;
        if let Some(pace) = &mut self.pace {
            pace.started(Instant::now());
        }
    }

    /// Reserves the start of the next request, for callers that arm it as a future to run
    /// later: the later of `not_before` (e.g. after a backoff) and the pace's next start.
    /// Call it once per request, after the previous one completed.
    pub fn start_at(&mut self, not_before: Instant) -> Instant {
        let start = self.next_start().max(not_before);
        self.not_before = None;
        if let Some(pace) = &mut self.pace {
            pace.started(start);
        }
        start
    }

    /// Waits until the pace lets the next request start, and records its start.
    pub async fn ready(&mut self) {
        tokio::time::sleep_until(self.next_start()).await;
        self.not_before = None;
        self.started();
    }

    /// One round: waits for the pace, sends `call` with [`Watch::options`], and takes the
    /// index of a successful answer. The caller backs off after an error.
    pub async fn round<T, F, Fut>(&mut self, call: F) -> Result<(Response<T>, IndexChange), Error>
    where
        F: FnOnce(QueryOptions) -> Fut,
        Fut: Future<Output = Result<Response<T>, Error>>,
    {
        self.ready().await;
        let response = call(self.options()).await?;
        let change = self.observe(response.meta.index);
        Ok((response, change))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QueryMeta;

    #[test]
    fn index_moving_forward_is_used_as_is() {
        assert_eq!(next_index(0, 42), 42);
        assert_eq!(next_index(42, 42), 42);
        assert_eq!(next_index(42, 1000), 1000);
    }

    #[test]
    fn index_going_backwards_is_blocked_on_as_returned() {
        assert_eq!(next_index(1000, 999), 999);
        assert_eq!(next_index(1000, 2), 2);
        assert_eq!(next_index(1000, 0), 1, "still clamped");
    }

    #[test]
    fn returned_zero_is_clamped_to_one() {
        assert_eq!(next_index(0, 0), 1);
        assert_eq!(next_index(1, 0), 1);
    }

    #[test]
    fn a_server_stuck_at_zero_settles_at_one() {
        let mut index = 500;
        let mut seen = Vec::new();
        for _ in 0..4 {
            index = next_index(index, 0);
            seen.push(index);
        }
        assert_eq!(seen, [1, 1, 1, 1]);
    }

    #[test]
    fn watch_reports_each_index_change_and_blocks_only_above_zero() {
        let wait = Duration::from_secs(30);
        let mut watch = Watch::new(wait);
        assert_eq!(watch.options().index, None, "first read is non-blocking");
        assert_eq!(watch.options().wait, None);
        assert_eq!(watch.observe(7), IndexChange::Moved);
        assert_eq!(watch.options().index, Some(7));
        assert_eq!(watch.options().wait, Some(wait));
        assert_eq!(watch.observe(7), IndexChange::Unchanged);
        assert!(!IndexChange::Unchanged.changed());
        assert_eq!(watch.observe(3), IndexChange::Reset);
        assert!(IndexChange::Reset.changed());
        assert_eq!(watch.index(), 3);
        assert_eq!(
            (watch.options().index, watch.options().wait),
            (Some(3), Some(wait)),
            "the answer was a full read: block on the lower index, no second read"
        );
        assert_eq!(
            watch.observe(0),
            IndexChange::Reset,
            "index 0 is taken as 1, below 3"
        );
        assert_eq!(watch.options().index, Some(1));
        assert_eq!(watch.observe(0), IndexChange::Unchanged);
        watch.restart();
        assert_eq!((watch.options().index, watch.options().wait), (None, None));
        assert_eq!(Watch::new(wait).from_index(9).options().index, Some(9));
    }

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

    #[tokio::test(start_paused = true)]
    async fn a_spaced_pace_is_one_request_per_interval() {
        let start = Instant::now();
        let mut pace = Pace::spaced(Duration::from_millis(250));
        assert_eq!(run(&mut pace, start, 5), [0, 250, 500, 750, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn reserved_starts_follow_the_pace_and_a_backoff() {
        let start = Instant::now();
        let refill = Duration::from_secs(10);
        let mut watch =
            Watch::new(Duration::from_secs(60)).paced(Pace::new(Duration::ZERO, refill, start));
        assert_eq!(watch.start_at(start), start, "burst of 2");
        assert_eq!(watch.start_at(start), start);
        assert_eq!(watch.start_at(start), start + refill, "then one per refill");
        tokio::time::advance(Duration::from_secs(60)).await;
        let later = Instant::now();
        let backoff = later + Duration::from_secs(3);
        assert_eq!(
            watch.start_at(backoff),
            backoff,
            "a backoff outlasting the pace"
        );
        let mut unpaced = Watch::new(Duration::from_secs(60));
        assert_eq!(unpaced.start_at(later), later);
    }

    fn answer(index: u64) -> Result<Response<u64>, Error> {
        Ok(Response {
            value: index,
            meta: QueryMeta {
                index,
                ..QueryMeta::default()
            },
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_index_going_backwards_is_blocked_on_without_a_second_read() {
        let mut watch = Watch::new(Duration::from_secs(60));
        let mut sent = Vec::new();
        let mut changes = Vec::new();
        for returned in [900, 40, 40, 41] {
            let (_, change) = watch
                .round(|options| {
                    sent.push(options.index);
                    async move { answer(returned) }
                })
                .await
                .expect("the call answers");
            changes.push(change);
        }
        assert_eq!(sent, [None, Some(900), Some(40), Some(40)]);
        assert_eq!(
            changes,
            [
                IndexChange::Moved,
                IndexChange::Reset,
                IndexChange::Unchanged,
                IndexChange::Moved
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_read_after_a_backwards_index_is_spread_over_a_sixteenth_of_the_wait() {
        // A snapshot restore returns every held query at once with a lower index: the
        // re-issues of a fleet must not land in the same instant.
        let wait = Duration::from_secs(160);
        let mut delays = Vec::new();
        for _ in 0..64 {
            let mut watch = Watch::new(wait).from_index(900);
            let (_, change) = watch
                .round(|_| async { answer(40) })
                .await
                .expect("the call answers");
            assert_eq!(change, IndexChange::Reset);
            let returned_at = Instant::now();
            let mut sent = None;
            watch
                .round(|options| {
                    sent = options.index;
                    async { answer(41) }
                })
                .await
                .expect("the call answers");
            assert_eq!(sent, Some(40), "blocks on the lower index");
            delays.push(returned_at.elapsed());
        }
        assert!(delays.iter().all(|delay| *delay <= wait / 16));
        let min = delays.iter().min().expect("64 delays");
        let max = delays.iter().max().expect("64 delays");
        assert!(
            *max - *min >= wait / 32,
            "re-issues spread over the window, not clustered: {min:?}..{max:?}"
        );
        // A forward move never delays the next read.
        let mut watch = Watch::new(wait).from_index(5);
        watch.round(|_| async { answer(9) }).await.expect("answers");
        let moved_at = Instant::now();
        watch
            .round(|_| async { answer(10) })
            .await
            .expect("answers");
        assert_eq!(moved_at.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_are_paced_and_block_on_the_last_index() {
        let mut watch =
            Watch::new(Duration::from_secs(60)).paced(Pace::spaced(Duration::from_secs(1)));
        let start = Instant::now();
        let mut sent = Vec::new();
        for returned in [5, 5, 9] {
            let (response, _) = watch
                .round(|options| {
                    sent.push((options.index, start.elapsed().as_millis()));
                    async move { answer(returned) }
                })
                .await
                .expect("the call answers");
            assert_eq!(response.value, returned);
        }
        assert_eq!(sent, [(None, 0), (Some(5), 1000), (Some(5), 2000)]);
        assert_eq!(watch.index(), 9);
        let failed = watch
            .round(|_| async {
                Err::<Response<u64>, _>(Error::NoLeader {
                    endpoint: "/v1/kv/k".into(),
                })
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(watch.index(), 9, "an error keeps the index");
    }
}
