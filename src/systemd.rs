//! systemd integration: socket activation (`LISTEN_FDS`), readiness
//! (`Type=notify-reload`), reloading, watchdog pings, stopping.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every notification is a no-op;
//! without `LISTEN_FDS` the server binds its own sockets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use dnsfront_dns as dns;
use sd_notify::NotifyState;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Shortest time between two watchdog pings.
const MIN_PING_PERIOD: Duration = Duration::from_millis(50);
/// Times a probe query is sent within one probe's deadline (UDP may lose one).
const PROBE_ATTEMPTS: u32 = 3;

/// Takes the sockets systemd passed (socket activation: `dnsfront.socket`),
/// each as a UDP socket or a TCP listener, labelled with its fd number and
/// its `FileDescriptorName=` for messages. `None` when none were passed (or
/// they were meant for another process: `LISTEN_PID`).
///
/// Call it before any thread starts: it unsets `LISTEN_FDS` and `LISTEN_PID`
/// (so that a child never takes them) and marks the descriptors close-on-exec.
pub fn take_listen_fds() -> anyhow::Result<Option<dns::Inherited>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|names| names.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut inherited = dns::Inherited::default();
    for index in 0..fds.len() {
        let fd = LISTEN_FDS_START + index;
        let label = match names.get(index).filter(|name| !name.is_empty()) {
            Some(name) => format!("fd {fd} ({name})"),
            None => format!("fd {fd}"),
        };
        // Each take checks the descriptor's type and leaves it in place when
        // it is not that type.
        if let Ok(Some(listener)) = fds.take_tcp_listener(index) {
            inherited.tcp.push((label, listener));
        } else if let Ok(Some(socket)) = fds.take_udp_socket(index) {
            inherited.udp.push((label, socket));
        } else {
            anyhow::bail!(
                "socket activation: {label} is neither a UDP socket nor a listening TCP socket (check the socket unit's ListenDatagram=/ListenStream=)"
            );
        }
    }
    Ok(Some(inherited))
}

/// The first descriptor of socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: usize = 3;

/// Tells systemd the service is ready: sockets bound, snapshot loaded.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload has begun (`RELOADING=1` with `MONOTONIC_USEC`,
/// which `Type=notify-reload` requires to tell this reload from an older
/// one); [`reloaded`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Tells systemd the reload is over (applied or refused: the service serves
/// either way), with what happened as the status line.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Pings the watchdog at half the interval systemd asked for (`WatchdogSec=`)
/// until `shutdown`, each time only after our own DNS listeners (`listen`)
/// answered a [`SelfProbe`]: a dead or wedged UDP socket, or a wedged runtime,
/// stops the pings and systemd restarts the service.
pub fn spawn_watchdog(listen: &[SocketAddr], shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(MIN_PING_PERIOD);
    debug!(?interval, "systemd watchdog enabled");
    tokio::spawn(watchdog(
        SelfProbe::new(listen),
        period,
        || send(&[NotifyState::Watchdog]),
        shutdown,
    ));
}

/// Every `period`: probes, and calls `ping` when every listener answered
/// within the period. Logs when the probe starts and stops failing.
pub(crate) async fn watchdog(
    probe: SelfProbe,
    period: Duration,
    mut ping: impl FnMut(),
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = probe.run(period) => outcome,
        };
        match outcome {
            Ok(()) => {
                if failing {
                    info!("DNS self-probe answered again; watchdog pings resume");
                    failing = false;
                }
                ping();
            }
            Err(error) => {
                if !failing {
                    warn!(error = %error, "DNS self-probe failed; no watchdog ping (systemd restarts the service if this lasts)");
                    failing = true;
                }
            }
        }
    }
}

