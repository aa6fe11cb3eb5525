//! `fleet-bench`: many real `dnsfront` processes, each in front of its own simulated Consul
//! client agent, all agents sharing one set of simulated servers (one `consul-sim` `Sim`).
//!
//! Each node is one `dnsfront serve` on its own loopback address (`127.77.0.N`), with its
//! own agent listener (`Sim::serve_agent`, agent id `node-N`) and its own state dir. A light
//! DNS driver asks every node for every hot service in turn. The simulator counts what
//! reaches the servers (`Sim::server_stats`: RPCs, egress, streaming subscriptions and change
//! events). The run reports, per node and extrapolated to `--fleet-nodes`:
//!
//! 1. idle load: server RPC/s, egress bytes/s, open subscriptions, over `--window` with no
//!    catalog change;
//! 2. freshness: `--changes` times, one instance of a hot service moves to a new address;
//!    the time until every node's DNS answer shows it (p50, max over nodes and changes), and
//!    what each change cost the servers (RPCs, events);
//! 3. re-issue spread after `Sim::break_streams` (a server restart) and after
//!    `Sim::restore_snapshot`: for each node, the time from the fault until its agent next
//!    sends anything to the servers (an RPC or a new subscription); p50/p90/max. A herd is
//!    every node within ~0; a spread over the client's backoff window is the goal.
//!
//! Side by side: the dnsmasq → Consul DNS setup, computed (not run): every node's dnsmasq
//! asks Consul DNS for each hot name once per TTL (`--dnsmasq-ttl`, 10 s), and each such
//! query is one `Health.ServiceNodes` RPC on a server (Consul DNS without `dns_config.
//! use_cache`), whose response is about the size of this catalog's `/v1/health/service` body.
//!
//! `--set TABLE.KEY=VALUE` overrides dnsfront's config (repeatable; a VALUE that is not a TOML
//! number, boolean, array, table or quoted string is quoted), e.g. `--set catalog.refresh=watch`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use consul_sim::{Registration, ServerStats, Sim, SimServer};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "fleet-bench",
    about = "Many dnsfront processes against simulated Consul agents: server load, freshness, re-issue spread"
)]
struct Cli {
    /// The dnsfront binary.
    #[arg(long, default_value = "target/release/dnsfront")]
    bin: PathBuf,
    /// dnsfront processes to run (at most 250).
    #[arg(long, default_value_t = 30)]
    nodes: usize,
    /// Hot services every node keeps asking for.
    #[arg(long, default_value_t = 30)]
    services: usize,
    /// Instances per service (each on its own catalog node).
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Each node asks for each hot name this often.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    query_interval: Duration,
    /// Idle measurement window (no catalog change).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Catalog changes for the freshness measurement.
    #[arg(long, default_value_t = 3)]
    changes: usize,
    /// Give up waiting for a node to show a change, or to re-issue after a fault, after this.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// dnsfront config override TABLE.KEY=VALUE (repeatable).
    #[arg(long = "set", value_name = "TABLE.KEY=VALUE")]
    sets: Vec<String>,
    /// Agents without the streaming backend (`use_streaming_backend = false`).
    #[arg(long)]
    no_streaming: bool,
    /// Fleet size to extrapolate to.
    #[arg(long, default_value_t = 5000)]
    fleet_nodes: u64,
    /// TTL of Consul DNS answers in the dnsmasq → Consul DNS comparison.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    dnsmasq_ttl: Duration,
    /// DNS port of every node (each on its own loopback address).
    #[arg(long, default_value_t = 5300)]
    dns_port: u16,
    /// Keep the work directory (configs, state dirs, dnsfront logs).
    #[arg(long)]
    keep: bool,
}

/// One dnsfront node: its DNS address, its agent and its process.
struct Node {
    dns: SocketAddr,
    agent_id: String,
    _agent: SimServer,
    child: Child,
}

fn service_name(index: usize) -> String {
    format!("svc{index:02}")
}

