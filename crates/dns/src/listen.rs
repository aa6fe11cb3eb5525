//! Binding the UDP/TCP sockets; our UDP loops ([`crate::udp`]) and TCP
//! accept loops ([`crate::tcp`]) over them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use socket2::{Domain, Protocol as SocketProtocol, Socket, Type};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use crate::Error;
use crate::backend::{CatalogView, Upstream};
use crate::router::Router;
use crate::{tcp, udp};

/// How many times `bind` tries a fresh port-0 UDP port when TCP's twin is taken.
const PORT_ZERO_ATTEMPTS: usize = 16;
/// Pending TCP connections the kernel may queue.
const TCP_BACKLOG: i32 = 1024;
/// Receive buffer of every TCP connection (inherited from the listener):
/// queries are small, and a client pipelining faster than we answer must
/// fill a small kernel buffer, not the 128 KiB+ Linux gives by default (it
/// counts in the service's memory).
const TCP_RECEIVE_BUFFER: usize = 16 * 1024;
/// Most UDP sockets bound per listen address by default.
const MAX_DEFAULT_UDP_SOCKETS: usize = 8;
/// Default bound on UDP queries on the general path at once.
const DEFAULT_MAX_IN_FLIGHT: usize = 4096;
/// How long `shutdown` waits for the server tasks before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest pause of the wire cache's sweeper on an idle server: its entries only
/// bound memory and a stored answer wakes it at once, so an idle resolver wakes for
/// it once a minute (benches/README.md "Idle cost").
const IDLE_SWEEP: Duration = Duration::from_secs(60);

/// Bound UDP and TCP sockets, one pair per listen address (same port for both).
#[derive(Debug)]
pub struct Listeners {
    pairs: Vec<(std::net::UdpSocket, std::net::TcpListener)>,
    /// The sockets came from the service manager ([`Listeners::adopt`]): the
    /// extra UDP sockets are duplicates of the inherited one, not
    /// `SO_REUSEPORT` siblings (see [`serve_with`]).
    inherited: bool,
}

/// Sockets handed over by the service manager (systemd socket activation,
/// `LISTEN_FDS`), already typed; each with a label (its fd number and name)
/// for messages.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Datagram sockets.
    pub udp: Vec<(String, std::net::UdpSocket)>,
    /// Listening stream sockets.
    pub tcp: Vec<(String, std::net::TcpListener)>,
}

impl Inherited {
    /// Whether nothing was handed over.
    pub fn is_empty(&self) -> bool {
        self.udp.is_empty() && self.tcp.is_empty()
    }
}

impl Listeners {
    /// Binds UDP + TCP on every address. For port 0, UDP is bound first and TCP
    /// then takes the same port (retrying with a new UDP port if it is taken),
    /// so each address has one port for both protocols. UDP sockets set
    /// `SO_REUSEPORT` so that [`serve_with`] can add more on the same port (a
    /// second instance of the same user would then share UDP, but its TCP bind
    /// fails and it exits).
    pub fn bind(addrs: &[SocketAddr]) -> Result<Self, Error> {
        let mut pairs = Vec::with_capacity(addrs.len());
        for &address in addrs {
            pairs.push(bind_pair(address)?);
        }
        Ok(Self {
            pairs,
            inherited: false,
        })
    }

