//! `consul-sim`: serve a simulated Consul HTTP API until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use consul_sim::{Sim, TlsOptions};

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
    /// Serve HTTPS with this certificate (PEM; needs --tls-key).
    #[arg(long, requires = "tls_key", conflicts_with = "unix")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM), as an agent with
    /// verify_incoming does.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Listen on this Unix socket instead of --listen (plain HTTP).
    #[arg(long)]
    unix: Option<PathBuf>,
}

/// The TLS flags as [`TlsOptions`], when --tls-cert is given.
fn tls_options(cli: &Cli) -> anyhow::Result<Option<TlsOptions>> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) else {
        return Ok(None);
    };
    Ok(Some(TlsOptions {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
        client_ca_pem: cli.tls_client_ca.as_ref().map(read).transpose()?,
    }))
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
    let server = match (&cli.unix, tls_options(&cli)?) {
        (Some(path), _) => sim
            .serve_unix(path)
            .await
            .with_context(|| format!("listening on {}", path.display()))?,
        (None, Some(tls)) => sim
            .serve_tls(cli.listen, &tls)
            .await
            .with_context(|| format!("listening on {} with TLS", cli.listen))?,
        (None, None) => sim
            .serve(cli.listen)
            .await
            .with_context(|| format!("listening on {}", cli.listen))?,
    };
    println!("consul-sim listening on {}", server.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.shutdown().await;
    Ok(())
}