/// The catalog: `services` × `instances`, each instance on its own node `h-S-I` at `10.S.I.1`.
fn catalog(cli: &Cli) -> Sim {
    let sim = Sim::new();
    for service in 0..cli.services {
        for instance in 0..cli.instances {
            let name = service_name(service);
            sim.register(
                Registration::new(&name)
                    .id(&format!("{name}-{instance}"))
                    .node(
                        &format!("h-{service}-{instance}"),
                        &format!("10.{service}.{instance}.1"),
                    )
                    .port(8080)
                    .passing(),
            );
        }
    }
    // A KV table that is not empty, as on any real cluster: a snapshot restore lowers its
    // index too, so the nodes' blocking reads of the snapshot key return at once.
    sim.kv_put("fleet-bench/unrelated", "x");
    sim.set_jitter(true);
    sim.set_streaming(!cli.no_streaming);
    sim
}

/// `TABLE.KEY=VALUE` as (table, key, TOML value).
fn parse_set(set: &str) -> anyhow::Result<(String, String, String)> {
    let (path, value) = set
        .split_once('=')
        .with_context(|| format!("--set {set}: expected TABLE.KEY=VALUE"))?;
    let (table, key) = path
        .trim()
        .rsplit_once('.')
        .with_context(|| format!("--set {set}: expected TABLE.KEY=VALUE"))?;
    let value = value.trim();
    let is_toml = value.parse::<f64>().is_ok()
        || matches!(value, "true" | "false")
        || value.starts_with(['[', '{', '"', '\'']);
    let value = if is_toml {
        value.to_owned()
    } else {
        format!("{value:?}")
    };
    Ok((table.to_owned(), key.to_owned(), value))
}

/// A node's config: the bench's base settings, then the overrides.
fn node_config(
    dns: SocketAddr,
    agent_url: &str,
    state_dir: &Path,
    sets: &[(String, String, String)],
) -> String {
    let mut tables: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut put = |table: &str, key: &str, value: String| {
        tables
            .entry(table.to_owned())
            .or_default()
            .insert(key.to_owned(), value);
    };
    put("dns", "listen", format!("[\"{dns}\"]"));
    put("dns", "agent_dns", "\"\"".to_owned());
    put("consul", "address", format!("{agent_url:?}"));
    put("forward", "upstreams", "[\"127.0.0.1:9\"]".to_owned());
    put(
        "state",
        "dir",
        format!("{:?}", state_dir.display().to_string()),
    );
    put("metrics", "statsd", "false".to_owned());
    put("log", "level", "\"warn\"".to_owned());
    for (table, key, value) in sets {
        put(table, key, value.clone());
    }
    let mut text = String::new();
    for (table, keys) in &tables {
        text.push_str(&format!("[{table}]\n"));
        for (key, value) in keys {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text.push('\n');
    }
    text
}

async fn start_node(
    cli: &Cli,
    sim: &Sim,
    work: &Path,
    index: usize,
    sets: &[(String, String, String)],
) -> anyhow::Result<Node> {
    let octet = u8::try_from(index + 1).context("at most 250 nodes")?;
    let ip = Ipv4Addr::new(127, 77, 0, octet);
    let agent_id = format!("node-{index:03}");
    let agent = sim
        .serve_agent(SocketAddr::from((ip, 0)), &agent_id)
        .await
        .with_context(|| format!("agent listener on {ip}"))?;
    let dir = work.join(&agent_id);
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).context("state dir")?;
    let dns = SocketAddr::from((ip, cli.dns_port));
    let config = dir.join("dnsfront.toml");
    std::fs::write(&config, node_config(dns, &agent.url(), &state_dir, sets))
        .context("writing config")?;
    let log = std::fs::File::create(dir.join("dnsfront.log")).context("log file")?;
    let child = Command::new(&cli.bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone().context("log file")?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", cli.bin.display()))?;
    Ok(Node {
        dns,
        agent_id,
        _agent: agent,
        child,
    })
}

/// One A query; the answer's rcode and addresses (`None` on timeout or a bad reply).
async fn ask(dns: SocketAddr, name: &str) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_ascii(format!("{name}.service.consul.")).ok()?,
        RecordType::A,
    ));
    let id = query.metadata.id;
    socket.send_to(&query.to_vec().ok()?, dns).await.ok()?;
    let mut buffer = [0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer))
        .await
        .ok()?
        .ok()?;
    let reply = Message::from_vec(&buffer[..len]).ok()?;
    if reply.metadata.id != id {
        return None;
    }
    let addresses = reply
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Some((reply.metadata.response_code, addresses))
}

