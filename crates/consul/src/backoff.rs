//! Jittered exponential backoff between retries of a failing Consul call.
//!
//! One implementation for every loop that talks to Consul (the catalog's circuit breaker, the
//! snapshot publisher and follower), constructed through a validating [`Backoff::try_new`] so
//! that a zero minimum (a retry loop that spins) cannot be built (after linkerd's exp-backoff).

use std::time::Duration;

use rand::Rng as _;

/// Share of each step that jitter may take off: delays are drawn from the upper half of the
/// step, so retries from many nodes that failed together spread out, yet never come sooner
/// than half the step.
pub const HALF_JITTER: f64 = 0.5;

/// Exponential backoff: the step starts at `min`, doubles after each delay up to `max`, and
/// each delay is the step minus a random share (up to `jitter`) of it.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: f64,
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
    /// A backoff from `min` doubling up to `max`, each delay shortened by a random share of at
    /// most `jitter` (0 = none, [`HALF_JITTER`] = drawn from the upper half of the step).
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
            jitter,
            step: min,
        })
    }

    /// The next delay (the current step, jittered), then doubles the step up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        if self.jitter == 0.0 {
            return step;
        }
        let share = rand::rng().random_range(0.0..=self.jitter);
        step.mul_f64(1.0 - share)
    }

    /// The step the next delay is drawn from (before jitter), for diagnostics.
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
    fn doubles_with_jitter_in_the_upper_half_and_resets() {
        let mut backoff =
            Backoff::try_new(ms(200), Duration::from_secs(1), HALF_JITTER).expect("valid bounds");
        let first = backoff.next_delay();
        assert!(first >= ms(100) && first <= ms(200), "{first:?}");
        let second = backoff.next_delay();
        assert!(second >= ms(200) && second <= ms(400), "{second:?}");
        for _ in 0..10 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
        backoff.reset();
        let after_reset = backoff.next_delay();
        assert!(
            after_reset >= ms(100) && after_reset <= ms(200),
            "{after_reset:?}"
        );
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
