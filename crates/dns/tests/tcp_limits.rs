//! TCP limits over real sockets and real time: thousands of held
//! connections, the per-client and global caps, idle timeout, lifetime,
//! bounded pipelining and the ACL at accept.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dnsfront_catalog::{Freshness, Lookup, Node, ServiceInstance};
use dnsfront_dns::{CatalogView, Config, Listeners, Router, ServerHandle, ServerOptions, serve};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{FakeUpstream, instance};
use test_support::{Ask, DebuggingRecorder, Recorded, tcp, udp};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};

/// A catalog whose service lookups wait at a gate (closed until opened),
/// counting how many wait at once.
#[derive(Clone)]
struct Gated {
    gate: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl Gated {
    fn new(open: bool) -> Self {
        let permits = if open { Semaphore::MAX_PERMITS } else { 0 };
        Self {
            gate: Arc::new(Semaphore::new(permits)),
            waiting: Arc::default(),
        }
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

impl CatalogView for Gated {
    async fn service(&self, _: &str, _: Option<&str>) -> Lookup<Arc<[ServiceInstance]>> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let permit = self.gate.acquire().await.expect("gate open");
        drop(permit);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        Lookup::Found(
            vec![instance("n1", "10.0.0.1", None, 80, &[])].into(),
            Freshness::Fresh,
        )
    }

    async fn node(&self, _: &str, _: Option<&str>) -> Lookup<Arc<Node>> {
        Lookup::NotFound(Freshness::Fresh)
    }
}

struct Server {
    addr: SocketAddr,
    catalog: Gated,
    _handle: ServerHandle,
}

async fn start(options: ServerOptions, open: bool) -> Server {
    let catalog = Gated::new(open);
    let router = Router::with_backends(Config::default(), catalog.clone(), None::<FakeUpstream>);
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
    let addr = listeners.local_addrs()[0];
    let handle = serve(router, listeners, options).expect("serve");
    Server {
        addr,
        catalog,
        _handle: handle,
    }
}

fn web() -> Ask {
    Ask::new("web.service.consul.", RecordType::A)
}

/// A connection from `source` (any 127.0.0.0/8 address works on Linux's loopback).
async fn connect_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    socket.connect(server).await.expect("connect")
}

fn frame(ask: &Ask) -> Vec<u8> {
    let query = ask.to_bytes();
    let mut frame = u16::try_from(query.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    frame.extend(query);
    frame
}

async fn read_answer(stream: &mut TcpStream) -> std::io::Result<Message> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).await?;
    Ok(Message::from_vec(&body).expect("answer parses"))
}

/// Asks one query on an open connection and checks the answer.
async fn ask_on(stream: &mut TcpStream) {
    stream.write_all(&frame(&web())).await.expect("write");
    let answer = timeout(Duration::from_secs(5), read_answer(stream))
        .await
        .expect("answered in time")
        .expect("answer");
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1);
}

