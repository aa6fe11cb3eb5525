//! Publisher and follower against consul-sim over real HTTP on 127.0.0.1.

mod common;

use common::{client, register, start};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use consul_sim::{Registration, Sim, SimServer};
use dnsfront_consul as consul;
use dnsfront_snapshot::follower::{Follower, FollowerConfig};
use dnsfront_snapshot::pointer::Pointer;
use dnsfront_snapshot::publisher::{Publisher, PublisherConfig};
use dnsfront_snapshot::{Hosts, SigningKey, Snapshot, codec, metrics as names, store};
use test_support::{DebuggingRecorder, Recorded};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const KEY: &str = "dnsfront/hosts";
const LOCK_KEY: &str = "dnsfront/hosts.lock";
const STOP_KEY: &str = "dnsfront/hosts-stop";
const POINTER_KEY: &str = "dnsfront/hosts.pointer";
const DATA_PATH: &str = "/v1/kv/dnsfront/hosts";

fn publisher_config(identity: &str) -> PublisherConfig {
    PublisherConfig {
        min_interval: Duration::from_millis(100),
        session_ttl: Duration::from_secs(10),
        lock_delay: Duration::ZERO,
        catalog_wait: Duration::from_secs(30),
        ..PublisherConfig::new(identity)
    }
}

fn follower_config(dir: &Path) -> FollowerConfig {
    FollowerConfig {
        min_interval: Duration::from_millis(20),
        wait: Duration::from_secs(30),
        backoff_max: Duration::from_secs(1),
        // These tests time deliveries; the spread has its own test.
        fetch_spread: Duration::ZERO,
        // These tests publish unsigned snapshots unless they say otherwise.
        allow_unsigned: true,
        ..FollowerConfig::new(dir.to_owned())
    }
}

fn spawn_publisher(
    server: &SimServer,
    config: PublisherConfig,
    shutdown: &CancellationToken,
) -> JoinHandle<Result<(), dnsfront_snapshot::Error>> {
    tokio::spawn(Publisher::new(config, client(server)).run(shutdown.clone()))
}

/// Waits (bounded) until the key holds generation `generation`.
async fn wait_for_generation(sim: &Sim, generation: u64) {
    wait_until(
        Duration::from_secs(10),
        &format!("generation {generation}"),
        || published_generation(sim) == generation,
    )
    .await;
}

/// Stops a publisher and checks it ended cleanly, within a bound.
async fn stop_publisher(
    shutdown: &CancellationToken,
    publisher: JoinHandle<Result<(), dnsfront_snapshot::Error>>,
) {
    shutdown.cancel();
    within(Duration::from_secs(5), "publisher stops", publisher)
        .await
        .expect("joins")
        .expect("ok");
}

fn spawn_follower(
    server: &SimServer,
    config: FollowerConfig,
    hosts: &Hosts,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(Follower::new(config, client(server), hosts.clone()).run(shutdown.clone()))
}

/// A sim with `web` on n1, publisher `pub-a` and a follower with a temporary state dir.
struct Pair {
    sim: Sim,
    _server: SimServer,
    dir: tempfile::TempDir,
    hosts: Hosts,
    shutdown: CancellationToken,
    publisher: JoinHandle<Result<(), dnsfront_snapshot::Error>>,
    follower: JoinHandle<()>,
}

async fn start_pair() -> Pair {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    let publisher = spawn_publisher(&server, publisher_config("pub-a"), &shutdown);
    let follower = spawn_follower(&server, follower_config(dir.path()), &hosts, &shutdown);
    Pair {
        sim,
        _server: server,
        dir,
        hosts,
        shutdown,
        publisher,
        follower,
    }
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `timeout`.
async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The snapshot currently in the KV key (verified without a key).
fn published(sim: &Sim) -> Option<Snapshot> {
    let bytes = sim.kv_get(KEY)?;
    codec::decode(&bytes, None)
        .ok()
        .map(|verified| verified.snapshot)
}

fn published_generation(sim: &Sim) -> u64 {
    published(sim).map_or(0, |snapshot| snapshot.generation)
}

/// PUTs on the snapshot key (not the lock or stop keys).
fn data_puts(sim: &Sim) -> usize {
    sim.requests()
        .iter()
        .filter(|record| record.method == "PUT" && record.path == DATA_PATH)
        .count()
}

/// Accumulates counters across `DebuggingRecorder` snapshots (each snapshot resets them).
struct Counters<'a> {
    recorder: &'a DebuggingRecorder,
    totals: HashMap<(String, String), u64>,
}