    /// Takes the sockets the service manager bound (socket activation)
    /// instead of binding: each listen address must have exactly one
    /// inherited UDP socket and one TCP listener bound to it, and every
    /// inherited socket must be bound to a listen address; otherwise the
    /// error names the address or the socket that has no partner (a socket
    /// unit and a config file that disagree are a mistake to report, not to
    /// paper over by binding the rest ourselves).
    pub fn adopt(addrs: &[SocketAddr], inherited: Inherited) -> Result<Self, Error> {
        let listen = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut udp = by_address("UDP", inherited.udp, addrs, &listen, |s| s.local_addr())?;
        let mut tcp = by_address("TCP", inherited.tcp, addrs, &listen, |s| s.local_addr())?;
        let mut pairs = Vec::with_capacity(addrs.len());
        for address in addrs {
            let missing = |protocol: &str| {
                Error::Inherited(format!(
                    "listen address {address}: the service manager passed no {protocol} socket bound to it (add it to the socket unit, or remove it from the listen addresses)"
                ))
            };
            let udp = udp.remove(address).ok_or_else(|| missing("UDP"))?;
            let tcp = tcp.remove(address).ok_or_else(|| missing("TCP"))?;
            pairs.push((udp, tcp));
        }
        Ok(Self {
            pairs,
            inherited: true,
        })
    }

    /// The addresses actually bound (with the port the kernel chose for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.pairs
            .iter()
            .filter_map(|(udp, _)| udp.local_addr().ok())
            .collect()
    }
}

/// The inherited sockets of one protocol by the address each is bound to;
/// an error names a socket bound to no listen address, or a second socket on
/// one address.
fn by_address<S>(
    protocol: &str,
    sockets: Vec<(String, S)>,
    addrs: &[SocketAddr],
    listen: &str,
    local_addr: impl Fn(&S) -> io::Result<SocketAddr>,
) -> Result<std::collections::HashMap<SocketAddr, S>, Error> {
    let mut found = std::collections::HashMap::with_capacity(sockets.len());
    for (label, socket) in sockets {
        let local = local_addr(&socket).map_err(|error| {
            Error::Inherited(format!("inherited {protocol} socket {label}: {error}"))
        })?;
        if !addrs.contains(&local) {
            return Err(Error::Inherited(format!(
                "inherited {protocol} socket {label} is bound to {local}, which is not a listen address (listen: {listen})"
            )));
        }
        if found.insert(local, socket).is_some() {
            return Err(Error::Inherited(format!(
                "the service manager passed more than one {protocol} socket bound to {local}"
            )));
        }
    }
    Ok(found)
}

fn bind_pair(address: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), Error> {
    if address.port() != 0 {
        let udp = bind_udp(address)?;
        let tcp = bind_tcp(address)?;
        return Ok((udp, tcp));
    }
    for _ in 0..PORT_ZERO_ATTEMPTS {
        let udp = bind_udp(address)?;
        let port = udp
            .local_addr()
            .map_err(|source| Error::Bind {
                protocol: "udp",
                address,
                source,
            })?
            .port();
        let tcp_address = SocketAddr::new(address.ip(), port);
        match bind_tcp(tcp_address) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(Error::AddressInUse { .. }) => {
                debug!(address = %tcp_address, "TCP port taken, trying another UDP port");
            }
            Err(error) => return Err(error),
        }
    }
    Err(Error::AddressInUse {
        protocol: "tcp",
        address,
    })
}

fn socket_error(protocol: &'static str, address: SocketAddr, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::AddrInUse {
        Error::AddressInUse { protocol, address }
    } else {
        Error::Bind {
            protocol,
            address,
            source,
        }
    }
}

fn bind_udp(address: SocketAddr) -> Result<std::net::UdpSocket, Error> {
    let fail = |source| socket_error("udp", address, source);
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(SocketProtocol::UDP),
    )
    .map_err(fail)?;
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    // Several sockets per address (one loop each) let the kernel spread queries.
    // For port 0 the option is set only once the kernel has chosen the port:
    // its choice treats a port held by another SO_REUSEPORT socket of the same
    // user as free, and would have us share (and split queries with) another
    // server's port. The sockets added later join ours on the chosen port.
    let choose_port = address.port() == 0;
    #[cfg(unix)]
    if !choose_port {
        socket.set_reuse_port(true).map_err(fail)?;
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&address.into()).map_err(fail)?;
    #[cfg(unix)]
    if choose_port {
        socket.set_reuse_port(true).map_err(fail)?;
    }
    Ok(socket.into())
}

