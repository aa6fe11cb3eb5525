//! The control socket: binding it (mode 0600, a stale one replaced), serving
//! its connections (peer uid checked, bounded, idle timeout), and the
//! `stats` and `reload` commands.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use dnsfront_catalog as catalog;
use dnsfront_dns as dns;
use dnsfront_forward as forward;
use dnsfront_snapshot as snapshot;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::explain::{explain, snapshot_info};
use super::protocol::{Request, Stats};
use crate::reload::{Outcome, ReloadHandle};

/// Longest request line.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Connections served at once; more wait.
const MAX_CONNECTIONS: usize = 16;
/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the control server reads.
#[derive(Clone)]
pub struct Context {
    /// The catalog cache.
    pub catalog: catalog::Cache,
    /// The hosts snapshot.
    pub hosts: snapshot::Hosts,
    /// The forwarder.
    pub forwarder: forward::Forwarder,
    /// The router (explain routes the name exactly like a query, and asks it
    /// which Consul name it is).
    pub router: dns::Router,
    /// Bound DNS addresses.
    pub listen: Vec<SocketAddr>,
    /// Triggers reloads.
    pub reload: ReloadHandle,
    /// The config file, for `stats`.
    pub config_file: Option<PathBuf>,
    /// When the server started.
    pub started: Instant,
}

/// A bound control socket, not served yet. Dropping it removes the file
/// (when it is still ours).
pub struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    file: SocketFile,
    owner_uid: u32,
}

/// Removes the socket file on drop, unless another process replaced it.
struct SocketFile {
    path: PathBuf,
    /// (device, inode) of the file we created.
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let still_ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.identity);
        if still_ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ControlSocket {
    /// Binds `path` (mode 0600), creating its directory. A stale socket left
    /// by a dead process is replaced; a live one (another dnsfront) is an error.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            if !metadata.file_type().is_socket() {
                bail!("{} exists and is not a socket", path.display());
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use: another dnsfront is running", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener = std::os::unix::net::UnixListener::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        let metadata = std::fs::metadata(path).with_context(|| path.display().to_string())?;
        Ok(Self {
            listener,
            file: SocketFile {
                path: path.to_owned(),
                identity: (metadata.dev(), metadata.ino()),
            },
            owner_uid: metadata.uid(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// A control socket being served.
pub struct ControlServer {
    listener: UnixListener,
    file: SocketFile,
    owner_uid: u32,
    context: Arc<Context>,
}

impl ControlServer {
    /// Serves `socket` with `context` (call inside the runtime).
    pub fn new(socket: ControlSocket, context: Context) -> anyhow::Result<Self> {
        socket
            .listener
            .set_nonblocking(true)
            .context("control socket")?;
        let listener = UnixListener::from_std(socket.listener).context("control socket")?;
        Ok(Self {
            listener,
            file: socket.file,
            owner_uid: socket.owner_uid,
            context: Arc::new(context),
        })
    }

    /// Serves until `shutdown`, then removes the socket file.
    pub async fn run(self, shutdown: CancellationToken) {
        info!(path = %self.file.path.display(), "Control socket listening");
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(error = %error, "Control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let allowed = stream
                .peer_cred()
                .is_ok_and(|cred| cred.uid() == self.owner_uid || cred.uid() == 0);
            if !allowed {
                debug!("Control connection from another user refused");
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let context = Arc::clone(&self.context);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = serve_connection(stream, &context) => {}
                }
                drop(permit);
            });
        }
        // Dropping `self.file` removes the socket.
    }
}

async fn serve_connection(stream: UnixStream, context: &Context) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_REQUEST_BYTES as u64 + 1);
        let read =
            match tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
                Ok(Ok(read)) => read,
                Ok(Err(_)) | Err(_) => return,
            };
        if read == 0 {
            return;
        }
        let response = if line.len() > MAX_REQUEST_BYTES {
            error_response("request line too long")
        } else if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) => handle(request, context).await,
                Err(error) => error_response(&format!("bad request: {error}")),
            }
        };
        let mut text = response.to_string();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
        if line.len() > MAX_REQUEST_BYTES {
            return;
        }
    }
}

fn error_response(message: &str) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": message })
}

async fn handle(request: Request, context: &Context) -> serde_json::Value {
    let cmd = request.cmd();
    debug!(cmd, "Control request");
    let result: Result<serde_json::Value, String> = match request {
        Request::Explain { name, qtype } => explain(context, &name, qtype.as_deref())
            .await
            .and_then(|report| serde_json::to_value(report).map_err(|e| e.to_string())),
        Request::Stats => serde_json::to_value(stats(context)).map_err(|e| e.to_string()),
        Request::Reload => context
            .reload
            .reload("control")
            .await
            .and_then(|outcome: Outcome| serde_json::to_value(outcome).map_err(|e| e.to_string())),
    };
    match result {
        Ok(value) => {
            let mut response = serde_json::json!({ "ok": true });
            response[cmd] = value;
            response
        }
        Err(error) => error_response(&error),
    }
}

fn stats(context: &Context) -> Stats {
    let forwarder = &context.forwarder;
    Stats {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_seconds: context.started.elapsed().as_secs(),
        listen: context.listen.iter().map(ToString::to_string).collect(),
        config_file: context
            .config_file
            .as_ref()
            .map(|path| path.display().to_string()),
        catalog_entries: context.catalog.entry_count(),
        consul_unavailable: context.catalog.consul_unavailable(),
        forward_cache_entries: forwarder.cached_entries(),
        upstreams: forwarder
            .config()
            .upstreams
            .iter()
            .map(ToString::to_string)
            .collect(),
        snapshot: context.hosts.current().map(|s| snapshot_info(&s, None)),
        last_reload: context.reload.last(),
    }
}
