//! Our own TCP serving loop (RFC 7766), with limits so that TCP clients
//! cannot exhaust the process (Unbound's `incoming-num-tcp` is the model).
//!
//! - The client ACL is checked at accept: a refused peer is closed at once
//!   (with a reset, so we keep no TIME_WAIT for it) and counted.
//! - At most `tcp_max_connections` connections (lowered so that
//!   RLIMIT_NOFILE keeps fds for upstream and Consul sockets), and at most
//!   `tcp_max_connections_per_client` per source address. When the global
//!   cap is reached, the connection idle the longest is closed to make room
//!   (RFC 7766 §6.2.3); if every connection has a query in flight, the new
//!   one is closed.
//! - A connection is closed after `tcp_idle_timeout` without a complete
//!   query or an answer (a partial message does not count as activity), and
//!   at `tcp_max_lifetime` whatever it does: a trickle of queries cannot keep
//!   a slot forever.
//! - At most `tcp_max_pipelined` queries of one connection are answered at
//!   once; further ones stay in the kernel's socket buffer until one is done
//!   (we stop reading), so memory does not grow with a client's pipelining.
//!   A query is at most [`MAX_QUERY`] bytes; only that is ever buffered per
//!   connection on the read side. Over all connections at most
//!   [`MAX_IN_FLIGHT`] queries are answered at once (a query holds its place
//!   until its answer is written; one read beyond that waits for a slot as
//!   bytes, not as a task), so queries being answered and answers waiting
//!   for slow readers take at most `MAX_IN_FLIGHT` × (task + 64 KiB),
//!   however many connections there are.
//! - Accept failing for lack of fds or memory (EMFILE, ENFILE, ENOBUFS,
//!   ENOMEM) pauses the accept loop with a growing delay instead of spinning
//!   on a listener that stays readable; logged once per episode.
//!
//! Answers go through the same path as UDP misses ([`udp::answer`]),
//! encoded by [`Response::encode`] up to 65,535 bytes with every owner name
//! compressed (hickory's encoder stops compressing after 120 names, so 2,000
//! addresses would not fit), and never use the UDP wire cache.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::ResponseInfo;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use crate::backend::{CatalogView, Upstream};
use crate::encode::Response;
use crate::metrics::{TCP_ACCEPT_BACKOFFS, TCP_CLOSED, TCP_CONNECTIONS, TCP_REFUSED};
use crate::router::{Respond, Router};
use crate::udp;

/// Largest query accepted over TCP, as over UDP (a query is a question, an
/// OPT and maybe a cookie or padding: a few hundred bytes). A longer length
/// prefix closes the connection, so no client can make us hold 64 KiB.
pub(crate) const MAX_QUERY: usize = 4096;
/// Most TCP queries answered at once over all connections, each held until
/// its answer is written: 256 tasks (~9 KiB) and answers of at most 64 KiB
/// bound what busy connections and slow readers can pin to about 18 MiB. Further queries wait (their connection stops
/// reading meanwhile); UDP is not affected.
pub(crate) const MAX_IN_FLIGHT: usize = 256;
/// The smallest DNS message: a header.
pub(crate) const MIN_MESSAGE: usize = 12;
/// How long a closing connection (lifetime reached, evicted, shutdown, or
/// the client half-closed) may take to finish the queries it already sent.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// First and longest pause of the accept loop while fds or memory run out.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The TCP limits of one server (validated by `src/config`).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Connections open at once over every listen address (after the fd budget).
    pub(crate) max_connections: usize,
    pub(crate) max_per_client: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_lifetime: Duration,
    pub(crate) max_pipelined: usize,
}

/// What every TCP listener of one server shares.
pub(crate) struct Shared<C, F> {
    pub(crate) router: Router<C, F>,
    pub(crate) allowed: Vec<IpNet>,
    pub(crate) limits: Limits,
    pub(crate) connections: Arc<Connections>,
    /// [`MAX_IN_FLIGHT`] permits.
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
}

