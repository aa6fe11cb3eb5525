//! Entry points for the fuzz targets in `fuzz/` (hidden; not an API, may change).
//!
//! The fast path's parser and cache and the TCP frame reader are
//! crate-private; this runs them the way the UDP loop and the TCP connection
//! loop do, with no metrics and no catalog basis.

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

/// The smallest and largest TCP query length the frame reader accepts.
pub const TCP_QUERY_LENGTHS: std::ops::RangeInclusive<usize> =
    crate::tcp::MIN_MESSAGE..=crate::tcp::MAX_QUERY;

/// How a TCP stream ended for the frame reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramesEnd {
    /// The client closed between messages.
    Closed,
    /// The client closed inside a prefix or a message.
    Truncated,
    /// A length outside [`TCP_QUERY_LENGTHS`]; the connection is closed.
    Refused,
}

/// What the frame reader made of one TCP stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Frames {
    /// The messages read, in order.
    pub messages: Vec<Vec<u8>>,
    /// How the stream ended.
    pub end: FramesEnd,
}

/// Feeds `stream` to the TCP frame reader (`tcp.rs`) the way a socket
/// might: each read returns at most the next `schedule` byte's worth of
/// bytes, or, for a 0, nothing yet, and then the pending read is dropped
/// (as the connection loop's `select!` drops it) before the next one starts.
/// After the schedule, reads take whatever is left. No runtime: the reader
/// is polled by hand.
pub fn tcp_frames(stream: &[u8], schedule: &[u8]) -> Frames {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    let mut socket = ScriptedSocket {
        stream,
        schedule,
        taken: 0,
    };
    let mut frames = crate::tcp::FrameReader::default();
    let mut messages = Vec::new();
    let mut context = Context::from_waker(Waker::noop());
    loop {
        let outcome = {
            let next = pin!(frames.next(&mut socket));
            match next.poll(&mut context) {
                Poll::Ready(outcome) => Some(outcome),
                // Dropped half-way; the reader keeps what it read.
                Poll::Pending => None,
            }
        };
        match outcome {
            None => {}
            Some(Ok(Some(message))) => messages.push(message),
            Some(Ok(None)) => {
                return Frames {
                    messages,
                    end: FramesEnd::Closed,
                };
            }
            Some(Err(error)) => {
                let end = match error.kind() {
                    std::io::ErrorKind::UnexpectedEof => FramesEnd::Truncated,
                    _ => FramesEnd::Refused,
                };
                return Frames { messages, end };
            }
        }
    }
}

/// A socket that hands out `stream` in the pieces `schedule` says.
struct ScriptedSocket<'a> {
    stream: &'a [u8],
    schedule: &'a [u8],
    taken: usize,
}

impl tokio::io::AsyncRead for ScriptedSocket<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let limit = match this.schedule.split_first() {
            Some((&0, rest)) => {
                this.schedule = rest;
                return std::task::Poll::Pending;
            }
            Some((&piece, rest)) => {
                this.schedule = rest;
                usize::from(piece)
            }
            None => usize::MAX,
        };
        let left = &this.stream[this.taken..];
        let n = left.len().min(limit).min(buf.remaining());
        buf.put_slice(&left[..n]);
        this.taken += n;
        std::task::Poll::Ready(Ok(()))
    }
}
