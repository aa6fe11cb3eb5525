//! Our own UDP serving threads (TCP: [`crate::tcp`]).
//!
//! Per datagram, in the socket's thread: drop it when shorter than a header,
//! a response (QR=1), from an address that cannot be answered or over its
//! network's rate limit ([`crate::ratelimit`], off by default); answer
//! REFUSED at once to a client outside the allowed networks (no general-path
//! slot, no allocation); then try the wire answer cache ([`crate::fast`]).
//! Everything else (misses, malformed or unusual queries) becomes a task
//! on the general path: hickory-proto decodes the message, the [`Router`]
//! answers through [`UdpResponder`], and a cacheable answer is stored.
//!
//! General-path tasks are bounded by a semaphore: beyond the limit a datagram
//! is dropped (counted in `dns.udp_overload_drops_total`), as a busy resolver's UDP
//! socket would; the client retries.

use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::Edns;
use hickory_server::proto::op::{
    Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::{Request, ResponseInfo};
use hickory_server::zone_handler::Queries;
use ipnet::IpNet;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, sendto};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::backend::{CatalogView, Upstream};
use crate::encode::Response;
use crate::fast::{self, Meters};
use crate::metrics::{
    FAST_PATH_HITS, PROTO_UDP, REQUEST_DURATION_SECONDS, REQUESTS, RESPONSES, UDP_OVERLOAD_DROPS,
};
use crate::ratelimit::RateLimit;
use crate::router::{Cacheable, Respond, Router};

/// Largest datagram read (as hickory's UDP stream); longer ones are cut and fail to parse.
const RECEIVE_BUFFER: usize = 4096;
/// Datagrams read per `recvmmsg` (and answers sent per `sendmmsg`). 16
/// already amortises the system calls; more would only cost memory
/// (a receive buffer each).
const BATCH: usize = 16;
/// How often a UDP thread idle in `recvmmsg` looks at the shutdown token on
/// its own: a safety net only. At shutdown the thread is woken at once by
/// empty datagrams sent to its socket ([`wake_until_stopped`]), so an idle
/// resolver does not wake to ask (the idle cost is paid on every VM of a
/// fleet: benches/README.md, "Idle cost"). This only bounds how long a thread
/// outlives its server where no datagram can reach it (a firewall dropping
/// loopback datagrams to the port); shutdown itself waits at most
/// [`WAKE_GIVE_UP`].
const SHUTDOWN_CHECK: Duration = Duration::from_secs(60);
/// How long shutdown sends wake-up datagrams before it stops waiting for a
/// thread (within the unit's `TimeoutStopSec=10s`).
const WAKE_GIVE_UP: Duration = Duration::from_secs(5);
/// How often, from shutdown until the thread has stopped, an empty datagram
/// is sent to its socket to wake it.
const WAKE_INTERVAL: Duration = Duration::from_millis(10);
/// Pause after an unexpected receive error, so that a persistent one cannot spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Receive errors in a row after which the socket is given up (10 s of
/// pauses): the server then stops and the process is restarted.
const MAX_ERROR_STREAK: u32 = 1000;

/// The RFC 1035 §4.2.1 limit for clients without EDNS.
const PLAIN_UDP_LIMIT: u16 = 512;

/// What every UDP loop of one server shares.
pub(crate) struct Shared<C, F> {
    pub(crate) router: Router<C, F>,
    pub(crate) allowed: Vec<IpNet>,
    pub(crate) in_flight: Arc<Semaphore>,
    /// The per-client rate limit; None = off.
    pub(crate) rate_limit: Option<RateLimit>,
    /// `dns.rate_limited_total`, resolved once.
    pub(crate) rate_limited: metrics::Counter,
    pub(crate) shutdown: CancellationToken,
}

impl<C, F> Shared<C, F> {
    pub(crate) fn allowed(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|network| network.contains(&ip))
    }
}

