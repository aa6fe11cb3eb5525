//! `consul-sim`: serve a simulated Consul HTTP API until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use consul_sim::Sim;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "consul-sim",
    about = "Simulated Consul 1.16 HTTP API for dnsfront development"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: SocketAddr,
    /// JSON fixture to load (defaults to an empty catalog).
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Load the built-in demo catalog.
    #[arg(long, conflicts_with = "fixture")]
    demo: bool,
    /// Valid ACL token (repeatable); without any, ACLs are off.
    #[arg(long = "acl-token")]
    acl_tokens: Vec<String>,
    /// Disable the blocking-query jitter (wait/16) that real Consul adds.
    #[arg(long)]
    no_jitter: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let fixture = match &cli.fixture {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading fixture {}", path.display()))?,
        ),
        None if cli.demo => Some(consul_sim::DEMO_FIXTURE.to_owned()),
        None => None,
    };
    let sim = match &fixture {
        Some(json) => Sim::from_fixture(json).context("loading fixture")?,
        None => Sim::new(),
    };
    sim.set_jitter(!cli.no_jitter);
    let tokens: Vec<&str> = cli.acl_tokens.iter().map(String::as_str).collect();
    sim.set_acl_tokens(&tokens);
    let server = sim
        .serve(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    println!("consul-sim listening on {}", server.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.shutdown().await;
    Ok(())
}
