//! `delivery-bench`: time from a snapshot write in Consul KV to the last follower holding it
//! (issue 17, next to kvexpress's "under 500 ms to 1,000 nodes"), and what it costs Consul.
//!
//! The simulator serves over HTTP on loopback. Followers are the real
//! `dnsfront_snapshot::Follower` (blocking read, decode, verify, fsync to its own state dir,
//! swap), each with its own HTTP client: `--followers N` as tasks in this process, or
//! `--processes P` separate processes (this binary, `child` mode) to check that both agree.
//! Each round writes a new generation with a plain KV PUT over HTTP (what the publisher's
//! CAS write is), then its pointer (followers block on the pointer and fetch the value
//! within `--spread`), and waits until every follower applied it. Reported per round set: p50,
//! p99 and max of write→applied over all followers and rounds, and the simulator's requests
//! and response-body bytes per round.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use consul_sim::Sim;
use dnsfront_consul::{self as consul, InstanceStatus, KvPutOptions, Node, ServiceInstance};
use dnsfront_snapshot::events::{Event, EventSink};
use dnsfront_snapshot::follower::{Follower, FollowerConfig};
use dnsfront_snapshot::{Hosts, Snapshot};
use tokio_util::sync::CancellationToken;

const KEY: &str = "dnsfront/hosts";
const POINTER_KEY: &str = "dnsfront/hosts.pointer";

#[derive(Debug, Parser)]
#[command(
    name = "delivery-bench",
    about = "Snapshot delivery time to N followers"
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Followers as tasks in this process (ignored with --processes).
    #[arg(long, default_value_t = 1000)]
    followers: usize,
    /// Followers as separate processes (0 = in-process tasks).
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Rounds (writes) measured, after one warm-up write.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// `snapshot.fetch_spread` of every follower.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    spread: Duration,
    /// Services in the snapshot (4 instances each, spread over the nodes).
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Nodes in the snapshot.
    #[arg(long, default_value_t = 500)]
    nodes: usize,
    /// Where the followers' state dirs go (one fsync per follower per round).
    #[arg(long)]
    state_root: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// One follower process: prints `applied GENERATION UNIX_NANOS` per applied snapshot.
    Child {
        #[arg(long)]
        consul: String,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, value_parser = humantime::parse_duration)]
        spread: Duration,
    },
}

/// Wall-clock nanoseconds (comparable across processes on one machine).
fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// Records (generation, applied at) from the follower's `applied` events.
#[derive(Debug, Default)]
struct Applied(Mutex<Vec<(u64, u128)>>);

impl EventSink for Applied {
    fn send(&self, event: Event) {
        if !event.tags.iter().any(|tag| tag == "snapshot_event:applied") {
            return;
        }
        let at = now_nanos();
        if let Some(generation) = generation_of(&event.text) {
            self.0.lock().expect("applied").push((generation, at));
        }
    }
}

/// "Hosts snapshot generation N (…" → N.
fn generation_of(text: &str) -> Option<u64> {
    text.split_once("generation ")?
        .1
        .split(' ')
        .next()?
        .parse()
        .ok()
}

fn follower_config(state_dir: PathBuf, spread: Duration, events: Arc<Applied>) -> FollowerConfig {
    FollowerConfig {
        allow_unsigned: true,
        fetch_spread: spread,
        events: Some(events),
        ..FollowerConfig::new(state_dir)
    }
}

fn client(address: &str) -> anyhow::Result<consul::Client> {
    Ok(consul::Client::new(consul::Config {
        address: address.to_owned(),
        request_timeout: Duration::from_secs(30),
        ..consul::Config::default()
    })?)
}

