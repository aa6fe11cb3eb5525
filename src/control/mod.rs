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
//!
//! - `protocol`: the request and report types (the JSON contract);
//! - `server`: the socket, its connections, `stats` and `reload`;
//! - `explain`: the server's side of `explain` (the router, the catalog, the
//!   snapshot, the forwarder, and a query to our own listener);
//! - `client`: `dnsfront explain` and [`request`] for `check` and scripts;
//! - `render`: the explain report as text;
//! - [`probe`]: one DNS query summarised, for `explain` and `check`.

use std::path::{Path, PathBuf};

mod client;
mod explain;
pub mod probe;
mod protocol;
mod render;
mod server;

pub use client::{find_socket, request, run_explain, run_reload};
pub use protocol::{
    CatalogDetails, DnsAnswer, ExplainReport, RecordLine, Request, SnapshotInfo, Stats,
};
pub use render::render_explain;
pub use server::{Context, ControlServer, ControlSocket};

/// File name of the control socket.
pub const SOCKET_FILE: &str = "control.sock";
/// Where systemd's `RuntimeDirectory=dnsfront` puts it (a client's fallback).
pub const SYSTEMD_SOCKET: &str = "/run/dnsfront/control.sock";

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
