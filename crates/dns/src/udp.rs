//! Our own UDP serving loop (TCP stays on hickory's `Server`).
//!
//! Per datagram, in the socket's loop task: drop it when shorter than a header,
//! a response (QR=1) or from an address that cannot be answered; then, for an
//! allowed client, try the wire answer cache ([`crate::fast`]). Everything
//! else (misses, refused clients, malformed or unusual queries) becomes a task
//! on the general path: hickory-proto decodes the message, the [`Router`]
//! answers through [`UdpResponder`], and a cacheable answer is stored.
//!
//! General-path tasks are bounded by a semaphore: beyond the limit a datagram
//! is dropped (counted in `dns.udp_overload_drops`), as a busy resolver's UDP
//! socket would; the client retries.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;

use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use ipnet::IpNet;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::backend::{CatalogView, Upstream};
use crate::fast::{self, Meters};
use crate::metrics::{FAST_PATH_HITS, QUERIES, QUERY_DURATION_SECONDS, UDP_OVERLOAD_DROPS};
use crate::router::Router;

/// Largest datagram read (as hickory's UDP stream); longer ones are cut and fail to parse.
const RECEIVE_BUFFER: usize = 4096;
/// Datagrams read per `recvmmsg` (and answers sent per `sendmmsg`). 16
/// already amortises the system calls; more would only cost memory
/// (a receive buffer each).
const BATCH: usize = 16;
/// The RFC 1035 §4.2.1 limit for clients without EDNS.
const PLAIN_UDP_LIMIT: u16 = 512;

/// What every UDP loop of one server shares.
pub(crate) struct Shared<C, F> {
    pub(crate) router: Router<C, F>,
    pub(crate) allowed: Vec<IpNet>,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
}

impl<C, F> Shared<C, F> {
    fn allowed(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|network| network.contains(&ip))
    }
}

/// Serves one socket until shutdown (Ok) or an unrecoverable socket error.
///
/// Each wake-up reads up to [`BATCH`] datagrams with one `recvmmsg` and sends
/// the fast-path answers among them with one `sendmmsg`: at cache-hit rates
/// the two system calls per query, not the lookup, were the cost (see
/// benches/README.md).
pub(crate) async fn run<C: CatalogView, F: Upstream>(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared<C, F>>,
) -> Result<(), NetError> {
    let mut buffers = vec![[0u8; RECEIVE_BUFFER]; BATCH];
    let mut received: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    let mut outgoing = Outgoing::new();
    // One future for the whole loop: a fresh `cancelled()` per wake-up takes
    // the token's lock three times.
    let shutdown = shared.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            ready = socket.readable() => {
                if let Err(error) = ready {
                    return Err(NetError::from(error));
                }
            }
        }
        received.clear();
        let result = socket.try_io(Interest::READABLE, || {
            receive_batch(&socket, &mut buffers, &mut received)
        });
        match result {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => {
                warn!(error = %error, "error receiving on UDP socket");
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
                ) {
                    return Err(NetError::from(error));
                }
                continue;
            }
        }
        let now = Instant::now();
        for (buffer, &(len, src)) in buffers.iter().zip(&received) {
            let Some(src) = src else { continue };
            datagram(&socket, &shared, &buffer[..len], src, now, &mut outgoing);
        }
        outgoing.flush(&socket).await;
    }
}

/// One `recvmmsg` into `buffers`; the length and sender of each datagram read
/// go to `received` (sender `None`: not an IP address).
fn receive_batch(
    socket: &UdpSocket,
    buffers: &mut [[u8; RECEIVE_BUFFER]],
    received: &mut Vec<(usize, Option<SocketAddr>)>,
) -> io::Result<()> {
    let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
        .iter_mut()
        .map(|buffer| [IoSliceMut::new(buffer)])
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    let messages = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
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

    /// Sends the batch with `sendmmsg`; whatever it does not take (a full
    /// socket buffer, an error on one destination) goes out one by one.
    async fn flush(&mut self, socket: &UdpSocket) {
        let mut sent = 0;
        if self.replies.len() > 1 {
            let result = socket.try_io(Interest::WRITABLE, || {
                send_batch(socket, &self.buffers, &self.replies)
            });
            sent = result.unwrap_or(0);
        }
        for (buffer, &(len, dst)) in self.buffers.iter().zip(&self.replies).skip(sent) {
            send(socket, &buffer[..len], dst).await;
        }
        self.replies.clear();
    }
}

/// One `sendmmsg` of `replies`; returns how many the kernel took.
fn send_batch(
    socket: &UdpSocket,
    buffers: &[[u8; fast::MAX_RESPONSE]],
    replies: &[(usize, SocketAddr)],
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
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(sent.count())
}

