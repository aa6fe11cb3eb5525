//! The pointer key (issue 14 §3): followers block on a few dozen bytes and fetch the value
//! only when it names a newer snapshot, after a random spread; the publisher writes the value,
//! then the pointer. Against consul-sim over real HTTP on 127.0.0.1.

mod common;

use common::{client, register, start};
use std::time::Duration;

use consul_sim::{Sim, SimServer};
use dnsfront_snapshot::follower::{Follower, FollowerConfig};
use dnsfront_snapshot::pointer::{MAX_POINTER_SIZE, Pointer};
use dnsfront_snapshot::publisher::{Publisher, PublisherConfig};
use dnsfront_snapshot::{Hosts, Snapshot, codec, metrics as names};
use test_support::{DebuggingRecorder, Recorded};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const KEY: &str = "dnsfront/hosts";
const POINTER_KEY: &str = "dnsfront/hosts.pointer";
const VALUE_PATH: &str = "/v1/kv/dnsfront/hosts";
const POINTER_PATH: &str = "/v1/kv/dnsfront/hosts.pointer";

fn follower_config(dir: &std::path::Path, fetch_spread: Duration) -> FollowerConfig {
    FollowerConfig {
        min_interval: Duration::from_millis(20),
        wait: Duration::from_secs(30),
        backoff_max: Duration::from_secs(1),
        allow_unsigned: true,
        fetch_spread,
        ..FollowerConfig::new(dir.to_owned())
    }
}

fn spawn_follower(
    server: &SimServer,
    config: FollowerConfig,
    hosts: &Hosts,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(Follower::new(config, client(server), hosts.clone()).run(shutdown.clone()))
}

fn publisher_config() -> PublisherConfig {
    PublisherConfig {
        min_interval: Duration::from_millis(100),
        session_ttl: Duration::from_secs(10),
        lock_delay: Duration::ZERO,
        catalog_wait: Duration::from_secs(30),
        ..PublisherConfig::new("pub-a")
    }
}

fn encoded(generation: u64, services: &[&str]) -> Vec<u8> {
    let mut snapshot = Snapshot {
        generation,
        datacenter: "dc1".to_owned(),
        publisher: "test".to_owned(),
        ..Snapshot::default()
    };
    for service in services {
        snapshot.services.insert((*service).to_owned(), Vec::new());
    }
    codec::encode(&snapshot, None).expect("encodes")
}

/// Writes a value and then its pointer, as the publisher does.
fn publish(sim: &Sim, generation: u64, services: &[&str]) {
    let value = encoded(generation, services);
    let pointer = Pointer::of(generation, &value).encode();
    sim.kv_put(KEY, value);
    sim.kv_put(POINTER_KEY, pointer);
}

async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn requests(sim: &Sim, method: &str, path: &str) -> Vec<String> {
    sim.requests()
        .into_iter()
        .filter(|record| record.method == method && record.path == path)
        .map(|record| record.query)
        .collect()
}

fn blocking(query: &str) -> bool {
    query.split('&').any(|pair| pair.starts_with("index="))
}

/// Waits up to 5 s for the follower to have applied `generation`.
async fn until_generation(hosts: &Hosts, generation: u64) {
    wait_until(
        Duration::from_secs(5),
        &format!("generation {generation} applied"),
        || hosts.generation() == Some(generation),
    )
    .await;
}

/// Waits up to 5 s for a blocking read of the pointer key.
async fn until_pointer_blocked(sim: &Sim) {
    wait_until(
        Duration::from_secs(5),
        "a blocking read of the pointer",
        || {
            requests(sim, "GET", POINTER_PATH)
                .iter()
                .any(|query| blocking(query))
        },
    )
    .await;
}

/// The current values of the follower's gauges and the counters since the last call.
fn recorded(recorder: &DebuggingRecorder) -> Recorded {
    Recorded::take(&recorder.snapshotter())
}

