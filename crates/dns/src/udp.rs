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

use std::io;
use std::net::{IpAddr, SocketAddr};
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
/// Datagrams handled per readiness wake-up before the loop yields.
const BATCH: usize = 64;
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
pub(crate) async fn run<C: CatalogView, F: Upstream>(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared<C, F>>,
) -> Result<(), NetError> {
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    let mut out = [0u8; fast::MAX_RESPONSE];
    loop {
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return Ok(()),
            ready = socket.readable() => {
                if let Err(error) = ready {
                    return Err(NetError::from(error));
                }
            }
        }
        for _ in 0..BATCH {
            let (len, src) = match socket.try_recv_from(&mut buffer) {
                Ok(received) => received,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    warn!(error = %error, "error receiving on UDP socket");
                    if matches!(
                        error.kind(),
                        io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
                    ) {
                        return Err(NetError::from(error));
                    }
                    break;
                }
            };
            datagram(&socket, &shared, &buffer[..len], src, &mut out).await;
        }
    }
}

async fn datagram<C: CatalogView, F: Upstream>(
    socket: &Arc<UdpSocket>,
    shared: &Arc<Shared<C, F>>,
    packet: &[u8],
    src: SocketAddr,
    out: &mut [u8; fast::MAX_RESPONSE],
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
        && let Some(len) = cache.answer(key, packet, Instant::now(), out, |basis| {
            basis.still_holds(shared.router.catalog())
        })
    {
        send(socket, &out[..len], src).await;
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
