//! The per-client rate limit (`dns.rate_limit`, issue 13 §6) through real
//! sockets: a burst from a non-loopback source is cut to about the limit,
//! while the same burst from loopback to the same listener is answered in full.
//!
//! The non-loopback source is this host's own address (the one its route
//! to a documentation address uses, as for eth0), so no address has to be
//! added and no privilege is needed; the packets stay on the host, but the
//! source is not loopback, which is all the limit looks at. On a host with
//! no such address of a family, that family is skipped, saying so.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, strict_parse};
use tokio::net::UdpSocket;

use crate::harness::Harness;

/// Queries a second allowed per client network (and the burst): low, so that
/// however slowly a loaded machine answers the burst, what refills meanwhile
/// stays far below it.
const LIMIT: u32 = 2;
/// Queries sent at once.
const BURST: usize = 60;

/// This host's non-loopback source address toward `probe` (no packet is sent).
fn own_address(probe: &str) -> Option<IpAddr> {
    let probe: SocketAddr = probe.parse().expect("probe address");
    let bind: SocketAddr = match probe {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("bind"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("bind"),
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(probe).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    // A link-local address needs a scope to bind to; skip it like no address.
    let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
    (!ip.is_loopback() && !ip.is_unspecified() && !link_local).then_some(ip)
}

/// Sends `BURST` queries at once from `source` to `server`; the number of
/// NOERROR answers that arrive before the line goes quiet for a second.
async fn burst(source: IpAddr, server: SocketAddr) -> usize {
    let socket = UdpSocket::bind(SocketAddr::new(source, 0))
        .await
        .expect("bind the client");
    for n in 0..BURST {
        let mut query = Ask::new("web.service.consul.", RecordType::A).to_bytes();
        query[..2].copy_from_slice(&u16::try_from(n).expect("id").to_be_bytes());
        socket.send_to(&query, server).await.expect("send");
    }
    let mut answered = 0;
    let mut buffer = vec![0_u8; 4_096];
    while let Ok(Ok(length)) =
        tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buffer)).await
    {
        let reply = strict_parse(&buffer[..length]).expect("a well-formed answer");
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        answered += 1;
    }
    answered
}

async fn limited_from(source: IpAddr, loopback: IpAddr, prefix: u8) {
    let harness = Harness::start_with(crate::harness::standard_sim(), |raw| {
        raw.dns.listen = vec![SocketAddr::new(source, 0).to_string()];
        raw.dns.allowed_networks = vec![
            format!("{source}/{prefix}"),
            "127.0.0.0/8".to_owned(),
            "::1/128".to_owned(),
        ];
        raw.dns.rate_limit = LIMIT;
    })
    .await;
    // Loopback first: never limited, so the whole burst is answered (and the
    // name is in the fast path's cache for what follows).
    assert_eq!(
        burst(loopback, harness.dns).await,
        BURST,
        "from {loopback}: loopback clients are never limited"
    );
    let answered = burst(source, harness.dns).await;
    // One second's worth (the burst), and what came back while the burst was
    // being answered; far from all of it.
    assert!(
        (1..=BURST / 2).contains(&answered),
        "from {source}: {answered} of {BURST} answered under a limit of {LIMIT}/s"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_a_non_loopback_ipv4_client_is_limited_and_loopback_is_not() {
    let Some(source) = own_address("203.0.113.1:53").filter(IpAddr::is_ipv4) else {
        eprintln!("SKIPPED: this host has no non-loopback IPv4 address to send from");
        return;
    };
    limited_from(source, "127.0.0.1".parse().expect("ip"), 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_a_non_loopback_ipv6_client_is_limited_and_loopback_is_not() {
    let Some(source) = own_address("[2001:db8::1]:53").filter(IpAddr::is_ipv6) else {
        eprintln!("SKIPPED: this host has no non-loopback IPv6 address to send from");
        return;
    };
    limited_from(source, "::1".parse().expect("ip"), 128).await;
}
