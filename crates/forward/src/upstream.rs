//! Exchanges with upstream resolvers over tokio sockets: UDP first, TCP when the UDP
//! answer is truncated (or TCP only); per-upstream health; sequential failover or a
//! race between the healthy upstreams of a set.
//!
//! Health: `max_fails` consecutive transport failures (timeouts, socket errors,
//! unusable replies) mark an upstream down. Any matching reply marks it up again, even
//! SERVFAIL/REFUSED: those fail over to the next upstream and count as failures, but
//! the server is reachable, so it costs a round trip rather than a timeout. A down
//! upstream is tried after the healthy ones, and every `probe_interval` one real query
//! is copied to it in the background (its answer is not used) until it answers.
//!
//! UDP sockets are pooled per upstream: each is bound to a random port chosen by the
//! kernel and connected to the upstream (so the kernel drops datagrams from any other
//! source and reports ICMP errors), serves one query at a time, goes back to the pool
//! only after a matching answer, and is closed after [`SOCKET_MAX_USES`] queries or
//! [`SOCKET_MAX_AGE`]: a fresh socket per query costs bind, connect, reactor
//! registration and close, about a quarter of a forwarded query's CPU. Every query
//! still gets a random ID, and a reply must match the ID and the question. Whatever
//! arrived on a socket while it sat idle is discarded before its next query, so forged
//! replies cannot be queued up in advance.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use metrics::{counter, gauge, histogram};
use nix::sys::socket::{MsgFlags, recv};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};
use tracing::{info, trace, warn};

use crate::budget::Budget;
use crate::cache::Response;
use crate::config::Strategy;
use crate::metrics as names;

/// A pooled UDP socket is closed after this many queries (its port changes).
pub(crate) const SOCKET_MAX_USES: u32 = 100;
/// A pooled UDP socket is not used any more once this old (its port changes).
pub(crate) const SOCKET_MAX_AGE: Duration = Duration::from_secs(10);
/// Idle UDP sockets kept per upstream at most (enough for a burst of concurrent
/// misses: with fewer, most of a burst's sockets are opened and closed again).
const SOCKET_POOL_IDLE: usize = 256;

/// When an upstream counts as down and how often it is probed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HealthPolicy {
    pub(crate) max_fails: u32,
    pub(crate) probe_interval: Duration,
}

#[derive(Debug)]
struct Health {
    consecutive_failures: u32,
    down: bool,
    /// A probe may be sent once this passes (while down).
    probe_due: Instant,
    /// A probe is in flight.
    probing: bool,
    last_rtt: Option<Duration>,
}

/// A snapshot of one upstream's health and counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamStats {
    /// The upstream's address.
    pub addr: SocketAddr,
    /// False while marked down (skipped and probed).
    pub up: bool,
    /// Exchanges started (UDP+TCP retry counts as one; probes included).
    pub queries: u64,
    /// Exchanges that failed (timeouts, socket errors, failure rcodes).
    pub failures: u64,
    /// Transport failures since the last reply.
    pub consecutive_failures: u32,
    /// Round-trip time of the last reply.
    #[serde(serialize_with = "serialize_millis")]
    pub last_rtt: Option<Duration>,
}

fn serialize_millis<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serializer.serialize_some(&(duration.as_secs_f64() * 1_000.0)),
        None => serializer.serialize_none(),
    }
}

/// One configured upstream resolver with its health and statistics.
///
/// Shared by every rule that names the address, and kept across `reconfigure`.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    /// `ip:port`, the metrics tag value.
    label: String,
    health: Mutex<Health>,
    queries: AtomicU64,
    failures: AtomicU64,
    /// Idle UDP sockets connected to `addr`, most recently used last.
    sockets: Mutex<Vec<PooledSocket>>,
}