/// Starts serving `socket` on a thread of its own; the future resolves when
/// that thread has stopped (shutdown: Ok; an unrecoverable socket error or a
/// panic: Err, upon which the server stops and the process exits).
///
/// A dedicated thread blocked in `recvmmsg`, not a task woken by epoll: a
/// query arriving at an idle server then costs two system calls (`recvmmsg`
/// returning, `sendto`/`sendmmsg`) and no runtime hand-off, which is what sets
/// the CPU cost and latency at moderate rates (see benches/README.md). Each
/// wake-up reads up to [`BATCH`] datagrams and sends the fast-path answers
/// among them with one `sendmmsg`. Misses go to the runtime as tasks.
pub(crate) fn spawn<C: CatalogView, F: Upstream>(
    socket: UdpSocket,
    shared: Arc<Shared<C, F>>,
) -> io::Result<impl Future<Output = Result<(), NetError>> + Send + 'static> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(SHUTDOWN_CHECK))?;
    let wake_at = wake_address(socket.local_addr()?);
    let shutdown = shared.shutdown.clone();
    let socket = Arc::new(socket);
    let runtime = tokio::runtime::Handle::current();
    let (done, stopped) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("dnsfront-udp".to_owned())
        .spawn(move || {
            // General-path tasks, the catalog and tokio's clock need the runtime.
            let _runtime = runtime.enter();
            // A panic (a bug) must reach the server as an error, so the
            // process exits and is restarted, instead of silently leaving
            // this socket's clients unanswered.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| serve(&socket, &shared)))
                .unwrap_or_else(|panic| {
                    Err(NetError::from(format!(
                        "UDP thread panicked: {}",
                        panic_message(panic.as_ref())
                    )))
                });
            // Closed before the server hears that this thread stopped, so a
            // stopped server has released its port.
            drop(socket);
            let _ = done.send(result);
        })?;
    Ok(async move { wake_until_stopped(stopped, &shutdown, wake_at).await })
}

/// Waits for the thread to stop; from shutdown on, sends it an empty
/// datagram every [`WAKE_INTERVAL`] so that it leaves `recvmmsg` at once and
/// sees the token. Each comes from a fresh port: in a `SO_REUSEPORT` group the
/// kernel picks the socket by the sender's address, so every socket of the
/// group gets one soon. Such a datagram is dropped unanswered (no header).
/// After [`WAKE_GIVE_UP`] it stops waiting: the thread leaves by itself
/// within [`SHUTDOWN_CHECK`].
async fn wake_until_stopped(
    mut stopped: tokio::sync::oneshot::Receiver<Result<(), NetError>>,
    shutdown: &CancellationToken,
    wake_at: SocketAddr,
) -> Result<(), NetError> {
    let ended = |result: Result<_, _>| {
        result.unwrap_or_else(|_| Err(NetError::from("UDP thread ended without a result")))
    };
    tokio::select! {
        result = &mut stopped => return ended(result),
        () = shutdown.cancelled() => {}
    }
    let give_up = tokio::time::sleep(WAKE_GIVE_UP);
    tokio::pin!(give_up);
    let mut tick = tokio::time::interval(WAKE_INTERVAL);
    loop {
        tokio::select! {
            result = &mut stopped => return ended(result),
            () = &mut give_up => {
                warn!(
                    socket = %wake_at,
                    "UDP thread not stopped after {WAKE_GIVE_UP:?} of wake-up datagrams \
                     (dropped by a firewall?); it stops within {SHUTDOWN_CHECK:?}"
                );
                return Ok(());
            }
            _ = tick.tick() => {
                let unspecified: IpAddr = match wake_at {
                    SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                    SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
                };
                // Best effort: the read timeout and the give-up are the safety net.
                if let Ok(waker) = UdpSocket::bind((unspecified, 0)) {
                    let _ = waker.send_to(&[], wake_at);
                }
            }
        }
    }
}

/// Where a socket bound to `local` can be reached from this host: its own
/// address, or the loopback of its family when it is bound to a wildcard.
fn wake_address(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The loop of one socket's thread.
fn serve<C: CatalogView, F: Upstream>(
    socket: &Arc<UdpSocket>,
    shared: &Arc<Shared<C, F>>,
) -> Result<(), NetError> {
    let mut buffers = vec![[0u8; RECEIVE_BUFFER]; BATCH];
    let mut received: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    let mut outgoing = Outgoing::new();
    let mut misses: Vec<Miss> = Vec::with_capacity(BATCH);
    let mut errors = 0;
    loop {
        if shared.shutdown.is_cancelled() {
            return Ok(());
        }
        received.clear();
        match receive_batch(socket, &mut buffers, &mut received) {
            Ok(()) => {}
            // The read timeout expired (time to look at the shutdown token), or a signal.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(error) => {
                warn!(error = %error, "error receiving on UDP socket");
                errors += 1;
                if fatal(&error) || errors >= MAX_ERROR_STREAK {
                    return Err(NetError::from(format!(
                        "UDP socket failed after {errors} receive errors in a row: {error}"
                    )));
                }
                // Whatever it is, do not spin on it.
                std::thread::sleep(ERROR_PAUSE);
                continue;
            }
        }
        errors = 0;
        // A shut-down socket reads as datagrams of no bytes from no address
        // at once, forever (a real empty datagram has a sender).
        if received.iter().all(|&(len, src)| len == 0 && src.is_none()) {
            return Err(NetError::from("UDP socket was shut down"));
        }
        let now = Instant::now();
        for (buffer, &(len, src)) in buffers.iter().zip(&received) {
            let Some(src) = src else { continue };
            datagram(shared, &buffer[..len], src, now, &mut outgoing, &mut misses);
        }
        outgoing.flush(socket);
        spawn_general(socket, shared, &mut misses);
    }
}

