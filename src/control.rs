//! The control channel: a Unix socket speaking one JSON request per line and
//! one JSON response per line, for `dnsfront explain`, `dnsfront check` and
//! operators' scripts.
//!
//! Requests: `{"cmd":"explain","name":"web.service.consul","type":"A"}`,
//! `{"cmd":"stats"}`, `{"cmd":"reload"}`. Responses: `{"ok":true,"explain":{..}}`,
//! `{"ok":true,"stats":{..}}`, `{"ok":true,"reload":{..}}`, or
//! `{"ok":false,"error":"..."}`.
//!
//! The socket is created mode 0600 and every connection's peer credentials
//! are checked: only our own uid (and root) may talk to it. It is removed on
//! shutdown.

use std::fmt::Write as _;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use dnsfront_catalog as catalog;
use dnsfront_dns as dns;
use dnsfront_forward as forward;
use dnsfront_snapshot as snapshot;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::opt::EdnsOption;
use hickory_server::proto::rr::{Name, Record, RecordType};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::reload::{LastReload, Outcome, ReloadHandle};

/// File name of the control socket.
pub const SOCKET_FILE: &str = "control.sock";
/// Where systemd's `RuntimeDirectory=dnsfront` puts it (a client's fallback).
pub const SYSTEMD_SOCKET: &str = "/run/dnsfront/control.sock";
/// Longest request line.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Connections served at once; more wait.
const MAX_CONNECTIONS: usize = 16;
/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long explain waits for our own DNS listener.
const SELF_QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// RFC 8914 Extended DNS Error option code.
const EDE_OPTION_CODE: u16 = 15;
/// EDE info code 3: Stale Answer.
const EDE_STALE_ANSWER: u16 = 3;

/// The socket path a server uses: `$RUNTIME_DIRECTORY/control.sock` when set
/// (systemd's `RuntimeDirectory=`), else `<state_dir>/control.sock`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    match runtime_directory() {
        Some(dir) => dir.join(SOCKET_FILE),
        None => state_dir.join(SOCKET_FILE),
    }
}

/// Where a client looks, in order, when not told: the server's rule, the
/// systemd runtime directory, the state dir.
pub fn client_candidates(state_dir: &Path) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = runtime_directory() {
        candidates.push(dir.join(SOCKET_FILE));
    }
    candidates.push(PathBuf::from(SYSTEMD_SOCKET));
    candidates.push(state_dir.join(SOCKET_FILE));
    candidates
}

fn runtime_directory() -> Option<PathBuf> {
    let value = std::env::var_os("RUNTIME_DIRECTORY")?;
    // systemd joins several directories with ':'; ours is the first.
    let first = value.to_str()?.split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

// === protocol ===

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Where the answer for `name` comes from right now.
    Explain {
        /// The name asked about.
        name: String,
        /// Record type (default A).
        #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
        qtype: Option<String>,
    },
    /// Cache, Consul, snapshot and reload state.
    Stats,
    /// Re-read the configuration now (as SIGHUP does) and say what changed.
    Reload,
}

/// The answer our own listener gave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsAnswer {
    /// Where the query went.
    pub server: String,
    /// `udp`, or `tcp` after a truncated UDP answer.
    pub transport: String,
    /// NOERROR, NXDOMAIN, SERVFAIL, ...
    pub rcode: String,
    /// Round trip, in milliseconds.
    pub rtt_ms: f64,
    /// Answer section.
    pub answers: Vec<RecordLine>,
    /// Authority section (SOA of negative answers).
    pub authority: Vec<RecordLine>,
    /// Extended DNS Error info codes (3 = Stale Answer).
    pub ede: Vec<u16>,
}

/// One resource record, for display.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordLine {
    /// Owner name.
    pub name: String,
    /// Record type.
    #[serde(rename = "type")]
    pub rtype: String,
    /// TTL in seconds.
    pub ttl: u32,
    /// Presentation form of the data.
    pub data: String,
}

