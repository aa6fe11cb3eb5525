//! The HTTP front-end: a hyper HTTP/1.1 accept loop whose listener can be taken down and up,
//! on TCP or a Unix socket, in plain HTTP or TLS (`tls.rs`; the certificate can be swapped
//! while serving, for rotation tests).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use socket2::{Domain, SockRef, Socket, Type};
use tokio::task::AbortHandle;

use crate::api;
use crate::{Sim, TlsOptions};

/// Where a server listens.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A bound listener of either kind.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// A running HTTP server for a [`Sim`]; dropping it closes the listener and all connections.
#[derive(Debug)]
pub struct SimServer {
    inner: Arc<ServerInner>,
}

#[derive(Debug)]
struct ServerInner {
    sim: Sim,
    /// The client agent this listener plays (tagged on every request it serves).
    agent: api::AgentId,
    endpoint: Endpoint,
    /// Serve TLS with this acceptor; swapped by [`SimServer::set_tls`].
    tls: Mutex<Option<Arc<tokio_rustls::rustls::ServerConfig>>>,
    runtime: tokio::runtime::Handle,
    state: Mutex<ServerState>,
}

#[derive(Debug, Default)]
struct ServerState {
    down: bool,
    /// A duplicate of the listening socket (to shut it down synchronously) and the accept task.
    listener: Option<(Socket, AbortHandle)>,
    /// Duplicates of open connections' sockets and their tasks.
    connections: HashMap<u64, (Socket, AbortHandle)>,
    next_connection: u64,
}

impl SimServer {
    pub(crate) fn start(
        sim: Sim,
        endpoint: Endpoint,
        tls: Option<&TlsOptions>,
    ) -> std::io::Result<Self> {
        Self::start_agent(sim, endpoint, tls, None)
    }

    /// Starts serving as the client agent `agent` (`None`: the simulator's own agent node).
    pub(crate) fn start_agent(
        sim: Sim,
        endpoint: Endpoint,
        tls: Option<&TlsOptions>,
        agent: Option<Arc<str>>,
    ) -> std::io::Result<Self> {
        let agent = api::AgentId(agent.unwrap_or_else(|| sim.agent_node().into()));
        let tls = tls.map(TlsOptions::server_config).transpose()?;
        let listener = bind(&endpoint)?;
        let endpoint = match (&endpoint, &listener) {
            (Endpoint::Tcp(_), std_listener) => Endpoint::Tcp(std_listener.tcp_addr()?),
            (Endpoint::Unix(path), _) => Endpoint::Unix(path.clone()),
        };
        let inner = Arc::new(ServerInner {
            sim,
            agent,
            endpoint,
            tls: Mutex::new(tls),
            runtime: tokio::runtime::Handle::current(),
            state: Mutex::new(ServerState::default()),
        });
        ServerInner::start_accepting(&inner, listener)?;
        tracing::info!(url = %inner.url(), "consul-sim listening");
        Ok(Self { inner })
    }

    /// The bound TCP address (`0.0.0.0:0` for a Unix socket).
    pub fn addr(&self) -> SocketAddr {
        match &self.inner.endpoint {
            Endpoint::Tcp(addr) => *addr,
            Endpoint::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The Unix socket's path, for a server on one.
    pub fn unix_path(&self) -> Option<&Path> {
        match &self.inner.endpoint {
            Endpoint::Tcp(_) => None,
            Endpoint::Unix(path) => Some(path),
        }
    }

    /// The agent address to give a client: `http://ADDR`, `https://ADDR`
    /// when serving TLS, or `unix:///PATH`.
    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// Serves new connections with this certificate (and client CA) from now
    /// on; open connections keep theirs. An unusable PEM changes nothing.
    pub fn set_tls(&self, tls: &TlsOptions) -> std::io::Result<()> {
        let config = tls.server_config()?;
        *self
            .inner
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(config);
        Ok(())
    }

    /// The simulator this server serves.
    pub fn sim(&self) -> &Sim {
        &self.inner.sim
    }

    /// Down: closes the listener (new connections are refused) and every open connection.
    /// Up: listens on the same port again. Takes effect before this returns.
    pub fn set_down(&self, down: bool) {
        if down {
            self.inner.take_down();
        } else {
            let mut state = self.inner.lock();
            if !state.down {
                return;
            }
            match bind(&self.inner.endpoint) {
                Ok(listener) => {
                    state.down = false;
                    drop(state);
                    if let Err(error) = ServerInner::start_accepting(&self.inner, listener) {
                        tracing::error!(url = %self.inner.url(), error = %error, "consul-sim could not listen again");
                    }
                }
                Err(error) => {
                    tracing::error!(url = %self.inner.url(), error = %error, "consul-sim could not rebind");
                }
            }
        }
    }

    /// Whether the server is currently down.
    pub fn is_down(&self) -> bool {
        self.inner.lock().down
    }

    /// Stops serving: closes the listener and all connections.
    pub async fn shutdown(self) {
        self.inner.take_down();
        tokio::task::yield_now().await;
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.inner.take_down();
    }
}

/// A bound, non-blocking standard listener.
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl StdListener {
    fn tcp_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            StdListener::Tcp(listener) => listener.local_addr(),
            StdListener::Unix(_) => Ok(SocketAddr::from(([0, 0, 0, 0], 0))),
        }
    }
}