#[tokio::test]
async fn followers_block_on_the_pointer_and_fetch_the_value_once_per_new_generation() {
    let sim = Sim::new();
    publish(&sim, 1, &["web"]);
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    // A spread of a day: nothing held yet, so the first value is fetched at once anyway.
    let _follower = spawn_follower(
        &server,
        follower_config(dir.path(), Duration::from_secs(86_400)),
        &hosts,
        &shutdown,
    );
    wait_until(
        Duration::from_secs(5),
        "generation 1 fetched at once",
        || hosts.generation() == Some(1),
    )
    .await;
    assert_eq!(requests(&sim, "GET", VALUE_PATH).len(), 1);
    shutdown.cancel();

    // A follower with a spread of 0 holding generation 1 (from its state dir).
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    let follower = Follower::new(
        follower_config(dir.path(), Duration::ZERO),
        client(&server),
        hosts.clone(),
    );
    assert_eq!(follower.load_from_disk().expect("loads"), Some(1));
    sim.reset_requests();
    let _follower = tokio::spawn(follower.run(shutdown.clone()));
    until_pointer_blocked(&sim).await;
    assert!(
        requests(&sim, "GET", VALUE_PATH).is_empty(),
        "the pointer names what the follower holds: the value is not read"
    );
    // Unrelated keys change the raft index; the pointer's blocking read must not fetch.
    sim.kv_put("other/key", "x");
    publish(&sim, 2, &["web", "api"]);
    until_generation(&hosts, 2).await;
    publish(&sim, 3, &["web", "api", "db"]);
    until_generation(&hosts, 3).await;
    let value_reads = requests(&sim, "GET", VALUE_PATH);
    assert_eq!(value_reads.len(), 2, "one value read per generation");
    assert!(
        value_reads.iter().all(|query| !blocking(query)),
        "the value is never watched while there is a pointer: {value_reads:?}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_fetch_waits_within_its_spread_and_the_node_counts_as_behind_meanwhile() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let sim = Sim::new();
    publish(&sim, 1, &["web"]);
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    // A spread of 30 days: the chance the draw is under the few seconds this test takes is
    // about one in a million.
    let spread = Duration::from_secs(30 * 86_400);
    let _follower = spawn_follower(
        &server,
        follower_config(dir.path(), spread),
        &hosts,
        &shutdown,
    );
    wait_until(
        Duration::from_secs(5),
        "generation 1 fetched at once",
        || hosts.generation() == Some(1),
    )
    .await;
    // (Each `recorded` takes the gauges set since the last one, and resets them.)
    let at_start = recorded(&recorder);
    assert_eq!(
        at_start.counter(names::VALUE_FETCHES, &[("result", "ok")]),
        1
    );

    publish(&sim, 2, &["web", "api"]);
    // Polled until the follower has read the new pointer (its generation is in the gauge).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut new_pointers = 0;
    let pending = loop {
        let pending = recorded(&recorder);
        new_pointers += pending.counter(names::POINTER_READS, &[("result", "new")]);
        if pending.gauge(names::KV_GENERATION, &[]) == Some(2.0) {
            break pending;
        }
        assert!(Instant::now() < deadline, "the new pointer was not read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(new_pointers, 1);
    assert_eq!(
        pending.gauge(names::BEHIND, &[]),
        Some(1.0),
        "behind while the fetch waits for its moment"
    );
    let delay = pending
        .gauge(names::FETCH_DELAY_SECONDS, &[])
        .expect("delay drawn");
    assert!(delay > 0.0 && delay <= spread.as_secs_f64(), "{delay}");
    assert_eq!(
        requests(&sim, "GET", VALUE_PATH).len(),
        1,
        "the value is not fetched before its moment"
    );
    assert_eq!(hosts.generation(), Some(1));
    shutdown.cancel();
}

#[tokio::test]
async fn the_publisher_writes_the_value_then_its_pointer_and_rewrites_a_pointer_left_behind() {
    let sim = Sim::new();
    register(&sim, "web", "n1", "10.0.0.1");
    let server = start(&sim).await;
    let shutdown = CancellationToken::new();
    let publisher =
        tokio::spawn(Publisher::new(publisher_config(), client(&server)).run(shutdown.clone()));
    let names_value = |sim: &Sim| -> Option<u64> {
        let value = sim.kv_get(KEY)?;
        let pointer = Pointer::decode(&sim.kv_get(POINTER_KEY)?).ok()?;
        let generation = codec::decode(&value, None).ok()?.snapshot.generation;
        (pointer == Pointer::of(generation, &value)).then_some(generation)
    };
    wait_until(
        Duration::from_secs(5),
        "generation 1 and its pointer",
        || names_value(&sim) == Some(1),
    )
    .await;
    register(&sim, "api", "n2", "10.0.0.2");
    wait_until(
        Duration::from_secs(5),
        "generation 2 and its pointer",
        || names_value(&sim) == Some(2),
    )
    .await;
    let puts: Vec<String> = sim
        .requests()
        .into_iter()
        .filter(|record| record.method == "PUT" && record.path.starts_with(VALUE_PATH))
        .filter(|record| !record.path.ends_with(".lock"))
        .map(|record| record.path)
        .collect();
    assert_eq!(
        puts,
        [VALUE_PATH, POINTER_PATH, VALUE_PATH, POINTER_PATH],
        "each value before its pointer"
    );
    // Check states are watched through critical and warning, never `any`.
    let health_states: Vec<String> = sim
        .requests()
        .into_iter()
        .filter_map(|record| {
            record
                .path
                .strip_prefix("/v1/health/state/")
                .map(str::to_owned)
        })
        .collect();
    assert!(health_states.iter().any(|state| state == "critical"));
    assert!(health_states.iter().any(|state| state == "warning"));
    assert!(
        health_states.iter().all(|state| state != "any"),
        "{health_states:?}"
    );
    shutdown.cancel();
    publisher.await.expect("joins").expect("ok");

    // A publisher stopped between the two writes (or one from before pointers) left the
    // pointer behind: the next one points it at the published value without rewriting it.
    let value_before = sim.kv_get(KEY).expect("value");
    sim.kv_put(POINTER_KEY, Pointer::of(1, b"an older value").encode());
    sim.reset_requests();
    let shutdown = CancellationToken::new();
    let publisher =
        tokio::spawn(Publisher::new(publisher_config(), client(&server)).run(shutdown.clone()));
    wait_until(Duration::from_secs(5), "the pointer repaired", || {
        names_value(&sim) == Some(2)
    })
    .await;
    assert_eq!(
        sim.kv_get(KEY),
        Some(value_before),
        "the value is untouched"
    );
    assert!(
        requests(&sim, "PUT", VALUE_PATH).is_empty(),
        "no value write for an unchanged catalog"
    );
    shutdown.cancel();
    publisher.await.expect("joins").expect("ok");
}

#[tokio::test]
async fn without_a_pointer_the_follower_watches_the_value_and_switches_when_one_appears() {
    let sim = Sim::new();
    // A publisher from before pointers writes only the value.
    sim.kv_put(KEY, encoded(1, &["web"]));
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    let _follower = spawn_follower(
        &server,
        follower_config(dir.path(), Duration::from_secs(86_400)),
        &hosts,
        &shutdown,
    );
    until_generation(&hosts, 1).await;
    // As before pointers: a blocking read of the value, and new values applied as they
    // come, whatever the spread (the bytes are already here).
    wait_until(
        Duration::from_secs(5),
        "a blocking read of the value",
        || {
            requests(&sim, "GET", VALUE_PATH)
                .iter()
                .any(|query| blocking(query))
        },
    )
    .await;
    sim.kv_put(KEY, encoded(2, &["web", "api"]));
    until_generation(&hosts, 2).await;

    // The upgraded publisher takes over: value, then pointer.
    publish(&sim, 3, &["web", "api", "db"]);
    until_generation(&hosts, 3).await;
    sim.reset_requests();
    until_pointer_blocked(&sim).await;
    assert!(
        requests(&sim, "GET", VALUE_PATH).is_empty(),
        "following the pointer, the value is no longer watched"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn bad_pointers_are_refused_counted_and_the_value_is_followed_instead() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let sim = Sim::new();
    sim.kv_put(KEY, encoded(1, &["web"]));
    sim.kv_put(POINTER_KEY, "dnsfront-snapshot-pointer 2\ngeneration 1\n");
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    let _follower = spawn_follower(
        &server,
        follower_config(dir.path(), Duration::ZERO),
        &hosts,
        &shutdown,
    );
    // Refused, and the follower keeps working from the value.
    until_generation(&hosts, 1).await;
    let mut tally = Tally::default();
    tally.take(recorded(&recorder));
    assert_eq!((tally.versions, tally.invalid), (1, 1));

    // A good pointer again: followed (the value mode looks for it on every answer).
    publish(&sim, 2, &["web", "api"]);
    until_generation(&hosts, 2).await;
    sim.reset_requests();
    until_pointer_blocked(&sim).await;
    // An oversized pointer: refused by its size, and the value followed again.
    sim.kv_put(POINTER_KEY, vec![b'x'; MAX_POINTER_SIZE + 1]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tally.too_large == 0 {
        assert!(Instant::now() < deadline, "oversized pointer not refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
        tally.take(recorded(&recorder));
    }
    assert_eq!(tally.invalid, 2);
    assert_eq!(hosts.generation(), Some(2), "nothing was lost");
    sim.kv_put(KEY, encoded(3, &["web", "api", "db"]));
    until_generation(&hosts, 3).await;
    shutdown.cancel();
}

/// Pointer refusals counted so far (each `Recorded::take` returns the counts since the last).
#[derive(Default)]
struct Tally {
    versions: u64,
    invalid: u64,
    too_large: u64,
}

impl Tally {
    fn take(&mut self, recorded: Recorded) {
        self.versions += recorded.counter(names::REJECTED, &[("reason", "pointer_version")]);
        self.too_large += recorded.counter(names::REJECTED, &[("reason", "pointer_too_large")]);
        self.invalid += recorded.counter(names::POINTER_READS, &[("result", "invalid")]);
    }
}

#[tokio::test]
async fn a_pointer_naming_a_value_that_is_not_there_is_refused_after_a_few_reads() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let sim = Sim::new();
    publish(&sim, 1, &["web"]);
    let server = start(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    let _follower = spawn_follower(
        &server,
        follower_config(dir.path(), Duration::ZERO),
        &hosts,
        &shutdown,
    );
    until_generation(&hosts, 1).await;
    // A pointer to a value nobody wrote (written by hand out of order, or forged).
    sim.kv_put(POINTER_KEY, Pointer::of(2, &encoded(2, &["evil"])).encode());
    let (mut mismatches, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused == 0 {
        assert!(Instant::now() < deadline, "the pointer was not refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let recorded = recorded(&recorder);
        mismatches += recorded.counter(names::VALUE_FETCHES, &[("result", "mismatch")]);
        refused += recorded.counter(names::REJECTED, &[("reason", "pointer_mismatch")]);
    }
    assert_eq!(
        (mismatches, refused),
        (u64::from(dnsfront_snapshot::follower::MAX_MISMATCHES), 1)
    );
    assert_eq!(hosts.generation(), Some(1), "the snapshot held stays");
    // The publisher's next write is followed as usual.
    publish(&sim, 3, &["web", "api"]);
    until_generation(&hosts, 3).await;
    shutdown.cancel();
}