/// What the catalog cache holds for the Consul key behind a name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatalogDetails {
    /// `service` or `node`.
    pub kind: String,
    /// Service or node name.
    pub name: String,
    /// Datacenter asked for (None = the agent's).
    pub datacenter: Option<String>,
    /// fresh, stale, snapshot, not_found (fresh|stale), or unavailable.
    pub state: String,
    /// Healthy instances (services) held.
    pub instances: Option<usize>,
    /// Age of the cached data (when the catalog can tell).
    pub age_seconds: Option<f64>,
    /// Consul index of the cached data (when the catalog can tell).
    pub consul_index: Option<u64>,
    /// How the entry is kept current: watching, polling or idle.
    pub refresh: Option<String>,
    /// The most recent failed Consul request for it, if any.
    pub last_error: Option<String>,
}

/// The hosts snapshot in memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its generation.
    pub generation: u64,
    /// Seconds since the publisher built it.
    pub age_seconds: u64,
    /// Consul index it was built from.
    pub consul_index: u64,
    /// Its datacenter.
    pub datacenter: String,
    /// Services it holds.
    pub services: usize,
    /// Nodes it holds.
    pub nodes: usize,
    /// Whether it knows the explained name (explain only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_name: Option<bool>,
}

/// What `explain` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExplainReport {
    /// The name, as a FQDN.
    pub name: String,
    /// Record type.
    #[serde(rename = "type")]
    pub qtype: String,
    /// `consul` (our domain), `local` (hosts files) or `forward`.
    pub zone: String,
    /// For Consul names: service, node, addr or other.
    pub kind: Option<String>,
    /// Where the answer came from: fresh, stale, snapshot (catalog), cache,
    /// upstream (forwarder), local (hosts files), or none (synthesised or failed).
    pub source: String,
    /// The router's remark on this answer (why it is stale, why it failed).
    pub note: Option<String>,
    /// The real answer from our own listener.
    pub answer: Option<DnsAnswer>,
    /// Why no answer came back.
    pub answer_error: Option<String>,
    /// True while the circuit breaker holds Consul requests back.
    pub consul_unavailable: bool,
    /// The catalog cache entry (Consul names).
    pub catalog: Option<CatalogDetails>,
    /// The hosts snapshot in memory (Consul names).
    pub snapshot: Option<SnapshotInfo>,
    /// The upstreams (forwarded names).
    pub upstreams: Option<Vec<String>>,
    /// The forwarder's cache entry, route and policy verdict (forwarded names).
    pub forward_cache: Option<serde_json::Value>,
}

/// What `stats` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Running version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// Bound DNS addresses.
    pub listen: Vec<String>,
    /// The config file it was started with.
    pub config_file: Option<String>,
    /// Cached services and nodes.
    pub catalog_entries: u64,
    /// True while the circuit breaker holds Consul requests back.
    pub consul_unavailable: bool,
    /// Responses in the forwarder's cache.
    pub forward_cache_entries: u64,
    /// Upstream resolvers.
    pub upstreams: Vec<String>,
    /// The hosts snapshot in memory.
    pub snapshot: Option<SnapshotInfo>,
    /// The most recent reload.
    pub last_reload: Option<LastReload>,
}

// === server ===

/// What the control server reads.
#[derive(Clone)]
pub struct Context {
    /// The catalog cache.
    pub catalog: catalog::Cache,
    /// The hosts snapshot.
    pub hosts: snapshot::Hosts,
    /// The forwarder.
    pub forwarder: forward::Forwarder,
    /// The router (explain routes the name exactly like a query).
    pub router: dns::Router,
    /// Bound DNS addresses.
    pub listen: Vec<SocketAddr>,
    /// The Consul domain (FQDN, lower case), updated by reloads.
    pub domain: Arc<RwLock<Name>>,
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
    let cmd = match &request {
        Request::Explain { .. } => "explain",
        Request::Stats => "stats",
        Request::Reload => "reload",
    };
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

// === explain ===

/// A name in the Consul domain, as far as explain needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConsulName {
    Service {
        name: String,
        datacenter: Option<String>,
    },
    Node {
        name: String,
        datacenter: Option<String>,
    },
    Addr,
    Other,
}

impl ConsulName {
    fn kind(&self) -> &'static str {
        match self {
            Self::Service { .. } => "service",
            Self::Node { .. } => "node",
            Self::Addr => "addr",
            Self::Other => "other",
        }
    }
}

