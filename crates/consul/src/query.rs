//! Query options, response metadata and the blocking-query index rules.

use std::time::Duration;

/// Per-call options for reads.
#[derive(Default, Clone, Debug)]
pub struct QueryOptions {
    /// Datacenter to query (`?dc=`); `None` means the agent's own.
    pub datacenter: Option<String>,
    /// Health reads only: drop instances with any non-passing check (`?passing`).
    pub passing: bool,
    /// Blocking query: wait until the result's index exceeds this (`?index=`); 0 or `None` is non-blocking.
    pub index: Option<u64>,
    /// Blocking query: maximum wait (`?wait=`); Consul defaults to 5m and caps at 10m.
    pub wait: Option<Duration>,
}

/// A decoded value plus Consul's response metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<T> {
    /// The decoded body.
    pub value: T,
    /// Index, leader and staleness headers.
    pub meta: QueryMeta,
}

/// Metadata from the `X-Consul-*` response headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index` (0 when absent or unparsable); feed it through [`next_index`].
    pub index: u64,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`: time since the answering server heard from the leader.
    pub last_contact: Duration,
}

/// Computes the index for the next blocking query from the previous one and the returned one.
///
/// Consul's rules (blocking queries): an index below 1 is clamped to 1 so the caller never
/// busy-loops, and an index that goes backwards (snapshot restore, stale reads from another
/// server) resets to 0 so the next read is non-blocking and re-syncs. The clamp is applied
/// first so that a server stuck at index 0 settles at 1 instead of alternating 0/1.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    let returned = returned.max(1);
    if returned < previous { 0 } else { returned }
}

/// Consul's default blocking wait (`default_query_time`).
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// Consul's maximum blocking wait (`max_query_time`).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_moving_forward_is_used_as_is() {
        assert_eq!(next_index(0, 42), 42);
        assert_eq!(next_index(42, 42), 42);
        assert_eq!(next_index(42, 1000), 1000);
    }

    #[test]
    fn index_going_backwards_resets_to_zero() {
        assert_eq!(next_index(1000, 999), 0);
        assert_eq!(next_index(1000, 2), 0);
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
        assert_eq!(seen, [0, 1, 1, 1]);
    }
}