impl Upstream {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let label = addr.to_string();
        gauge!(names::UPSTREAM_DOWN, names::TAG_UPSTREAM => label.clone()).set(0.0);
        Self {
            addr,
            label,
            health: Mutex::new(Health {
                consecutive_failures: 0,
                down: false,
                probe_due: Instant::now(),
                probing: false,
                last_rtt: None,
            }),
            queries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            sockets: Mutex::new(Vec::new()),
        }
    }

    /// An idle pooled socket that is still young enough, if any.
    fn checkout_socket(&self, now: Instant) -> Option<PooledSocket> {
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(socket) = sockets.pop() {
            if socket.reusable(now) {
                return Some(socket);
            }
        }
        None
    }

    /// Returns a socket whose query got its answer, unless it is worn out or the pool
    /// is full (then it is closed).
    fn checkin_socket(&self, socket: PooledSocket) {
        if !socket.reusable(Instant::now()) {
            return;
        }
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        if sockets.len() < SOCKET_POOL_IDLE {
            sockets.push(socket);
        }
    }

    /// Number of idle pooled sockets (for tests).
    #[cfg(test)]
    fn idle_sockets(&self) -> usize {
        self.sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the upstream is currently considered up.
    pub(crate) fn is_up(&self) -> bool {
        !self.health().down
    }

    /// Takes the probe slot of a down upstream when it is due.
    fn claim_probe(&self, now: Instant) -> bool {
        let mut health = self.health();
        if health.down && !health.probing && now >= health.probe_due {
            health.probing = true;
            true
        } else {
            false
        }
    }

    /// Frees the probe slot; the next probe is due one interval later.
    fn release_probe(&self, policy: HealthPolicy) {
        let mut health = self.health();
        health.probing = false;
        health.probe_due = Instant::now() + policy.probe_interval;
    }

    /// A matching reply arrived: the upstream is reachable.
    fn reachable(&self, rtt: Duration) {
        let mut health = self.health();
        health.consecutive_failures = 0;
        health.last_rtt = Some(rtt);
        if health.down {
            health.down = false;
            drop(health);
            gauge!(names::UPSTREAM_DOWN, names::TAG_UPSTREAM => self.label.clone()).set(0.0);
            info!(upstream = %self.addr, "Upstream up");
        }
    }

    /// No usable reply: counts towards marking it down.
    fn unreachable(&self, policy: HealthPolicy) {
        let mut health = self.health();
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        if !health.down && health.consecutive_failures >= policy.max_fails {
            health.down = true;
            health.probe_due = Instant::now() + policy.probe_interval;
            let consecutive_failures = health.consecutive_failures;
            drop(health);
            gauge!(names::UPSTREAM_DOWN, names::TAG_UPSTREAM => self.label.clone()).set(1.0);
            warn!(upstream = %self.addr, consecutive_failures, "Upstream down");
        }
    }

    /// Health and counters, for `Forwarder::upstream_stats`.
    pub(crate) fn stats(&self) -> UpstreamStats {
        let health = self.health();
        UpstreamStats {
            addr: self.addr,
            up: !health.down,
            queries: self.queries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            consecutive_failures: health.consecutive_failures,
            last_rtt: health.last_rtt,
        }
    }

    fn record(&self, outcome: &'static str, started: Instant) {
        counter!(
            names::UPSTREAM_QUERIES,
            names::TAG_UPSTREAM => self.label.clone(),
            names::TAG_OUTCOME => outcome
        )
        .increment(1);
        histogram!(names::UPSTREAM_DURATION_SECONDS, names::TAG_UPSTREAM => self.label.clone())
            .record(started.elapsed().as_secs_f64());
    }

    fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        counter!(names::UPSTREAM_FAILURES, names::TAG_UPSTREAM => self.label.clone()).increment(1);
    }
}

/// A UDP socket on a random port, connected to one upstream, with its receive buffer.
#[derive(Debug)]
struct PooledSocket {
    socket: UdpSocket,
    /// Room for the EDNS payload the queries sent on it advertised (see `exchange`).
    buffer: Vec<u8>,
    opened: Instant,
    uses: u32,
}

impl PooledSocket {
    /// Binds a socket to a port the kernel picks at random and connects it to `upstream`.
    async fn open(upstream: SocketAddr) -> std::io::Result<Self> {
        let bind: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(upstream).await?;
        Ok(Self {
            socket,
            buffer: Vec::new(),
            opened: Instant::now(),
            uses: 0,
        })
    }