/// Classifies the labels left of the domain (lower case, in order):
/// `[TAG.]NAME.service[.DC]`, `_NAME._TAG.service[.DC]`, `_NAME._TAG`
/// (RFC 2782), `NODE.node[.DC]`, `HEX.addr[.DC]`.
fn classify(labels: &[&str]) -> ConsulName {
    let len = labels.len();
    let kind_at = [len.checked_sub(1), len.checked_sub(2)]
        .into_iter()
        .flatten()
        .find(|&i| i > 0 && matches!(labels[i], "service" | "node" | "addr" | "query"));
    let Some(at) = kind_at else {
        if len == 2 && labels[0].starts_with('_') && labels[1].starts_with('_') {
            return ConsulName::Service {
                name: labels[0][1..].to_owned(),
                datacenter: None,
            };
        }
        return ConsulName::Other;
    };
    let prefix = &labels[..at];
    let datacenter = labels.get(at + 1).map(|dc| (*dc).to_owned());
    match labels[at] {
        "service" => {
            let name =
                if prefix.len() >= 2 && prefix[0].starts_with('_') && prefix[1].starts_with('_') {
                    prefix[0][1..].to_owned()
                } else {
                    prefix[prefix.len() - 1].to_owned()
                };
            ConsulName::Service { name, datacenter }
        }
        "node" => ConsulName::Node {
            name: prefix.join("."),
            datacenter,
        },
        "addr" => ConsulName::Addr,
        _ => ConsulName::Other,
    }
}

/// The catalog cache's view of the Consul key behind a name.
///
/// Today this asks the cache the way a query does (`Cache::service` /
/// `Cache::node`) for the freshness and instance count, then the entry's
/// bookkeeping (`describe_service`/`describe_node`: age, Consul index, refresh
/// state, last error). Explain calls it right after its DNS query, so the
/// entry is already cached and no extra Consul request is made.
async fn catalog_details(cache: &catalog::Cache, name: &ConsulName) -> Option<CatalogDetails> {
    fn freshness(freshness: catalog::Freshness) -> &'static str {
        match freshness {
            catalog::Freshness::Fresh => "fresh",
            catalog::Freshness::Stale => "stale",
            catalog::Freshness::Snapshot => "snapshot",
        }
    }
    let (kind, key, datacenter, state, instances) = match name {
        ConsulName::Service { name, datacenter } => {
            match cache.service(name, datacenter.as_deref()).await {
                catalog::Lookup::Found(instances, f) => (
                    "service",
                    name,
                    datacenter,
                    freshness(f).to_owned(),
                    Some(instances.len()),
                ),
                catalog::Lookup::NotFound(f) => (
                    "service",
                    name,
                    datacenter,
                    format!("not_found ({})", freshness(f)),
                    Some(0),
                ),
                catalog::Lookup::Unavailable => {
                    ("service", name, datacenter, "unavailable".to_owned(), None)
                }
            }
        }
        ConsulName::Node { name, datacenter } => {
            match cache.node(name, datacenter.as_deref()).await {
                catalog::Lookup::Found(_, f) => {
                    ("node", name, datacenter, freshness(f).to_owned(), None)
                }
                catalog::Lookup::NotFound(f) => (
                    "node",
                    name,
                    datacenter,
                    format!("not_found ({})", freshness(f)),
                    None,
                ),
                catalog::Lookup::Unavailable => {
                    ("node", name, datacenter, "unavailable".to_owned(), None)
                }
            }
        }
        ConsulName::Addr | ConsulName::Other => return None,
    };
    // The entry's bookkeeping (no I/O): age, Consul index, refresh state.
    let info = match kind {
        "service" => cache.describe_service(key, datacenter.as_deref()),
        _ => cache.describe_node(key, datacenter.as_deref()),
    };
    Some(CatalogDetails {
        kind: kind.to_owned(),
        name: key.clone(),
        datacenter: datacenter.clone(),
        state,
        instances,
        age_seconds: info.as_ref().map(|i| i.age_ms as f64 / 1000.0),
        consul_index: info.as_ref().map(|i| i.consul_index),
        refresh: info.as_ref().map(|i| {
            serde_json::to_value(i.refresh)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        }),
        last_error: info
            .as_ref()
            .and_then(|i| i.last_error.as_ref())
            .map(|e| format!("{} ({}s ago): {}", e.kind, e.age_ms / 1000, e.message)),
    })
}