/// A datagram the fast path did not answer, for the general path.
struct Miss {
    raw: Vec<u8>,
    src: SocketAddr,
    key: Option<fast::Key>,
    permit: OwnedSemaphorePermit,
}

/// Hands a batch's misses to the runtime as one task (each answered as soon
/// as it is ready): one wake-up of a worker per batch instead of one per
/// miss, which on a busy CPU is a context switch each (issue 16 goal 4).
fn spawn_general<C: CatalogView, F: Upstream>(
    socket: &Arc<UdpSocket>,
    shared: &Arc<Shared<C, F>>,
    misses: &mut Vec<Miss>,
) {
    if misses.is_empty() {
        return;
    }
    let batch: Vec<Miss> = std::mem::take(misses);
    let socket = Arc::clone(socket);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        // Each answer's state is freed when it is sent, not when the slowest
        // of the batch is (a miss waits on its upstream for up to seconds).
        let mut answers: FuturesUnordered<_> = batch
            .into_iter()
            .map(|miss| {
                let socket = Arc::clone(&socket);
                let shared = Arc::clone(&shared);
                async move {
                    general(&socket, &shared, miss.raw, miss.src, miss.key).await;
                    // The socket before the permit: once every permit is back the
                    // server reports itself stopped, and its port must then be free.
                    drop(socket);
                    drop(miss.permit);
                }
            })
            .collect();
        while answers.next().await.is_some() {}
    });
}

/// Whether a receive error means the socket itself is gone or unusable
/// (retrying cannot help), as opposed to a passing shortage (ENOMEM, ENOBUFS).
fn fatal(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
    ) || matches!(
        error.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(
            nix::errno::Errno::EBADF
                | nix::errno::Errno::ENOTSOCK
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::EFAULT
        )
    )
}

/// One blocking `recvmmsg` into `buffers` (it returns with the first datagram,
/// or when the socket's read timeout expires); the length and sender of each
/// datagram read go to `received` (sender `None`: not an IP address).
fn receive_batch(
    socket: &UdpSocket,
    buffers: &mut [[u8; RECEIVE_BUFFER]],
    received: &mut Vec<(usize, Option<SocketAddr>)>,
) -> io::Result<()> {
    let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
        .iter_mut()
        .map(|buffer| [IoSliceMut::new(buffer)])
        .collect();
    // Fresh headers per call: nix leaves each header's address length as the
    // kernel last wrote it, so reused headers could truncate a longer address.
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    // Blocks until one datagram is there, then takes what else is queued.
    let messages = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    )
    .map_err(io::Error::from)?;
    received.extend(messages.map(|message| (message.bytes, message.address.and_then(socket_addr))));
    Ok(())
}