/// Binds TCP with `SO_REUSEADDR` so the same port can be bound again right after going
/// down; a Unix socket replaces a stale socket file.
fn bind(endpoint: &Endpoint) -> std::io::Result<StdListener> {
    match endpoint {
        Endpoint::Tcp(addr) => {
            let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&(*addr).into())?;
            socket.listen(1024)?;
            Ok(StdListener::Tcp(socket.into()))
        }
        Endpoint::Unix(path) => {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
            let listener = std::os::unix::net::UnixListener::bind(path)?;
            listener.set_nonblocking(true)?;
            Ok(StdListener::Unix(listener))
        }
    }
}

impl ServerInner {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn url(&self) -> String {
        let tls = self
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        match (&self.endpoint, tls) {
            (Endpoint::Tcp(addr), false) => format!("http://{addr}"),
            (Endpoint::Tcp(addr), true) => format!("https://{addr}"),
            (Endpoint::Unix(path), _) => format!("unix://{}", path.display()),
        }
    }

    fn start_accepting(inner: &Arc<Self>, listener: StdListener) -> std::io::Result<()> {
        let _guard = inner.runtime.enter();
        let (duplicate, listener) = match listener {
            StdListener::Tcp(listener) => (
                Socket::from(listener.try_clone()?),
                Listener::Tcp(tokio::net::TcpListener::from_std(listener)?),
            ),
            StdListener::Unix(listener) => (
                Socket::from(std::os::fd::OwnedFd::from(listener.try_clone()?)),
                Listener::Unix(tokio::net::UnixListener::from_std(listener)?),
            ),
        };
        let task_inner = Arc::clone(inner);
        let task = inner.runtime.spawn(async move {
            loop {
                let accepted = match &listener {
                    Listener::Tcp(listener) => listener
                        .accept()
                        .await
                        .map(|(stream, _)| task_inner.serve_connection(stream)),
                    Listener::Unix(listener) => listener
                        .accept()
                        .await
                        .map(|(stream, _)| task_inner.serve_connection(stream)),
                };
                if let Err(error) = accepted {
                    if task_inner.lock().down {
                        break;
                    }
                    tracing::debug!(error = %error, "consul-sim accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        });
        let mut state = inner.lock();
        state.listener = Some((duplicate, task.abort_handle()));
        Ok(())
    }

    fn serve_connection<S>(self: &Arc<Self>, stream: S)
    where
        S: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + std::os::fd::AsFd
            + Unpin
            + Send
            + 'static,
    {
        let duplicate = match SockRef::from(&stream).try_clone() {
            Ok(duplicate) => duplicate,
            Err(error) => {
                tracing::debug!(error = %error, "consul-sim could not track connection");
                return;
            }
        };
        let tls = self
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut state = self.lock();
        if state.down {
            return;
        }
        let id = state.next_connection;
        state.next_connection += 1;
        let sim = self.sim.clone();
        let agent = self.agent.clone();
        let inner = Arc::clone(self);
        let task = self.runtime.spawn(async move {
            match tls {
                None => serve_http(sim, agent, stream).await,
                Some(config) => {
                    match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                        Ok(stream) => serve_http(sim, agent, stream).await,
                        Err(error) => {
                            tracing::debug!(error = %error, "consul-sim TLS handshake failed");
                        }
                    }
                }
            }
            inner.lock().connections.remove(&id);
        });
        state
            .connections
            .insert(id, (duplicate, task.abort_handle()));
    }

    fn take_down(&self) {
        let mut state = self.lock();
        state.down = true;
        if let Some((socket, task)) = state.listener.take() {
            // On Linux, shutting down a listening socket stops it listening at once: new SYNs
            // are answered with RST (connection refused) even before the accept task drops it.
            let _ = socket.shutdown(std::net::Shutdown::Both);
            task.abort();
        }
        for (_, (socket, task)) in state.connections.drain() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
            task.abort();
        }
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
async fn serve_http<S>(sim: Sim, agent: api::AgentId, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let sim = sim.clone();
        request.extensions_mut().insert(agent.clone());
        async move { Ok::<_, Infallible>(serve_request(&sim, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        tracing::trace!(error = %error, "consul-sim connection ended");
    }
}

async fn serve_request(
    sim: &Sim,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Either<Full<Bytes>, Padding>> {
    let request = api::buffer_request(request).await;
    let response = sim.handle(request).await;
    match response.extensions().get::<api::HugeBody>().copied() {
        Some(api::HugeBody(bytes)) => response.map(|_| {
            Either::Right(Padding {
                remaining: bytes,
                opened: false,
                sent: sim.huge_body_counter(),
            })
        }),
        None => response.map(|body| Either::Left(Full::new(body))),
    }
}

/// The streamed body of [`crate::Fault::HugeBody`]: `[`, spaces, `]` (an empty JSON
/// list), chunk by chunk, with no size announced.
struct Padding {
    remaining: u64,
    opened: bool,
    sent: Arc<AtomicU64>,
}

static SPACES: [u8; 64 * 1024] = [b' '; 64 * 1024];

impl hyper::body::Body for Padding {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let chunk = match self.remaining {
            0 => return Poll::Ready(None),
            _ if !self.opened => {
                self.opened = true;
                Bytes::from_static(b"[")
            }
            1 => Bytes::from_static(b"]"),
            remaining => {
                let spaces =
                    usize::try_from(remaining - 1).map_or(SPACES.len(), |n| n.min(SPACES.len()));
                Bytes::from_static(&SPACES[..spaces])
            }
        };
        self.remaining -= chunk.len() as u64;
        self.sent.fetch_add(chunk.len() as u64, Ordering::AcqRel);
        Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }
}
