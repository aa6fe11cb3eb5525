//! Backoff and log-once state of a loop whose Consul calls fail, shared by the follower and
//! the publisher: the first failure is a warning, repeats are debug, and the recovery is
//! logged once (state changes, not every retry). The delays are [`consul::Backoff`]'s.

use std::time::Duration;

use dnsfront_consul::{self as consul, Backoff};
use tokio_util::sync::CancellationToken;

/// A failure streak and the backoff that paces its retries.
pub(crate) struct ConsulRetry {
    backoff: Backoff,
    failures: u32,
    /// What the first failed call of the streak was doing, for the recovery log.
    failing: &'static str,
}

impl ConsulRetry {
    pub(crate) fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: 0,
            failing: "",
        }
    }

    /// Counts a failed call doing `what`; the first of a streak is logged as a warning
    /// with `message`.
    pub(crate) fn failed(
        &mut self,
        what: &'static str,
        error: &consul::Error,
        message: &'static str,
    ) {
        self.failures += 1;
        if self.failures == 1 {
            self.failing = what;
            tracing::warn!(error = %error, what, "{message}");
        } else {
            tracing::debug!(error = %error, what, attempt = self.failures, "Consul call failed again");
        }
    }

    /// A call succeeded: ends a failure streak (logged once) and resets the backoff.
    pub(crate) fn ok(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                what = self.failing,
                failed_attempts = self.failures,
                "Consul reachable again"
            );
            self.failures = 0;
            self.backoff.reset();
        }
    }

    /// The next backoff delay (the step then doubles).
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.backoff.next_delay()
    }

    /// Back to the first step without a Consul call (e.g. a value was settled).
    pub(crate) fn reset_backoff(&mut self) {
        self.backoff.reset();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn error() -> consul::Error {
        consul::Error::NoLeader {
            endpoint: "/v1/kv/dnsfront/hosts".into(),
        }
    }

    #[test]
    fn a_success_after_failures_resets_the_backoff() {
        let ms = Duration::from_millis;
        let backoff = Backoff::try_new(ms(100), ms(1000), 0.0).expect("valid bounds");
        let mut retry = ConsulRetry::new(backoff);
        retry.failed("reading", &error(), "failed");
        assert_eq!(retry.next_delay(), ms(100));
        retry.failed("reading", &error(), "failed");
        assert_eq!(retry.next_delay(), ms(200));
        retry.ok();
        assert_eq!(retry.failures, 0);
        assert_eq!(retry.next_delay(), ms(100), "back to the first step");
        retry.ok();
        assert_eq!(
            retry.next_delay(),
            ms(200),
            "a success without a streak keeps the step"
        );
        retry.reset_backoff();
        assert_eq!(retry.next_delay(), ms(100));
    }
}