fn socket_addr(address: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Fast-path answers of one batch, sent together.
struct Outgoing {
    buffers: Vec<[u8; fast::MAX_RESPONSE]>,
    replies: Vec<(usize, SocketAddr)>,
}

impl Outgoing {
    fn new() -> Self {
        Self {
            buffers: vec![[0u8; fast::MAX_RESPONSE]; BATCH],
            replies: Vec::with_capacity(BATCH),
        }
    }

    /// The buffer for the next reply (one per received datagram at most).
    fn next_buffer(&mut self) -> &mut [u8; fast::MAX_RESPONSE] {
        &mut self.buffers[self.replies.len()]
    }

    fn push(&mut self, len: usize, dst: SocketAddr) {
        self.replies.push((len, dst));
    }

    /// Sends the batch with `sendmmsg`; whatever it does not take (an error on
    /// one destination) goes out one by one. Blocking: a full send buffer
    /// slows the reading down, as it should.
    fn flush(&mut self, socket: &UdpSocket) {
        let mut sent = 0;
        if self.replies.len() > 1 {
            sent = send_batch(socket, &self.buffers, &self.replies, MsgFlags::empty()).unwrap_or(0);
        }
        for (buffer, &(len, dst)) in self.buffers.iter().zip(&self.replies).skip(sent) {
            if let Err(error) = socket.send_to(&buffer[..len], dst) {
                debug!(error = %error, client = %dst, "sending UDP response failed");
            }
        }
        self.replies.clear();
    }
}

/// One `sendmmsg` of `replies`; returns how many the kernel took.
fn send_batch(
    socket: &UdpSocket,
    buffers: &[[u8; fast::MAX_RESPONSE]],
    replies: &[(usize, SocketAddr)],
    flags: MsgFlags,
) -> io::Result<usize> {
    let slices: Vec<[IoSlice<'_>; 1]> = buffers
        .iter()
        .zip(replies)
        .map(|(buffer, &(len, _))| [IoSlice::new(&buffer[..len])])
        .collect();
    let addresses: Vec<Option<SockaddrStorage>> = replies
        .iter()
        .map(|&(_, dst)| Some(SockaddrStorage::from(dst)))
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    let sent = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &slices,
        &addresses,
        [],
        flags,
    )
    .map_err(io::Error::from)?;
    Ok(sent.count())
}

/// One datagram: a fast-path answer joins `outgoing`; anything else joins
/// `misses`, for the general path.
fn datagram<C: CatalogView, F: Upstream>(
    shared: &Arc<Shared<C, F>>,
    packet: &[u8],
    src: SocketAddr,
    now: Instant,
    outgoing: &mut Outgoing,
    misses: &mut Vec<Miss>,
) {
    // Shorter than a header, or a response (no reflection): silence.
    if packet.len() < 12 || packet[2] & 0x80 != 0 || !answerable(src) {
        return;
    }
    if let Some(limit) = &shared.rate_limit
        && !limit.allows(src.ip(), now)
    {
        shared.rate_limited.increment(1);
        return;
    }
    if !shared.allowed(src.ip()) {
        // Answered here: a refused client, however many datagrams it sends,
        // takes no general-path slot from the allowed ones.
        trace!(client = %src, "request refused");
        let len = fast::refused(packet, outgoing.next_buffer());
        outgoing.push(len, src);
        return;
    }
    let cache = shared.router.fast();
    let key = if cache.enabled() {
        fast::parse_query(packet)
    } else {
        None
    };
    if let Some(key) = &key
        && let Some(len) = cache.answer(key, packet, now, outgoing.next_buffer(), |basis| {
            basis.still_holds(shared.router.catalog(), now)
        })
    {
        outgoing.push(len, src);
        return;
    }
    let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
        metrics::counter!(UDP_OVERLOAD_DROPS).increment(1);
        return;
    };
    misses.push(Miss {
        raw: packet.to_vec(),
        src,
        key,
        permit,
    });
}

/// Whether a reply to `src` can be sent at all (as hickory's `sanitize_src_address`).
pub(crate) fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}

/// Sends one answer from a runtime task. The socket blocks (its thread reads
/// it), so this sends with `MSG_DONTWAIT`: when the send buffer is full the
/// answer is dropped, as the kernel would drop it at a receiver that cannot
/// keep up, and the client retries.
fn send(socket: &UdpSocket, bytes: &[u8], dst: SocketAddr) {
    let result = sendto(
        socket.as_raw_fd(),
        bytes,
        &SockaddrStorage::from(dst),
        MsgFlags::MSG_DONTWAIT,
    );
    if let Err(error) = result {
        debug!(error = %error, client = %dst, "sending UDP response failed");
    }
}

/// The general path for one datagram (a task of its own).
async fn general<C: CatalogView, F: Upstream>(
    socket: &Arc<UdpSocket>,
    shared: &Shared<C, F>,
    raw: Vec<u8>,
    src: SocketAddr,
    key: Option<fast::Key>,
) {
    let mut responder = UdpResponder {
        socket: Arc::clone(socket),
        dst: src,
        sent: None,
    };
    let generation = shared.router.fast().generation();
    let cacheable = answer(
        &shared.router,
        raw,
        src,
        Protocol::Udp,
        true,
        &mut responder,
    )
    .await;
    if let (Some(key), Some(mut cacheable), Some(sent)) = (key, cacheable, responder.sent) {
        let basis = cacheable.basis.take();
        let stored = shared.router.fast().insert(
            &key,
            &sent,
            generation,
            fast::Provenance {
                basis,
                ttl_counts_down: cacheable.ttl_counts_down,
                tags: [
                    cacheable.zone,
                    cacheable.qtype,
                    cacheable.rcode,
                    cacheable.source,
                ],
            },
            || Meters {
                requests: metrics::counter!(
                    REQUESTS,
                    "proto" => PROTO_UDP,
                    "zone" => cacheable.zone,
                    "type" => cacheable.qtype
                ),
                responses: metrics::counter!(
                    RESPONSES,
                    "proto" => PROTO_UDP,
                    "zone" => cacheable.zone,
                    "type" => cacheable.qtype,
                    "rcode" => cacheable.rcode,
                    "source" => cacheable.source
                ),
                duration: metrics::histogram!(
                    REQUEST_DURATION_SECONDS,
                    "proto" => PROTO_UDP,
                    "zone" => cacheable.zone,
                    "type" => cacheable.qtype
                ),
                hits: metrics::counter!(FAST_PATH_HITS),
            },
        );
        trace!(stored = ?stored, "fast path store");
    }
}

