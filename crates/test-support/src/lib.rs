//! Helpers for dnsfront's tests and benches: a small DNS client over real UDP
//! and TCP sockets, a fake upstream DNS server, and a `dig` runner.
//! Dev-dependency only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// How long the helpers wait for an answer before giving up.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A query to send: name, type, and optional EDNS payload size.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Question name, sent exactly as written (case preserved).
    pub name: String,
    /// Question type.
    pub rtype: RecordType,
    /// `Some(size)` adds an OPT record advertising `size`.
    pub edns: Option<u16>,
}

impl Ask {
    /// A query without EDNS.
    pub fn new(name: &str, rtype: RecordType) -> Self {
        Self {
            name: name.to_owned(),
            rtype,
            edns: None,
        }
    }

    /// Adds EDNS with the given UDP payload size.
    pub fn edns(mut self, payload: u16) -> Self {
        self.edns = Some(payload);
        self
    }

    /// The wire form, with a random ID.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        let name = Name::from_ascii(&self.name).expect("test query name must be valid");
        message.add_query(Query::query(name, self.rtype));
        if let Some(payload) = self.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            message.set_edns(edns);
        }
        message.to_vec().expect("test query encodes")
    }
}

/// Sends `ask` over UDP and returns the parsed answer and its size in bytes.
pub async fn udp(server: SocketAddr, ask: &Ask) -> (Message, usize) {
    let bytes = udp_raw(server, &ask.to_bytes())
        .await
        .unwrap_or_else(|| panic!("no UDP answer from {server} for {ask:?}"));
    let message = Message::from_vec(&bytes).expect("server answer must parse");
    (message, bytes.len())
}

/// Sends `ask` over TCP and returns the parsed answer.
pub async fn tcp(server: SocketAddr, ask: &Ask) -> Message {
    let bytes = tcp_raw(server, &ask.to_bytes())
        .await
        .unwrap_or_else(|error| panic!("TCP query to {server} for {ask:?} failed: {error}"));
    Message::from_vec(&bytes).expect("server answer must parse")
}

/// Sends raw bytes over UDP; returns the reply, or None after [`QUERY_TIMEOUT`]
/// (or `wait`, when shorter answers are expected not to come).
pub async fn udp_raw(server: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    udp_raw_wait(server, payload, QUERY_TIMEOUT).await
}

/// [`udp_raw`] with an explicit wait.
pub async fn udp_raw_wait(server: SocketAddr, payload: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    }
    .parse()
    .expect("literal");
    let socket = UdpSocket::bind(bind).await.expect("bind client socket");
    socket.send_to(payload, server).await.expect("send");
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((len, _))) => Some(buf[..len].to_vec()),
        _ => None,
    }
}

/// Sends one length-prefixed message over a new TCP connection.
pub async fn tcp_raw(server: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(QUERY_TIMEOUT, async {
        let mut stream = TcpStream::connect(server).await?;
        let len = u16::try_from(payload.len()).expect("query fits a TCP frame");
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(payload).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await?;
        Ok(buf)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP query timed out"))?
}

/// The addresses in the answer section (A and AAAA), in answer order.
pub fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

/// Sorted, for order-insensitive comparisons.
pub fn sorted_addresses(message: &Message) -> Vec<IpAddr> {
    let mut addresses = addresses(message);
    addresses.sort();
    addresses
}

/// A fake upstream resolver on 127.0.0.1 (UDP and TCP on one port) that answers
/// A queries from a table (NXDOMAIN with an SOA otherwise) and counts queries.
#[derive(Clone)]
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
}

struct UpstreamState {
    records: Mutex<HashMap<String, (Vec<IpAddr>, u32)>>,
    queries: AtomicUsize,
    silent: std::sync::atomic::AtomicBool,
}

impl FakeUpstream {
    /// Starts the fake on an ephemeral loopback port.
    pub async fn start() -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("addr");
        let state = Arc::new(UpstreamState {
            records: Mutex::new(HashMap::new()),
            queries: AtomicUsize::new(0),
            silent: std::sync::atomic::AtomicBool::new(false),
        });
        let udp = Arc::new(udp);
        let udp_state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
                if let Some(reply) = udp_state.answer(&buf[..len]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let tcp_state = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let state = Arc::clone(&tcp_state);
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    if let Some(reply) = state.answer(&buf) {
                        let len = u16::try_from(reply.len()).unwrap_or(u16::MAX).to_be_bytes();
                        let _ = stream.write_all(&len).await;
                        let _ = stream.write_all(&reply).await;
                    }
                });
            }
        });
        Self { addr, state }
    }

    /// The fake's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `name` (lower-case FQDN or not) with these addresses and TTL.
    pub fn set(&self, name: &str, addresses: &[&str], ttl: u32) {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        let ips = addresses
            .iter()
            .map(|a| a.parse().expect("test address"))
            .collect();
        self.state
            .records
            .lock()
            .expect("lock")
            .insert(key, (ips, ttl));
    }

    /// When true, the fake receives queries but never answers.
    pub fn set_silent(&self, silent: bool) {
        self.state.silent.store(silent, Ordering::SeqCst);
    }

    /// Queries received so far (UDP and TCP).
    pub fn queries(&self) -> usize {
        self.state.queries.load(Ordering::SeqCst)
    }
}

impl UpstreamState {
    fn answer(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if self.silent.load(Ordering::SeqCst) {
            return None;
        }
        let request = Message::from_vec(bytes).ok()?;
        let query = request.queries.first()?.clone();
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.add_query(query.clone());
        if let Some(edns) = &request.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().max(512));
            response.set_edns(ours);
        }
        let key = query
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let found = self.records.lock().ok()?.get(&key).cloned();
        match found {
            Some((ips, ttl)) => {
                for ip in ips {
                    let data = match (ip, query.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                        _ => continue,
                    };
                    response.add_answer(Record::from_rdata(query.name().clone(), ttl, data));
                }
            }
            None => {
                response.metadata.response_code = ResponseCode::NXDomain;
                let zone = Name::root();
                let soa = SOA::new(
                    Name::from_ascii("ns.fake.").expect("literal"),
                    Name::from_ascii("hostmaster.fake.").expect("literal"),
                    1,
                    3600,
                    600,
                    86_400,
                    60,
                );
                response.add_authority(Record::from_rdata(zone, 60, RData::SOA(soa)));
            }
        }
        response.to_vec().ok()
    }
}

/// Binds UDP and TCP on the same ephemeral loopback port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = udp.local_addr().expect("addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("could not bind UDP and TCP on one port");
}

/// Runs `dig` with these arguments and returns its stdout. Panics with an
/// install hint when dig is missing: tests never skip silently.
pub fn dig(args: &[&str]) -> String {
    let output = Command::new("dig")
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run dig ({error}): install Debian's bind9-dnsutils (the README's test command does)")
        });
    assert!(
        output.status.success(),
        "dig {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
