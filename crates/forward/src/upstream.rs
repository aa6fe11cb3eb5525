//! Exchanges with upstream resolvers over tokio sockets: UDP first, TCP when the UDP
//! answer is truncated, upstreams tried in order until one answers.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use metrics::{counter, histogram};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};
use tracing::trace;

use crate::cache::Response;
use crate::metrics as names;

/// Largest DNS message (the TCP length prefix is 16 bits).
const MAX_MESSAGE: usize = u16::MAX as usize;

/// One configured upstream resolver (later: its health and RTT statistics).
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    /// `ip:port`, the metrics tag value.
    label: String,
}

impl Upstream {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            label: addr.to_string(),
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
}

/// What the question sent upstream looks like.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) query: &'a Query,
    pub(crate) dnssec_ok: bool,
    pub(crate) udp_payload: u16,
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

/// Asks `upstreams` in order until one answers NOERROR or NXDOMAIN, each attempt bounded
/// by `attempt_timeout` and everything by `deadline`.
///
/// Returns the last failure, described, when none answers.
pub(crate) async fn query_in_order(
    upstreams: &[Upstream],
    request: Request<'_>,
    attempt_timeout: Duration,
    deadline: Instant,
) -> Result<Response, String> {
    let mut last = String::from("no upstream tried");
    for upstream in upstreams {
        if Instant::now() >= deadline {
            return Err(format!("deadline exceeded ({last})"));
        }
        match exchange(upstream, request, attempt_timeout, deadline).await {
            Ok(response) => return Ok(response),
            Err(error) => {
                trace!(upstream = %upstream.addr, error = %error.describe(), "Upstream attempt failed");
                last = format!("{}: {}", upstream.addr, error.describe());
            }
        }
    }
    Err(last)
}

/// One upstream: UDP, then TCP if the UDP answer was truncated.
async fn exchange(
    upstream: &Upstream,
    request: Request<'_>,
    attempt_timeout: Duration,
    deadline: Instant,
) -> Result<Response, AttemptError> {
    let started = Instant::now();
    let attempt_deadline = (started + attempt_timeout).min(deadline);
    let message = match exchange_udp(upstream.addr, request, attempt_deadline).await {
        Ok(message) if message.metadata.truncation => {
            upstream.record(names::OUTCOME_TRUNCATED_RETRY, started);
            let started = Instant::now();
            let attempt_deadline = (started + attempt_timeout).min(deadline);
            let result = exchange_tcp(upstream.addr, request, attempt_deadline).await;
            return finish(upstream, result, started);
        }
        other => other,
    };
    finish(upstream, message, started)
}

/// Classifies a received message, records the outcome and converts it.
fn finish(
    upstream: &Upstream,
    message: Result<Message, AttemptError>,
    started: Instant,
) -> Result<Response, AttemptError> {
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
        Err(error) => error.outcome(),
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
