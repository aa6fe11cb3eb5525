//! A periodic wake-up kept by the kernel (a `timerfd` in the runtime's epoll
//! set), for the slow checks an idle resolver makes: the files' safety-net
//! polls and the StatsD gauge repeat.
//!
//! Why not `tokio::time::interval`: tokio's timer wheel keeps a timer due in
//! seconds on a coarse level and wakes a worker at each level's slot boundary
//! to move it down (slots of 4.1 s, then 64 ms, then 1 ms), so a 10 s period
//! costs about three wake-ups instead of one. Paid on every VM of a fleet, all
//! day (benches/README.md, "Idle cost"). A `timerfd` wakes the poller once, at
//! the deadline.
//!
//! Not for tests under tokio's paused clock: the kernel's clock does not pause.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// Completes [`tick`](Ticker::tick) once per period; the first after one
/// period. Missed periods collapse into one tick (like
/// `MissedTickBehavior::Delay`, without the catch-up burst).
#[derive(Debug)]
pub struct Ticker {
    timer: Timer,
}

#[derive(Debug)]
enum Timer {
    Kernel(AsyncFd<Descriptor>),
    /// No timerfd (out of descriptors, a sandbox without it): tokio's clock.
    Tokio(tokio::time::Interval),
}

/// `AsyncFd` wants `AsRawFd`, which nix's `TimerFd` does not implement.
#[derive(Debug)]
struct Descriptor(TimerFd);

impl AsRawFd for Descriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Ticker {
    /// A ticker with `period` (at least 1 ms); must run inside a tokio runtime.
    pub fn new(period: Duration) -> Self {
        let period = period.max(Duration::from_millis(1));
        let timer = match kernel_timer(period) {
            Ok(fd) => Timer::Kernel(fd),
            Err(error) => {
                tracing::debug!(error = %error, "timerfd unavailable, ticking on tokio's clock");
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Timer::Tokio(interval)
            }
        };
        Self { timer }
    }

    /// Completes at the next period's end (cancel-safe).
    pub async fn tick(&mut self) {
        match &mut self.timer {
            Timer::Kernel(fd) => loop {
                let Ok(mut guard) = fd.readable().await else {
                    // The registration broke (never seen): do not spin.
                    std::future::pending::<()>().await;
                    return;
                };
                // Reads (and so resets) the count of expirations; with none
                // yet the non-blocking read fails with EAGAIN: wait again.
                if let Ok(Ok(())) =
                    guard.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from))
                {
                    return;
                }
            },
            Timer::Tokio(interval) => {
                interval.tick().await;
            }
        }
    }
}

fn kernel_timer(period: Duration) -> io::Result<AsyncFd<Descriptor>> {
    let timer = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?;
    timer.set(
        Expiration::Interval(TimeSpec::from_duration(period)),
        TimerSetTimeFlags::empty(),
    )?;
    // Deprecated for types whose `as_raw_fd` could change or close under
    // tokio (tokio#8587); `Descriptor` owns the timer descriptor and returns
    // that same one until it is dropped with the `AsyncFd`, which is the
    // condition the unsafe `register` states. No unsafe code for this.
    #[allow(deprecated)]
    AsyncFd::new(Descriptor(timer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks come once per period, never before it (real time: the kernel's
    /// clock does not pause).
    #[tokio::test]
    async fn ticks_once_per_period_and_not_before() {
        let mut ticker = Ticker::new(Duration::from_millis(50));
        assert!(matches!(ticker.timer, Timer::Kernel(_)), "timerfd in use");
        let started = std::time::Instant::now();
        for round in 1..=3u32 {
            ticker.tick().await;
            assert!(
                started.elapsed() >= Duration::from_millis(50) * round,
                "tick {round} after {:?}",
                started.elapsed()
            );
        }
    }
}
