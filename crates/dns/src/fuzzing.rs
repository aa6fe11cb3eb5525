//! Entry points for the fuzz targets in `fuzz/` (hidden; not an API, may change).
//!
//! The fast path's parser and cache are crate-private; this runs them the way
//! the UDP loop does, with no metrics and no catalog basis.

use tokio::time::Instant;

use crate::fast::{FastCache, MAX_RESPONSE, Meters, Provenance, Uncacheable, parse_query};

/// What the fast path made of one query and a response offered for it.
#[derive(Debug)]
pub struct FastPathRun {
    /// The lookup key (`parse_query`).
    pub key: Vec<u8>,
    /// Wire length of the question name (including the root label).
    pub name_len: usize,
    /// The response was stored (offered twice, so past the first-sight filter).
    pub stored: bool,
    /// The cached answer to `query` (ID and name case patched, answers shuffled).
    pub answer: Option<Vec<u8>>,
}

/// Parses `query` like the UDP loop; when it is a plain query, offers
/// `response` to a fresh cache twice (forwarded: TTLs count down when
/// `counts_down`) and looks `query` up. `None` when the query takes the
/// general path.
pub fn fast_path(query: &[u8], response: &[u8], counts_down: bool) -> Option<FastPathRun> {
    let key = parse_query(query)?;
    let cache = FastCache::new(true);
    let meters = || Meters {
        requests: metrics::Counter::noop(),
        responses: metrics::Counter::noop(),
        duration: metrics::Histogram::noop(),
        hits: metrics::Counter::noop(),
    };
    let provenance = || Provenance {
        basis: None,
        ttl_counts_down: counts_down,
        tags: ["fuzz"; 4],
    };
    let first = cache.insert(&key, response, cache.generation(), provenance(), meters);
    assert_eq!(
        first,
        Err(Uncacheable::FirstSight),
        "first sight is never stored"
    );
    let stored = cache
        .insert(&key, response, cache.generation(), provenance(), meters)
        .is_ok();
    let mut out = [0u8; MAX_RESPONSE];
    let answer = cache
        .answer(&key, query, Instant::now(), &mut out, |_| true)
        .map(|len| out[..len].to_vec());
    Some(FastPathRun {
        key: key.as_bytes().to_vec(),
        name_len: key.name_len,
        stored,
        answer,
    })
}