/// A DNS query to each of our own listen addresses over loopback (an
/// unspecified listen address is reached at the loopback address of its
/// family).
///
/// The query is a header with opcode STATUS (2) and no question: the router
/// answers it NOTIMP itself, so it never reaches Consul, the hosts files, an
/// upstream or any cache, whatever the configuration (a name could be
/// forwarded by a rule or a reloaded domain), and it is not a fast-path hit:
/// it goes through the UDP thread, a general-path task on the runtime, the
/// router and the encoder, as a cache miss does. Each probe counts once in
/// `dns.requests_total` (zone `none`, rcode `NOTIMP` in `dns.responses_total`). Any reply with our ID counts
/// (also REFUSED, when the loopback is outside `dns.allowed_networks`).
pub(crate) struct SelfProbe {
    targets: Vec<SocketAddr>,
}

impl SelfProbe {
    pub(crate) fn new(listen: &[SocketAddr]) -> Self {
        let targets = listen
            .iter()
            .map(|addr| {
                let ip = match addr.ip() {
                    IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ip => ip,
                };
                SocketAddr::new(ip, addr.port())
            })
            .collect();
        Self { targets }
    }

    /// Ok when every target answered within `deadline`.
    pub(crate) async fn run(&self, deadline: Duration) -> io::Result<()> {
        for &target in &self.targets {
            let answered = tokio::time::timeout(deadline, ask(target, deadline / PROBE_ATTEMPTS))
                .await
                .unwrap_or_else(|_| Err(timed_out(target)));
            answered?;
        }
        Ok(())
    }
}

fn timed_out(target: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no DNS reply from {target}"),
    )
}

/// Sends the probe query to `target` from a fresh socket (a new source port,
/// so over time the probes reach every `SO_REUSEPORT` socket), resending it
/// every `resend`, until a reply with its ID comes back.
async fn ask(target: SocketAddr, resend: Duration) -> io::Result<()> {
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected: replies from anyone else are not even delivered.
    socket.connect(target).await?;
    let id = probe_id();
    let query = probe_query(id);
    let mut reply = [0u8; 512];
    for _ in 0..PROBE_ATTEMPTS {
        socket.send(&query).await?;
        let received = tokio::time::timeout(resend, async {
            loop {
                let len = socket.recv(&mut reply).await?;
                if is_reply_to(&reply[..len], id) {
                    return Ok::<(), io::Error>(());
                }
            }
        })
        .await;
        match received {
            Ok(result) => return result,
            Err(_elapsed) => continue,
        }
    }
    Err(timed_out(target))
}

/// A query ID no one can predict (std's per-process random hash keys; the
/// connected socket already keeps strangers' datagrams out).
fn probe_id() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits & 0xffff) as u16
}

/// A bare header: ID, opcode STATUS, RD clear, no records.
fn probe_query(id: u16) -> [u8; 12] {
    let mut query = [0u8; 12];
    query[..2].copy_from_slice(&id.to_be_bytes());
    query[2] = 2 << 3;
    query
}

/// A DNS response (QR set) with `id`.
fn is_reply_to(bytes: &[u8], id: u16) -> bool {
    bytes.len() >= 12 && bytes[..2] == id.to_be_bytes() && bytes[2] & 0x80 != 0
}