impl<'a> Counters<'a> {
    fn new(recorder: &'a DebuggingRecorder) -> Self {
        Self {
            recorder,
            totals: HashMap::new(),
        }
    }

    /// Total of counter `name{reason}` so far.
    fn get(&mut self, name: &str, reason: &str) -> u64 {
        let recorded = Recorded::take(&self.recorder.snapshotter());
        for tracked in [names::REJECTED, names::PUBLISH_SKIPPED] {
            for known in [
                "bad_magic",
                "checksum",
                "decompress",
                "malformed",
                "bad_signature",
                "unsigned",
                "truncated",
                "rollback",
                "kill_switch",
                "too_small",
                "shrink_guard",
                "unchanged",
                "too_large_inflated",
                "shape",
                "generation",
                "generation_exhausted",
            ] {
                let count = recorded.counter(tracked, &[("reason", known)]);
                *self
                    .totals
                    .entry((tracked.to_owned(), known.to_owned()))
                    .or_default() += count;
            }
        }
        self.totals
            .get(&(name.to_owned(), reason.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    async fn wait_for(&mut self, name: &str, reason: &str, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.get(name, reason) < at_least {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name}{{reason={reason}}} >= {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn encoded(generation: u64, services: &[&str], key: Option<&SigningKey>) -> Vec<u8> {
    let mut snapshot = Snapshot {
        generation,
        datacenter: "dc1".to_owned(),
        publisher: "test".to_owned(),
        ..Snapshot::default()
    };
    for service in services {
        snapshot.services.insert((*service).to_owned(), Vec::new());
    }
    codec::encode(&snapshot, key).expect("encodes")
}

fn on_disk(dir: &Path) -> Option<Vec<u8>> {
    store::load(dir).expect("state dir readable")
}

async fn within<T>(timeout: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn snapshot_reaches_follower_disk_within_a_second_of_a_catalog_change() {
    let pair = start_pair().await;

    wait_until(Duration::from_secs(5), "first snapshot applied", || {
        pair.hosts.generation() == Some(1)
    })
    .await;

    register(&pair.sim, "api", "n2", "10.0.0.2");
    let changed_at = Instant::now();
    // The file is saved first, then swapped into memory: wait for both.
    wait_until(
        Duration::from_secs(1),
        "api in the state dir and memory",
        || {
            on_disk(pair.dir.path())
                .and_then(|bytes| codec::decode(&bytes, None).ok())
                .is_some_and(|verified| verified.snapshot.service("api").is_some())
                && pair.hosts.generation() == Some(2)
        },
    )
    .await;
    assert!(changed_at.elapsed() < Duration::from_secs(1));

    let current = pair.hosts.current().expect("snapshot in memory");
    assert_eq!(current.generation, 2);
    assert_eq!(current.datacenter, "dc1");
    assert_eq!(current.publisher, "pub-a");
    let api = current.service("api").expect("api instances");
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].address(), Some("10.0.0.2".parse().expect("ip")));
    assert_eq!(api[0].port, 80);
    assert!(current.node("n2").is_some());

    pair.shutdown.cancel();
    within(Duration::from_secs(5), "publisher stops", pair.publisher)
        .await
        .expect("joins")
        .expect("publisher ends cleanly");
    within(Duration::from_secs(5), "follower stops", pair.follower)
        .await
        .expect("joins");
    assert_eq!(
        pair.sim.kv_session(LOCK_KEY),
        None,
        "lock released on shutdown"
    );
}

#[tokio::test]
async fn check_state_changes_reach_the_follower_within_seconds() {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    register(&sim, "web", "n2", "10.0.0.2");
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    // catalog_wait (30s) is far longer than the test: only the health watch can wake it.
    let config = PublisherConfig {
        min_interval: Duration::from_secs(1),
        ..publisher_config("pub-a")
    };
    let _publisher = spawn_publisher(&server, config, &shutdown);
    let _follower = spawn_follower(&server, follower_config(dir.path()), &hosts, &shutdown);
    let web_nodes = |hosts: &Hosts| -> Vec<String> {
        hosts
            .current()
            .and_then(|snapshot| {
                snapshot
                    .service("web")
                    .map(|instances| instances.iter().map(|i| i.node.clone()).collect())
            })
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(5), "first snapshot applied", || {
        web_nodes(&hosts) == ["n1", "n2"]
    })
    .await;
    let catalog_index = consul::Client::new(consul::Config {
        address: server.url(),
        ..consul::Config::default()
    })
    .expect("client")
    .catalog_services(&consul::QueryOptions::default())
    .await
    .expect("catalog read")
    .meta
    .index;

    sim.set_check("n2", "service:web-n2", "critical");
    wait_until(
        Duration::from_millis(2500),
        "the critical instance leaves the follower's snapshot",
        || web_nodes(&hosts) == ["n1"],
    )
    .await;
    let on_file = on_disk(dir.path())
        .and_then(|bytes| codec::decode(&bytes, None).ok())
        .expect("snapshot on disk");
    assert_eq!(
        on_file.snapshot.service("web").map(<[_]>::len),
        Some(1),
        "saved to the state dir too"
    );

    sim.set_check("n2", "service:web-n2", "passing");
    wait_until(
        Duration::from_millis(2500),
        "the instance returns once passing",
        || web_nodes(&hosts) == ["n1", "n2"],
    )
    .await;
    assert_eq!(published_generation(&sim), 3);
    let after = consul::Client::new(consul::Config {
        address: server.url(),
        ..consul::Config::default()
    })
    .expect("client")
    .catalog_services(&consul::QueryOptions::default())
    .await
    .expect("catalog read")
    .meta
    .index;
    assert_eq!(
        after, catalog_index,
        "check changes alone, the catalog index never moved"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn node_address_changes_reach_the_follower_within_seconds() {
    // catalog_wait (30s) is far longer than the test, and a node address change moves
    // neither the services nor the checks index: only the nodes watch can wake it.
    let pair = start_pair().await;
    let n1_address = |hosts: &Hosts| -> Option<String> {
        hosts.current().and_then(|snapshot| {
            snapshot
                .node("n1")
                .and_then(|node| node.address)
                .map(|a| a.to_string())
        })
    };
    wait_until(Duration::from_secs(5), "first snapshot applied", || {
        n1_address(&pair.hosts).as_deref() == Some("10.0.0.1")
    })
    .await;

    pair.sim.set_node_address("n1", "10.0.0.99");
    wait_until(
        Duration::from_millis(2500),
        "the new node address reaches the follower's snapshot",
        || n1_address(&pair.hosts).as_deref() == Some("10.0.0.99"),
    )
    .await;
    pair.shutdown.cancel();
}

#[tokio::test]
async fn two_publishers_elect_exactly_one_writer() {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = start(&sim).await;
    let shutdown = CancellationToken::new();
    let _a = spawn_publisher(&server, publisher_config("pub-a"), &shutdown);
    let _b = spawn_publisher(&server, publisher_config("pub-b"), &shutdown);

    wait_until(Duration::from_secs(5), "generation 1", || {
        published_generation(&sim) == 1
    })
    .await;
    let writer = published(&sim).expect("published").publisher;
    register(&sim, "api", "n2", "10.0.0.2");
    wait_until(Duration::from_secs(5), "generation 2", || {
        published_generation(&sim) == 2
    })
    .await;
    register(&sim, "db", "n3", "10.0.0.3");
    wait_until(Duration::from_secs(5), "generation 3", || {
        published_generation(&sim) == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(data_puts(&sim), 3, "one PUT per change, from one writer");
    assert_eq!(published(&sim).expect("published").publisher, writer);
    assert!(sim.kv_session(LOCK_KEY).is_some());
    assert_eq!(
        sim.kv_get(LOCK_KEY).as_deref(),
        Some(writer.as_bytes()),
        "the lock holder is the writer"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn standby_takes_over_after_the_leader_dies_without_releasing() {
    let sim = Sim::new();
    sim.set_session_ttl_multiplier(1);
    register(&sim, "web", "n1", "10.0.0.1");
    let server = start(&sim).await;
    let shutdown = CancellationToken::new();
    let leader = spawn_publisher(&server, publisher_config("pub-a"), &shutdown);
    wait_until(Duration::from_secs(5), "pub-a publishes", || {
        published(&sim).is_some_and(|snapshot| snapshot.publisher == "pub-a")
    })
    .await;
    let _standby = spawn_publisher(&server, publisher_config("pub-b"), &shutdown);
    tokio::time::sleep(Duration::from_millis(300)).await;

    leader.abort();
    let killed_at = Instant::now();
    register(&sim, "api", "n2", "10.0.0.2");

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        published(&sim).is_some_and(|snapshot| snapshot.service("api").is_none()),
        "nobody writes while the dead leader's session is alive"
    );
    wait_until(Duration::from_secs(14), "pub-b takes over", || {
        published(&sim).is_some_and(|snapshot| {
            snapshot.publisher == "pub-b" && snapshot.service("api").is_some()
        })
    })
    .await;
    assert!(killed_at.elapsed() >= Duration::from_secs(2));
    assert_eq!(published_generation(&sim), 2);
    assert_eq!(sim.kv_get(LOCK_KEY).as_deref(), Some(&b"pub-b"[..]));
    shutdown.cancel();
}

#[tokio::test]
async fn shutdown_releases_the_lock_for_the_standby_at_once() {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = start(&sim).await;
    let first = CancellationToken::new();
    let second = CancellationToken::new();
    let leader = spawn_publisher(&server, publisher_config("pub-a"), &first);
    wait_until(Duration::from_secs(5), "pub-a publishes", || {
        published_generation(&sim) == 1
    })
    .await;
    let _standby = spawn_publisher(&server, publisher_config("pub-b"), &second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.cancel();
    within(Duration::from_secs(5), "pub-a stops", leader)
        .await
        .expect("joins")
        .expect("clean shutdown");
    wait_until(Duration::from_secs(3), "pub-b holds the lock", || {
        sim.kv_get(LOCK_KEY).as_deref() == Some(&b"pub-b"[..])
    })
    .await;
    register(&sim, "api", "n2", "10.0.0.2");
    wait_until(Duration::from_secs(3), "pub-b publishes", || {
        published(&sim).is_some_and(|snapshot| snapshot.publisher == "pub-b")
    })
    .await;
    assert_eq!(published_generation(&sim), 2);
    second.cancel();
}

#[tokio::test]
async fn unchanged_catalog_is_not_rewritten() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut counters = Counters::new(&recorder);
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = start(&sim).await;
    let shutdown = CancellationToken::new();
    let _publisher = spawn_publisher(&server, publisher_config("pub-a"), &shutdown);
    wait_until(Duration::from_secs(5), "generation 1", || {
        published_generation(&sim) == 1
    })
    .await;
    let unchanged_before = counters.get(names::PUBLISH_SKIPPED, "unchanged");

    // Moves the catalog index without changing what a snapshot holds (node meta is not in it).
    sim.register(
        Registration::new("web")
            .id("web-n1")
            .node("n1", "10.0.0.1")
            .node_meta("rack", "r1")
            .port(80)
            .check("service:web-n1", "passing"),
    );
    counters
        .wait_for(names::PUBLISH_SKIPPED, "unchanged", unchanged_before + 1)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(data_puts(&sim), 1, "no write for an unchanged catalog");
    assert_eq!(published_generation(&sim), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn follower_rejects_bad_values_and_keeps_the_previous_snapshot() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut counters = Counters::new(&recorder);
    let key = SigningKey::from_bytes(&[1; 32]);
    let other_key = SigningKey::from_bytes(&[2; 32]);
    let sim = Sim::new();
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    let config = FollowerConfig {
        verifying_key: Some(key.verifying_key()),
        ..follower_config(dir.path())
    };
    let _follower = spawn_follower(&server, config, &hosts, &shutdown);

    let good = encoded(5, &["web"], Some(&key));
    sim.kv_put(KEY, good.clone());
    wait_until(Duration::from_secs(5), "generation 5 applied", || {
        hosts.generation() == Some(5)
    })
    .await;
    assert_eq!(on_disk(dir.path()).as_deref(), Some(good.as_slice()));

    let mut corrupt = encoded(6, &["web", "evil"], Some(&key));
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let truncated = {
        let full = encoded(6, &["web", "evil"], Some(&key));
        full[..full.len() / 2].to_vec()
    };
    let cases: Vec<(&str, &[&str], Vec<u8>)> = vec![
        ("garbage", &["bad_magic"], b"not a snapshot".to_vec()),
        (
            "corrupt payload",
            &["checksum", "decompress", "malformed"],
            corrupt,
        ),
        (
            "wrong signature",
            &["bad_signature"],
            encoded(6, &["web", "evil"], Some(&other_key)),
        ),
        (
            "unsigned",
            &["unsigned"],
            encoded(6, &["web", "evil"], None),
        ),
        ("truncated", &["truncated"], truncated),
        (
            "older generation",
            &["rollback"],
            encoded(4, &["web", "evil"], Some(&key)),
        ),
    ];
    for (what, reasons, value) in cases {
        let before: u64 = reasons
            .iter()
            .map(|reason| counters.get(names::REJECTED, reason))
            .sum();
        sim.kv_put(KEY, value);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now: u64 = reasons
                .iter()
                .map(|reason| counters.get(names::REJECTED, reason))
                .sum();
            if now > before {
                break;
            }
            assert!(Instant::now() < deadline, "{what}: not rejected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(hosts.generation(), Some(5), "{what}: memory unchanged");
        assert!(
            hosts
                .current()
                .is_some_and(|snapshot| snapshot.service("evil").is_none()),
            "{what}: memory unchanged"
        );
        assert_eq!(
            on_disk(dir.path()).as_deref(),
            Some(good.as_slice()),
            "{what}: file unchanged"
        );
    }

    // Still following: the next good value is applied.
    let next = encoded(6, &["web", "api"], Some(&key));
    sim.kv_put(KEY, next.clone());
    wait_until(Duration::from_secs(5), "generation 6 applied", || {
        hosts.generation() == Some(6)
    })
    .await;
    assert_eq!(on_disk(dir.path()).as_deref(), Some(next.as_slice()));
    shutdown.cancel();
}

#[tokio::test]
async fn guards_refuse_an_emptying_or_shrinking_catalog() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut counters = Counters::new(&recorder);
    let sim = Sim::new();
    for (service, node) in [
        ("a", "n1"),
        ("b", "n2"),
        ("c", "n2"),
        ("d", "n2"),
        ("e", "n3"),
    ] {
        register(&sim, service, node, "10.0.0.1");
    }
    let server = start(&sim).await;
    let shutdown = CancellationToken::new();
    let config = PublisherConfig {
        min_interval: Duration::from_millis(1500),
        ..publisher_config("pub-a")
    };
    let _publisher = spawn_publisher(&server, config, &shutdown);
    wait_until(Duration::from_secs(5), "generation 1", || {
        published_generation(&sim) == 1
    })
    .await;

    // Dropping one of five (20%) is a normal change.
    sim.deregister("n3", "e-n3");
    wait_until(Duration::from_secs(5), "generation 2", || {
        published_generation(&sim) == 2
    })
    .await;
    // Within min_interval of that write, so the publisher sees all three removals at once:
    // three of four (75%) is more than max_drop_fraction.
    for service in ["b", "c", "d"] {
        sim.deregister("n2", &format!("{service}-n2"));
    }
    counters
        .wait_for(names::PUBLISH_SKIPPED, "shrink_guard", 1)
        .await;
    assert_eq!(published_generation(&sim), 2);
    assert_eq!(
        published(&sim).expect("published").services.len(),
        4,
        "the last good snapshot stays"
    );

    // An empty catalog is below min_services.
    sim.deregister("n1", "a-n1");
    counters
        .wait_for(names::PUBLISH_SKIPPED, "too_small", 1)
        .await;
    assert_eq!(published_generation(&sim), 2);
    assert_eq!(data_puts(&sim), 2);
    shutdown.cancel();
}

#[tokio::test]
async fn kill_switch_stops_publisher_and_follower_until_cleared() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut counters = Counters::new(&recorder);
    let pair = start_pair().await;
    wait_until(Duration::from_secs(5), "generation 1 applied", || {
        pair.hosts.generation() == Some(1)
    })
    .await;
    let file_before = on_disk(pair.dir.path());

    pair.sim.kv_put(STOP_KEY, "incident 42: bad catalog");
    register(&pair.sim, "api", "n2", "10.0.0.2");
    counters
        .wait_for(names::PUBLISH_SKIPPED, "kill_switch", 1)
        .await;
    assert_eq!(data_puts(&pair.sim), 1, "publisher does not write");

    // A value written by hand (with its pointer, as any writer must once a pointer
    // exists) is not applied either.
    let manual = encoded(2, &["web", "manual"], None);
    let pointer = Pointer::of(2, &manual).encode();
    pair.sim.kv_put(KEY, manual);
    pair.sim.kv_put(POINTER_KEY, pointer);
    counters.wait_for(names::REJECTED, "kill_switch", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pair.hosts.generation(), Some(1));
    assert_eq!(on_disk(pair.dir.path()), file_before);

    // Cleared: the follower applies again and the publisher writes the pending change.
    pair.sim.kv_put(STOP_KEY, "");
    wait_until(Duration::from_secs(5), "api applied after clearing", || {
        pair.hosts
            .current()
            .is_some_and(|snapshot| snapshot.service("api").is_some())
    })
    .await;
    assert_eq!(
        pair.hosts.generation(),
        Some(3),
        "publisher wrote on top of generation 2"
    );
    pair.shutdown.cancel();
}

#[tokio::test]
async fn load_from_disk_fills_hosts_without_consul() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[9; 32]);
    // Nothing listens here: loading from disk must not need Consul.
    let unreachable = consul::Client::new(consul::Config {
        address: "http://127.0.0.1:9".to_owned(),
        ..consul::Config::default()
    })
    .expect("valid config");
    let config = FollowerConfig {
        verifying_key: Some(key.verifying_key()),
        ..follower_config(dir.path())
    };
    let hosts = Hosts::new();
    let follower = Follower::new(config, unreachable, hosts.clone());
    assert_eq!(follower.load_from_disk().expect("empty dir is fine"), None);
    assert!(hosts.current().is_none());

    store::save(dir.path(), &encoded(7, &["web"], Some(&key))).expect("save");
    assert_eq!(follower.load_from_disk().expect("loads"), Some(7));
    let current: Arc<Snapshot> = hosts.current().expect("loaded");
    assert_eq!(current.generation, 7);
    assert!(current.service("web").is_some());

    // A corrupt file is reported and leaves memory alone.
    store::save(dir.path(), b"DNSFSNAP garbage").expect("save");
    assert!(follower.load_from_disk().is_err());
    assert_eq!(hosts.generation(), Some(7));
    // So is a file signed by someone else.
    let other = SigningKey::from_bytes(&[8; 32]);
    store::save(dir.path(), &encoded(8, &["evil"], Some(&other))).expect("save");
    assert!(matches!(
        follower.load_from_disk(),
        Err(dnsfront_snapshot::Error::BadSignature)
    ));
    assert_eq!(hosts.generation(), Some(7));
}

/// The leader's blocking queries (issue 14: check states through critical and warning).
const LEADER_WATCHES: [&str; 4] = [
    "/v1/catalog/services",
    "/v1/health/state/critical",
    "/v1/health/state/warning",
    "/v1/catalog/nodes",
];

/// A server stuck at `X-Consul-Index: 0` (clamped to 1) answers every blocking read at once:
/// the leader's watches must be rate-limited like every other watch, not re-read in a loop.
#[tokio::test]
async fn regression_11_leader_watches_are_rate_limited_when_the_index_is_stuck_at_zero() {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = start(&sim).await;
    let shutdown = CancellationToken::new();
    let config = PublisherConfig {
        min_interval: Duration::from_millis(500),
        ..publisher_config("pub-a")
    };
    let publisher = spawn_publisher(&server, config, &shutdown);
    wait_until(Duration::from_secs(5), "the first snapshot", || {
        sim.kv_get(KEY).is_some()
    })
    .await;
    for path in LEADER_WATCHES {
        sim.inject(consul_sim::Fault::index_zero(path));
    }
    let before: Vec<usize> = LEADER_WATCHES
        .iter()
        .map(|path| sim.request_count(path))
        .collect();
    // A change wakes the blocked watches; from then on every answer says index 0.
    register(&sim, "db", "n2", "10.0.0.2");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (path, before) in LEADER_WATCHES.iter().zip(before) {
        let reads = sim.request_count(path) - before;
        // A burst of 2, then one per `min_interval` (500 ms): at most 5 in 1.5 s, with
        // slack for scheduling. Unlimited, each watch would re-read as fast as Consul answers.
        assert!(reads <= 8, "{reads} reads of {path} in 1.5 s");
    }
    shutdown.cancel();
    within(Duration::from_secs(5), "publisher shutdown", publisher)
        .await
        .expect("publisher task")
        .expect("publisher");
}

/// Issue 14: a build slower than `min_interval` must not run back to back while the catalog
/// churns: after each round the publisher stays idle at least as long as the round took, and
/// re-arms its watches no sooner than the next build.
#[tokio::test]
async fn builds_slower_than_the_interval_do_not_stack_up() {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    register(&sim, "web", "n2", "10.0.0.2");
    let server = start(&sim).await;
    let shutdown = CancellationToken::new();
    let publisher = spawn_publisher(&server, publisher_config("pub-a"), &shutdown);
    wait_until(Duration::from_secs(5), "the first snapshot", || {
        sim.kv_get(KEY).is_some()
    })
    .await;
    // Each build now reads `web` for at least a second, ten times `min_interval` (100 ms).
    sim.inject(consul_sim::Fault::delay(
        "/v1/health/service/web",
        Duration::from_secs(1),
    ));
    let builds_before = sim.request_count("/v1/health/service/web");
    // A check flips every 100 ms for 6 s: a round is always due.
    let window = Instant::now();
    let mut critical = false;
    while window.elapsed() < Duration::from_secs(6) {
        critical = !critical;
        let status = if critical { "critical" } else { "passing" };
        sim.set_check("n2", "service:web-n2", status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let builds = sim.request_count("/v1/health/service/web") - builds_before;
    // Starts at least 2 s apart (a 1 s build, then as long idle): at most 4 in 6 s.
    // Back to back they would be about 6.
    assert!((1..=4).contains(&builds), "{builds} builds in 6 s");
    shutdown.cancel();
    within(Duration::from_secs(5), "publisher shutdown", publisher)
        .await
        .expect("publisher task")
        .expect("publisher");
}

/// Issue 13: nothing in the key can crash a follower or push its generation out of reach;
/// every refusal keeps the previous snapshot served and is counted.
#[tokio::test]
async fn follower_refuses_hostile_and_out_of_reach_snapshots_and_keeps_serving() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut counters = Counters::new(&recorder);
    let sim = Sim::new();
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    let _follower = spawn_follower(&server, follower_config(dir.path()), &hosts, &shutdown);

    sim.kv_put(KEY, encoded(5, &["web"], None));
    wait_until(Duration::from_secs(5), "generation 5 applied", || {
        hosts.generation() == Some(5)
    })
    .await;

    // About 65 KB holding 64 MiB of `"",`: refused at the inflate cap.
    let bomb = common::envelope(&common::tags_document((64 * 1024 * 1024 - 1024) / 3));
    assert!(bomb.len() < 100_000);
    sim.kv_put(KEY, bomb);
    counters
        .wait_for(names::REJECTED, "too_large_inflated", 1)
        .await;
    // Small but past the shape limits (65 tags on one instance).
    sim.kv_put(KEY, common::envelope(&common::tags_document(65)));
    counters.wait_for(names::REJECTED, "shape", 1).await;
    // The last generation there is, and a jump far above the current one.
    sim.kv_put(KEY, encoded(u64::MAX, &["evil"], None));
    counters.wait_for(names::REJECTED, "generation", 1).await;
    sim.kv_put(KEY, encoded(5 + (1 << 32) + 1, &["evil"], None));
    counters.wait_for(names::REJECTED, "generation", 2).await;

    let current = hosts.current().expect("still serving");
    assert_eq!(current.generation, 5);
    assert!(current.service("web").is_some() && current.service("evil").is_none());
    let on_disk = codec::decode(&on_disk(dir.path()).expect("saved"), None).expect("decodes");
    assert_eq!(
        on_disk.snapshot.generation, 5,
        "nothing refused reached the disk"
    );

    // And the next ordinary snapshot is applied.
    sim.kv_put(KEY, encoded(6, &["web", "db"], None));
    wait_until(Duration::from_secs(5), "generation 6 applied", || {
        hosts.generation() == Some(6)
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn follower_refuses_unsigned_snapshots_unless_allowed() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut counters = Counters::new(&recorder);
    let sim = Sim::new();
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    let config = FollowerConfig {
        allow_unsigned: false,
        ..follower_config(dir.path())
    };
    let _follower = spawn_follower(&server, config, &hosts, &shutdown);
    // Signed, but nothing to verify it with: just as untrusted.
    sim.kv_put(
        KEY,
        encoded(1, &["web"], Some(&SigningKey::from_bytes(&[3; 32]))),
    );
    counters.wait_for(names::REJECTED, "unsigned", 1).await;
    sim.kv_put(KEY, encoded(2, &["web"], None));
    counters.wait_for(names::REJECTED, "unsigned", 2).await;
    assert!(hosts.current().is_none());
    assert!(on_disk(dir.path()).is_none());
    shutdown.cancel();
}

/// The publisher reading `generation = u64::MAX` neither panics nor wraps: it ignores the
/// unreachable value and keeps publishing from its own high-water mark.
#[tokio::test]
async fn publisher_ignores_an_out_of_reach_generation() {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    sim.kv_put(KEY, encoded(u64::MAX, &["evil"], None));
    let server = start(&sim).await;
    let state = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let config = PublisherConfig {
        state_dir: Some(state.path().to_owned()),
        ..publisher_config("pub-a")
    };
    let publisher = spawn_publisher(&server, config, &shutdown);
    wait_until(
        Duration::from_secs(10),
        "a sane generation published",
        || published(&sim).is_some_and(|s| s.generation == 1 && s.service("web").is_some()),
    )
    .await;
    register(&sim, "db", "n1", "10.0.0.1");
    wait_for_generation(&sim, 2).await;
    assert!(!publisher.is_finished(), "the publisher is still running");
    assert_eq!(
        dnsfront_snapshot::publisher::load_high_water(state.path()).expect("readable"),
        2
    );
    stop_publisher(&shutdown, publisher).await;
}

/// A replayed old signed envelope does not set the publisher's counter back, not even
/// across a restart: the high-water mark in its state dir wins.
#[tokio::test]
async fn replayed_old_envelope_does_not_set_the_publisher_back() {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = start(&sim).await;
    let state = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[4; 32]);
    let config = PublisherConfig {
        state_dir: Some(state.path().to_owned()),
        signing_key: Some(key.clone()),
        ..publisher_config("pub-a")
    };
    let shutdown = CancellationToken::new();
    let publisher = spawn_publisher(&server, config.clone(), &shutdown);
    wait_for_generation(&sim, 1).await;
    let old = sim.kv_get(KEY).expect("published");
    register(&sim, "db", "n1", "10.0.0.1");
    wait_for_generation(&sim, 2).await;
    register(&sim, "api", "n1", "10.0.0.1");
    wait_for_generation(&sim, 3).await;
    stop_publisher(&shutdown, publisher).await;

    // Someone with KV write access puts generation 1 back; a new publisher starts.
    sim.kv_put(KEY, old);
    let shutdown = CancellationToken::new();
    let publisher = spawn_publisher(&server, config, &shutdown);
    wait_until(
        Duration::from_secs(10),
        "the current catalog republished",
        || published(&sim).is_some_and(|s| s.service("api").is_some()),
    )
    .await;
    assert_eq!(
        published_generation(&sim),
        4,
        "continues from its high-water mark"
    );
    assert_eq!(
        dnsfront_snapshot::publisher::load_high_water(state.path()).expect("readable"),
        4
    );
    stop_publisher(&shutdown, publisher).await;
}

/// At the last generation the publisher refuses loudly instead of wrapping.
#[tokio::test]
async fn publisher_at_the_last_generation_refuses_to_write() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut counters = Counters::new(&recorder);
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = start(&sim).await;
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        state
            .path()
            .join(dnsfront_snapshot::publisher::HIGH_WATER_FILE),
        format!("{}\n", dnsfront_snapshot::follower::MAX_GENERATION),
    )
    .expect("write");
    let shutdown = CancellationToken::new();
    let config = PublisherConfig {
        state_dir: Some(state.path().to_owned()),
        ..publisher_config("pub-a")
    };
    let publisher = spawn_publisher(&server, config, &shutdown);
    counters
        .wait_for(names::PUBLISH_SKIPPED, "generation_exhausted", 1)
        .await;
    assert_eq!(data_puts(&sim), 0);
    assert!(!publisher.is_finished());
    shutdown.cancel();
}

/// The state dir's copy is held to the same trust rules as the key's value.
#[tokio::test]
async fn load_from_disk_refuses_untrusted_and_out_of_reach_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unreachable = consul::Client::new(consul::Config {
        address: "http://127.0.0.1:9".to_owned(),
        ..consul::Config::default()
    })
    .expect("valid config");
    store::save(dir.path(), &encoded(3, &["web"], None)).expect("save");
    let strict = FollowerConfig {
        allow_unsigned: false,
        ..follower_config(dir.path())
    };
    let hosts = Hosts::new();
    let follower = Follower::new(strict, unreachable.clone(), hosts.clone());
    assert!(matches!(
        follower.load_from_disk(),
        Err(dnsfront_snapshot::Error::Untrusted)
    ));
    assert!(hosts.current().is_none());

    store::save(dir.path(), &encoded(u64::MAX, &["web"], None)).expect("save");
    let follower = Follower::new(follower_config(dir.path()), unreachable, hosts.clone());
    assert!(matches!(
        follower.load_from_disk(),
        Err(dnsfront_snapshot::Error::Generation { .. })
    ));
    assert!(hosts.current().is_none());
}