/// Lowers `configured` so that the connections, plus `reserved` fds for
/// everything else (upstream and Consul sockets, UDP sockets, files), fit
/// in RLIMIT_NOFILE. At most half of a small limit is reserved.
pub(crate) fn fd_budget(configured: usize, reserved: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return configured;
    };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    let budget = soft - reserved.min(soft / 2);
    if budget < configured {
        warn!(
            rlimit_nofile = soft,
            reserved_fds = reserved.min(soft / 2),
            tcp_max_connections = configured,
            effective = budget,
            "RLIMIT_NOFILE is too low for dns.tcp_max_connections; TCP connections capped lower"
        );
    }
    configured.min(budget)
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The client is outside `dns.allowed_networks`.
    Acl,
    /// The client already holds `tcp_max_connections_per_client`.
    ClientLimit,
    /// Every slot is taken by a connection with a query in flight.
    Full,
}

impl Refusal {
    fn tag(self) -> &'static str {
        match self {
            Self::Acl => "acl",
            Self::ClientLimit => "client_limit",
            Self::Full => "full",
        }
    }
}

/// The open connections: the global and per-client counts, and what
/// eviction needs. Locked on accept and close only, never per query.
#[derive(Default)]
pub(crate) struct Connections {
    state: Mutex<State>,
    epoch: std::sync::OnceLock<Instant>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: HashMap<u64, Entry>,
    per_client: HashMap<IpAddr, usize>,
}

struct Entry {
    client: IpAddr,
    activity: Arc<Activity>,
    close: CancellationToken,
}

/// What a connection reports for eviction, without taking the lock.
#[derive(Default)]
struct Activity {
    /// Microseconds since the registry's epoch at the last complete query or answer.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

/// A connection's place in [`Connections`]; freed on drop.
struct Slot {
    id: u64,
    connections: Arc<Connections>,
    activity: Arc<Activity>,
    close: CancellationToken,
}

impl Connections {
    fn now_us(&self) -> u64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `client`, closing the longest-idle connection when
    /// every slot is taken.
    fn admit(self: &Arc<Self>, client: IpAddr, limits: &Limits) -> Result<Slot, Refusal> {
        let now = self.now_us();
        let mut state = self.state();
        if state.per_client.get(&client).copied().unwrap_or(0) >= limits.max_per_client {
            return Err(Refusal::ClientLimit);
        }
        if state.open.len() >= limits.max_connections {
            let idlest = state
                .open
                .iter()
                .filter(|(_, entry)| entry.activity.in_flight.load(Ordering::Relaxed) == 0)
                // The oldest connection first among equally idle ones.
                .min_by_key(|(id, entry)| (entry.activity.last.load(Ordering::Relaxed), **id))
                .map(|(id, _)| *id);
            let Some(id) = idlest else {
                return Err(Refusal::Full);
            };
            state.remove(id).close.cancel();
            metrics::counter!(TCP_CLOSED, "reason" => "evicted").increment(1);
        }
        let id = state.next_id;
        state.next_id += 1;
        let activity = Arc::new(Activity::default());
        activity.last.store(now, Ordering::Relaxed);
        let close = CancellationToken::new();
        state.open.insert(
            id,
            Entry {
                client,
                activity: Arc::clone(&activity),
                close: close.clone(),
            },
        );
        *state.per_client.entry(client).or_default() += 1;
        metrics::gauge!(TCP_CONNECTIONS).set(state.open.len() as f64);
        Ok(Slot {
            id,
            connections: Arc::clone(self),
            activity,
            close,
        })
    }
}

impl State {
    fn remove(&mut self, id: u64) -> Entry {
        let entry = self.open.remove(&id).expect("the caller found the id");
        if let Some(count) = self.per_client.get_mut(&entry.client) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&entry.client);
            }
        }
        entry
    }
}