/// Waits (bounded) for the server to close `stream`; how long it took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 512];
    loop {
        match timeout(
            within.saturating_sub(started.elapsed()),
            stream.read(&mut buffer),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            // An answer still on its way: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether a connection from `source` is closed by the server before any
/// query (the reset may even arrive before `connect` returns).
async fn refused(source: IpAddr, server: SocketAddr) -> bool {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    match socket.connect(server).await {
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(mut stream) => closed_within(&mut stream, Duration::from_secs(2))
            .await
            .is_some(),
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Both ends of every connection live in this process: two fds each.
fn raise_fd_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < needed {
        assert!(hard >= needed, "RLIMIT_NOFILE hard limit {hard} < {needed}");
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

const HELD: usize = 2_500;
const SOURCES: u8 = 25;
const PER_CLIENT: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_held_connections_leave_new_clients_answered() {
    raise_fd_limit(2 * HELD as u64 + 4_096);
    let server = start(
        ServerOptions {
            tcp_max_connections: 3_000,
            tcp_max_connections_per_client: PER_CLIENT,
            tcp_idle_timeout: Duration::from_secs(60),
            tcp_max_lifetime: Duration::from_secs(600),
            ..ServerOptions::default()
        },
        true,
    )
    .await;
    let before = rss_kib();
    let mut held = Vec::with_capacity(HELD);
    for source in 2..2 + SOURCES {
        for _ in 0..PER_CLIENT {
            held.push(connect_from(IpAddr::from([127, 0, 0, source]), server.addr).await);
        }
    }
    // Every held connection was admitted: each gets an answer.
    for stream in &mut held {
        ask_on(stream).await;
    }
    let grown = rss_kib().saturating_sub(before);
    eprintln!(
        "RSS grew by {grown} KiB for {HELD} connections (both ends, one query each): {} bytes each",
        grown * 1024 / HELD as u64
    );
    // Both ends of a connection, its task and a query's buffers stay well
    // under the README's budget of 16 KiB per busy connection.
    assert!(grown < 16 * HELD as u64, "RSS grew by {grown} KiB");

    // A client over its cap is closed at once ...
    assert!(
        refused(IpAddr::from([127, 0, 0, 2]), server.addr).await,
        "the 101st connection of 127.0.0.2 is refused"
    );
    // ... while other clients are answered, over TCP and UDP.
    let mut other = connect_from(IpAddr::from([127, 0, 0, 200]), server.addr).await;
    ask_on(&mut other).await;
    let reply = tcp(server.addr, &web()).await;
    assert_eq!(reply.answers.len(), 1);
    let (reply, _) = udp(server.addr, &web()).await;
    assert_eq!(reply.answers.len(), 1);

    // The held connections are all still open and served.
    for stream in held.iter_mut().step_by(97) {
        ask_on(stream).await;
    }
}

#[tokio::test]
async fn at_the_global_cap_the_idlest_connection_makes_room() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = start(
        ServerOptions {
            tcp_max_connections: 20,
            ..ServerOptions::default()
        },
        true,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        ask_on(&mut stream).await;
        held.push(stream);
    }
    // The first one has been idle the longest.
    ask_on(&mut held[1]).await;
    let reply = tcp(server.addr, &web()).await;
    assert_eq!(
        reply.answers.len(),
        1,
        "a new client is answered at the cap"
    );
    assert!(
        closed_within(&mut held[0], Duration::from_secs(2))
            .await
            .is_some(),
        "the idlest connection was closed to make room"
    );
    for stream in &mut held[1..] {
        ask_on(stream).await;
    }
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.counter("dns.tcp_closed_total", &[("reason", "evicted")]),
        1
    );
}

#[tokio::test]
async fn pipelined_queries_beyond_the_bound_wait_and_busy_slots_are_not_taken() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = start(
        ServerOptions {
            tcp_max_pipelined: 4,
            tcp_max_connections: 1,
            ..ServerOptions::default()
        },
        false,
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut burst = Vec::new();
    for _ in 0..10 {
        burst.extend(frame(&web()));
    }
    stream.write_all(&burst).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.catalog.waiting(),
        4,
        "only tcp_max_pipelined queries are taken in"
    );

    // Every slot holds a query in flight: a new connection is refused.
    // Nothing is sent: the connection is closed before any query.
    assert!(refused(IpAddr::from([127, 0, 0, 1]), server.addr).await);

    server.catalog.open();
    for _ in 0..10 {
        let answer = timeout(Duration::from_secs(5), read_answer(&mut stream))
            .await
            .expect("in time")
            .expect("answer");
        assert_eq!(answer.answers.len(), 1);
    }
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.counter("dns.tcp_refused_total", &[("reason", "full")]),
        1
    );
}

#[tokio::test]
async fn idle_connections_close_and_partial_messages_do_not_count_as_activity() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let idle = Duration::from_millis(400);
    let server = start(
        ServerOptions {
            tcp_idle_timeout: idle,
            ..ServerOptions::default()
        },
        true,
    )
    .await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut answered = TcpStream::connect(server.addr).await.expect("connect");
    ask_on(&mut answered).await;
    let mut trickle = TcpStream::connect(server.addr).await.expect("connect");
    let trickler = tokio::spawn(async move {
        // One byte of a long message every 100 ms: never a complete query.
        let bytes = frame(&web());
        for byte in &bytes[..bytes.len() - 1] {
            if trickle.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed_within(&mut trickle, Duration::from_secs(5)).await
    });
    for stream in [&mut silent, &mut answered] {
        let took = closed_within(stream, Duration::from_secs(3))
            .await
            .expect("closed after the idle timeout");
        assert!(took <= idle + Duration::from_millis(800), "{took:?}");
    }
    let trickled = trickler.await.expect("trickler");
    assert!(
        trickled.is_some(),
        "a byte trickle does not keep a connection"
    );
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.counter("dns.tcp_closed_total", &[("reason", "idle")]),
        3
    );
}

