//! Exponential backoff with full jitter between retries of a failing Consul call.
//!
//! One implementation for every loop that talks to Consul (the catalog's circuit breaker, the
//! snapshot publisher and follower), constructed through a validating [`Backoff::try_new`] so
//! that a zero minimum (a retry loop that spins) cannot be built (after linkerd's exp-backoff).
//!
//! Each delay is drawn uniformly from the whole window between the floor `min` and the
//! current exponential ceiling ("full jitter", AWS Architecture Blog, "Exponential Backoff
//! And Jitter"): a fleet whose calls failed together (one Consul server restart breaks every
//! watch on every agent at once) then retries spread over the window instead of in a few
//! waves. A jitter that only shaves a share off the step (the former ±10 % or upper half)
//! keeps every node's retry inside the same narrow band, which is the herd again. The floor
//! keeps the delay above `min`, so a retry loop never spins.

use std::time::Duration;

use rand::Rng as _;

/// Full jitter: each delay is drawn from the whole window `[min, step]`.
pub const FULL_JITTER: f64 = 1.0;

/// Kept for callers written before full jitter: any jitter above zero now means
/// [`FULL_JITTER`] (see [`Backoff::try_new`]). Prefer [`FULL_JITTER`].
pub const HALF_JITTER: f64 = 0.5;

/// Exponential backoff: the ceiling (the step) starts at `min` and doubles after each delay up
/// to `max`; each delay is drawn uniformly from `[min, step]` (or is the step itself, without
/// jitter).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: bool,
    step: Duration,
}

/// Why [`Backoff::try_new`] refused its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBackoff {
    /// A zero first step would retry in a tight loop.
    #[error("minimum backoff must be above zero")]
    ZeroMinimum,
    /// The ceiling is below the first step.
    #[error("maximum backoff must not be less than the minimum")]
    MaximumBelowMinimum,
    /// The jitter share is not a number in 0..=1.
    #[error("backoff jitter must be between 0.0 and 1.0")]
    Jitter,
}

impl Backoff {
    /// A backoff from `min` doubling up to `max`. `jitter` 0 gives the steps themselves
    /// (deterministic, for tests and loops that want exact pacing); any other share in 0..=1
    /// ([`FULL_JITTER`], or the older [`HALF_JITTER`]) draws each delay uniformly from
    /// `[min, step]`. Every share above zero means the same because a partial jitter is what
    /// full jitter replaces: the argument stays only so that existing callers keep compiling
    /// and keep validating it.
    pub fn try_new(min: Duration, max: Duration, jitter: f64) -> Result<Self, InvalidBackoff> {
        if min.is_zero() {
            return Err(InvalidBackoff::ZeroMinimum);
        }
        if max < min {
            return Err(InvalidBackoff::MaximumBelowMinimum);
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidBackoff::Jitter);
        }
        Ok(Self {
            min,
            max,
            jitter: jitter > 0.0,
            step: min,
        })
    }

    /// The next delay (uniform in `[min, step]`, or the step without jitter), then doubles the
    /// step up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        if !self.jitter || step <= self.min {
            return step;
        }
        rand::rng().random_range(self.min..=step)
    }

    /// The ceiling the next delay is drawn under (the window is `[min, current]`), for
    /// diagnostics.
    pub fn current(&self) -> Duration {
        self.step
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn delays_stay_between_the_floor_and_the_doubling_ceiling_and_reset() {
        let mut backoff =
            Backoff::try_new(ms(200), Duration::from_secs(1), FULL_JITTER).expect("valid bounds");
        assert_eq!(
            backoff.next_delay(),
            ms(200),
            "the first window is the floor alone"
        );
        let second = backoff.next_delay();
        assert!(second >= ms(200) && second <= ms(400), "{second:?}");
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ms(200) && delay <= Duration::from_secs(1),
                "{delay:?}"
            );
        }
        backoff.reset();
        assert_eq!(backoff.current(), ms(200));
        assert_eq!(backoff.next_delay(), ms(200));
    }

    /// The delays of many nodes that failed together cover the whole window
    /// `[min, step]` evenly: no band left empty (a ±10 % or upper-half jitter
    /// leaves everything below `step / 2` empty), no clustering on a few values.
    #[test]
    fn a_fleet_that_failed_together_retries_spread_over_the_whole_window() {
        const NODES: usize = 4000;
        const BANDS: usize = 8;
        let (min, max) = (ms(1000), ms(60_000));
        for jitter in [FULL_JITTER, HALF_JITTER] {
            // Third failure of every node: the window is [1 s, 4 s].
            let delays: Vec<Duration> = (0..NODES)
                .map(|_| {
                    let mut backoff = Backoff::try_new(min, max, jitter).expect("valid bounds");
                    backoff.next_delay();
                    backoff.next_delay();
                    backoff.next_delay()
                })
                .collect();
            let (low, high) = (ms(1000), ms(4000));
            let mut bands = [0_usize; BANDS];
            for delay in &delays {
                assert!(*delay >= low && *delay <= high, "{delay:?}");
                let share = (*delay - low).as_secs_f64() / (high - low).as_secs_f64();
                bands[((share * BANDS as f64) as usize).min(BANDS - 1)] += 1;
            }
            // Each band expects NODES / BANDS = 500; 300 is more than 9 standard
            // deviations below, so this never fails by chance.
            assert!(
                bands.iter().all(|&count| count >= 300),
                "jitter {jitter}: {bands:?}"
            );
            let mut distinct = delays.clone();
            distinct.sort();
            distinct.dedup();
            assert!(distinct.len() > NODES / 2, "{} distinct", distinct.len());
        }
    }

    #[test]
    fn step_doubles_up_to_the_ceiling() {
        let mut backoff = Backoff::try_new(ms(1000), ms(4000), HALF_JITTER).expect("valid bounds");
        let steps: Vec<Duration> = (0..5)
            .map(|_| {
                let step = backoff.current();
                backoff.next_delay();
                step
            })
            .collect();
        assert_eq!(steps, [ms(1000), ms(2000), ms(4000), ms(4000), ms(4000)]);
    }

    #[test]
    fn without_jitter_the_delay_is_the_step() {
        let mut backoff = Backoff::try_new(ms(300), ms(1000), 0.0).expect("valid bounds");
        assert_eq!(backoff.next_delay(), ms(300));
        assert_eq!(backoff.next_delay(), ms(600));
        assert_eq!(backoff.next_delay(), ms(1000));
    }

    #[test]
    fn never_spins_on_zero() {
        assert_eq!(
            Backoff::try_new(Duration::ZERO, Duration::ZERO, HALF_JITTER)
                .expect_err("invalid bounds"),
            InvalidBackoff::ZeroMinimum
        );
        let mut smallest = Backoff::try_new(ms(1), ms(1), HALF_JITTER).expect("valid bounds");
        for _ in 0..64 {
            assert!(smallest.next_delay() >= Duration::from_micros(500));
        }
    }

    #[test]
    fn rejects_a_ceiling_below_the_floor_and_bad_jitter() {
        assert_eq!(
            Backoff::try_new(ms(500), ms(100), HALF_JITTER).expect_err("invalid bounds"),
            InvalidBackoff::MaximumBelowMinimum
        );
        for jitter in [-0.1, 1.5, f64::NAN] {
            assert_eq!(
                Backoff::try_new(ms(1), ms(2), jitter).expect_err("invalid bounds"),
                InvalidBackoff::Jitter
            );
        }
        assert!(Backoff::try_new(ms(1), ms(1), 1.0).is_ok());
    }
}