fn send(state: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(state) {
        warn!(error = %error, "Cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dnsfront_catalog::{Freshness, Lookup, Node, ServiceInstance};
    use hickory_proto::op::Query;
    use tokio::net::UnixDatagram;

    use super::*;

    /// Knows nothing: the probe must not need anything.
    #[derive(Clone)]
    struct Nothing;

    impl dns::CatalogView for Nothing {
        async fn service(&self, _: &str, _: Option<&str>) -> Lookup<Arc<[ServiceInstance]>> {
            Lookup::Unavailable
        }
        async fn node(&self, _: &str, _: Option<&str>) -> Lookup<Arc<Node>> {
            Lookup::NotFound(Freshness::Fresh)
        }
    }

    impl dns::Upstream for Nothing {
        async fn resolve(
            &self,
            _: &Query,
            _: bool,
        ) -> Result<dnsfront_forward::Answer, dnsfront_forward::Error> {
            Err(dnsfront_forward::Error::AllFailed {
                last: "nothing".to_owned(),
            })
        }
    }

    const PERIOD: Duration = Duration::from_millis(50);

    /// A fake `NOTIFY_SOCKET`, and a watchdog pinging it as `sd_notify` would.
    struct FakeSystemd {
        socket: UnixDatagram,
        shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl FakeSystemd {
        fn watch(listen: &[SocketAddr]) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("notify.sock");
            let socket = UnixDatagram::bind(&path).expect("bind notify socket");
            let sender = std::os::unix::net::UnixDatagram::unbound().expect("sender");
            let shutdown = CancellationToken::new();
            tokio::spawn(watchdog(
                SelfProbe::new(listen),
                PERIOD,
                move || {
                    sender.send_to(b"WATCHDOG=1", &path).expect("notify");
                },
                shutdown.clone(),
            ));
            Self {
                socket,
                shutdown,
                _dir: dir,
            }
        }

        /// Watchdog pings received within `window`.
        async fn pings_within(&self, window: Duration) -> usize {
            let mut buf = [0u8; 64];
            let mut pings = 0;
            let end = tokio::time::Instant::now() + window;
            while let Ok(received) = tokio::time::timeout_at(end, self.socket.recv(&mut buf)).await
            {
                let len = received.expect("recv");
                assert_eq!(&buf[..len], b"WATCHDOG=1");
                pings += 1;
            }
            pings
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pings_while_our_dns_listener_answers_and_stops_when_it_is_gone() {
        let listeners =
            dns::Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
        let addr = listeners.local_addrs()[0];
        // The probe needs neither Consul nor an upstream.
        let router = dns::Router::with_backends(dns::Config::default(), Nothing, Some(Nothing));
        let server = dns::serve(router, listeners, dns::ServerOptions::default()).expect("serve");
        let systemd = FakeSystemd::watch(&[addr]);
        assert!(
            systemd.pings_within(Duration::from_secs(1)).await >= 5,
            "pings every 50 ms while the listener answers"
        );
        server.shutdown().await.expect("shutdown");
        // A probe already answered may still ping once.
        systemd.pings_within(PERIOD * 3).await;
        assert_eq!(systemd.pings_within(Duration::from_millis(500)).await, 0);
        systemd.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wedged_listener_gets_no_pings() {
        // Bound and receiving (the kernel queues the probes), never answering:
        // what a UDP socket whose thread is stuck looks like from outside.
        let wedged = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let systemd = FakeSystemd::watch(&[wedged.local_addr().expect("addr")]);
        assert_eq!(systemd.pings_within(Duration::from_millis(500)).await, 0);
        let mut probe = [0u8; 64];
        let (len, _) = wedged.recv_from(&mut probe).expect("the probe arrived");
        assert_eq!(len, 12, "a bare header");
        assert_eq!(probe[2], 2 << 3, "opcode STATUS");
        systemd.shutdown.cancel();
    }

    #[tokio::test]
    async fn replies_with_another_id_or_no_qr_bit_do_not_count() {
        let listener = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((len, from)) = listener.recv_from(&mut buf).await {
                let mut wrong_id = buf[..len].to_vec();
                wrong_id[0] ^= 0xff;
                wrong_id[2] |= 0x80;
                let mut not_a_reply = buf[..len].to_vec();
                not_a_reply[2] &= 0x7f;
                for reply in [wrong_id, not_a_reply] {
                    let _ = listener.send_to(&reply, from).await;
                }
            }
        });
        let outcome = SelfProbe::new(&[addr])
            .run(Duration::from_millis(300))
            .await;
        assert_eq!(
            outcome.expect_err("no real reply").kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[test]
    fn unspecified_listen_addresses_are_probed_on_the_loopback() {
        let probe = SelfProbe::new(&[
            "0.0.0.0:53".parse().expect("literal"),
            "[::]:5353".parse().expect("literal"),
            "10.1.2.3:53".parse().expect("literal"),
        ]);
        let expected: Vec<SocketAddr> = ["127.0.0.1:53", "[::1]:5353", "10.1.2.3:53"]
            .iter()
            .map(|addr| addr.parse().expect("literal"))
            .collect();
        assert_eq!(probe.targets, expected);
    }
}