fn snapshot_info(snapshot: &snapshot::Snapshot, name: Option<&ConsulName>) -> SnapshotInfo {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let same_dc = |dc: &Option<String>| {
        dc.as_deref()
            .is_none_or(|dc| dc.eq_ignore_ascii_case(&snapshot.datacenter))
    };
    let has_name = name.and_then(|name| match name {
        ConsulName::Service { name, datacenter } => {
            Some(same_dc(datacenter) && snapshot.service(name).is_some())
        }
        ConsulName::Node { name, datacenter } => {
            Some(same_dc(datacenter) && snapshot.node(name).is_some())
        }
        ConsulName::Addr | ConsulName::Other => None,
    });
    SnapshotInfo {
        generation: snapshot.generation,
        age_seconds: now_ms.saturating_sub(snapshot.created_unix_ms) / 1000,
        consul_index: snapshot.consul_index,
        datacenter: snapshot.datacenter.clone(),
        services: snapshot.services.len(),
        nodes: snapshot.nodes.len(),
        has_name,
    }
}

/// The address to query our own listener on: loopback when we listen on it
/// or on a wildcard, else the first listen address.
fn self_target(listen: &[SocketAddr]) -> Option<SocketAddr> {
    listen
        .iter()
        .find(|addr| addr.ip().is_loopback())
        .copied()
        .or_else(|| {
            listen
                .iter()
                .find(|addr| addr.ip().is_unspecified())
                .map(|addr| {
                    let ip: IpAddr = if addr.is_ipv4() {
                        Ipv4Addr::LOCALHOST.into()
                    } else {
                        Ipv6Addr::LOCALHOST.into()
                    };
                    SocketAddr::new(ip, addr.port())
                })
        })
        .or_else(|| listen.first().copied())
}

async fn explain(
    context: &Context,
    name: &str,
    qtype: Option<&str>,
) -> Result<ExplainReport, String> {
    let qtype_text = qtype.unwrap_or("A").to_ascii_uppercase();
    let rtype: RecordType = qtype_text
        .parse()
        .map_err(|_| format!("unknown record type {qtype_text:?}"))?;
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    let qname = Name::from_ascii(&fqdn).map_err(|error| format!("bad name {name:?}: {error}"))?;
    let lower = qname.to_lowercase();
    let domain = context
        .domain
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();

    // First the router, exactly like a query: it says which data answered.
    // Then our own listener over loopback: the answer a client gets now.
    let explanation = context.router.explain(&fqdn, rtype).await;
    let mut report = ExplainReport {
        name: fqdn.clone(),
        qtype: rtype.to_string(),
        zone: explanation.zone.to_owned(),
        source: explanation.source.to_owned(),
        note: explanation.note.clone(),
        ..ExplainReport::default()
    };
    match self_target(&context.listen) {
        Some(server) => match query(server, &qname, rtype, SELF_QUERY_TIMEOUT).await {
            Ok(answer) => report.answer = Some(answer),
            Err(error) => report.answer_error = Some(format!("{error:#}")),
        },
        None => report.answer_error = Some("no DNS listener".to_owned()),
    }

    // A name the router forwarded by a `forward.rules` zone is explained as
    // forwarded, even under the Consul domain.
    if report.zone == "consul" && domain.zone_of(&lower) {
        report.consul_unavailable = context.catalog.consul_unavailable();
        let labels: Vec<String> = lower
            .iter()
            .take(usize::from(
                lower.num_labels().saturating_sub(domain.num_labels()),
            ))
            .map(|label| String::from_utf8_lossy(label).into_owned())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let consul_name = classify(&labels);
        report.kind = Some(consul_name.kind().to_owned());
        report.catalog = catalog_details(&context.catalog, &consul_name).await;
        report.snapshot = context
            .hosts
            .current()
            .map(|s| snapshot_info(&s, Some(&consul_name)));
    } else if report.zone == "forward" {
        let forwarder = &context.forwarder;
        report.upstreams = Some(
            forwarder
                .config()
                .upstreams
                .iter()
                .map(ToString::to_string)
                .collect(),
        );
        report.forward_cache =
            serde_json::to_value(forwarder.explain(&Query::query(lower, rtype), false)).ok();
    }
    Ok(report)
}

// === a small DNS client ===

fn rcode_name(rcode: ResponseCode) -> String {
    match u16::from(rcode) {
        0 => "NOERROR".to_owned(),
        1 => "FORMERR".to_owned(),
        2 => "SERVFAIL".to_owned(),
        3 => "NXDOMAIN".to_owned(),
        4 => "NOTIMP".to_owned(),
        5 => "REFUSED".to_owned(),
        other => format!("RCODE{other}"),
    }
}