#[tokio::test]
async fn a_busy_connection_is_closed_at_its_lifetime() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let lifetime = Duration::from_secs(1);
    let server = start(
        ServerOptions {
            tcp_idle_timeout: Duration::from_millis(500),
            tcp_max_lifetime: lifetime,
            ..ServerOptions::default()
        },
        true,
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let opened = Instant::now();
    let mut answered = 0;
    let closed_after = loop {
        if stream.write_all(&frame(&web())).await.is_err() {
            break opened.elapsed();
        }
        match timeout(Duration::from_secs(5), read_answer(&mut stream)).await {
            Ok(Ok(_)) => answered += 1,
            Ok(Err(_)) => break opened.elapsed(),
            Err(_) => panic!("neither answered nor closed"),
        }
        assert!(opened.elapsed() < Duration::from_secs(5), "never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answered >= 5, "served until its lifetime: {answered}");
    assert!(
        closed_after >= lifetime - Duration::from_millis(50)
            && closed_after < lifetime + Duration::from_secs(2),
        "{closed_after:?}"
    );
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.counter("dns.tcp_closed_total", &[("reason", "lifetime")]),
        1
    );
}

#[tokio::test]
async fn clients_outside_the_acl_are_closed_at_accept() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = start(
        ServerOptions {
            allowed_networks: vec!["10.0.0.0/8".parse().expect("net")],
            ..ServerOptions::default()
        },
        true,
    )
    .await;
    // Nothing is sent: the connection is closed before any query.
    assert!(refused(IpAddr::from([127, 0, 0, 1]), server.addr).await);
    assert_eq!(server.catalog.waiting(), 0);
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.counter("dns.tcp_refused_total", &[("reason", "acl")]),
        1
    );
}

#[tokio::test]
async fn oversized_messages_close_the_connection() {
    let server = start(ServerOptions::default(), true).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // A 64 KiB length prefix: nothing is allocated for it, the connection closes.
    stream.write_all(&[0xFF, 0xFF, 0, 0]).await.expect("write");
    assert!(
        closed_within(&mut stream, Duration::from_secs(2))
            .await
            .is_some()
    );
    let reply = tcp(server.addr, &web()).await;
    assert_eq!(reply.answers.len(), 1);
}

#[tokio::test]
async fn queries_in_flight_are_bounded_over_all_connections() {
    const CONNECTIONS: usize = 40;
    let server = start(ServerOptions::default(), false).await;
    let mut burst = Vec::new();
    for _ in 0..16 {
        burst.extend(frame(&web()));
    }
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(&burst).await.expect("write");
        streams.push(stream);
    }
    let settled = |want| {
        let catalog = server.catalog.clone();
        async move {
            for _ in 0..50 {
                if catalog.waiting() == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    // 640 queries sent, 256 (tcp::MAX_IN_FLIGHT) taken in at once.
    assert!(settled(256).await, "waiting: {}", server.catalog.waiting());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.catalog.waiting(), 256);
    // The others wait as bytes, not as tasks (a task's future is KiBs):
    // one task per connection, one per query taken in, and a few others.
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert!(tasks < CONNECTIONS + 256 + 10, "{tasks} tasks alive");
    server.catalog.open();
    for stream in &mut streams {
        for _ in 0..16 {
            let answer = timeout(Duration::from_secs(5), read_answer(stream))
                .await
                .expect("in time")
                .expect("answer");
            assert_eq!(answer.answers.len(), 1);
        }
    }
}