fn bind_tcp(address: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let fail = |source| socket_error("tcp", address, source);
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(SocketProtocol::TCP),
    )
    .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket
        .set_recv_buffer_size(TCP_RECEIVE_BUFFER)
        .map_err(fail)?;
    socket.bind(&address.into()).map_err(fail)?;
    socket.listen(TCP_BACKLOG).map_err(fail)?;
    Ok(socket.into())
}

/// Server settings outside the answer logic.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// A TCP connection that sends no complete query (and gets no answer)
    /// for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// A TCP connection is closed this long after it was opened, however
    /// busy (after answering what it already sent).
    pub tcp_max_lifetime: Duration,
    /// Most TCP connections open at once, over every listen address.
    /// Lowered at start when RLIMIT_NOFILE minus `reserved_fds` is smaller.
    pub tcp_max_connections: usize,
    /// Most TCP connections open at once from one source address.
    pub tcp_max_connections_per_client: usize,
    /// Most queries of one TCP connection answered at once; the client's
    /// further queries wait in the socket buffer.
    pub tcp_max_pipelined: usize,
    /// File descriptors kept for everything but TCP clients (upstream and
    /// Consul sockets, UDP sockets, files) when sizing the TCP cap.
    pub reserved_fds: usize,
    /// Clients whose address is outside every network here get REFUSED
    /// over UDP, and have their TCP connection closed at accept (an empty
    /// list refuses everyone).
    pub allowed_networks: Vec<IpNet>,
    /// UDP queries a second allowed from one client network (/24, /56),
    /// with bursts of one second's worth; beyond it datagrams are dropped
    /// (`dns.rate_limited_total`). Never applies to loopback clients. 0 = off.
    pub rate_limit: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_lifetime: Duration::from_secs(120),
            tcp_max_connections: 1024,
            tcp_max_connections_per_client: 256,
            tcp_max_pipelined: 16,
            // forward.max_in_flight's default (1024 upstream sockets at
            // most) and 256 for Consul connections, UDP sockets and files.
            reserved_fds: 1024 + 256,
            allowed_networks: vec![
                IpNet::new(IpAddr::from([127, 0, 0, 0]), 8).expect("valid prefix length"),
                IpNet::new(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 128)
                    .expect("valid prefix length"),
            ],
            rate_limit: 0,
        }
    }
}

/// Settings of the UDP serving loops.
#[derive(Debug, Clone)]
pub struct UdpOptions {
    /// UDP sockets bound per listen address with `SO_REUSEPORT` (one thread
    /// each; the kernel spreads clients over them). At least 1. Default: the
    /// available parallelism, at most 8.
    pub sockets: usize,
    /// Most UDP queries on the general path (cache misses, forwarding) at once;
    /// datagrams beyond it are dropped unanswered (`dns.udp_overload_drops_total`),
    /// so a flood cannot grow memory without bound. At least 1. Default 4096.
    pub max_in_flight: usize,
}

impl Default for UdpOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            sockets: cores.clamp(1, MAX_DEFAULT_UDP_SOCKETS),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// Handle on a running server.
#[derive(Debug)]
pub struct ServerHandle {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), hickory_server::net::NetError>>,
    local_addrs: Vec<SocketAddr>,
    /// A handle dropped without `shutdown` still stops the server, so no
    /// forgotten server keeps its sockets (and its port) after its owner.
    _stop_on_drop: DropGuard,
}

impl ServerHandle {
    /// The addresses the server listens on (UDP and TCP share each).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting queries and waits (bounded) for the server tasks to end.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown.cancel();
        finish(self.task).await
    }

    /// Runs until `shutdown` is cancelled (then stops gracefully) or the server
    /// stops on its own (a socket failed), whichever comes first.
    pub async fn run_until(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        tokio::select! {
            () = shutdown.cancelled() => self.shutdown().await,
            stopped = self.stopped() => stopped,
        }
    }

    /// Resolves only if the server stops on its own: a listener failed (Err;
    /// the other loops were stopped too). The caller should then exit with
    /// an error rather than keep a process whose clients get silence. Do not
    /// call [`shutdown`](Self::shutdown) after it resolved.
    pub async fn stopped(&mut self) -> Result<(), Error> {
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(Error::Serve { source }),
            Err(join_error) => Err(Error::Task(join_error.to_string())),
        }
    }
}