fn record_line(record: &Record) -> RecordLine {
    RecordLine {
        name: record.name.to_string(),
        rtype: record.record_type().to_string(),
        ttl: record.ttl,
        data: record.data.to_string(),
    }
}

fn random_id() -> u16 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() & 0xffff) as u16
}

fn query_bytes(id: u16, name: &Name, rtype: RecordType) -> anyhow::Result<Vec<u8>> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message.to_vec().context("encoding the query")
}

/// Sends one query (EDNS, RD) over UDP, retrying over TCP when the answer is
/// truncated, and summarises the reply. Fails after `timeout`.
pub(crate) async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> anyhow::Result<DnsAnswer> {
    let started = Instant::now();
    let (message, transport) = tokio::time::timeout(timeout, async {
        let message = query_udp(server, name, rtype).await?;
        if message.metadata.truncation {
            Ok::<_, anyhow::Error>((query_tcp(server, name, rtype).await?, "tcp"))
        } else {
            Ok((message, "udp"))
        }
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "no answer from {server} within {}",
            humantime::format_duration(timeout)
        )
    })??;
    let rtt = started.elapsed();
    let ede = message
        .edns
        .as_ref()
        .map(|edns| {
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
        })
        .unwrap_or_default();
    Ok(DnsAnswer {
        server: server.to_string(),
        transport: transport.to_owned(),
        rcode: rcode_name(message.metadata.response_code),
        rtt_ms: (rtt.as_secs_f64() * 1e4).round() / 10.0,
        answers: message.answers.iter().map(record_line).collect(),
        authority: message.authorities.iter().map(record_line).collect(),
        ede,
    })
}

async fn query_udp(server: SocketAddr, name: &Name, rtype: RecordType) -> anyhow::Result<Message> {
    let id = random_id();
    let bytes = query_bytes(id, name, rtype)?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .context("binding a UDP socket")?;
    socket.connect(server).await.context("UDP connect")?;
    socket.send(&bytes).await.context("sending the query")?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let len = socket
            .recv(&mut buf)
            .await
            .with_context(|| format!("no answer from {server}"))?;
        // Anything that is not the reply to this query is ignored.
        if let Ok(message) = Message::from_vec(&buf[..len])
            && message.metadata.id == id
            && message.metadata.message_type == MessageType::Response
        {
            return Ok(message);
        }
    }
}

async fn query_tcp(server: SocketAddr, name: &Name, rtype: RecordType) -> anyhow::Result<Message> {
    let id = random_id();
    let bytes = query_bytes(id, name, rtype)?;
    let mut stream = tokio::net::TcpStream::connect(server)
        .await
        .with_context(|| format!("TCP connect to {server}"))?;
    let len = u16::try_from(bytes.len()).context("query too long")?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    let message = Message::from_vec(&buf).context("malformed TCP answer")?;
    if message.metadata.id != id {
        bail!("TCP answer with a wrong ID");
    }
    Ok(message)
}

// === client ===

/// Sends one request to the control socket at `path` and returns the
/// response's payload (`explain`, `stats` or `reload`), or its error.
pub async fn request(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let cmd = match request {
        Request::Explain { .. } => "explain",
        Request::Stats => "stats",
        Request::Reload => "reload",
    };
    let response = tokio::time::timeout(timeout, async {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        write.write_all(line.as_bytes()).await?;
        let mut reader = BufReader::new(read);
        let mut response = String::new();
        reader.read_line(&mut response).await?;
        if response.is_empty() {
            bail!("{} closed the connection without answering", path.display());
        }
        Ok::<_, anyhow::Error>(response)
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "{} did not answer within {}",
            path.display(),
            humantime::format_duration(timeout)
        )
    })??;
    let mut value: serde_json::Value =
        serde_json::from_str(&response).context("malformed control response")?;
    if value["ok"].as_bool() != Some(true) {
        bail!(
            "{}",
            value["error"]
                .as_str()
                .unwrap_or("the server refused the request")
        );
    }
    Ok(value[cmd].take())
}

// === human-readable output ===