/// Decodes one request (UDP or TCP) and answers it through `responder`:
/// REFUSED for a client outside the allowed networks, FORMERR for a request
/// that does not decode, silence for a response or a truncated header, else
/// the router's answer. Returns whether the fast path may keep that answer.
pub(crate) async fn answer<C: CatalogView, F: Upstream, R: Respond>(
    router: &Router<C, F>,
    raw: Vec<u8>,
    src: SocketAddr,
    protocol: Protocol,
    allowed: bool,
    responder: &mut R,
) -> Option<Cacheable> {
    let mut decoder = BinDecoder::new(&raw);
    let header = Header::read(&mut decoder).ok()?;
    if !allowed {
        trace!(client = %src, "request refused");
        let queries = Queries::read(&mut decoder, usize::from(header.counts.queries))
            .unwrap_or_else(|_| no_queries());
        error_response(responder, &header, &queries, ResponseCode::Refused).await;
        return None;
    }
    let request = match Request::from_bytes(raw, src, protocol) {
        Ok(request) => request,
        Err(error) => {
            trace!(error = %error, client = %src, "malformed request");
            let queries = no_queries();
            error_response(responder, &header, &queries, ResponseCode::FormErr).await;
            return None;
        }
    };
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    router.handle(&request, responder).await.1
}

/// An empty question section (hickory's `Queries::empty` is crate-private).
fn no_queries() -> Queries {
    Queries::read(&mut BinDecoder::new(&[]), 0).expect("reading zero queries cannot fail")
}

async fn error_response<R: Respond>(
    responder: &mut R,
    header: &Header,
    queries: &Queries,
    response_code: ResponseCode,
) {
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = response_code;
    let response = Response {
        metadata,
        queries,
        edns: None,
        answers: &[],
        authorities: &[],
        additionals: &[],
    };
    if let Err(error) = responder.respond(response).await {
        debug!(error = %error, "sending error response failed");
    }
}

/// Sends our UDP answers from the socket the query came in on, encoded by
/// [`encode`]; keeps the bytes sent (for the fast path).
pub(crate) struct UdpResponder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    sent: Option<Vec<u8>>,
}

impl Respond for UdpResponder {
    fn encoded_len(&self, response: &Response<'_>) -> usize {
        response.encoded_len()
    }

    async fn respond(&mut self, response: Response<'_>) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode(&response);
        send(&self.socket, &bytes, self.dst);
        self.sent = Some(bytes);
        Ok(info)
    }
}

/// Encodes a UDP response, which the router has already fitted into the
/// client's limit (the response OPT's payload, else 512 bytes), measuring
/// with the same encoder.
///
/// The encoder gets no size limit of its own: hickory writes each name out in
/// full before compressing it, so an encoder capped at the limit gives up on
/// a record that fits once compressed, and leaves the bytes written so far
/// behind the last counted record (a malformed reply). A response that still
/// exceeds the limit (nothing the router sends) goes out as a bare SERVFAIL
/// rather than oversized.
pub(crate) fn encode(response: &Response<'_>) -> (ResponseInfo, Vec<u8>) {
    let limit = response.edns.map_or(PLAIN_UDP_LIMIT, Edns::max_payload);
    match response.encode() {
        Ok((header, bytes)) if bytes.len() <= usize::from(limit) => {
            return (ResponseInfo::from(header), bytes);
        }
        Ok((_, bytes)) => warn!(len = bytes.len(), limit, "response exceeds the UDP limit"),
        Err(error) => warn!(error = %error, "error encoding response"),
    }
    servfail(response.metadata.id)
}

/// A bare SERVFAIL header: what goes out when a response cannot be encoded.
pub(crate) fn servfail(id: u16) -> (ResponseInfo, Vec<u8>) {
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut bytes = Vec::with_capacity(12);
    header
        .emit(&mut BinEncoder::new(&mut bytes))
        .expect("12 bytes always fit an unlimited buffer");
    (ResponseInfo::from(header), bytes)
}