/// One datagram: a fast-path answer joins `outgoing`; anything else becomes
/// a general-path task.
fn datagram<C: CatalogView, F: Upstream>(
    socket: &Arc<UdpSocket>,
    shared: &Arc<Shared<C, F>>,
    packet: &[u8],
    src: SocketAddr,
    now: Instant,
    outgoing: &mut Outgoing,
) {
    // Shorter than a header, or a response (no reflection): silence.
    if packet.len() < 12 || packet[2] & 0x80 != 0 || !answerable(src) {
        return;
    }
    let allowed = shared.allowed(src.ip());
    let cache = shared.router.fast();
    let key = if allowed && cache.enabled() {
        fast::parse_query(packet)
    } else {
        None
    };
    if let Some(key) = &key
        && let Some(len) = cache.answer(key, packet, now, outgoing.next_buffer(), |basis| {
            basis.still_holds(shared.router.catalog())
        })
    {
        outgoing.push(len, src);
        return;
    }
    let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
        metrics::counter!(UDP_OVERLOAD_DROPS).increment(1);
        return;
    };
    let raw = packet.to_vec();
    let socket = Arc::clone(socket);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        general(&socket, &shared, raw, src, allowed, key).await;
        drop(permit);
    });
}

/// Whether a reply to `src` can be sent at all (as hickory's `sanitize_src_address`).
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}

async fn send(socket: &UdpSocket, bytes: &[u8], dst: SocketAddr) {
    let result = match socket.try_send_to(bytes, dst) {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => socket.send_to(bytes, dst).await,
        other => other,
    };
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
    allowed: bool,
    key: Option<fast::Key>,
) {
    let mut responder = UdpResponder {
        socket: Arc::clone(socket),
        dst: src,
        sent: None,
    };
    let mut decoder = BinDecoder::new(&raw);
    let Ok(header) = Header::read(&mut decoder) else {
        return;
    };
    if !allowed {
        trace!(client = %src, "request refused");
        let queries = Queries::read(&mut decoder, usize::from(header.counts.queries))
            .unwrap_or_else(|_| no_queries());
        error_response(&mut responder, &header, &queries, ResponseCode::Refused).await;
        return;
    }
    let generation = shared.router.fast().generation();
    let request = match Request::from_bytes(raw, src, Protocol::Udp) {
        Ok(request) => request,
        Err(error) => {
            trace!(error = %error, client = %src, "malformed request");
            let queries = no_queries();
            error_response(&mut responder, &header, &queries, ResponseCode::FormErr).await;
            return;
        }
    };
    if request.metadata.message_type == MessageType::Response {
        return;
    }
    let (_, cacheable) = shared.router.handle(&request, &mut responder).await;
    if let (Some(key), Some(mut cacheable), Some(sent)) = (key, cacheable, responder.sent) {
        let basis = cacheable.basis.take();
        let stored = shared
            .router
            .fast()
            .insert(&key, &sent, generation, basis, || Meters {
                queries: metrics::counter!(
                    QUERIES,
                    "zone" => cacheable.zone,
                    "qtype" => cacheable.qtype,
                    "rcode" => cacheable.rcode,
                    "source" => cacheable.source
                ),
                duration: metrics::histogram!(QUERY_DURATION_SECONDS, "zone" => cacheable.zone),
                hits: metrics::counter!(FAST_PATH_HITS),
            });
        trace!(stored = ?stored, "fast path store");
    }
}

/// An empty question section (hickory's `Queries::empty` is crate-private).
fn no_queries() -> Queries {
    Queries::read(&mut BinDecoder::new(&[]), 0).expect("reading zero queries cannot fail")
}

async fn error_response(
    responder: &mut UdpResponder,
    header: &Header,
    queries: &Queries,
    response_code: ResponseCode,
) {
    let response =
        MessageResponseBuilder::new(queries, None).error_msg(&header.metadata, response_code);
    if let Err(error) = responder.send_response(response).await {
        debug!(error = %error, "sending error response failed");
    }
}

/// hickory's [`ResponseHandler`] for our UDP loop: encodes like hickory's own
/// UDP handle (limit: the response OPT's payload, else 512 bytes; TC when cut)
/// and sends from the socket the query came in on; keeps the bytes sent.
#[derive(Clone)]
pub(crate) struct UdpResponder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    sent: Option<Vec<u8>>,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        let limit = response
            .edns()
            .map_or(PLAIN_UDP_LIMIT, |edns| edns.max_payload());
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                warn!(error = %error, "error encoding response");
                bytes.clear();
                let mut encoder = BinEncoder::new(&mut bytes);
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                header.emit(&mut encoder)?;
                ResponseInfo::from(header)
            }
        };
        send(&self.socket, &bytes, self.dst).await;
        self.sent = Some(bytes);
        Ok(info)
    }
}