impl Slot {
    fn touch(&self) {
        let now = self.connections.now_us();
        self.activity.last.store(now, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.connections.state();
        // An evicted connection's entry is already gone (its slot was reused).
        if state.open.contains_key(&self.id) {
            state.remove(self.id);
        }
        metrics::gauge!(TCP_CONNECTIONS).set(state.open.len() as f64);
    }
}

/// The accept loop of one listener; returns when `shutdown` fires (after
/// its connections finished) or, with an error, when the listener fails.
pub(crate) async fn serve<C: CatalogView, F: Upstream>(
    listener: TcpListener,
    shared: Arc<Shared<C, F>>,
) -> Result<(), NetError> {
    let mut connections = JoinSet::new();
    let mut backoff: Option<Duration> = None;
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if backoff.take().is_some() {
                    info!("TCP accept works again");
                }
                if let Some(slot) = admit(&shared, &stream, peer) {
                    connections.spawn(connection(stream, peer, slot, Arc::clone(&shared)));
                }
            }
            Err(error) if out_of_resources(&error) => {
                let pause = backoff.map_or(BACKOFF_MIN, |last| (last * 2).min(BACKOFF_MAX));
                if backoff.is_none() {
                    warn!(error = %error, "TCP accept failing: out of file descriptors or memory; pausing accepts until it works again");
                }
                backoff = Some(pause);
                metrics::counter!(TCP_ACCEPT_BACKOFFS).increment(1);
                tokio::select! {
                    () = shared.shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            Err(error) if is_fatal(&error) => {
                return Err(NetError::from(format!("TCP listener failed: {error}")));
            }
            // ECONNABORTED and the like: that one connection is gone.
            Err(error) => debug!(error = %error, "TCP accept error"),
        }
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn out_of_resources(error: &io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().is_some_and(|code| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
            .iter()
            .any(|errno| *errno as i32 == code)
    })
}

/// Errors that say the listener itself is unusable (Linux's accept returns
/// EINVAL once the socket stopped listening).
fn is_fatal(error: &io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().is_some_and(|code| {
        [
            Errno::EBADF,
            Errno::EINVAL,
            Errno::ENOTSOCK,
            Errno::EOPNOTSUPP,
        ]
        .iter()
        .any(|errno| *errno as i32 == code)
    })
}

/// The ACL and the caps; a refused connection is reset at once.
fn admit<C, F>(shared: &Shared<C, F>, stream: &TcpStream, peer: SocketAddr) -> Option<Slot> {
    let ip = peer.ip();
    let admitted = if shared.allowed.iter().any(|network| network.contains(&ip)) {
        shared.connections.admit(ip, &shared.limits)
    } else {
        Err(Refusal::Acl)
    };
    match admitted {
        Ok(slot) => Some(slot),
        Err(refusal) => {
            trace!(client = %peer, reason = refusal.tag(), "TCP connection refused");
            metrics::counter!(TCP_REFUSED, "reason" => refusal.tag()).increment(1);
            // A reset, not a FIN: a flood of refused connections leaves no TIME_WAIT here.
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            None
        }
    }
}

/// Why a connection ended, when the server ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Lifetime,
    Evicted,
    Shutdown,
    /// The client half-closed: answer what it sent, then close.
    ClientDone,
}