/// A deterministic catalog: `services` services of 4 instances over `nodes` nodes.
fn catalog(generation: u64, services: usize, nodes: usize) -> Snapshot {
    let address = |index: usize| {
        IpAddr::V4(Ipv4Addr::new(
            10,
            (index >> 16) as u8,
            (index >> 8) as u8,
            index as u8,
        ))
    };
    let mut snapshot = Snapshot {
        generation,
        consul_index: generation,
        created_unix_ms: 1_700_000_000_000,
        publisher: "delivery-bench".to_owned(),
        datacenter: "dc1".to_owned(),
        ..Snapshot::default()
    };
    for node in 0..nodes {
        let name = format!("node-{node}");
        snapshot.nodes.insert(
            name.clone(),
            Node {
                name,
                datacenter: "dc1".to_owned(),
                address: Some(address(node)),
                hostname: None,
                details: None,
            },
        );
    }
    for service in 0..services {
        let instances = (0..4)
            .map(|i| {
                let node = (service * 4 + i) % nodes.max(1);
                ServiceInstance {
                    node: format!("node-{node}"),
                    datacenter: "dc1".to_owned(),
                    node_address: Some(address(node)),
                    service_address: None,
                    port: 8000 + i as u16,
                    tags: vec!["v1".to_owned(), format!("zone-{}", i % 2)],
                    weight: 1,
                    status: InstanceStatus::Passing,
                    hostname: None,
                    details: None,
                }
            })
            .collect();
        snapshot
            .services
            .insert(format!("service-{service}"), instances);
    }
    snapshot.normalize();
    snapshot
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * fraction).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Where the followers report applied snapshots.
enum Fleet {
    Tasks {
        applied: Arc<Applied>,
        shutdown: CancellationToken,
    },
    Processes {
        applied: Arc<Applied>,
        children: Vec<std::process::Child>,
    },
}

