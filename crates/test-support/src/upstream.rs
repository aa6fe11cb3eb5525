//! A fake upstream DNS resolver on 127.0.0.1: UDP and TCP on one port, answers
//! from tables, with switches for the failure modes a forwarder must survive.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Behaviour switches of the fake upstream; the default answers normally.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Never answer (count the query, then drop it).
    pub drop: bool,
    /// Answer every query with SERVFAIL.
    pub servfail: bool,
    /// Over UDP, answer with TC set and no records (TCP answers in full).
    pub truncate_udp: bool,
    /// Over UDP, first send a reply with a wrong ID, one for a wrong question
    /// and three bytes of garbage, then the real reply.
    pub wrong_first: bool,
}

/// A canned reply for one (name, type).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The reply's RCODE.
    pub response_code: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section.
    pub authorities: Vec<Record>,
}

/// Addresses (A and AAAA) and their TTL for one name, set by [`FakeUpstream::set`].
type AddressEntry = (Vec<IpAddr>, u32);

#[derive(Default)]
struct State {
    replies: Mutex<HashMap<(String, RecordType), Reply>>,
    addresses: Mutex<HashMap<String, AddressEntry>>,
    knobs: Mutex<Knobs>,
    udp_queries: AtomicUsize,
    tcp_queries: AtomicUsize,
    last_query: Mutex<Option<Message>>,
}

/// Aborts the server tasks when the last clone of the fake is dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A fake upstream resolver on 127.0.0.1 (UDP and TCP on one port).
///
/// A query is answered, in this order, from the canned replies of
/// [`answer`](Self::answer), from the addresses of [`set`](Self::set) (A and
/// AAAA of a known name; other types get an empty NOERROR), or else with
/// NXDOMAIN carrying an SOA (TTL 60, MINIMUM 60). Every query is counted.
#[derive(Clone)]
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    _tasks: Arc<Tasks>,
}

impl FakeUpstream {
    /// Binds UDP and TCP on the same ephemeral port of 127.0.0.1 and starts answering.
    pub async fn start() -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp addr");
        let state = Arc::new(State::default());
        let udp_task = tokio::spawn(serve_udp(Arc::new(udp), Arc::clone(&state)));
        let tcp_task = tokio::spawn(serve_tcp(tcp, Arc::clone(&state)));
        Self {
            addr,
            state,
            _tasks: Arc::new(Tasks(vec![udp_task, tcp_task])),
        }
    }

    /// The fake's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `name` (any case, trailing dot optional) with these addresses
    /// and TTL: A queries get the IPv4 ones, AAAA queries the IPv6 ones.
    pub fn set(&self, name: &str, addresses: &[&str], ttl: u32) {
        let ips = addresses
            .iter()
            .map(|a| a.parse().expect("test address"))
            .collect();
        self.state
            .addresses
            .lock()
            .expect("addresses lock")
            .insert(key(name), (ips, ttl));
    }

    /// Sets the canned reply for `name`/`record_type`; it wins over [`set`](Self::set).
    pub fn answer(&self, name: &str, record_type: RecordType, reply: Reply) {
        self.state
            .replies
            .lock()
            .expect("replies lock")
            .insert((key(name), record_type), reply);
    }

    /// Replaces the behaviour switches.
    pub fn set_knobs(&self, knobs: Knobs) {
        *self.state.knobs.lock().expect("knobs lock") = knobs;
    }

    /// When true, the fake receives (and counts) queries but never answers.
    pub fn set_silent(&self, silent: bool) {
        self.state.knobs.lock().expect("knobs lock").drop = silent;
    }

    /// Queries received so far (UDP and TCP).
    pub fn queries(&self) -> usize {
        self.udp_queries() + self.tcp_queries()
    }

    /// Queries received over UDP.
    pub fn udp_queries(&self) -> usize {
        self.state.udp_queries.load(Ordering::SeqCst)
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.state.tcp_queries.load(Ordering::SeqCst)
    }

    /// The last query message received (either transport).
    pub fn last_query(&self) -> Option<Message> {
        self.state.last_query.lock().expect("last lock").clone()
    }
}

/// An address where nothing listens (UDP sends get ICMP port unreachable).
pub async fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.local_addr().expect("addr")
}

/// Binds UDP and TCP on the same ephemeral loopback port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = udp.local_addr().expect("udp addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("could not bind UDP and TCP on one port");
}