/// The explain report as text for a terminal.
pub fn render_explain(report: &ExplainReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} (zone {})",
        report.name, report.qtype, report.zone
    );
    match (&report.answer, &report.answer_error) {
        (Some(answer), _) => {
            let _ = writeln!(
                out,
                "  answer:    {} from {} over {} in {} ms",
                answer.rcode, answer.server, answer.transport, answer.rtt_ms
            );
            for record in &answer.answers {
                let _ = writeln!(
                    out,
                    "             {} {} {} {}",
                    record.name, record.ttl, record.rtype, record.data
                );
            }
            if answer.answers.is_empty() {
                for record in &answer.authority {
                    let _ = writeln!(
                        out,
                        "             (authority) {} {} {}",
                        record.name, record.ttl, record.rtype
                    );
                }
            }
            if !answer.ede.is_empty() {
                let codes: Vec<String> = answer
                    .ede
                    .iter()
                    .map(|code| match *code {
                        EDE_STALE_ANSWER => "3 (Stale Answer)".to_owned(),
                        other => other.to_string(),
                    })
                    .collect();
                let _ = writeln!(out, "  ede:       {}", codes.join(", "));
            }
        }
        (None, Some(error)) => {
            let _ = writeln!(out, "  answer:    none ({error})");
        }
        (None, None) => {
            let _ = writeln!(out, "  answer:    none");
        }
    }
    let why = match report.source.as_str() {
        "fresh" => "Consul data refreshed within the last two refresh periods",
        "stale" => "the last good Consul data: Consul is failing (short TTL, EDE 3)",
        "snapshot" => "the hosts snapshot: no usable Consul data (short TTL, EDE 3)",
        "upstream" => "an upstream resolver, just now",
        "cache" => "the forwarder's response cache",
        "local" => "the local hosts files",
        _ => "nothing cached: synthesised from the name, or an error",
    };
    let _ = writeln!(out, "  source:    {} ({why})", report.source);
    if let Some(note) = &report.note {
        let _ = writeln!(out, "  note:      {note}");
    }
    if let Some(catalog) = &report.catalog {
        let mut line = format!(
            "  catalog:   {} {}{}: {}",
            catalog.kind,
            catalog.name,
            catalog
                .datacenter
                .as_ref()
                .map(|dc| format!(" (dc {dc})"))
                .unwrap_or_default(),
            catalog.state
        );
        if let Some(instances) = catalog.instances {
            let _ = write!(line, ", {instances} healthy instance(s)");
        }
        if let Some(age) = catalog.age_seconds {
            let _ = write!(line, ", refreshed {age:.1} s ago");
        }
        if let Some(index) = catalog.consul_index {
            let _ = write!(line, ", Consul index {index}");
        }
        if let Some(refresh) = &catalog.refresh {
            let _ = write!(line, ", {refresh}");
        }
        let _ = writeln!(out, "{line}");
        if let Some(error) = &catalog.last_error {
            let _ = writeln!(out, "  last error: {error}");
        }
    }
    if report.zone == "consul" {
        let _ = writeln!(
            out,
            "  consul:    {}",
            if report.consul_unavailable {
                "unavailable (circuit breaker open: serving stale data or the snapshot)"
            } else {
                "reachable"
            }
        );
        match &report.snapshot {
            Some(snapshot) => {
                let _ = writeln!(
                    out,
                    "  snapshot:  generation {}, {} old, dc {}, {} services, {} nodes{}",
                    snapshot.generation,
                    humantime::format_duration(Duration::from_secs(snapshot.age_seconds)),
                    snapshot.datacenter,
                    snapshot.services,
                    snapshot.nodes,
                    match snapshot.has_name {
                        Some(true) => "; knows this name",
                        Some(false) => "; does not know this name",
                        None => "",
                    }
                );
            }
            None => {
                let _ = writeln!(out, "  snapshot:  none in memory");
            }
        }
    }
    if let Some(cache) = &report.forward_cache {
        let field = |key: &str| {
            cache
                .get(key)
                .filter(|v| !v.is_null())
                .map(ToString::to_string)
        };
        let mut line = format!(
            "  fwd cache: {}",
            cache
                .get("state")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
        );
        if let Some(age) = field("age_secs") {
            let _ = write!(line, ", stored {age} s ago");
        }
        if let Some(left) = field("remaining_ttl_secs") {
            let _ = write!(line, ", {left} s of TTL left");
        }
        if let Some(by) = cache.get("answered_by").and_then(|v| v.as_str()) {
            let _ = write!(line, ", answered by {by}");
        }
        if let Some(rule) = cache.get("rule").and_then(|v| v.as_str()) {
            let _ = write!(line, ", rule {rule}");
        }
        let _ = writeln!(out, "{line}");
    }
    if let Some(upstreams) = &report.upstreams {
        let _ = writeln!(
            out,
            "  upstreams: {}",
            if upstreams.is_empty() {
                "none configured".to_owned()
            } else {
                upstreams.join(", ")
            }
        );
    }
    out
}