async fn finish(
    mut task: JoinHandle<Result<(), hickory_server::net::NetError>>,
) -> Result<(), Error> {
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(source))) => Err(Error::Serve { source }),
        Ok(Err(join_error)) => Err(Error::Task(join_error.to_string())),
        Err(_) => {
            warn!(grace = ?SHUTDOWN_GRACE, "DNS server did not stop in time, aborting it");
            task.abort();
            Ok(())
        }
    }
}

/// Starts serving `router` on `listeners` with the default [`UdpOptions`].
/// Must be called inside a Tokio runtime.
pub fn serve<C: CatalogView, F: Upstream>(
    router: Router<C, F>,
    listeners: Listeners,
    options: ServerOptions,
) -> Result<ServerHandle, Error> {
    serve_with(router, listeners, options, UdpOptions::default())
}

/// Starts serving `router` on `listeners`: UDP on our own loops with the wire
/// answer cache, TCP on our own accept loops with connection limits. Must be
/// called inside a Tokio runtime.
pub fn serve_with<C: CatalogView, F: Upstream>(
    router: Router<C, F>,
    listeners: Listeners,
    options: ServerOptions,
    udp_options: UdpOptions,
) -> Result<ServerHandle, Error> {
    let local_addrs = listeners.local_addrs();
    let shutdown = CancellationToken::new();
    let max_in_flight = udp_options.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let shared = Arc::new(udp::Shared {
        router: router.clone(),
        allowed: options.allowed_networks.clone(),
        in_flight: Arc::clone(&in_flight),
        rate_limit: crate::ratelimit::RateLimit::new(options.rate_limit),
        rate_limited: metrics::counter!(crate::metrics::RATE_LIMITED),
        shutdown: shutdown.clone(),
    });
    let tcp_shared = Arc::new(tcp::Shared {
        router,
        allowed: options.allowed_networks.clone(),
        limits: tcp::Limits {
            max_connections: tcp::fd_budget(options.tcp_max_connections, options.reserved_fds),
            max_per_client: options.tcp_max_connections_per_client,
            idle_timeout: options.tcp_idle_timeout,
            max_lifetime: options.tcp_max_lifetime,
            max_pipelined: options.tcp_max_pipelined.max(1),
        },
        connections: Arc::default(),
        in_flight: Arc::new(Semaphore::new(tcp::MAX_IN_FLIGHT)),
        shutdown: shutdown.clone(),
    });
    let register = |source| Error::Register {
        protocol: "udp",
        source,
    };
    let mut loops = JoinSet::new();
    let mut tcp_loops = JoinSet::new();
    for (udp, tcp) in listeners.pairs {
        let address = udp.local_addr().map_err(register)?;
        let mut sockets = Vec::with_capacity(udp_options.sockets.max(1));
        for _ in 1..udp_options.sockets.max(1) {
            // An inherited socket is shared by every thread (one duplicate
            // each), not joined by SO_REUSEPORT siblings: the kernel queues
            // datagrams per socket, and a sibling's queue dies with this
            // process, while the inherited socket's queue survives a restart
            // (the service manager holds it) and the next process answers it.
            sockets.push(if listeners.inherited {
                udp.try_clone().map_err(register)?
            } else {
                bind_udp(address)?
            });
        }
        sockets.push(udp);
        if listeners.inherited {
            // Accepted connections inherit the listener's receive buffer.
            socket2::SockRef::from(&tcp)
                .set_recv_buffer_size(TCP_RECEIVE_BUFFER)
                .and_then(|()| tcp.set_nonblocking(true))
                .map_err(|source| Error::Register {
                    protocol: "tcp",
                    source,
                })?;
        }
        for socket in sockets {
            loops.spawn(udp::spawn(socket, Arc::clone(&shared)).map_err(register)?);
        }
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(|source| Error::Register {
            protocol: "tcp",
            source,
        })?;
        tcp_loops.spawn(tcp::serve(tcp, Arc::clone(&tcp_shared)));
        info!(
            address = %address,
            udp_sockets = udp_options.sockets.max(1),
            inherited = listeners.inherited,
            "DNS listening on UDP and TCP"
        );
    }
    let sweeper = {
        let shared = Arc::clone(&shared);
        async move {
            // Every MAX_AGE while answers are hit; an idle server doubles the
            // pause up to IDLE_SWEEP (its entries only bound memory, and hits
            // are counted by the next sweep), and a stored answer resets it.
            let busy = crate::fast::MAX_AGE;
            let mut pause = busy;
            loop {
                tokio::select! {
                    () = shared.shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {
                        pause = if shared.router.fast().sweep() {
                            busy
                        } else {
                            (pause * 2).min(IDLE_SWEEP)
                        };
                    }
                    () = shared.router.fast().stored(), if pause > busy => pause = busy,
                }
            }
        }
    };
    let task = tokio::spawn(async move {
        let (tcp, udp, ()) = tokio::join!(
            supervise(tcp_loops, "TCP", &shared.shutdown),
            supervise(loops, "UDP", &shared.shutdown),
            sweeper
        );
        // Queries already on the general path finish before we report done.
        let permits = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
        drop(in_flight.acquire_many(permits).await);
        shared.router.fast().sweep();
        tcp.and(udp)
    });
    Ok(ServerHandle {
        _stop_on_drop: shutdown.clone().drop_guard(),
        shutdown,
        task,
        local_addrs,
    })
}