/// One connection: reads queries while fewer than `max_pipelined` are in
/// flight, writes answers as they finish (in completion order, RFC 7766
/// §7), and ends at the idle timeout, the lifetime, eviction or shutdown.
async fn connection<C: CatalogView, F: Upstream>(
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    shared: Arc<Shared<C, F>>,
) {
    let limits = &shared.limits;
    // Each answer is one complete frame written at once: Nagle's algorithm would only hold
    // a pipelined client's next answer until the previous one is acknowledged (Go's net,
    // and so CoreDNS, sets TCP_NODELAY on every connection for the same reason). One
    // syscall per connection; a failure only costs that latency.
    if let Err(error) = stream.set_nodelay(true) {
        debug!(error = %error, "TCP_NODELAY not set");
    }
    let opened = Instant::now();
    let end_of_life = opened + limits.max_lifetime;
    let mut idle_since = opened;
    let (mut reader, mut writer) = stream.split();
    let mut frames = FrameReader::default();
    let mut answers: JoinSet<Option<(Vec<u8>, OwnedSemaphorePermit)>> = JoinSet::new();
    let mut closing: Option<(Closing, Instant)> = None;
    // A query read while every global slot was taken: it waits here (not as
    // a task, whose future is several KiB), and reading stops meanwhile.
    let mut waiting: Option<Vec<u8>> = None;
    let ended = loop {
        if let Some((why, _)) = closing
            && answers.is_empty()
            && waiting.is_none()
        {
            break Some(why);
        }
        let reading =
            closing.is_none() && waiting.is_none() && answers.len() < limits.max_pipelined;
        let deadline = match closing {
            Some((_, drained_by)) => drained_by,
            None if answers.is_empty() => (idle_since + limits.idle_timeout).min(end_of_life),
            None => end_of_life,
        };
        let close = |why| Some((why, Instant::now() + DRAIN_GRACE));
        tokio::select! {
            () = slot.close.cancelled(), if closing.is_none() => closing = close(Closing::Evicted),
            () = shared.shutdown.cancelled(), if closing.is_none() => closing = close(Closing::Shutdown),
            Some(joined) = answers.join_next(), if !answers.is_empty() => {
                slot.activity.in_flight.store(answers.len(), Ordering::Relaxed);
                let Ok(Some((answer, permit))) = joined else { continue };
                let written = write_frame(&mut writer, &answer, limits.idle_timeout).await;
                drop(permit);
                if let Err(error) = written {
                    debug!(client = %peer, error = %error, "TCP write failed");
                    break None;
                }
                idle_since = Instant::now();
                slot.touch();
            }
            permit = Arc::clone(&shared.in_flight).acquire_owned(), if waiting.is_some() => {
                let (Ok(permit), Some(query)) = (permit, waiting.take()) else { continue };
                spawn_answer(&mut answers, &shared, query, peer, permit);
                slot.activity.in_flight.store(answers.len(), Ordering::Relaxed);
            }
            frame = frames.next(&mut reader), if reading => match frame {
                Ok(Some(query)) => {
                    idle_since = Instant::now();
                    slot.touch();
                    match Arc::clone(&shared.in_flight).try_acquire_owned() {
                        Ok(permit) => spawn_answer(&mut answers, &shared, query, peer, permit),
                        Err(_) => waiting = Some(query),
                    }
                    slot.activity.in_flight.store(
                        answers.len() + usize::from(waiting.is_some()),
                        Ordering::Relaxed,
                    );
                }
                Ok(None) => closing = close(Closing::ClientDone),
                Err(error) => {
                    debug!(client = %peer, error = %error, "TCP read ended");
                    break None;
                }
            },
            () = sleep_until(deadline) => match closing {
                // What is still unanswered after the grace is dropped.
                Some((why, _)) => break Some(why),
                None if Instant::now() >= end_of_life => closing = close(Closing::Lifetime),
                None => {
                    metrics::counter!(TCP_CLOSED, "reason" => "idle").increment(1);
                    break None;
                }
            },
        }
    };
    if ended == Some(Closing::Lifetime) {
        metrics::counter!(TCP_CLOSED, "reason" => "lifetime").increment(1);
    }
    trace!(client = %peer, ended = ?ended, "TCP connection closed");
    // Dropping `answers` aborts whatever is still running; the stream closes
    // as it drops, and the slot is freed after it.
    drop(answers);
    drop(stream);
    drop(slot);
}

/// Answers `query` in a task of its own; the global slot `permit` is held
/// until the connection has written the answer.
fn spawn_answer<C: CatalogView, F: Upstream>(
    answers: &mut JoinSet<Option<(Vec<u8>, OwnedSemaphorePermit)>>,
    shared: &Arc<Shared<C, F>>,
    query: Vec<u8>,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let shared = Arc::clone(shared);
    answers.spawn(async move {
        let answer = answer(&shared.router, query, peer).await?;
        Some((answer, permit))
    });
}

/// One answer, with its length prefix, within `limit`: a client that does
/// not read its answers is closed like an idle one.
async fn write_frame(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    answer: &[u8],
    limit: Duration,
) -> io::Result<()> {
    let len = u16::try_from(answer.len()).map_err(|_| io::ErrorKind::InvalidData)?;
    let mut frame = Vec::with_capacity(answer.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(answer);
    timeout(limit, writer.write_all(&frame))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Reads length-prefixed messages. Cancel-safe: a `next` dropped half-way
/// keeps what it read for the next call.
#[derive(Default)]
pub(crate) struct FrameReader {
    prefix: [u8; 2],
    /// Bytes of the current frame read so far, prefix included.
    read: usize,
    body: Vec<u8>,
}

impl FrameReader {
    /// The next message; None when the client closed between messages.
    pub(crate) async fn next(
        &mut self,
        reader: &mut (impl AsyncRead + Unpin),
    ) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.read < 2 {
                let got = reader.read(&mut self.prefix[self.read..]).await?;
                if got == 0 {
                    return match self.read {
                        0 => Ok(None),
                        _ => Err(io::ErrorKind::UnexpectedEof.into()),
                    };
                }
                self.read += got;
                if self.read == 2 {
                    let len = usize::from(u16::from_be_bytes(self.prefix));
                    if !(MIN_MESSAGE..=MAX_QUERY).contains(&len) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("TCP message of {len} bytes"),
                        ));
                    }
                    self.body = vec![0; len];
                }
                continue;
            }
            let filled = self.read - 2;
            if filled == self.body.len() {
                self.read = 0;
                return Ok(Some(std::mem::take(&mut self.body)));
            }
            let got = reader.read(&mut self.body[filled..]).await?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.read += got;
        }
    }
}

