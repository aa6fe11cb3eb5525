//! Helpers for dnsfront's tests and benches: a small DNS client over real UDP
//! and TCP sockets, a fake upstream DNS server, a metrics recorder, and a
//! `dig` runner. Dev-dependency only.

mod authoritative;
mod dnsmasq;
mod recorder;
mod tls;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub use authoritative::{BIG_RRSET_LEN, Nsd, OTHER_ZONE, SOA_MINIMUM, ZONE, other_zone, test_zone};
pub use dnsmasq::Dnsmasq;
pub use recorder::{DebuggingRecorder, Recorded, capture_metrics};
pub use tls::{CertPair, TestCa, install_crypto_provider};
pub use upstream::{
    FakeUpstream, Knobs, Reply, a_records, closed_port, name_of, negative, positive,
};

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

/// Decodes a DNS message as a strict client does: every byte is consumed
/// (no trailing data after the last counted record) and the header's counts
/// equal the records decoded (the OPT counts in ARCOUNT). hickory's own
/// `Message::from_vec` ignores trailing bytes, which kdig and dnspython reject.
pub fn strict_parse(bytes: &[u8]) -> Result<Message, String> {
    let header = Header::read(&mut BinDecoder::new(bytes))
        .map_err(|error| format!("header does not decode: {error}"))?;
    let mut decoder = BinDecoder::new(bytes);
    let message =
        Message::read(&mut decoder).map_err(|error| format!("message does not decode: {error}"))?;
    if !decoder.is_empty() {
        return Err(format!(
            "{} bytes of trailing data after the last counted record ({} bytes, counts {:?})",
            decoder.len(),
            bytes.len(),
            header.counts
        ));
    }
    let counts = header.counts;
    let decoded = (
        message.queries.len(),
        message.answers.len(),
        message.authorities.len(),
        message.additionals.len()
            + usize::from(message.edns.is_some())
            + usize::from(message.signature.is_some()),
    );
    let counted = (
        usize::from(counts.queries),
        usize::from(counts.answers),
        usize::from(counts.authorities),
        usize::from(counts.additionals),
    );
    if decoded != counted {
        return Err(format!(
            "header counts {counted:?} but {decoded:?} records decoded"
        ));
    }
    Ok(message)
}

/// Sends `ask` over UDP and returns the strictly parsed answer ([`strict_parse`])
/// and its size in bytes.
pub async fn udp(server: SocketAddr, ask: &Ask) -> (Message, usize) {
    let query = ask.to_bytes();
    let bytes = udp_raw(server, &query)
        .await
        .unwrap_or_else(|| panic!("no UDP answer from {server} for {ask:?}"));
    let message = strict_parse(&bytes)
        .unwrap_or_else(|error| panic!("malformed UDP answer for {ask:?}: {error}"));
    assert_eq!(
        message.metadata.id,
        query_id(&query),
        "reply ID must match the query's"
    );
    (message, bytes.len())
}

/// `ask` as plain UDP and with each EDNS buffer size the size-limit tests
/// sweep, paired with the most a reply may then carry with dnsfront's default
/// `dns.max_udp_payload` (1232).
pub fn udp_size_variants(ask: &Ask) -> [(Ask, usize); 5] {
    [
        (ask.clone(), 512),
        (ask.clone().edns(512), 512),
        (ask.clone().edns(1232), 1232),
        (ask.clone().edns(4096), 1232),
        (ask.clone().edns(8192), 1232),
    ]
}

/// The resident set of process `pid`, in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// Sends `ask` over TCP and returns the strictly parsed answer ([`strict_parse`]).
pub async fn tcp(server: SocketAddr, ask: &Ask) -> Message {
    tcp_sized(server, ask).await.0
}

/// [`tcp`], also returning the answer's size in bytes.
pub async fn tcp_sized(server: SocketAddr, ask: &Ask) -> (Message, usize) {
    let query = ask.to_bytes();
    let bytes = tcp_raw(server, &query)
        .await
        .unwrap_or_else(|error| panic!("TCP query to {server} for {ask:?} failed: {error}"));
    let message = strict_parse(&bytes)
        .unwrap_or_else(|error| panic!("malformed TCP answer for {ask:?}: {error}"));
    assert_eq!(
        message.metadata.id,
        query_id(&query),
        "reply ID must match the query's"
    );
    (message, bytes.len())
}

fn query_id(wire: &[u8]) -> u16 {
    u16::from_be_bytes([wire[0], wire[1]])
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

/// Runs `kdig` (Knot DNS's client, strict about the wire format) with these
/// arguments and returns its stdout. Fails when kdig reports a malformed
/// reply (it prints a warning and carries on otherwise). Panics with an
/// install hint when kdig is missing: tests never skip silently.
pub fn kdig(args: &[&str]) -> String {
    let output = Command::new("kdig")
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run kdig ({error}): install Debian's knot-dnsutils (tests/run does)")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kdig {args:?} failed: {stderr}{stdout}"
    );
    assert!(
        !stderr.contains("malformed") && !stdout.contains("malformed"),
        "kdig {args:?} found a malformed reply: {stderr}{stdout}"
    );
    stdout
}