    /// Discards every datagram already queued (arrived while the socket was idle);
    /// returns how many.
    fn drain(&mut self) -> std::io::Result<usize> {
        let mut drained = 0;
        loop {
            // A datagram longer than the buffer is discarded whole all the same.
            match self.socket.try_recv(&mut self.buffer) {
                Ok(_) => drained += 1,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(drained);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Whether it may serve another query.
    fn reusable(&self, now: Instant) -> bool {
        self.uses < SOCKET_MAX_USES && now.saturating_duration_since(self.opened) < SOCKET_MAX_AGE
    }
}

/// What the question sent upstream looks like.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) query: &'a Query,
    pub(crate) dnssec_ok: bool,
    pub(crate) udp_payload: u16,
    /// Where TCP answers are charged before they are read (`None`: diagnostics).
    pub(crate) budget: Option<&'a Arc<Budget>>,
}

/// How one upstream set is asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) strategy: Strategy,
    pub(crate) tcp_only: bool,
    pub(crate) attempt_timeout: Duration,
    pub(crate) deadline: Instant,
    pub(crate) health: HealthPolicy,
}

/// Why one exchange with one upstream (or with [`exchange_once`]'s server) failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// Nothing that answers the query arrived in time.
    #[error("no matching answer before the timeout")]
    Timeout,
    /// A socket call failed (e.g. connection refused).
    #[error("socket error")]
    Io(#[from] std::io::Error),
    /// The query could not be encoded.
    #[error("cannot encode the query")]
    Encode(#[from] hickory_proto::ProtoError),
    /// The TCP reply was cut short, undecodable or for another query.
    #[error("unusable TCP reply: {0}")]
    BadTcpReply(&'static str),
    /// An upstream answered with an rcode other than NOERROR or NXDOMAIN.
    #[error("answered {0}")]
    Rcode(ResponseCode),
    /// The TCP answer did not fit the in-flight byte budget; it was not read.
    #[error("a {0}-byte answer over the in-flight byte budget")]
    OverBudget(usize),
}

impl AttemptError {
    fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => names::OUTCOME_TIMEOUT,
            Self::Rcode(_) => names::OUTCOME_SERVFAIL,
            Self::Io(_) | Self::Encode(_) | Self::BadTcpReply(_) => names::OUTCOME_ERROR,
            Self::OverBudget(_) => names::OUTCOME_OVER_BUDGET,
        }
    }

    /// The message with its source chain, for `Error::AllFailed`.
    fn describe(&self) -> String {
        match self {
            Self::Io(error) => format!("{self}: {error}"),
            Self::Encode(error) => format!("{self}: {error}"),
            _ => self.to_string(),
        }
    }
}

/// The order to ask one upstream set in.
struct Tiers {
    /// Healthy upstreams (configured order); every upstream when all are down.
    first: Vec<Arc<Upstream>>,
    /// Down upstreams, tried only when the first tier failed.
    second: Vec<Arc<Upstream>>,
    /// Down upstreams whose probe slot was taken (only when some are up).
    probes: Vec<Arc<Upstream>>,
}

/// Splits a set: healthy first, then down ones. When every upstream is down they are
/// all asked anyway, in order (never give up without trying).
fn tiers(upstreams: &[Arc<Upstream>]) -> Tiers {
    let (up, down): (Vec<_>, Vec<_>) = upstreams.iter().cloned().partition(|u| u.is_up());
    if up.is_empty() {
        return Tiers {
            first: down,
            second: Vec::new(),
            probes: Vec::new(),
        };
    }
    let now = Instant::now();
    let probes = down
        .iter()
        .filter(|u| u.claim_probe(now))
        .cloned()
        .collect();
    Tiers {
        first: up,
        second: down,
        probes,
    }
}

/// Why no upstream of a set gave a usable answer.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The last attempt's answer did not fit the in-flight byte budget.
    OverBudget,
    /// The last failure, described.
    Upstreams(String),
}

/// Asks `upstreams` per `plan` until one answers NOERROR or NXDOMAIN.
///
/// Returns the response and who answered, or why not. Due probes of down upstreams are
/// spawned as background tasks with a copy of the question.
pub(crate) async fn query(
    upstreams: &[Arc<Upstream>],
    request: Request<'_>,
    plan: Plan,
) -> Result<(Response, SocketAddr), Failed> {
    let Tiers {
        first,
        second,
        probes,
    } = tiers(upstreams);
    for upstream in probes {
        spawn_probe(upstream, request, plan);
    }
    let mut last = Last {
        text: String::from("no upstream tried"),
        over_budget: false,
    };
    for tier in [first, second] {
        if tier.is_empty() {
            continue;
        }
        let result = match plan.strategy {
            Strategy::Sequential => in_order(&tier, request, plan, &mut last).await,
            Strategy::Race => race(&tier, request, plan, &mut last).await,
        };
        if let Some(answered) = result {
            return Ok(answered);
        }
    }
    Err(if last.over_budget {
        Failed::OverBudget
    } else {
        Failed::Upstreams(last.text)
    })
}

