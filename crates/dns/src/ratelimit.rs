//! The optional per-client rate limit of the UDP listeners
//! (`ServerOptions::rate_limit`): a token bucket per client network (/24 for
//! IPv4, /56 for IPv6: what one customer or host usually holds), never for
//! loopback clients (the local processes dnsfront exists for).
//!
//! Checked in the UDP thread before anything else, with no lock and no
//! allocation: each bucket is one atomic (GCRA, the token bucket as a single
//! "theoretical arrival time"), in a fixed table of [`BUCKETS`] slots
//! indexed by a seeded hash of the network. Networks that share a slot share
//! a budget; the seed is random per process, so no client can pick whose
//! budget it shares.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Slots of the bucket table (8 bytes each: 128 KiB, allocated only when the
/// limit is on).
pub(crate) const BUCKETS: usize = 1 << 14;

/// Per-network query budget: `per_second` queries a second, and bursts of up
/// to one second's worth.
#[derive(Debug)]
pub(crate) struct RateLimit {
    /// Per slot: when the bucket is full again, in ns since `epoch`.
    slots: Box<[AtomicU64]>,
    /// Time one query's token takes to come back.
    interval: u64,
    /// How far ahead of now a bucket may be (the burst, less one query).
    tolerance: u64,
    seed: u64,
    epoch: Instant,
}

impl RateLimit {
    /// `None` when `per_second` is 0 (no limit).
    pub(crate) fn new(per_second: u32) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let second = Duration::from_secs(1).as_nanos() as u64;
        let interval = (second / u64::from(per_second)).max(1);
        Some(Self {
            slots: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            interval,
            tolerance: interval * u64::from(per_second - 1),
            seed: seed() | 1,
            epoch: Instant::now(),
        })
    }

    /// Takes one token for `client`'s network at `now`; false when its
    /// bucket is empty. Loopback clients always pass.
    pub(crate) fn allows(&self, client: IpAddr, now: Instant) -> bool {
        let network = match client.to_canonical() {
            IpAddr::V4(v4) if v4.is_loopback() => return true,
            IpAddr::V6(v6) if v6.is_loopback() => return true,
            IpAddr::V4(v4) => u64::from(u32::from(v4) >> 8),
            // The top 56 bits, tagged apart from the IPv4 /24s.
            IpAddr::V6(v6) => ((u128::from(v6) >> 72) as u64) | (1 << 63),
        };
        let slot = &self.slots[self.index(network)];
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut stored = slot.load(Ordering::Relaxed);
        loop {
            let due = stored.max(now);
            if due - now > self.tolerance {
                return false;
            }
            match slot.compare_exchange_weak(
                stored,
                due.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => stored = actual,
            }
        }
    }

    fn index(&self, network: u64) -> usize {
        let mixed = (network ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> (64 - BUCKETS.trailing_zeros())) as usize
    }
}

/// A random seed (std's per-process random hash keys).
fn seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal")
    }

    #[test]
    fn a_network_gets_its_burst_then_its_rate() {
        let limit = RateLimit::new(10).expect("on");
        let start = Instant::now();
        let passed = (0..50)
            .filter(|n| limit.allows(ip(&format!("192.0.2.{n}")), start))
            .count();
        assert_eq!(passed, 10, "one second's worth at once, shared by the /24");
        assert!(limit.allows(ip("198.51.100.1"), start), "another /24");
        assert!(!limit.allows(ip("192.0.2.1"), start + Duration::from_millis(50)));
        assert!(limit.allows(ip("192.0.2.1"), start + Duration::from_millis(110)));
        assert!(!limit.allows(ip("192.0.2.1"), start + Duration::from_millis(120)));
        let later = start + Duration::from_secs(5);
        let passed = (0..50)
            .filter(|_| limit.allows(ip("192.0.2.7"), later))
            .count();
        assert_eq!(passed, 10, "the bucket refills to the burst, no more");
    }

    #[test]
    fn ipv6_is_limited_per_56_and_loopback_never() {
        let limit = RateLimit::new(2).expect("on");
        let now = Instant::now();
        assert!(limit.allows(ip("2001:db8:0:1::1"), now));
        assert!(limit.allows(ip("2001:db8:0:ff::2"), now), "same /56");
        assert!(
            !limit.allows(ip("2001:db8:0:42::3"), now),
            "same /56, empty"
        );
        assert!(limit.allows(ip("2001:db8:0:100::1"), now), "next /56");
        for _ in 0..100 {
            assert!(limit.allows(ip("127.0.0.1"), now));
            assert!(limit.allows(ip("127.9.9.9"), now));
            assert!(limit.allows(ip("::1"), now));
            assert!(limit.allows(ip("::ffff:127.0.0.1"), now));
        }
    }

    #[test]
    fn zero_is_off() {
        assert!(RateLimit::new(0).is_none());
    }
}
