//! Our TCP serving (RFC 7766): a task per connection, its queries answered
//! one after another through the same path as UDP misses
//! ([`udp::answer`]), encoded by [`Response::encode`].
//!
//! Ours rather than hickory's `Server`: hickory's TCP handle encodes with
//! hickory's encoder, which compresses only the first 120 names of a
//! message, so a large answer (2,000 addresses: ~32 KB compressed) would not
//! fit the 65,535 bytes a TCP message allows.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::ResponseInfo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::debug;

use crate::backend::{CatalogView, Upstream};
use crate::encode::Response;
use crate::router::Respond;
use crate::udp::{self, Shared};

/// Pause after a failed accept (out of file descriptors, say), so that a
/// persistent failure cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Accepts connections on `listener` until shutdown. A connection that sends
/// no complete request (or takes no reply) for `idle` is closed.
pub(crate) async fn serve<C: CatalogView, F: Upstream>(
    listener: TcpListener,
    shared: Arc<Shared<C, F>>,
    idle: Duration,
) -> Result<(), NetError> {
    let mut connections = JoinSet::new();
    loop {
        let (stream, src) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if unrecoverable(&error) => return Err(NetError::from(error)),
                Err(error) => {
                    debug!(error = %error, "error accepting a TCP connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shared.shutdown.cancelled() => return Ok(()),
        };
        if !udp::answerable(src) {
            continue;
        }
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            tokio::select! {
                () = connection(stream, src, &shared, idle) => {}
                () = shared.shutdown.cancelled() => {}
            }
        });
        // Reap finished connections without waiting.
        while connections.try_join_next().is_some() {}
    }
}

fn unrecoverable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
    )
}

/// One connection: read a length-prefixed request, answer it, repeat.
async fn connection<C: CatalogView, F: Upstream>(
    mut stream: TcpStream,
    src: SocketAddr,
    shared: &Shared<C, F>,
    idle: Duration,
) {
    let allowed = shared.allowed(src.ip());
    loop {
        let mut len = [0u8; 2];
        if !matches!(timeout(idle, stream.read_exact(&mut len)).await, Ok(Ok(_))) {
            return;
        }
        let mut raw = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(timeout(idle, stream.read_exact(&mut raw)).await, Ok(Ok(_))) {
            return;
        }
        let mut responder = TcpResponder { bytes: None };
        udp::answer(
            &shared.router,
            raw,
            src,
            Protocol::Tcp,
            allowed,
            &mut responder,
        )
        .await;
        let Some(bytes) = responder.bytes else {
            continue;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(2 + bytes.len());
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        if !matches!(timeout(idle, stream.write_all(&framed)).await, Ok(Ok(()))) {
            debug!(client = %src, "TCP client did not take its answer");
            return;
        }
    }
}

/// Keeps the encoded answer for the connection to write.
struct TcpResponder {
    bytes: Option<Vec<u8>>,
}

impl Respond for TcpResponder {
    fn encoded_len(&self, response: &Response<'_>) -> usize {
        response.encoded_len()
    }

    async fn respond(&mut self, response: Response<'_>) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = match response.encode() {
            Ok((header, bytes)) => (ResponseInfo::from(header), bytes),
            // The router fits every answer into a TCP message; nothing else is sent.
            Err(error) => {
                debug!(error = %error, "error encoding response");
                udp::servfail(response.metadata.id)
            }
        };
        self.bytes = Some(bytes);
        Ok(info)
    }
}
