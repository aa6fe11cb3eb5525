//! `dnsfront demo`: a resolver with an embedded simulated Consul, so `dig`
//! works at once on any machine, without root and without a Consul agent.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::cli::DemoArgs;
use crate::config::{self, Env, RawConfig};
use crate::{App, shutdown_on_signals};

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let sim = consul_sim::Sim::new();
    sim.load_fixture(consul_sim::DEMO_FIXTURE)
        .context("loading the demo catalog")?;
    let consul = sim
        .serve("127.0.0.1:0".parse().context("sim address")?)
        .await
        .context("starting the simulated Consul")?;

    // A publisher, as on a Consul server node, so the demo shows the whole
    // snapshot chain: KV key → follower → state dir.
    let publisher_client = dnsfront_consul::Client::new(dnsfront_consul::Config {
        address: consul.url(),
        ..dnsfront_consul::Config::default()
    })?;
    let publisher = dnsfront_snapshot::publisher::Publisher::new(
        dnsfront_snapshot::publisher::PublisherConfig {
            lock_delay: std::time::Duration::ZERO,
            ..dnsfront_snapshot::publisher::PublisherConfig::new("demo-publisher")
        },
        publisher_client,
    );
    let state_dir = std::env::temp_dir().join(format!("dnsfront-demo-{}", std::process::id()));

    let mut raw = RawConfig::default();
    raw.dns.listen = args.listen.clone();
    raw.consul.address = Some(consul.url());
    raw.state.dir = state_dir.clone();
    // The demo's publisher signs nothing: accepting unsigned snapshots is fine for a
    // simulated catalog on loopback (production sets snapshot.public_key_file).
    raw.snapshot.allow_unsigned = true;
    raw.forward.upstreams = if args.upstream.is_empty() {
        demo_upstreams()
    } else {
        args.upstream.clone()
    };
    // The demo ignores CONSUL_HTTP_ADDR/TOKEN: it talks to its own simulator.
    let settings = raw.validate(&Env::default())?;
    let app = App::build(settings)?;
    let port = app.local_addrs().first().map_or(5353, |addr| addr.port());
    let host = app
        .local_addrs()
        .first()
        .map_or_else(|| "127.0.0.1".to_owned(), |addr| addr.ip().to_string());

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", app.listening_line())?;
    writeln!(
        stdout,
        "\ndnsfront demo: serving DNS on {host} port {port} (UDP and TCP), with a simulated Consul at {} holding a sample catalog.\nTry:\n",
        consul.url()
    )?;
    for (query, why) in [
        (
            "web.service.consul",
            "A records of the healthy web instances (shuffled on every answer)",
        ),
        ("primary.web.service.consul", "tag filter"),
        (
            "web.service.consul SRV",
            "SRV: ports, node targets and their addresses",
        ),
        (
            "_api._tcp.service.consul SRV",
            "RFC 2782 form; api has its own addresses (.addr targets)",
        ),
        (
            "db.service.consul",
            "one db instance is critical, so only the healthy one is answered",
        ),
        ("redis.service.consul AAAA", "IPv6"),
        (
            "billing-db.service.consul",
            "registered at a hostname (RDS): a CNAME, then its addresses",
        ),
        ("0a00000b.addr.consul", "an address encoded in the name"),
        (
            "node-1.node.consul",
            "node lookup (its metadata as TXT in Additional)",
        ),
        (
            "node-1.node.consul TXT",
            "node metadata (RFC 1464 key=value)",
        ),
        (
            "node-1.node.consul AAAA",
            "the node's lan_ipv6 tagged address",
        ),
        ("web.service.dc2.consul", "another datacenter"),
        (
            "consul.service.consul",
            "the Consul servers, as every cluster registers them",
        ),
        (
            "consul NS",
            "the zone's name servers: the Consul servers, with glue",
        ),
        ("consul SOA", "the zone's SOA, the servers in Authority"),
        ("-x 10.0.0.11", "reverse lookup of a Consul address"),
        ("nosuch.service.consul", "NXDOMAIN with the zone's SOA"),
        ("example.com", "forwarded to the upstream resolvers"),
    ] {
        writeln!(stdout, "  dig @{host} -p {port} {query:<34} # {why}")?;
    }
    writeln!(
        stdout,
        "  dig @{host} -p {port} +tcp web.service.consul SRV   # the same over TCP"
    )?;
    writeln!(
        stdout,
        "\nPrepared queries (NAME.query.consul), cluster peers and .connect/.ingress/.virtual names\ngo to a local Consul agent's DNS (dns.agent_dns, 127.0.0.1:8600), which the demo does not run."
    )?;
    writeln!(
        stdout,
        "\nThe outage fallback (hosts snapshot published to Consul KV, followed into the state dir):\n  dnsfront snapshot show --state-dir {0}\n  dnsfront snapshot export --state-dir {0}\n\nCtrl-C stops it.",
        state_dir.display()
    )?;
    drop(stdout);

    let shutdown = shutdown_on_signals()?;
    let publishing = tokio::spawn(publisher.run(shutdown.child_token()));
    app.run(shutdown).await?;
    let _ = publishing.await;
    let _ = std::fs::remove_dir_all(&state_dir);
    consul.shutdown().await;
    Ok(())
}

/// The demo forwards through the machine's usual resolvers. Reading
/// /etc/resolv.conf is safe here only because the demo does not listen on port
/// 53, so resolv.conf cannot point at it; `serve` never reads that file.
fn demo_upstreams() -> Vec<String> {
    let own = Path::new(config::DEFAULT_RESOLV_FILE);
    let text = std::fs::read_to_string(own)
        .or_else(|_| std::fs::read_to_string("/etc/resolv.conf"))
        .unwrap_or_default();
    config::parse_resolv_conf(&text)
        .into_iter()
        .map(|addr| addr.to_string())
        .collect()
}
