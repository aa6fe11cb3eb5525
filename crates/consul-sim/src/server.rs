//! The HTTP front-end: a hyper HTTP/1.1 accept loop whose listener can be taken down and up.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
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

use crate::Sim;
use crate::api;

/// A running HTTP server for a [`Sim`]; dropping it closes the listener and all connections.
#[derive(Debug)]
pub struct SimServer {
    inner: Arc<ServerInner>,
}

#[derive(Debug)]
struct ServerInner {
    sim: Sim,
    addr: SocketAddr,
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
    pub(crate) fn start(sim: Sim, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(ServerInner {
            sim,
            addr,
            runtime: tokio::runtime::Handle::current(),
            state: Mutex::new(ServerState::default()),
        });
        ServerInner::start_accepting(&inner, listener)?;
        tracing::info!(%addr, "consul-sim listening");
        Ok(Self { inner })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
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
            match bind(self.inner.addr) {
                Ok(listener) => {
                    state.down = false;
                    drop(state);
                    if let Err(error) = ServerInner::start_accepting(&self.inner, listener) {
                        tracing::error!(addr = %self.inner.addr, error = %error, "consul-sim could not listen again");
                    }
                }
                Err(error) => {
                    tracing::error!(addr = %self.inner.addr, error = %error, "consul-sim could not rebind");
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

/// Binds with `SO_REUSEADDR` so the same port can be bound again right after going down.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

impl ServerInner {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_accepting(inner: &Arc<Self>, listener: std::net::TcpListener) -> std::io::Result<()> {
        let duplicate = Socket::from(listener.try_clone()?);
        let task_inner = Arc::clone(inner);
        let _guard = inner.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let task = inner.runtime.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _peer)) => task_inner.serve_connection(stream),
                    Err(error) => {
                        if task_inner.lock().down {
                            break;
                        }
                        tracing::debug!(error = %error, "consul-sim accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        });
        let mut state = inner.lock();
        state.listener = Some((duplicate, task.abort_handle()));
        Ok(())
    }

    fn serve_connection(self: &Arc<Self>, stream: tokio::net::TcpStream) {
        let duplicate = match SockRef::from(&stream).try_clone() {
            Ok(duplicate) => duplicate,
            Err(error) => {
                tracing::debug!(error = %error, "consul-sim could not track connection");
                return;
            }
        };
        let mut state = self.lock();
        if state.down {
            return;
        }
        let id = state.next_connection;
        state.next_connection += 1;
        let sim = self.sim.clone();
        let inner = Arc::clone(self);
        let task = self.runtime.spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let sim = sim.clone();
                async move { Ok::<_, Infallible>(serve_request(&sim, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::trace!(error = %error, "consul-sim connection ended");
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