/// The table key of a name: lower case, without the trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve_udp(socket: Arc<UdpSocket>, state: Arc<State>) {
    let mut buffer = vec![0_u8; 65_535];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        state.udp_queries.fetch_add(1, Ordering::SeqCst);
        let Ok(request) = Message::from_vec(&buffer[..length]) else {
            continue;
        };
        *state.last_query.lock().expect("last lock") = Some(request.clone());
        let socket = Arc::clone(&socket);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let knobs = state.knobs.lock().expect("knobs lock").clone();
            tokio::time::sleep(knobs.delay).await;
            if knobs.drop {
                return;
            }
            let mut response = build_response(&state, &knobs, &request);
            if knobs.truncate_udp {
                response.metadata.truncation = true;
                response.answers.clear();
                response.authorities.clear();
            }
            if knobs.wrong_first {
                // both impostors carry a different address, so accepting one shows
                let mut impostor = response.clone();
                impostor.answers = a_records("wrong.example.", 60, &[66]);
                let mut wrong_id = impostor.clone();
                wrong_id.metadata.id = response.metadata.id.wrapping_add(1);
                send(&socket, peer, &wrong_id).await;
                let mut wrong_question = impostor;
                if let Some(question) = wrong_question.queries.first_mut() {
                    question.set_name(name_of("wrong.example."));
                }
                send(&socket, peer, &wrong_question).await;
                // garbage that does not decode either
                let _ = socket.send_to(&[1, 2, 3], peer).await;
            }
            send(&socket, peer, &response).await;
        });
    }
}

async fn send(socket: &UdpSocket, peer: SocketAddr, message: &Message) {
    let bytes = encode(message);
    let _ = socket.send_to(&bytes, peer).await;
}

/// The wire form of a response. hickory's encoder compresses only the first
/// 120 names of a message, so a large answer (2,000 records) is written by
/// [`encode_large`] instead, every owner equal to the question a pointer to it.
fn encode(message: &Message) -> Vec<u8> {
    match message.to_vec() {
        // hickory stops at 65,535 bytes and sets TC: only a whole message will do.
        Ok(bytes) if bytes.get(6..8) == Some(&count(message.answers.len())[..]) => bytes,
        _ => encode_large(message).expect("encode a large response"),
    }
}

/// A section count as the header writes it (saturated: a mismatch either way).
fn count(records: usize) -> [u8; 2] {
    u16::try_from(records).unwrap_or(u16::MAX).to_be_bytes()
}