/// The last failure of a [`query`].
struct Last {
    text: String,
    over_budget: bool,
}

impl Last {
    fn deadline(&mut self) {
        self.text = format!("deadline exceeded ({})", self.text);
        self.over_budget = false;
    }

    fn attempt(&mut self, upstream: SocketAddr, error: &AttemptError) {
        trace!(upstream = %upstream, error = %error.describe(), "Upstream attempt failed");
        self.text = format!("{upstream}: {}", error.describe());
        self.over_budget = matches!(error, AttemptError::OverBudget(_));
    }
}

/// One real query copied to a down upstream; only its health is updated.
fn spawn_probe(upstream: Arc<Upstream>, request: Request<'_>, plan: Plan) {
    let query = request.query.clone();
    let (dnssec_ok, udp_payload) = (request.dnssec_ok, request.udp_payload);
    let budget = request.budget.cloned();
    tokio::spawn(async move {
        trace!(upstream = %upstream.addr, "Probing down upstream");
        let request = Request {
            query: &query,
            dnssec_ok,
            udp_payload,
            budget: budget.as_ref(),
        };
        let probe_plan = Plan {
            deadline: Instant::now() + plan.attempt_timeout,
            ..plan
        };
        let _ = exchange(&upstream, request, probe_plan).await;
        upstream.release_probe(plan.health);
    });
}

async fn in_order(
    tier: &[Arc<Upstream>],
    request: Request<'_>,
    plan: Plan,
    last: &mut Last,
) -> Option<(Response, SocketAddr)> {
    for upstream in tier {
        if Instant::now() >= plan.deadline {
            last.deadline();
            return None;
        }
        match exchange(upstream, request, plan).await {
            Ok(response) => return Some((response, upstream.addr)),
            Err(error) => last.attempt(upstream.addr, &error),
        }
    }
    None
}

/// All of `tier` at once; the first usable answer wins and drops (cancels) the rest.
async fn race(
    tier: &[Arc<Upstream>],
    request: Request<'_>,
    plan: Plan,
    last: &mut Last,
) -> Option<(Response, SocketAddr)> {
    if Instant::now() >= plan.deadline {
        last.deadline();
        return None;
    }
    let mut running: FuturesUnordered<_> = tier
        .iter()
        .map(|upstream| async move { (upstream.addr, exchange(upstream, request, plan).await) })
        .collect();
    while let Some((addr, result)) = running.next().await {
        match result {
            Ok(response) => return Some((response, addr)),
            Err(error) => last.attempt(addr, &error),
        }
    }
    None
}

/// One upstream: UDP, then TCP if the UDP answer was truncated (or TCP only). Updates
/// the upstream's health and counters.
async fn exchange(
    upstream: &Upstream,
    request: Request<'_>,
    plan: Plan,
) -> Result<Response, AttemptError> {
    upstream.queries.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let attempt_deadline = (started + plan.attempt_timeout).min(plan.deadline);
    let message = if plan.tcp_only {
        exchange_tcp(upstream.addr, request, attempt_deadline).await
    } else {
        match exchange_udp(upstream, request, attempt_deadline).await {
            Ok(message) if message.metadata.truncation => {
                upstream.record(names::OUTCOME_TRUNCATED_RETRY, started);
                let started = Instant::now();
                let attempt_deadline = (started + plan.attempt_timeout).min(plan.deadline);
                let result = exchange_tcp(upstream.addr, request, attempt_deadline).await;
                return finish(upstream, result, started, plan.health);
            }
            other => other,
        }
    };
    finish(upstream, message, started, plan.health)
}

