//! Test helpers: a fake upstream DNS server on 127.0.0.1 (UDP + TCP on one port) and a
//! counting metrics recorder.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Behaviour switches of the fake upstream.
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
    /// Over UDP, first send a reply with a wrong ID and one for a wrong question.
    pub wrong_first: bool,
}

/// A canned reply for one (name, type).
#[derive(Debug, Clone)]
pub struct Reply {
    pub response_code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

#[derive(Default)]
struct State {
    table: Mutex<HashMap<(Name, RecordType), Reply>>,
    knobs: Mutex<Knobs>,
    udp_queries: AtomicUsize,
    tcp_queries: AtomicUsize,
    last_query: Mutex<Option<Message>>,
}

/// A fake upstream resolver answering from a table; unknown names get NXDOMAIN
/// without SOA.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeUpstream {
    /// Binds UDP and TCP on the same ephemeral port of 127.0.0.1 and starts answering.
    pub async fn start() -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp addr");
        let state = Arc::new(State::default());
        let udp = Arc::new(udp);
        let udp_task = tokio::spawn(serve_udp(Arc::clone(&udp), Arc::clone(&state)));
        let tcp_task = tokio::spawn(serve_tcp(tcp, Arc::clone(&state)));
        Self {
            addr,
            state,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Sets the reply for `name`/`record_type`.
    pub fn answer(&self, name: &str, record_type: RecordType, reply: Reply) {
        self.state
            .table
            .lock()
            .expect("table lock")
            .insert((name_of(name).to_lowercase(), record_type), reply);
    }

    /// Replaces the behaviour switches.
    pub fn set(&self, knobs: Knobs) {
        *self.state.knobs.lock().expect("knobs lock") = knobs;
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

async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = udp.local_addr().expect("udp addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

async fn serve_udp(socket: Arc<UdpSocket>, state: Arc<State>) {
    let mut buffer = vec![0_u8; 65_535];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        let Ok(request) = Message::from_vec(&buffer[..length]) else {
            continue;
        };
        state.udp_queries.fetch_add(1, Ordering::SeqCst);
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
    let bytes = message.to_vec().expect("encode response");
    let _ = socket.send_to(&bytes, peer).await;
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
        let Ok(request) = Message::from_vec(&buffer) else {
            return;
        };
        state.tcp_queries.fetch_add(1, Ordering::SeqCst);
        *state.last_query.lock().expect("last lock") = Some(request.clone());
        let knobs = state.knobs.lock().expect("knobs lock").clone();
        tokio::time::sleep(knobs.delay).await;
        if knobs.drop {
            return;
        }
        let response = build_response(&state, &knobs, &request);
        let bytes = response.to_vec().expect("encode response");
        let mut framed = u16::try_from(bytes.len())
            .expect("fits")
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
    if let Some(edns) = &request.edns {
        let mut reply_edns = Edns::new();
        reply_edns.set_max_payload(edns.max_payload());
        reply_edns.set_dnssec_ok(edns.flags().dnssec_ok);
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
    let key = (question.name().to_lowercase(), question.query_type());
    let reply = state.table.lock().expect("table lock").get(&key).cloned();
    match reply {
        Some(reply) => {
            response.metadata.response_code = reply.response_code;
            response.answers = reply.answers;
            response.authorities = reply.authorities;
            // DNSSEC clients see the AD bit, to check it is passed through
            response.metadata.authentic_data =
                request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        }
        None => response.metadata.response_code = ResponseCode::NXDomain,
    }
    response
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

/// A positive reply.
pub fn positive(answers: Vec<Record>) -> Reply {
    Reply {
        response_code: ResponseCode::NoError,
        answers,
        authorities: Vec::new(),
    }
}

/// A negative reply with an SOA of the given RR TTL and MINIMUM (or none).
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

/// A recorder that counts counters by name and labels (histograms are dropped).
#[derive(Default)]
pub struct CountingRecorder {
    counters: Mutex<HashMap<metrics::Key, Arc<AtomicU64>>>,
}

impl CountingRecorder {
    /// Sum of a counter over all label sets whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .expect("counters lock")
            .iter()
            .filter(|(key, _)| key.name() == name)
            .filter(|(key, _)| {
                labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, value)| value.load(Ordering::SeqCst))
            .sum()
    }
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let cell = Arc::clone(
            self.counters
                .lock()
                .expect("counters lock")
                .entry(key.clone())
                .or_default(),
        );
        metrics::Counter::from_arc(cell)
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