/// Header and question by hickory, then each record by hand: an owner equal to
/// the question as a pointer to offset 12, other names uncompressed, and the
/// OPT record last.
fn encode_large(message: &Message) -> Option<Vec<u8>> {
    /// The question name right after the 12-byte header (RFC 1035 §4.1.4).
    const QUESTION_POINTER: [u8; 2] = [0xC0, 12];
    let question = message.queries.first()?.name().clone();
    let mut head = message.clone();
    head.answers.clear();
    head.authorities.clear();
    head.additionals.clear();
    head.edns = None;
    let mut bytes = head.to_vec().ok()?;
    let sections = [&message.answers, &message.authorities, &message.additionals];
    for record in sections.into_iter().flatten() {
        if record.name == question {
            bytes.extend_from_slice(&QUESTION_POINTER);
        } else {
            for label in record.name.iter() {
                bytes.push(u8::try_from(label.len()).ok()?);
                bytes.extend_from_slice(label);
            }
            bytes.push(0);
        }
        let mut rdata = Vec::new();
        let mut encoder = BinEncoder::new(&mut rdata);
        encoder.set_canonical_form(true);
        record.data.emit(&mut encoder).ok()?;
        bytes.extend_from_slice(&u16::from(record.record_type()).to_be_bytes());
        bytes.extend_from_slice(&u16::from(record.dns_class).to_be_bytes());
        bytes.extend_from_slice(&record.ttl.to_be_bytes());
        bytes.extend_from_slice(&u16::try_from(rdata.len()).ok()?.to_be_bytes());
        bytes.extend_from_slice(&rdata);
    }
    if let Some(edns) = &message.edns {
        // Root owner, type OPT, class = payload size, TTL = extended rcode,
        // version and the DO flag, no options.
        bytes.push(0);
        bytes.extend_from_slice(&41_u16.to_be_bytes());
        bytes.extend_from_slice(&edns.max_payload().to_be_bytes());
        let flags: u16 = if edns.flags().dnssec_ok { 0x8000 } else { 0 };
        bytes.extend_from_slice(&[edns.rcode_high(), edns.version()]);
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&0_u16.to_be_bytes());
    }
    let additionals = message.additionals.len() + usize::from(message.edns.is_some());
    for (offset, count) in [
        (6, message.answers.len()),
        (8, message.authorities.len()),
        (10, additionals),
    ] {
        bytes[offset..offset + 2].copy_from_slice(&u16::try_from(count).ok()?.to_be_bytes());
    }
    (bytes.len() <= usize::from(u16::MAX)).then_some(bytes)
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(serve_tcp_connection(stream, Arc::clone(&state)));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, state: Arc<State>) {
    loop {
        let Ok(length) = stream.read_u16().await else {
            return;
        };
        let mut buffer = vec![0_u8; usize::from(length)];
        if stream.read_exact(&mut buffer).await.is_err() {
            return;
        }
        state.tcp_queries.fetch_add(1, Ordering::SeqCst);
        let Ok(request) = Message::from_vec(&buffer) else {
            return;
        };
        *state.last_query.lock().expect("last lock") = Some(request.clone());
        let knobs = state.knobs.lock().expect("knobs lock").clone();
        tokio::time::sleep(knobs.delay).await;
        if knobs.drop {
            return;
        }
        let response = build_response(&state, &knobs, &request);
        let bytes = encode(&response);
        let mut framed = u16::try_from(bytes.len())
            .expect("response fits a TCP frame")
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&bytes);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

fn build_response(state: &State, knobs: &Knobs, request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.clone());
    let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    if let Some(edns) = &request.edns {
        let mut reply_edns = Edns::new();
        reply_edns.set_max_payload(edns.max_payload().max(512));
        reply_edns.set_dnssec_ok(dnssec_ok);
        response.set_edns(reply_edns);
    }
    if knobs.servfail {
        response.metadata.response_code = ResponseCode::ServFail;
        return response;
    }
    let Some(question) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let name = key(&question.name().to_ascii());
    let canned = state
        .replies
        .lock()
        .expect("replies lock")
        .get(&(name.clone(), question.query_type()))
        .cloned();
    let reply = canned.or_else(|| {
        let addresses = state
            .addresses
            .lock()
            .expect("addresses lock")
            .get(&name)
            .cloned();
        addresses.map(|(ips, ttl)| address_reply(question.name(), question.query_type(), &ips, ttl))
    });
    match reply {
        Some(reply) => {
            response.metadata.response_code = reply.response_code;
            response.answers = reply.answers;
            response.authorities = reply.authorities;
            // DNSSEC clients see the AD bit, to check it is passed through
            response.metadata.authentic_data = dnssec_ok;
        }
        None => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.authorities = vec![root_soa()];
        }
    }
    response
}

/// The SOA sent with NXDOMAIN for names in neither table (TTL and MINIMUM 60).
fn root_soa() -> Record {
    let soa = SOA::new(
        name_of("ns.fake."),
        name_of("hostmaster.fake."),
        1,
        3600,
        600,
        86_400,
        60,
    );
    Record::from_rdata(Name::root(), 60, RData::SOA(soa))
}

/// The reply for a name set with [`FakeUpstream::set`]: its addresses of the
/// asked family, or an empty NOERROR for other types.
fn address_reply(owner: &Name, record_type: RecordType, ips: &[IpAddr], ttl: u32) -> Reply {
    let answers = ips
        .iter()
        .filter_map(|ip| match (ip, record_type) {
            (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(owner.clone(), ttl, data))
        .collect();
    positive(answers)
}

/// Parses a name literal.
pub fn name_of(text: &str) -> Name {
    Name::from_str(text).expect("test name")
}

/// A records for `owner`, one per last octet (192.0.2.x).
pub fn a_records(owner: &str, ttl: u32, last_octets: &[u8]) -> Vec<Record> {
    last_octets
        .iter()
        .map(|&last| {
            Record::from_rdata(
                name_of(owner),
                ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
            )
        })
        .collect()
}

/// A positive (NOERROR) reply with these answers.
pub fn positive(answers: Vec<Record>) -> Reply {
    Reply {
        response_code: ResponseCode::NoError,
        answers,
        authorities: Vec::new(),
    }
}

/// A negative reply (NXDOMAIN, or NOERROR for NODATA) with an SOA of the
/// given RR TTL and MINIMUM, or none.
pub fn negative(response_code: ResponseCode, soa: Option<(u32, u32)>) -> Reply {
    let authorities = soa
        .map(|(ttl, minimum)| {
            let data = SOA::new(
                name_of("ns.example."),
                name_of("host.example."),
                7,
                60,
                60,
                600,
                minimum,
            );
            vec![Record::from_rdata(
                name_of("example."),
                ttl,
                RData::SOA(data),
            )]
        })
        .unwrap_or_default();
    Reply {
        response_code,
        answers: Vec::new(),
        authorities,
    }
}