/// Waits for every serving loop of one protocol. The first loop that stops
/// with an error (a failed socket, a panicked UDP thread) stops the whole
/// server: the process then exits with that error and is restarted, rather
/// than leaving the clients routed to that socket (`SO_REUSEPORT` spreads
/// them by address and port) unanswered while the rest serves. Returns the
/// first failure; the loops stopped after it end cleanly.
async fn supervise(
    mut loops: JoinSet<Result<(), hickory_server::net::NetError>>,
    protocol: &'static str,
    shutdown: &CancellationToken,
) -> Result<(), hickory_server::net::NetError> {
    let mut result = Ok(());
    while let Some(joined) = loops.join_next().await {
        let failed = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => error,
            Err(join_error) => {
                hickory_server::net::NetError::from(format!("{protocol} loop failed: {join_error}"))
            }
        };
        warn!(protocol, error = %failed, "DNS listener stopped; stopping the DNS server");
        shutdown.cancel();
        if result.is_ok() {
            result = Err(failed);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use dnsfront_catalog::{Freshness, Lookup, Node, ServiceInstance};
    use hickory_proto::op::Query;

    use super::*;

    /// Knows nothing: every name is NXDOMAIN, forwarding fails.
    #[derive(Clone)]
    struct Nothing;

    impl CatalogView for Nothing {
        async fn service(&self, _: &str, _: Option<&str>) -> Lookup<Arc<[ServiceInstance]>> {
            Lookup::NotFound(Freshness::Fresh)
        }
        async fn node(&self, _: &str, _: Option<&str>) -> Lookup<Arc<Node>> {
            Lookup::NotFound(Freshness::Fresh)
        }
    }

    impl Upstream for Nothing {
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

    #[tokio::test]
    async fn a_failed_tcp_listener_stops_the_server_with_an_error() {
        let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
        // The same socket: shutting it down makes Linux's accept fail with EINVAL.
        let twin = listeners.pairs[0].1.try_clone().expect("dup");
        let router = Router::with_backends(crate::Config::default(), Nothing, None::<Nothing>);
        let mut server = serve(router, listeners, ServerOptions::default()).expect("serve");
        tokio::time::sleep(Duration::from_millis(50)).await;
        nix::sys::socket::shutdown(twin.as_raw_fd(), nix::sys::socket::Shutdown::Read)
            .expect("shutdown the listening socket");
        let stopped = tokio::time::timeout(Duration::from_secs(5), server.stopped())
            .await
            .expect("the server stops on its own");
        let error = stopped.expect_err("a dead listener is an error");
        assert!(
            format!("{:?}", error).contains("TCP listener failed"),
            "{error:?}"
        );
    }

    /// Knows one service, "web"; asked from a UDP serving thread (the fast
    /// path re-checking a cached answer) it panics, as a bug there would.
    #[derive(Clone)]
    struct PanicsInUdpThread;

    impl CatalogView for PanicsInUdpThread {
        async fn service(&self, _: &str, _: Option<&str>) -> Lookup<Arc<[ServiceInstance]>> {
            assert_ne!(
                std::thread::current().name(),
                Some("dnsfront-udp"),
                "a bug in the UDP thread"
            );
            Lookup::Found(
                vec![ServiceInstance {
                    node: "n1".to_owned(),
                    datacenter: "dc1".to_owned(),
                    node_address: Some(IpAddr::from([10, 0, 0, 1])),
                    service_address: None,
                    port: 80,
                    tags: Vec::new(),
                    weight: 1,
                    status: dnsfront_catalog::InstanceStatus::Passing,
                    hostname: None,
                    details: None,
                }]
                .into(),
                Freshness::Fresh,
            )
        }
        async fn node(&self, _: &str, _: Option<&str>) -> Lookup<Arc<Node>> {
            Lookup::NotFound(Freshness::Fresh)
        }
    }

    async fn stops_with_error(server: &mut ServerHandle) -> String {
        let stopped = tokio::time::timeout(Duration::from_secs(5), server.stopped())
            .await
            .expect("the server stops on its own");
        format!("{:?}", stopped.expect_err("a dead UDP thread is an error"))
    }

    #[tokio::test]
    async fn a_panicking_udp_thread_stops_the_server_with_an_error() {
        let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
        let addr = listeners.local_addrs()[0];
        let router =
            Router::with_backends(crate::Config::default(), PanicsInUdpThread, None::<Nothing>);
        let options = UdpOptions {
            sockets: 2,
            ..UdpOptions::default()
        };
        let mut server =
            serve_with(router, listeners, ServerOptions::default(), options).expect("serve");
        let web = test_support::Ask::new("web.service.consul.", hickory_proto::rr::RecordType::A);
        // The first answer comes from the general path and is kept by the
        // fast path; a later one is a hit, re-checked in a UDP thread.
        let (answer, _) = test_support::udp(addr, &web).await;
        assert_eq!(answer.answers.len(), 1);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
        client.send_to(&web.to_bytes(), addr).expect("send");
        let error = stops_with_error(&mut server).await;
        assert!(error.contains("UDP thread panicked"), "{error}");
        assert!(error.contains("a bug in the UDP thread"), "{error}");
    }

    #[tokio::test]
    async fn a_udp_socket_shut_down_under_its_thread_stops_the_server_with_an_error() {
        let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
        let twin = listeners.pairs[0].0.try_clone().expect("dup");
        let router = Router::with_backends(crate::Config::default(), Nothing, None::<Nothing>);
        let options = UdpOptions {
            sockets: 1,
            ..UdpOptions::default()
        };
        let mut server =
            serve_with(router, listeners, ServerOptions::default(), options).expect("serve");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Linux marks even an unconnected UDP socket shut down (and says ENOTCONN).
        let _ = nix::sys::socket::shutdown(twin.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        let error = stops_with_error(&mut server).await;
        assert!(error.contains("UDP socket was shut down"), "{error}");
    }

    /// What a service manager would pass for `addr`: a UDP socket and a TCP
    /// listener bound to it (plain binds, as systemd's: no SO_REUSEPORT).
    fn passed(addr: SocketAddr) -> Inherited {
        Inherited {
            udp: vec![(
                "fd 3 (dns-udp)".to_owned(),
                std::net::UdpSocket::bind(addr).expect("bind udp"),
            )],
            tcp: vec![(
                "fd 4 (dns-tcp)".to_owned(),
                std::net::TcpListener::bind(addr).expect("bind tcp"),
            )],
        }
    }

    /// A free port for UDP and TCP on the loopback.
    fn free_address() -> SocketAddr {
        let probe = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
        probe.local_addrs()[0]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inherited_sockets_are_served_by_every_udp_thread_and_over_tcp() {
        let addr = free_address();
        let listeners = Listeners::adopt(&[addr], passed(addr)).expect("adopt");
        assert_eq!(listeners.local_addrs(), vec![addr]);
        let router = Router::with_backends(crate::Config::default(), Nothing, None::<Nothing>);
        let options = UdpOptions {
            sockets: 3,
            ..UdpOptions::default()
        };
        let server =
            serve_with(router, listeners, ServerOptions::default(), options).expect("serve");
        let ask =
            test_support::Ask::new("nowhere.service.consul.", hickory_proto::rr::RecordType::A);
        // Many client ports: with SO_REUSEPORT siblings some would reach a
        // socket nobody bound for us; duplicates all read the one socket.
        for _ in 0..12 {
            let (answer, _) = test_support::udp(addr, &ask).await;
            assert_eq!(
                answer.response_code,
                hickory_proto::op::ResponseCode::NXDomain
            );
        }
        let answer = test_support::tcp(addr, &ask).await;
        assert_eq!(
            answer.response_code,
            hickory_proto::op::ResponseCode::NXDomain
        );
        server.shutdown().await.expect("shutdown");
    }

    #[test]
    fn an_inherited_socket_on_no_listen_address_is_named() {
        let addr = free_address();
        let other = free_address();
        let mut inherited = passed(addr);
        inherited.udp.push((
            "fd 5 (extra)".to_owned(),
            std::net::UdpSocket::bind(other).expect("bind"),
        ));
        let error = Listeners::adopt(&[addr], inherited)
            .expect_err("a socket nobody listens on")
            .to_string();
        assert!(error.contains("fd 5 (extra)"), "{error}");
        assert!(error.contains(&other.to_string()), "{error}");
        assert!(error.contains("not a listen address"), "{error}");
    }

    #[test]
    fn a_listen_address_without_an_inherited_socket_is_named() {
        let addr = free_address();
        let missing = free_address();
        let error = Listeners::adopt(&[addr, missing], passed(addr))
            .expect_err("an address with no socket")
            .to_string();
        assert!(
            error.contains(&format!("listen address {missing}")),
            "{error}"
        );
        assert!(error.contains("no UDP socket"), "{error}");
        let mut no_tcp = passed(addr);
        no_tcp.tcp.clear();
        let error = Listeners::adopt(&[addr], no_tcp)
            .expect_err("no TCP listener")
            .to_string();
        assert!(error.contains("no TCP socket"), "{error}");
    }

    #[test]
    fn port_zero_gets_one_port_for_udp_and_tcp() {
        let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
        let (udp, tcp) = &listeners.pairs[0];
        let port = udp.local_addr().expect("udp addr").port();
        assert_ne!(port, 0);
        assert_eq!(tcp.local_addr().expect("tcp addr").port(), port);
    }

    #[test]
    fn taken_address_is_reported_clearly() {
        let first = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
        let taken = first.local_addrs()[0];
        let error = Listeners::bind(&[taken]).expect_err("second bind must fail");
        let message = error.to_string();
        assert!(message.contains(&taken.to_string()), "{message}");
        assert!(message.contains("address already in use"), "{message}");
    }
}