/// Classifies a received message, records the outcome and health, and converts it.
fn finish(
    upstream: &Upstream,
    message: Result<Message, AttemptError>,
    started: Instant,
    health: HealthPolicy,
) -> Result<Response, AttemptError> {
    match &message {
        Ok(_) => upstream.reachable(started.elapsed()),
        // Our own limit, not the upstream's failure.
        Err(AttemptError::OverBudget(_)) => {}
        Err(_) => upstream.unreachable(health),
    }
    let result = message.and_then(|message| match message.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(Response {
            response_code: message.metadata.response_code,
            authentic_data: message.metadata.authentic_data,
            answers: message.answers,
            authorities: message.authorities,
            additionals: message.additionals,
        }),
        code => Err(AttemptError::Rcode(code)),
    });
    let outcome = match &result {
        Ok(_) => names::OUTCOME_OK,
        Err(error @ AttemptError::OverBudget(_)) => error.outcome(),
        Err(error) => {
            upstream.record_failure();
            error.outcome()
        }
    };
    upstream.record(outcome, started);
    result
}

/// Builds the wire query with a fresh random ID; returns the ID and the bytes.
fn encode_query(request: Request<'_>) -> Result<(u16, Vec<u8>), AttemptError> {
    let id: u16 = rand::random();
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(request.query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(request.udp_payload);
    edns.set_dnssec_ok(request.dnssec_ok);
    message.set_edns(edns);
    Ok((id, message.to_vec()?))
}

/// Whether `message` is the answer to our query `id` for `query` (name case-insensitive).
fn matches(message: &Message, id: u16, query: &Query) -> bool {
    message.metadata.id == id
        && message.metadata.message_type == MessageType::Response
        && message.queries.len() == 1
        && message.queries[0].query_type() == query.query_type()
        && message.queries[0].query_class() == query.query_class()
        && message.queries[0].name().eq_ignore_root(query.name())
}

/// UDP over a pooled socket (or a fresh one); anything that is not our answer is
/// ignored until the deadline. The socket goes back to the pool only after an answer:
/// on a timeout, an error or cancellation it is closed, so a late reply can never reach
/// another query (which would ignore it anyway: different ID or question).
async fn exchange_udp(
    upstream: &Upstream,
    request: Request<'_>,
    deadline: Instant,
) -> Result<Message, AttemptError> {
    let (id, bytes) = encode_query(request)?;
    let reused = upstream
        .checkout_socket(Instant::now())
        .and_then(|mut pooled| match pooled.drain() {
            Ok(0) => Some(pooled),
            Ok(drained) => {
                trace!(upstream = %upstream.addr, drained, "Discarded datagrams queued on an idle socket");
                Some(pooled)
            }
            // e.g. an ICMP error for an earlier query: start afresh
            Err(_) => None,
        });
    let mut pooled = match reused {
        Some(pooled) => pooled,
        None => PooledSocket::open(upstream.addr).await?,
    };
    let message = pooled
        .exchange(upstream.addr, id, &bytes, request, deadline)
        .await?;
    upstream.checkin_socket(pooled);
    Ok(message)
}

impl PooledSocket {
    /// Sends the encoded `request` (`id`, `bytes`) to `upstream` and waits until
    /// `deadline` for its answer; anything else that arrives is ignored.
    async fn exchange(
        &mut self,
        upstream: SocketAddr,
        id: u16,
        bytes: &[u8],
        request: Request<'_>,
        deadline: Instant,
    ) -> Result<Message, AttemptError> {
        let query = request.query;
        // Room for the payload this query advertised: a longer datagram breaks RFC 6891,
        // arrives cut short and is ignored as undecodable. Not the largest payload we could
        // ever advertise (4 KiB): a burst of misses holds a socket per query in flight, and
        // 1,024 of them at 4 KiB each were 4 MiB of resident memory (benches/README.md
        // "Memory"). Allocated once per socket, again only if the payload grows (reload).
        // A longer one (RFC 6891 forbids it, some servers do it) is seen by its length
        // (`MSG_TRUNC`) and taken as truncated, so TCP brings it whole.
        let payload = usize::from(request.udp_payload);
        if self.buffer.len() < payload {
            self.buffer.resize(payload, 0);
        }
        self.uses += 1;
        self.socket.send(bytes).await?;
        let fd = self.socket.as_raw_fd();
        loop {
            let buffer = &mut self.buffer;
            let received = timeout_at(
                deadline,
                // ERROR too, as tokio's own `recv` does: an ICMP port unreachable for
                // our query shows only as an error on the socket (ECONNREFUSED).
                self.socket
                    .async_io(Interest::READABLE | Interest::ERROR, || {
                        recv(fd, buffer, MsgFlags::MSG_TRUNC).map_err(std::io::Error::from)
                    }),
            )
            .await
            .map_err(|_| AttemptError::Timeout)??;
            if received > self.buffer.len() {
                if self.buffer[..2] == id.to_be_bytes() {
                    trace!(upstream = %upstream, received, offered = payload, "UDP reply longer than the payload offered: taken as truncated");
                    return Ok(truncated(id, query));
                }
                continue;
            }
            match Message::from_vec(&self.buffer[..received]) {
                Ok(message) if matches(&message, id, query) => return Ok(message),
                Ok(message) => {
                    trace!(upstream = %upstream, expected_id = id, id = message.metadata.id, "Ignoring mismatched UDP reply");
                }
                Err(error) => {
                    trace!(upstream = %upstream, error = %error, "Ignoring undecodable UDP reply");
                }
            }
        }
    }
}

/// An empty answer with TC set, standing for one that arrived cut short.
fn truncated(id: u16, query: &Query) -> Message {
    let mut message = Message::new(id, MessageType::Response, OpCode::Query);
    message.metadata.truncation = true;
    message.add_query(query.clone());
    message
}

/// The EDNS payload [`exchange_once`] offers (the DNS Flag Day 2020 default).
const EXCHANGE_ONCE_UDP_PAYLOAD: u16 = 1232;

/// The reply [`exchange_once`] got.
#[derive(Debug, Clone)]
pub struct Exchanged {
    /// The reply, whatever its rcode.
    pub reply: Message,
    /// Whether it came over TCP (the UDP answer was truncated).
    pub over_tcp: bool,
}

/// One question (RD, EDNS) to `server` outside any upstream set, for
/// diagnostics (`dnsfront explain` and `check`): UDP on a fresh socket, then
/// TCP when the answer is truncated, all within `timeout`. Nothing is pooled,
/// counted or marked down; the answer must match the ID and the question.
pub async fn exchange_once(
    server: SocketAddr,
    query: &Query,
    timeout: Duration,
) -> Result<Exchanged, AttemptError> {
    let deadline = Instant::now() + timeout;
    let request = Request {
        query,
        dnssec_ok: false,
        udp_payload: EXCHANGE_ONCE_UDP_PAYLOAD,
        budget: None,
    };
    let (id, bytes) = encode_query(request)?;
    let mut socket = PooledSocket::open(server).await?;
    let reply = socket
        .exchange(server, id, &bytes, request, deadline)
        .await?;
    if !reply.metadata.truncation {
        return Ok(Exchanged {
            reply,
            over_tcp: false,
        });
    }
    let reply = exchange_tcp(server, request, deadline).await?;
    Ok(Exchanged {
        reply,
        over_tcp: true,
    })
}

/// TCP with the 2-byte length prefix (RFC 1035 §4.2.2), one query per connection.
async fn exchange_tcp(
    upstream: SocketAddr,
    request: Request<'_>,
    deadline: Instant,
) -> Result<Message, AttemptError> {
    let (id, bytes) = encode_query(request)?;
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let length =
            u16::try_from(bytes.len()).map_err(|_| AttemptError::BadTcpReply("query too large"))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
        let length = usize::from(stream.read_u16().await?);
        // Charged before the buffer exists, given back once the answer is decoded.
        let _charge = match request.budget {
            Some(budget) => Some(
                budget
                    .charge(length)
                    .ok_or(AttemptError::OverBudget(length))?,
            ),
            None => None,
        };
        let mut buffer = vec![0_u8; length];
        stream.read_exact(&mut buffer).await?;
        let message = Message::from_vec(&buffer)
            .map_err(|_| AttemptError::BadTcpReply("undecodable message"))?;
        drop(buffer);
        if matches(&message, id, request.query) {
            Ok(message)
        } else {
            Err(AttemptError::BadTcpReply("reply does not match the query"))
        }
    };
    timeout_at(deadline, exchange)
        .await
        .map_err(|_| AttemptError::Timeout)?
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use tokio::sync::mpsc;

    use super::*;

    fn question(name: &str) -> Query {
        Query::query(Name::from_str(name).expect("test name"), RecordType::A)
    }

    fn plan(attempt_timeout: Duration) -> Plan {
        Plan {
            strategy: Strategy::Sequential,
            tcp_only: false,
            attempt_timeout,
            deadline: Instant::now() + attempt_timeout,
            health: HealthPolicy {
                max_fails: 3,
                probe_interval: Duration::from_secs(1),
            },
        }
    }

    /// A reply to `query` with `id` and one A record 192.0.2.`last`.
    fn reply(query: &Message, id: u16, last: u8) -> Vec<u8> {
        let mut message = Message::new(id, MessageType::Response, OpCode::Query);
        let question = query.queries[0].clone();
        let record = Record::from_rdata(
            question.name().clone(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
        );
        message.add_query(question);
        message.add_answer(record);
        message.to_vec().expect("encodes")
    }

    fn address(response: &Response) -> String {
        response.answers[0].data.to_string()
    }

    /// A UDP upstream on 127.0.0.1 that reports each query's source port and answers
    /// per `answer(query, from_port)`: (socket to send from: 0 = itself, 1 = another
    /// port, id override, last octet), in order.
    async fn upstream<F>(answer: F) -> (Arc<Upstream>, mpsc::UnboundedReceiver<u16>)
    where
        F: Fn(&Message) -> Vec<(u8, Option<u16>, u8)> + Send + 'static,
    {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let other = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let (ports, port_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buffer = vec![0_u8; usize::from(u16::MAX)];
            while let Ok((length, client)) = server.recv_from(&mut buffer).await {
                let query = Message::from_vec(&buffer[..length]).expect("query");
                let _ = ports.send(client.port());
                for (from, id, last) in answer(&query) {
                    let bytes = reply(&query, id.unwrap_or(query.metadata.id), last);
                    let socket = if from == 0 { &server } else { &other };
                    socket.send_to(&bytes, client).await.expect("send");
                }
            }
        });
        (Arc::new(Upstream::new(addr)), port_rx)
    }

    fn request(query: &Query) -> Request<'_> {
        Request {
            query,
            dnssec_ok: false,
            udp_payload: 1232,
            budget: None,
        }
    }

    #[tokio::test]
    async fn exchange_once_ignores_other_sources_and_ids() {
        let (upstream, mut ports) = upstream(|query| {
            let wrong_id = query.metadata.id.wrapping_add(1);
            vec![(1, None, 66), (0, Some(wrong_id), 77), (0, None, 1)]
        })
        .await;
        let query = question("www.example.");
        let exchanged = exchange_once(upstream.addr, &query, Duration::from_secs(2))
            .await
            .expect("answer");
        assert!(!exchanged.over_tcp);
        assert_eq!(exchanged.reply.answers[0].data.to_string(), "192.0.2.1");
        assert!(ports.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_pooled_socket_ignores_other_sources_and_ids_and_is_reused() {
        // First a forged answer from another port (right ID and question), then one
        // with the wrong ID, then the real one.
        let (upstream, mut ports) = upstream(|query| {
            let wrong_id = query.metadata.id.wrapping_add(1);
            vec![(1, None, 66), (0, Some(wrong_id), 77), (0, None, 1)]
        })
        .await;
        let query = question("www.example.");
        for _ in 0..3 {
            let response = exchange(&upstream, request(&query), plan(Duration::from_secs(2)))
                .await
                .expect("answer");
            assert_eq!(address(&response), "192.0.2.1");
        }
        let used: Vec<u16> = (0..3).map(|_| ports.try_recv().expect("port")).collect();
        assert!(used.iter().all(|&port| port == used[0]), "{used:?}");
        assert_eq!(upstream.idle_sockets(), 1);
    }

    #[tokio::test]
    async fn pooled_sockets_change_port_after_max_uses_and_after_a_timeout() {
        let (upstream, mut ports) = upstream(|query| {
            if query.queries[0].name().to_ascii().starts_with("drop") {
                Vec::new()
            } else {
                vec![(0, None, 1)]
            }
        })
        .await;
        let query = question("www.example.");
        for _ in 0..=SOCKET_MAX_USES {
            exchange(&upstream, request(&query), plan(Duration::from_secs(2)))
                .await
                .expect("answer");
        }
        let used: Vec<u16> = (0..=SOCKET_MAX_USES)
            .map(|_| ports.try_recv().expect("port"))
            .collect();
        let first = used[0];
        assert!(
            used[..usize::try_from(SOCKET_MAX_USES).expect("small")]
                .iter()
                .all(|&port| port == first)
        );
        let second = used[used.len() - 1];
        assert_ne!(second, first, "a worn-out socket is replaced");

        // A timed-out query closes its socket: no late reply can reach the next query.
        let dropped = question("drop.example.");
        let error = exchange(
            &upstream,
            request(&dropped),
            plan(Duration::from_millis(100)),
        )
        .await
        .expect_err("no answer");
        assert!(matches!(error, AttemptError::Timeout), "{error}");
        assert_eq!(upstream.idle_sockets(), 0);
        exchange(&upstream, request(&query), plan(Duration::from_secs(2)))
            .await
            .expect("answer");
        assert_eq!(ports.try_recv().expect("port"), second);
        let fresh = ports.try_recv().expect("port");
        assert_ne!(fresh, second, "the timed-out socket was not reused");
    }

    #[tokio::test]
    async fn datagrams_queued_on_an_idle_socket_are_discarded() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut pooled = PooledSocket::open(server.local_addr().expect("addr"))
            .await
            .expect("open");
        let client = pooled.socket.local_addr().expect("addr");
        for _ in 0..3 {
            server.send_to(b"forged", client).await.expect("send");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pooled.drain().expect("drain"), 3);
        assert_eq!(pooled.drain().expect("drain"), 0);
    }

    /// The receive buffer follows the payload each query advertises: a 3,000-byte
    /// answer to a query offering 4,096 arrives whole on a socket first used with 1,232.
    #[tokio::test]
    async fn a_pooled_socket_receives_answers_as_large_as_the_payload_offered() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buffer = vec![0_u8; usize::from(u16::MAX)];
            while let Ok((length, client)) = server.recv_from(&mut buffer).await {
                let query = Message::from_vec(&buffer[..length]).expect("query");
                let mut message =
                    Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                let question = query.queries[0].clone();
                let answers = if question.name().to_ascii().starts_with("big") {
                    180
                } else {
                    1
                };
                for n in 0..answers {
                    message.add_answer(Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, n))),
                    ));
                }
                message.add_query(question);
                let bytes = message.to_vec().expect("encodes");
                server.send_to(&bytes, client).await.expect("send");
            }
        });
        let mut pooled = PooledSocket::open(addr).await.expect("open");
        let deadline = || Instant::now() + Duration::from_secs(5);
        let small = question("small.example.");
        let (id, bytes) = encode_query(request(&small)).expect("encodes");
        let reply = pooled
            .exchange(addr, id, &bytes, request(&small), deadline())
            .await
            .expect("answer");
        assert_eq!(reply.answers.len(), 1);
        // No 4 KiB buffer for a socket whose queries offer 1,232 bytes.
        assert!(pooled.buffer.len() < 2048, "{}", pooled.buffer.len());
        let big = question("big.example.");
        let offer = Request {
            udp_payload: 4096,
            ..request(&big)
        };
        let (id, bytes) = encode_query(offer).expect("encodes");
        let reply = pooled
            .exchange(addr, id, &bytes, offer, deadline())
            .await
            .expect("answer");
        assert_eq!(
            reply.answers.len(),
            180,
            "the whole answer (about 3,000 bytes)"
        );
        // The same answer to a query offering 1,232 bytes (on a new socket) breaks RFC 6891:
        // it is taken as truncated (the caller retries over TCP), not read cut short.
        let mut fresh = PooledSocket::open(addr).await.expect("open");
        let (id, bytes) = encode_query(request(&big)).expect("encodes");
        let reply = fresh
            .exchange(addr, id, &bytes, request(&big), deadline())
            .await
            .expect("answer");
        assert!(reply.metadata.truncation);
        assert!(reply.answers.is_empty());
    }

    #[tokio::test]
    async fn old_sockets_are_not_reused() {
        let socket = PooledSocket::open("127.0.0.1:53".parse().expect("addr"))
            .await
            .expect("open");
        let now = Instant::now();
        assert!(socket.reusable(now));
        assert!(!socket.reusable(now + SOCKET_MAX_AGE));
    }
}