// === `dnsfront explain` ===

/// How long `explain` waits for the server (it waits up to a few seconds on
/// our own listener and, for a never-seen name, on Consul).
const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket to talk to: `--control`, else the first that exists of
/// [`client_candidates`] for the config's state dir (`--config`, else
/// `/etc/dnsfront/dnsfront.toml` when it exists, else the defaults).
pub fn find_socket(config: Option<&Path>, control: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = control {
        return Ok(path.to_owned());
    }
    let file = config.map(Path::to_owned).or_else(|| {
        let default = Path::new(crate::check::DEFAULT_CONFIG_FILE);
        default.exists().then(|| default.to_owned())
    });
    let raw = match &file {
        Some(path) => crate::config::RawConfig::load(path)?,
        None => crate::config::RawConfig::default(),
    };
    let candidates = client_candidates(&raw.state.dir);
    candidates
        .iter()
        .find(|path| path.exists())
        .cloned()
        .with_context(|| {
            format!(
                "no control socket found (looked at {}); is dnsfront serve running? Pass --control PATH",
                candidates
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// `dnsfront explain NAME [TYPE]`: prints the running server's report.
pub async fn run_explain(args: crate::cli::ExplainArgs) -> anyhow::Result<()> {
    let path = find_socket(args.config.as_deref(), args.control.as_deref())?;
    let value = request(
        &path,
        &Request::Explain {
            name: args.name.clone(),
            qtype: args.qtype.clone(),
        },
        EXPLAIN_TIMEOUT,
    )
    .await?;
    if args.json {
        println!("{value}");
    } else {
        let report: ExplainReport =
            serde_json::from_value(value).context("malformed explain report")?;
        print!("{}", render_explain(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> ConsulName {
        let labels: Vec<&str> = name.split('.').collect();
        classify(&labels)
    }

    fn service(name: &str, dc: Option<&str>) -> ConsulName {
        ConsulName::Service {
            name: name.to_owned(),
            datacenter: dc.map(str::to_owned),
        }
    }

    #[test]
    fn classifies_the_consul_name_forms() {
        assert_eq!(parse("web.service"), service("web", None));
        assert_eq!(parse("primary.web.service"), service("web", None));
        assert_eq!(
            parse("v1.blue.web.service.dc2"),
            service("web", Some("dc2"))
        );
        assert_eq!(parse("_web._tcp.service"), service("web", None));
        assert_eq!(parse("_web._primary"), service("web", None));
        assert_eq!(
            parse("node-1.node.dc1"),
            ConsulName::Node {
                name: "node-1".into(),
                datacenter: Some("dc1".into())
            }
        );
        assert_eq!(parse("0a000001.addr"), ConsulName::Addr);
        assert_eq!(parse("service"), ConsulName::Other);
        assert_eq!(parse("web.query"), ConsulName::Other);
    }

    #[test]
    fn requests_are_one_json_object_with_a_cmd() {
        let explain: Request =
            serde_json::from_str(r#"{"cmd":"explain","name":"web.service.consul","type":"A"}"#)
                .expect("parses");
        assert_eq!(
            explain,
            Request::Explain {
                name: "web.service.consul".into(),
                qtype: Some("A".into())
            }
        );
        let stats: Request = serde_json::from_str(r#"{"cmd":"stats"}"#).expect("parses");
        assert_eq!(stats, Request::Stats);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rm -rf"}"#).is_err());
    }

    #[test]
    fn self_queries_go_to_loopback() {
        let wildcard: SocketAddr = "0.0.0.0:53".parse().expect("addr");
        let public: SocketAddr = "192.0.2.1:53".parse().expect("addr");
        assert_eq!(
            self_target(&[public, wildcard]),
            Some("127.0.0.1:53".parse().expect("addr"))
        );
        assert_eq!(self_target(&[public]), Some(public));
    }
}