impl Fleet {
    fn applied(&self) -> &Arc<Applied> {
        match self {
            Self::Tasks { applied, .. } | Self::Processes { applied, .. } => applied,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Mode::Child {
        consul,
        state_dir,
        spread,
    }) = cli.mode
    {
        return child(&consul, state_dir, spread).await;
    }
    let state_root =
        tempfile::tempdir_in(cli.state_root.clone().unwrap_or_else(std::env::temp_dir))
            .context("state root")?;
    let sim = Sim::new();
    let server = sim
        .serve("127.0.0.1:0".parse().expect("loopback"))
        .await
        .context("simulator")?;
    let url = server.url();
    let writer = client(&url)?;
    let count = if cli.processes > 0 {
        cli.processes
    } else {
        cli.followers
    };

    let fleet = if cli.processes > 0 {
        let applied = Arc::new(Applied::default());
        let mut children = Vec::new();
        for index in 0..cli.processes {
            let mut child = Command::new(std::env::current_exe()?)
                .args(["child", "--consul", &url, "--spread"])
                .arg(humantime::format_duration(cli.spread).to_string())
                .arg("--state-dir")
                .arg(state_root.path().join(format!("follower-{index}")))
                .stdout(Stdio::piped())
                .spawn()
                .context("spawning a follower process")?;
            let stdout = child.stdout.take().expect("piped");
            let applied = Arc::clone(&applied);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let mut fields = line.split(' ');
                    if fields.next() == Some("applied")
                        && let (Some(Ok(generation)), Some(Ok(at))) = (
                            fields.next().map(str::parse::<u64>),
                            fields.next().map(str::parse::<u128>),
                        )
                    {
                        applied.0.lock().expect("applied").push((generation, at));
                    }
                }
            });
            children.push(child);
        }
        Fleet::Processes { applied, children }
    } else {
        let applied = Arc::new(Applied::default());
        let shutdown = CancellationToken::new();
        for index in 0..cli.followers {
            let config = follower_config(
                state_root.path().join(format!("follower-{index}")),
                cli.spread,
                Arc::clone(&applied),
            );
            let follower = Follower::new(config, client(&url)?, Hosts::new());
            tokio::spawn(follower.run(shutdown.clone()));
        }
        Fleet::Tasks { applied, shutdown }
    };

    let encoded = |generation| {
        dnsfront_snapshot::encode(&catalog(generation, cli.services, cli.nodes), None)
            .expect("the bench catalog encodes")
    };
    let size = encoded(1).len();
    let mut latencies_ms = Vec::new();
    let mut per_round = Vec::new();
    // Generation 1 is the warm-up: every follower starts from an empty state dir.
    for generation in 1..=cli.rounds + 1 {
        let value = encoded(generation);
        // Every follower is back in its blocking read (min_interval is 1s).
        tokio::time::sleep(Duration::from_millis(1500) + cli.spread).await;
        let requests_before = sim.requests().len();
        let bytes_before = sim.response_body_bytes();
        let written_at = now_nanos();
        writer
            .kv_put(KEY, &value, &KvPutOptions::default())
            .await
            .context("writing the snapshot")?;
        // Then its pointer, as the publisher does: followers block on the pointer and
        // fetch the value within `--spread`.
        let pointer = dnsfront_snapshot::pointer::Pointer::of(generation, &value).encode();
        writer
            .kv_put(POINTER_KEY, &pointer, &KvPutOptions::default())
            .await
            .context("writing the snapshot pointer")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120) + cli.spread;
        loop {
            let done = fleet
                .applied()
                .0
                .lock()
                .expect("applied")
                .iter()
                .filter(|(applied, _)| *applied == generation)
                .count();
            if done >= count {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "generation {generation}: only {done} of {count} followers applied it"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let requests = sim.requests().len() - requests_before;
        let bytes = sim.response_body_bytes() - bytes_before;
        if generation == 1 {
            continue;
        }
        let round: Vec<f64> = fleet
            .applied()
            .0
            .lock()
            .expect("applied")
            .iter()
            .filter(|(applied, _)| *applied == generation)
            .map(|(_, at)| at.saturating_sub(written_at) as f64 / 1e6)
            .collect();
        let round_max = round.iter().copied().fold(0.0, f64::max);
        per_round.push((round_max, requests, bytes));
        latencies_ms.extend(round);
    }
    latencies_ms.sort_by(f64::total_cmp);
    let rounds = per_round.len().max(1) as f64;
    let mean_requests = per_round.iter().map(|(_, r, _)| *r as f64).sum::<f64>() / rounds;
    let mean_bytes = per_round.iter().map(|(_, _, b)| *b as f64).sum::<f64>() / rounds;
    let mut report = BTreeMap::new();
    report.insert("followers", count.to_string());
    report.insert(
        "mode",
        if cli.processes > 0 {
            "processes"
        } else {
            "tasks"
        }
        .to_owned(),
    );
    report.insert(
        "fetch_spread",
        humantime::format_duration(cli.spread).to_string(),
    );
    report.insert("value_bytes", size.to_string());
    report.insert("rounds", per_round.len().to_string());
    report.insert("p50_ms", format!("{:.1}", percentile(&latencies_ms, 0.50)));
    report.insert("p99_ms", format!("{:.1}", percentile(&latencies_ms, 0.99)));
    report.insert("max_ms", format!("{:.1}", percentile(&latencies_ms, 1.0)));
    report.insert(
        "round_max_ms",
        per_round
            .iter()
            .map(|(max, ..)| format!("{max:.0}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    report.insert("requests_per_round", format!("{mean_requests:.0}"));
    report.insert("response_bytes_per_round", format!("{mean_bytes:.0}"));
    let mut stdout = std::io::stdout().lock();
    for (name, value) in &report {
        writeln!(stdout, "{name}: {value}")?;
    }
    match fleet {
        Fleet::Tasks { shutdown, .. } => shutdown.cancel(),
        Fleet::Processes { children, .. } => {
            for mut child in children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    Ok(())
}

/// One follower in its own process, printing each applied generation with its time.
async fn child(consul: &str, state_dir: PathBuf, spread: Duration) -> anyhow::Result<()> {
    #[derive(Debug)]
    struct Print;
    impl EventSink for Print {
        fn send(&self, event: Event) {
            if event.tags.iter().any(|tag| tag == "snapshot_event:applied")
                && let Some(generation) = generation_of(&event.text)
            {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "applied {generation} {}", now_nanos());
                let _ = stdout.flush();
            }
        }
    }
    let config = FollowerConfig {
        allow_unsigned: true,
        fetch_spread: spread,
        events: Some(Arc::new(Print)),
        ..FollowerConfig::new(state_dir)
    };
    Follower::new(config, client(consul)?, Hosts::new())
        .run(CancellationToken::new())
        .await;
    Ok(())
}