/// Percentile (0–100) of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], pct: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (sorted.len() * pct).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// Requests a node has sent to its agent, counted as each arrives (a re-issued blocking
/// read is seen when it is sent, not when it returns).
fn sent(stats: &ServerStats, agent: &str) -> u64 {
    stats
        .agents
        .get(agent)
        .map_or(0, |agent| agent.requests_received)
}

/// Waits until every node answers every name with at least one address.
async fn wait_ready(nodes: &[Node], names: &[String], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for node in nodes {
        for name in names {
            loop {
                if let Some((ResponseCode::NoError, addresses)) = ask(node.dns, name).await
                    && !addresses.is_empty()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} never answered {name} (see its dnsfront.log)",
                        node.agent_id
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// The light DNS driver: every node asks every name once per `interval`, spread evenly.
/// Counts answers that are not NOERROR with addresses.
fn start_driver(
    nodes: &[Node],
    names: &[String],
    interval: Duration,
    failures: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let gap = interval / u32::try_from(names.len().max(1)).unwrap_or(1);
    nodes
        .iter()
        .enumerate()
        .map(|(position, node)| {
            let dns = node.dns;
            let names = names.to_vec();
            let failures = Arc::clone(&failures);
            let offset = gap * u32::try_from(position).unwrap_or(0) / 7;
            tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut ticker = tokio::time::interval(gap);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for name in names.iter().cycle() {
                    ticker.tick().await;
                    match ask(dns, name).await {
                        Some((ResponseCode::NoError, addresses)) if !addresses.is_empty() => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Freshness of one change: per node, the time until its answer shows `address`.
async fn freshness(
    nodes: &[Node],
    name: &str,
    address: Ipv4Addr,
    started: Instant,
    timeout: Duration,
) -> Vec<Option<Duration>> {
    let probes = nodes.iter().map(|node| {
        let dns = node.dns;
        let name = name.to_owned();
        tokio::spawn(async move {
            while started.elapsed() < timeout {
                if let Some((_, addresses)) = ask(dns, &name).await
                    && addresses.contains(&address)
                {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        })
    });
    let mut seen = Vec::new();
    for probe in probes.collect::<Vec<_>>() {
        seen.push(probe.await.ok().flatten());
    }
    seen
}

/// Re-issue spread after a fault: per node, the time until its agent next sends anything
/// to the servers; and the times of every request sent meanwhile (sampled every 2 ms).
struct Spread {
    first_per_node: Vec<Duration>,
    every_request: Vec<Duration>,
    /// Sent by the agents at the fault itself (re-subscriptions after a restore).
    at_fault: Delta,
    /// Sent after it, by dnsfront's re-issued reads.
    cost: Delta,
}

async fn reissues(
    sim: &Sim,
    nodes: &[Node],
    fault: impl FnOnce(&Sim),
    timeout: Duration,
) -> Spread {
    let before_fault = sim.server_stats();
    let started = Instant::now();
    fault(sim);
    // What the fault itself made the agents send at once (a snapshot restore re-subscribes
    // every view) is the agents' doing, not a re-issue by dnsfront: counted apart.
    let before = sim.server_stats();
    let at_fault = delta(&before_fault, &before);
    let mut first: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut last: BTreeMap<&str, u64> = nodes
        .iter()
        .map(|node| (node.agent_id.as_str(), sent(&before, &node.agent_id)))
        .collect();
    let mut every_request = Vec::new();
    while started.elapsed() < timeout {
        let now = sim.server_stats();
        let elapsed = started.elapsed();
        for node in nodes {
            let count = sent(&now, &node.agent_id);
            let previous = last.insert(node.agent_id.as_str(), count).unwrap_or(count);
            if count > previous {
                first.entry(node.agent_id.as_str()).or_insert(elapsed);
                every_request.extend(std::iter::repeat_n(elapsed, (count - previous) as usize));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut first_per_node: Vec<Duration> = first.into_values().collect();
    first_per_node.sort();
    every_request.sort();
    Spread {
        first_per_node,
        every_request,
        at_fault,
        cost: delta(&before, &sim.server_stats()),
    }
}

/// Load counters between two stats snapshots.
struct Delta {
    rpcs: u64,
    egress: u64,
    created: u64,
    events: u64,
}

fn delta(before: &ServerStats, after: &ServerStats) -> Delta {
    Delta {
        rpcs: after.rpcs - before.rpcs,
        egress: after.egress_bytes - before.egress_bytes,
        created: after.subscriptions_created - before.subscriptions_created,
        events: after.change_events - before.change_events,
    }
}

fn report_spread(label: &str, spread: &Spread, nodes: usize, timeout: Duration) {
    let first = &spread.first_per_node;
    let every = &spread.every_request;
    println!(
        "{label}: within {timeout:?}, {}/{nodes} nodes sent again; first per node p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms; all {} requests p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms (RPCs {}, new subscriptions {}; at the fault itself, by the agents: {} re-subscriptions)",
        first.len(),
        percentile(first, 50),
        percentile(first, 90),
        percentile(first, 100),
        every.len(),
        percentile(every, 50),
        percentile(every, 90),
        percentile(every, 100),
        spread.cost.rpcs,
        spread.cost.created,
        spread.at_fault.created,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.nodes == 0 || cli.nodes > 250 || cli.services == 0 {
        bail!("--nodes must be 1 to 250 and --services at least 1");
    }
    let sets = cli
        .sets
        .iter()
        .map(|set| parse_set(set))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sim = catalog(&cli);
    let names: Vec<String> = (0..cli.services).map(service_name).collect();
    let work = tempfile::Builder::new()
        .prefix("fleet-bench.")
        .tempdir()
        .context("work dir")?;

    // Size of one health read (the dnsmasq comparison's per-RPC egress), read in-process.
    let sample = sim
        .handle(
            http::Request::get(format!("/v1/health/service/{}?stale", names[0]))
                .body(bytes::Bytes::new())
                .context("request")?,
        )
        .await
        .into_body()
        .len();

    let mut nodes = Vec::with_capacity(cli.nodes);
    for index in 0..cli.nodes {
        nodes.push(start_node(&cli, &sim, work.path(), index, &sets).await?);
    }
    let started = Instant::now();
    wait_ready(&nodes, &names, Duration::from_secs(120)).await?;
    println!(
        "fleet-bench: {} dnsfront nodes x {} hot services ({} instances each), all answering after {:.1} s; overrides: {}",
        cli.nodes,
        cli.services,
        cli.instances,
        started.elapsed().as_secs_f64(),
        if cli.sets.is_empty() {
            "none (defaults)".to_owned()
        } else {
            cli.sets.join(" ")
        },
    );
    let failures = Arc::new(AtomicU64::new(0));
    let driver = start_driver(&nodes, &names, cli.query_interval, Arc::clone(&failures));
    // Let first fetches settle into the steady state (watches set up, polls spread).
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 1. Idle load.
    let before = sim.server_stats();
    let window_start = Instant::now();
    tokio::time::sleep(cli.window).await;
    let after = sim.server_stats();
    let seconds = window_start.elapsed().as_secs_f64();
    let idle = delta(&before, &after);
    let n = cli.nodes as f64;
    let fleet = cli.fleet_nodes as f64;
    let rpc_per_node = idle.rpcs as f64 / seconds / n;
    let egress_per_node = idle.egress as f64 / seconds / n;
    let subscriptions_per_node = after.subscriptions as f64 / n;
    let dnsmasq_rpc_per_node = cli.services as f64 / cli.dnsmasq_ttl.as_secs_f64();
    println!(
        "idle {seconds:.0} s: per node {rpc_per_node:.3} RPC/s, {egress_per_node:.0} B/s egress, {subscriptions_per_node:.1} subscriptions, {:.3} events/s; held blocking queries {}, held streamed reads {}",
        idle.events as f64 / seconds / n,
        after.held_blocking_queries,
        after.held_streamed_reads,
    );
    println!(
        "  x {} nodes: {:.0} RPC/s, {:.1} MB/s egress, {:.0} subscriptions",
        cli.fleet_nodes,
        rpc_per_node * fleet,
        egress_per_node * fleet / 1e6,
        subscriptions_per_node * fleet,
    );
    println!(
        "  dnsmasq -> Consul DNS (computed: {} names / {} s TTL per node, 1 Health.ServiceNodes RPC each, {sample} B per answer): {dnsmasq_rpc_per_node:.1} RPC/s per node; x {} nodes: {:.0} RPC/s, {:.1} MB/s; ratio {:.0}x",
        cli.services,
        cli.dnsmasq_ttl.as_secs(),
        cli.fleet_nodes,
        dnsmasq_rpc_per_node * fleet,
        dnsmasq_rpc_per_node * fleet * sample as f64 / 1e6,
        if rpc_per_node > 0.0 {
            dnsmasq_rpc_per_node / rpc_per_node
        } else {
            f64::INFINITY
        },
    );

    // 2. Freshness.
    let mut fresh = Vec::new();
    let mut missed = 0;
    let mut change_cost = Vec::new();
    for change in 0..cli.changes {
        let service = change % cli.services;
        let address = Ipv4Addr::new(10, service as u8, 0, 100 + change as u8);
        let before = sim.server_stats();
        let started = Instant::now();
        sim.set_node_address(&format!("h-{service}-0"), &address.to_string());
        for seen in freshness(
            &nodes,
            &service_name(service),
            address,
            started,
            cli.timeout,
        )
        .await
        {
            match seen {
                Some(time) => fresh.push(time),
                None => missed += 1,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        change_cost.push(delta(&before, &sim.server_stats()));
    }
    fresh.sort();
    let per_change = |pick: fn(&Delta) -> u64| {
        change_cost.iter().map(pick).sum::<u64>() as f64 / change_cost.len().max(1) as f64 / n
    };
    println!(
        "freshness over {} changes: p50 {:.0} ms, max {:.0} ms, {missed} node answers never showed it within {:?}; per change and node: {:.2} RPCs, {:.2} events (those over ~1 s after each change include idle load)",
        cli.changes,
        percentile(&fresh, 50),
        percentile(&fresh, 100),
        cli.timeout,
        per_change(|d| d.rpcs),
        per_change(|d| d.events),
    );

    // 3. Re-issue spread after a server restart and after a snapshot restore.
    let failures_before = failures.load(Ordering::Relaxed);
    let spread = reissues(&sim, &nodes, Sim::break_streams, cli.timeout).await;
    report_spread("break every stream", &spread, cli.nodes, cli.timeout);
    let spread = reissues(&sim, &nodes, Sim::restore_snapshot, cli.timeout).await;
    report_spread("lower every index", &spread, cli.nodes, cli.timeout);
    println!(
        "DNS answers without addresses: {} during the faults, {} in all",
        failures.load(Ordering::Relaxed) - failures_before,
        failures.load(Ordering::Relaxed),
    );

    for task in driver {
        task.abort();
    }
    for node in &mut nodes {
        let _ = node.child.start_kill();
    }
    for node in &mut nodes {
        let _ = node.child.wait().await;
    }
    if cli.keep {
        println!("work dir kept: {}", work.keep().display());
    }
    Ok(())
}