/// Answers one query through the router (as a UDP miss is answered); the
/// encoded answer, if any. The client passed the ACL at accept.
async fn answer<C: CatalogView, F: Upstream>(
    router: &Router<C, F>,
    raw: Vec<u8>,
    peer: SocketAddr,
) -> Option<Vec<u8>> {
    let mut responder = TcpResponder { bytes: None };
    udp::answer(router, raw, peer, Protocol::Tcp, true, &mut responder).await;
    responder.bytes
}

/// Keeps the encoded answer (up to 65,535 bytes, every owner name
/// compressed) for the connection to write.
struct TcpResponder {
    bytes: Option<Vec<u8>>,
}

impl Respond for TcpResponder {
    fn encoded_len(&self, response: &Response<'_>) -> usize {
        response.encoded_len()
    }

    async fn respond(&mut self, response: Response<'_>) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = match response.encode() {
            Ok((header, bytes)) => (ResponseInfo::from(header), bytes),
            // The router fits every answer into a TCP message; nothing else is sent.
            Err(error) => {
                debug!(error = %error, "error encoding response");
                udp::servfail(response.metadata.id)
            }
        };
        self.bytes = Some(bytes);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_client: usize) -> Limits {
        Limits {
            max_connections,
            max_per_client,
            idle_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(60),
            max_pipelined: 4,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test]
    async fn caps_count_per_client_and_evict_the_idlest_when_full() {
        let connections = Arc::new(Connections::default());
        let limits = limits(3, 2);
        let first = connections.admit(ip(1), &limits).expect("first");
        let second = connections.admit(ip(1), &limits).expect("second");
        assert_eq!(
            connections.admit(ip(1), &limits).err(),
            Some(Refusal::ClientLimit)
        );
        second.activity.in_flight.store(1, Ordering::Relaxed);
        let third = connections.admit(ip(2), &limits).expect("third");
        third.activity.in_flight.store(1, Ordering::Relaxed);
        // Full: the only connection without a query in flight makes room.
        let fourth = connections
            .admit(ip(3), &limits)
            .expect("evicts the idle one");
        assert!(first.close.is_cancelled());
        assert!(!second.close.is_cancelled() && !third.close.is_cancelled());
        // The evicted slot no longer counts for its client.
        drop(first);
        fourth.activity.in_flight.store(1, Ordering::Relaxed);
        assert_eq!(connections.admit(ip(4), &limits).err(), Some(Refusal::Full));
        drop(second);
        assert!(connections.admit(ip(1), &limits).is_ok());
    }

    #[tokio::test]
    async fn frames_survive_cancellation_and_reject_oversized_lengths() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut frames = FrameReader::default();
        client.write_all(&[0, 12, 1, 2, 3]).await.expect("write");
        // Nothing complete yet: the read is cancelled half-way.
        let partial = timeout(Duration::from_millis(50), frames.next(&mut server)).await;
        assert!(partial.is_err());
        client
            .write_all(&[4, 5, 6, 7, 8, 9, 10, 11, 12])
            .await
            .expect("write");
        let message = frames
            .next(&mut server)
            .await
            .expect("read")
            .expect("a message");
        assert_eq!(message, (1..=12).collect::<Vec<u8>>());
        client.write_all(&[0xFF, 0xFF]).await.expect("write");
        assert!(
            frames.next(&mut server).await.is_err(),
            "64 KiB is over MAX_QUERY"
        );
        drop(client);
        let mut frames = FrameReader::default();
        assert!(frames.next(&mut server).await.expect("clean EOF").is_none());
    }
}
