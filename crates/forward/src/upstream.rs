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

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use metrics::{counter, gauge, histogram};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};
use tracing::{info, trace, warn};

use crate::cache::Response;
use crate::config::Strategy;
use crate::metrics as names;

/// Largest DNS message (the TCP length prefix is 16 bits).
const MAX_MESSAGE: usize = u16::MAX as usize;

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
        }
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

/// What the question sent upstream looks like.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) query: &'a Query,
    pub(crate) dnssec_ok: bool,
    pub(crate) udp_payload: u16,
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

/// Why one exchange with one upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("no matching answer before the timeout")]
    Timeout,
    #[error("socket error")]
    Io(#[from] std::io::Error),
    #[error("cannot encode the query")]
    Encode(#[from] hickory_proto::ProtoError),
    #[error("unusable TCP reply: {0}")]
    BadTcpReply(&'static str),
    #[error("answered {0}")]
    Rcode(ResponseCode),
}

impl AttemptError {
    fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => names::OUTCOME_TIMEOUT,
            Self::Rcode(_) => names::OUTCOME_SERVFAIL,
            Self::Io(_) | Self::Encode(_) | Self::BadTcpReply(_) => names::OUTCOME_ERROR,
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

/// Asks `upstreams` per `plan` until one answers NOERROR or NXDOMAIN.
///
/// Returns the response and who answered, or the last failure, described. Due probes of
/// down upstreams are spawned as background tasks with a copy of the question.
pub(crate) async fn query(
    upstreams: &[Arc<Upstream>],
    request: Request<'_>,
    plan: Plan,
) -> Result<(Response, SocketAddr), String> {
    let Tiers {
        first,
        second,
        probes,
    } = tiers(upstreams);
    for upstream in probes {
        spawn_probe(upstream, request, plan);
    }
    let mut last = String::from("no upstream tried");
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
    Err(last)
}

/// One real query copied to a down upstream; only its health is updated.
fn spawn_probe(upstream: Arc<Upstream>, request: Request<'_>, plan: Plan) {
    let query = request.query.clone();
    let (dnssec_ok, udp_payload) = (request.dnssec_ok, request.udp_payload);
    tokio::spawn(async move {
        trace!(upstream = %upstream.addr, "Probing down upstream");
        let request = Request {
            query: &query,
            dnssec_ok,
            udp_payload,
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
    last: &mut String,
) -> Option<(Response, SocketAddr)> {
    for upstream in tier {
        if Instant::now() >= plan.deadline {
            *last = format!("deadline exceeded ({last})");
            return None;
        }
        match exchange(upstream, request, plan).await {
            Ok(response) => return Some((response, upstream.addr)),
            Err(error) => {
                trace!(upstream = %upstream.addr, error = %error.describe(), "Upstream attempt failed");
                *last = format!("{}: {}", upstream.addr, error.describe());
            }
        }
    }
    None
}

/// All of `tier` at once; the first usable answer wins and drops (cancels) the rest.
async fn race(
    tier: &[Arc<Upstream>],
    request: Request<'_>,
    plan: Plan,
    last: &mut String,
) -> Option<(Response, SocketAddr)> {
    if Instant::now() >= plan.deadline {
        *last = format!("deadline exceeded ({last})");
        return None;
    }
    let mut running: FuturesUnordered<_> = tier
        .iter()
        .map(|upstream| async move { (upstream.addr, exchange(upstream, request, plan).await) })
        .collect();
    while let Some((addr, result)) = running.next().await {
        match result {
            Ok(response) => return Some((response, addr)),
            Err(error) => {
                trace!(upstream = %addr, error = %error.describe(), "Upstream attempt failed");
                *last = format!("{addr}: {}", error.describe());
            }
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
        match exchange_udp(upstream.addr, request, attempt_deadline).await {
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

/// UDP from a fresh socket on a random port, connected to the upstream; anything that is
/// not our answer is ignored until the deadline.
async fn exchange_udp(
    upstream: SocketAddr,
    request: Request<'_>,
    deadline: Instant,
) -> Result<Message, AttemptError> {
    let (id, bytes) = encode_query(request)?;
    let bind: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(&bytes).await?;
    let mut buffer = vec![0_u8; MAX_MESSAGE];
    loop {
        let received = timeout_at(deadline, socket.recv(&mut buffer))
            .await
            .map_err(|_| AttemptError::Timeout)??;
        match Message::from_vec(&buffer[..received]) {
            Ok(message) if matches(&message, id, request.query) => return Ok(message),
            Ok(message) => {
                trace!(%upstream, expected_id = id, id = message.metadata.id, "Ignoring mismatched UDP reply");
            }
            Err(error) => {
                trace!(%upstream, error = %error, "Ignoring undecodable UDP reply");
            }
        }
    }
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
        let mut buffer = vec![0_u8; length];
        stream.read_exact(&mut buffer).await?;
        let message = Message::from_vec(&buffer)
            .map_err(|_| AttemptError::BadTcpReply("undecodable message"))?;
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
