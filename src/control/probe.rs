//! One DNS query to a server, summarised for a report: `explain` asks our
//! own listener, `check` the listen addresses and each upstream. The
//! exchange is the forwarder's ([`forward::exchange_once`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::anyhow;
use dnsfront_dns as dns;
use dnsfront_forward as forward;
use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::rdata::opt::EdnsOption;
use hickory_server::proto::rr::{Name, Record, RecordType};
use tokio::time::Instant;

use super::protocol::{DnsAnswer, RecordLine};

/// RFC 8914 Extended DNS Error option code.
const EDE_OPTION_CODE: u16 = 15;

/// Sends one query (EDNS, RD) over UDP, retrying over TCP when the answer is
/// truncated, and summarises the reply. Fails after `timeout`.
pub async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> anyhow::Result<DnsAnswer> {
    let started = Instant::now();
    let question = Query::query(name.clone(), rtype);
    let exchanged = forward::exchange_once(server, &question, timeout)
        .await
        .map_err(|error| match error {
            forward::AttemptError::Timeout => anyhow!(
                "no answer from {server} within {}",
                humantime::format_duration(timeout)
            ),
            other => anyhow::Error::new(other).context(format!("no answer from {server}")),
        })?;
    let rtt = started.elapsed();
    let message = exchanged.reply;
    Ok(DnsAnswer {
        server: server.to_string(),
        transport: if exchanged.over_tcp { "tcp" } else { "udp" }.to_owned(),
        rcode: dns::rcode_name(message.metadata.response_code).into_owned(),
        rtt_ms: (rtt.as_secs_f64() * 1e4).round() / 10.0,
        answers: message.answers.iter().map(record_line).collect(),
        authority: message.authorities.iter().map(record_line).collect(),
        ede: ede_codes(&message),
    })
}

/// Where to query a listener bound to `addr`: loopback (same family and
/// port) when `addr` is a wildcard, else `addr` itself.
pub fn query_target(addr: SocketAddr) -> SocketAddr {
    if !addr.ip().is_unspecified() {
        return addr;
    }
    let ip: IpAddr = if addr.is_ipv4() {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv6Addr::LOCALHOST.into()
    };
    SocketAddr::new(ip, addr.port())
}

/// The Extended DNS Error info codes in the reply's OPT.
fn ede_codes(message: &Message) -> Vec<u16> {
    let Some(edns) = message.edns.as_ref() else {
        return Vec::new();
    };
    edns.options()
        .as_ref()
        .iter()
        .filter_map(|(_, option)| match option {
            EdnsOption::Unknown(EDE_OPTION_CODE, data) if data.len() >= 2 => {
                Some(u16::from_be_bytes([data[0], data[1]]))
            }
            _ => None,
        })
        .collect()
}

fn record_line(record: &Record) -> RecordLine {
    RecordLine {
        name: record.name.to_string(),
        rtype: record.record_type().to_string(),
        ttl: record.ttl,
        data: record.data.to_string(),
    }
}
