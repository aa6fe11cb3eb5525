//! `bench-consul-sim`: `consul-sim` plus a debug HTTP API for `benches/load`.
//!
//! It serves the same simulated Consul as the `consul-sim` binary, and on a
//! second address a small debug API to read the simulator's request log and to
//! script changes and delays while a benchmark runs:
//!
//! - `GET /debug/requests`: `{"total": N, "paths": {"/v1/health/service/web": 12, ...}}`,
//!   the requests logged since start or the last reset, by path;
//! - `POST /debug/requests/reset`: clears the log;
//! - `POST /debug/delay?path=PREFIX&ms=N`: delays every request whose path starts with PREFIX;
//! - `POST /debug/clear-faults`: removes every delay;
//! - `POST /debug/check?node=N&id=ID&status=passing|warning|critical`: sets a check's status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use clap::Parser;
use consul_sim::{Fault, Sim};
use serde::{Deserialize, Serialize};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "bench-consul-sim",
    about = "Simulated Consul with a debug API (request counts, delays, check changes) for benches/load"
)]
struct Cli {
    /// Address of the simulated Consul HTTP API.
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: SocketAddr,
    /// Address of the debug API.
    #[arg(long, default_value = "127.0.0.1:0")]
    debug_listen: SocketAddr,
    /// JSON fixture to load (consul-sim's format); empty catalog without it.
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Disable the blocking-query jitter (wait/16) that real Consul adds.
    #[arg(long)]
    no_jitter: bool,
}

/// Answer of `GET /debug/requests`.
#[derive(Debug, Serialize)]
struct Counts {
    total: usize,
    paths: BTreeMap<String, usize>,
}

#[derive(Debug, Deserialize)]
struct DelayParams {
    path: String,
    ms: u64,
}

#[derive(Debug, Deserialize)]
struct CheckParams {
    node: String,
    id: String,
    status: String,
}

async fn requests(State(sim): State<Sim>) -> Json<Counts> {
    let log = sim.requests();
    let mut paths = BTreeMap::new();
    for record in &log {
        *paths.entry(record.path.clone()).or_insert(0) += 1;
    }
    Json(Counts {
        total: log.len(),
        paths,
    })
}

async fn reset(State(sim): State<Sim>) -> &'static str {
    sim.reset_requests();
    "ok"
}

async fn delay(State(sim): State<Sim>, Query(params): Query<DelayParams>) -> &'static str {
    sim.inject(Fault::Delay {
        path_prefix: params.path,
        delay: Duration::from_millis(params.ms),
    });
    "ok"
}

async fn clear_faults(State(sim): State<Sim>) -> &'static str {
    sim.clear_faults();
    "ok"
}

async fn check(State(sim): State<Sim>, Query(params): Query<CheckParams>) -> &'static str {
    sim.set_check(&params.node, &params.id, &params.status);
    "ok"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let fixture = match &cli.fixture {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading fixture {}", path.display()))?,
        ),
        None => None,
    };
    let sim = match &fixture {
        Some(json) => Sim::from_fixture(json).context("loading fixture")?,
        None => Sim::new(),
    };
    sim.set_jitter(!cli.no_jitter);
    let server = sim
        .serve(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;

    let debug = axum::Router::new()
        .route("/debug/requests", get(requests))
        .route("/debug/requests/reset", post(reset))
        .route("/debug/delay", post(delay))
        .route("/debug/clear-faults", post(clear_faults))
        .route("/debug/check", post(check))
        .with_state(sim.clone());
    let listener = tokio::net::TcpListener::bind(cli.debug_listen)
        .await
        .with_context(|| format!("listening on {}", cli.debug_listen))?;
    let debug_addr = listener.local_addr().context("debug address")?;
    println!(
        "{{\"consul\":\"{}\",\"debug\":\"http://{debug_addr}\"}}",
        server.url()
    );
    tokio::select! {
        result = axum::serve(listener, debug) => result.context("debug server")?,
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
    }
    server.shutdown().await;
    Ok(())
}
