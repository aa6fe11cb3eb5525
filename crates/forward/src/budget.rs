//! The byte budget of upstream answers in flight (`max_in_flight_bytes`).
//!
//! `max_in_flight` bounds how many upstream queries run; this bounds the bytes their
//! answers hold while they are not yet in a client's hands: a TCP answer is charged
//! its length (read from the 2-byte prefix) before its body is read, until it has been
//! decoded; an answer handed to the queries waiting for it is kept as compact wire
//! bytes and charged their size until the last waiter has its copy. Charges are taken
//! without waiting: an answer that does not fit is dropped at once (the query gets a
//! stale answer or SERVFAIL, `forward.over_budget_total`), so small answers keep flowing
//! while large ones fill the budget, and nothing queues behind a large one.
//!
//! UDP answers need no charge while received: each pooled socket's buffer is part of
//! the socket, sized to the EDNS payload its queries advertise.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics;

/// Bytes an answer held for its waiters costs besides its wire data: the `Arc`'d
/// holder, the shared future's slot and allocator rounding, rounded up.
pub(crate) const HELD_OVERHEAD: usize = 256;

/// The budget shared by every exchange of one forwarder.
#[derive(Debug)]
pub(crate) struct Budget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// Bytes taken from the [`Budget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    permit: OwnedSemaphorePermit,
    budget: Arc<Budget>,
}

impl Budget {
    pub(crate) fn new(total: u64) -> Arc<Self> {
        let total = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        })
    }

    /// Takes `bytes` from the budget if they are free; `None` (counted) if not.
    pub(crate) fn charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| Arc::clone(&self.bytes).try_acquire_many_owned(n).ok());
        let Some(permit) = permit else {
            ::metrics::counter!(metrics::OVER_BUDGET).increment(1);
            return None;
        };
        self.report();
        Some(Charge {
            permit,
            budget: Arc::clone(self),
        })
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> usize {
        self.total.saturating_sub(self.bytes.available_permits())
    }

    fn report(&self) {
        metrics::in_flight_bytes(self.used());
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        // The permit is released after this body: report what will be left.
        let releasing = self.permit.num_permits();
        metrics::in_flight_bytes(self.budget.used().saturating_sub(releasing));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_the_total_and_come_back_when_dropped() {
        let budget = Budget::new(1_000);
        let first = budget.charge(600).expect("fits");
        assert!(budget.charge(600).is_none(), "over the total");
        let small = budget.charge(400).expect("the rest fits");
        assert_eq!(budget.used(), 1_000);
        drop(first);
        assert_eq!(budget.used(), 400);
        drop(small);
        assert_eq!(budget.used(), 0);
        assert!(budget.charge(usize::MAX).is_none(), "never panics");
    }
}
