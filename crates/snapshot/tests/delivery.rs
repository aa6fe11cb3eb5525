//! Delivery of applied snapshots (issue 17): the hosts file and the after-delivery command
//! with real files and processes, and the follower's "behind" signal, events and
//! deliveries against consul-sim over real HTTP.

mod common;

use common::client;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consul_sim::Sim;
use dnsfront_snapshot::delivery::{
    AfterCommand, CommandOutcome, Delivery, DeliveryConfig, FileOutcome, HostsFile,
};
use dnsfront_snapshot::events::{AlertType, Event, EventSink};
use dnsfront_snapshot::follower::{Follower, FollowerConfig};
use dnsfront_snapshot::publisher::{Publisher, PublisherConfig};
use dnsfront_snapshot::store::Attributes;
use dnsfront_snapshot::{Hosts, Snapshot, encode, metrics as names, to_hosts_file};
use test_support::{DebuggingRecorder, Recorded};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const KEY: &str = "dnsfront/hosts";
const STOP_KEY: &str = "dnsfront/hosts-stop";

fn snapshot(generation: u64) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        generation,
        ..common::fixture()
    })
}

fn hosts_file(path: &Path, mode: u32) -> HostsFile {
    HostsFile {
        path: path.to_owned(),
        domain: "consul".to_owned(),
        attributes: Attributes {
            mode: Some(mode),
            ..Attributes::default()
        },
    }
}

/// `sh -c SCRIPT` with a timeout.
fn shell(script: &str, timeout: Duration) -> AfterCommand {
    AfterCommand {
        argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
        timeout,
    }
}

/// A command appending the generation it ran for to `counter`.
fn counting(counter: &Path) -> AfterCommand {
    shell(
        &format!(
            "echo \"$DNSFRONT_SNAPSHOT_GENERATION\" >> {}",
            counter.display()
        ),
        Duration::from_secs(10),
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn identity(path: &Path) -> (u64, i64, i64) {
    let metadata = std::fs::metadata(path).expect("file");
    (metadata.ino(), metadata.mtime(), metadata.mtime_nsec())
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    entries.sort();
    entries
}

#[tokio::test]
async fn hosts_file_is_written_with_its_mode_and_only_when_it_changed_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let out = dir.path().join("out");
    let path = out.join("consul.hosts");
    let counter = dir.path().join("ran");
    let config = DeliveryConfig {
        hosts_file: Some(hosts_file(&path, 0o640)),
        command: Some(counting(&counter)),
        state_dir: state.clone(),
    };

    let first = snapshot(1);
    let report = Delivery::new(config.clone()).deliver(&first).await;
    assert_eq!(report.file, FileOutcome::Written);
    assert_eq!(report.command, CommandOutcome::Succeeded);
    assert_eq!(
        std::fs::read_to_string(&path).expect("hosts file"),
        to_hosts_file(&first, "consul")
    );
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    assert_eq!(
        entries(&out),
        std::slice::from_ref(&path),
        "no temp file left"
    );
    assert_eq!(lines(&counter), ["1"]);
    let before = identity(&path);

    // A restarted resolver delivering the same snapshot: nothing rewritten, nothing run.
    let mut restarted = Delivery::new(config.clone());
    let report = restarted.deliver(&snapshot(1)).await;
    assert_eq!(report.file, FileOutcome::Unchanged);
    assert_eq!(report.command, CommandOutcome::AlreadyRan);
    assert_eq!(identity(&path), before);
    assert_eq!(lines(&counter), ["1"]);

    // A new generation: rewritten (a new inode, renamed into place) and run once.
    let report = restarted.deliver(&snapshot(2)).await;
    assert_eq!(report.file, FileOutcome::Written);
    assert_eq!(report.command, CommandOutcome::Succeeded);
    assert_ne!(identity(&path).0, before.0);
    assert_eq!(lines(&counter), ["1", "2"]);
    let report = restarted.deliver(&snapshot(2)).await;
    assert_eq!(report.command, CommandOutcome::AlreadyRan);
    assert_eq!(lines(&counter), ["1", "2"]);
}

#[tokio::test(flavor = "current_thread")]
async fn failing_and_hanging_commands_are_counted_and_the_hanging_one_is_killed_at_its_timeout() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");

    let failing = DeliveryConfig {
        hosts_file: None,
        command: Some(shell("exit 3", Duration::from_secs(10))),
        state_dir: dir.path().join("failing"),
    };
    let report = Delivery::new(failing).deliver(&snapshot(1)).await;
    assert_eq!(
        report.command,
        CommandOutcome::Failed("exit status: 3".to_owned())
    );

    let hanging = DeliveryConfig {
        hosts_file: None,
        command: Some(shell(
            &format!("echo $$ > {}; exec sleep 60", pid_file.display()),
            Duration::from_millis(300),
        )),
        state_dir: dir.path().join("hanging"),
    };
    let report = Delivery::new(hanging).deliver(&snapshot(1)).await;
    assert_eq!(report.command, CommandOutcome::TimedOut);
    let pid = std::fs::read_to_string(&pid_file).expect("pid written");
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the command was killed and reaped"
    );

    let missing = DeliveryConfig {
        hosts_file: None,
        command: Some(AfterCommand {
            argv: vec!["/nonexistent/dnsfront-test-command".to_owned()],
            timeout: Duration::from_secs(1),
        }),
        state_dir: dir.path().join("missing"),
    };
    let report = Delivery::new(missing).deliver(&snapshot(1)).await;
    assert!(
        matches!(report.command, CommandOutcome::NotRun(_)),
        "{report:?}"
    );

    let recorded = Recorded::take(&recorder.snapshotter());
    for result in ["failed", "timeout", "not_run"] {
        assert_eq!(
            recorded.counter(names::AFTER_DELIVERY_COMMANDS, &[("result", result)]),
            1,
            "{result}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_hosts_file_that_cannot_be_written_is_counted_and_the_command_still_runs() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let dir = tempfile::tempdir().expect("tempdir");
    // Its directory is a regular file.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").expect("blocker");
    let counter = dir.path().join("ran");
    let config = DeliveryConfig {
        hosts_file: Some(hosts_file(&blocker.join("consul.hosts"), 0o644)),
        command: Some(counting(&counter)),
        state_dir: dir.path().join("state"),
    };
    let report = Delivery::new(config).deliver(&snapshot(4)).await;
    assert!(matches!(report.file, FileOutcome::Failed(_)), "{report:?}");
    assert_eq!(report.command, CommandOutcome::Succeeded);
    assert_eq!(lines(&counter), ["4"]);
    let recorded = Recorded::take(&recorder.snapshotter());
    assert_eq!(
        recorded.counter(names::HOSTS_FILE_WRITES, &[("result", "failed")]),
        1
    );
}

/// Keeps every event sent.
#[derive(Debug, Default)]
struct Collected(Mutex<Vec<Event>>);

impl EventSink for Collected {
    fn send(&self, event: Event) {
        self.0.lock().expect("events").push(event);
    }
}

impl Collected {
    fn count(&self, tag: &str) -> usize {
        let tag = format!("snapshot_event:{tag}");
        self.0
            .lock()
            .expect("events")
            .iter()
            .filter(|event| event.tags.contains(&tag))
            .count()
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The last value of a gauge, kept across `DebuggingRecorder` snapshots (a snapshot
/// returns only what changed since the previous one).
struct Gauges<'a> {
    recorder: &'a DebuggingRecorder,
    behind: Option<f64>,
    kv_generation: Option<f64>,
}

impl Gauges<'_> {
    fn read(&mut self) -> (Option<f64>, Option<f64>) {
        let recorded = Recorded::take(&self.recorder.snapshotter());
        if let Some(value) = recorded.gauge(names::BEHIND, &[]) {
            self.behind = Some(value);
        }
        if let Some(value) = recorded.gauge(names::KV_GENERATION, &[]) {
            self.kv_generation = Some(value);
        }
        (self.behind, self.kv_generation)
    }

    async fn wait_for(&mut self, behind: f64, kv_generation: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.read() != (Some(behind), Some(kv_generation)) {
            assert!(
                Instant::now() < deadline,
                "behind {behind}, kv_generation {kv_generation}: got {:?}",
                (self.behind, self.kv_generation)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn follower_delivers_applied_snapshots_only_and_reports_when_it_is_behind() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut gauges = Gauges {
        recorder: &recorder,
        behind: None,
        kv_generation: None,
    };
    let sim = Sim::new();
    let server = sim
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("consul.hosts");
    let counter = dir.path().join("ran");
    let events = Arc::new(Collected::default());
    let config = FollowerConfig {
        min_interval: Duration::from_millis(20),
        wait: Duration::from_secs(30),
        allow_unsigned: true,
        hosts_file: Some(hosts_file(&path, 0o644)),
        after_delivery: Some(counting(&counter)),
        events: Some(events.clone()),
        ..FollowerConfig::new(dir.path().join("state"))
    };
    let hosts = Hosts::new();
    let shutdown = CancellationToken::new();
    let follower =
        tokio::spawn(Follower::new(config, client(&server), hosts.clone()).run(shutdown.clone()));

    let encoded = |generation| encode(&snapshot(generation), None).expect("encode");
    sim.kv_put(KEY, encoded(1));
    wait_until("generation 1 delivered", || lines(&counter) == ["1"]).await;
    gauges.wait_for(0.0, 1.0).await;
    assert_eq!(events.count("applied"), 1);
    let before = identity(&path);

    // Rejected: behind, an error event, no file and no command.
    let mut corrupt = encoded(2);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    sim.kv_put(KEY, corrupt);
    wait_until("the rejected event", || events.count("rejected") == 1).await;
    assert_eq!(gauges.read().0, Some(1.0), "behind after a rejection");
    // The value already held, written again: up to date, nothing delivered.
    sim.kv_put(KEY, encoded(1));
    gauges.wait_for(0.0, 1.0).await;
    assert_eq!(identity(&path), before);
    assert_eq!(lines(&counter), ["1"]);
    assert_eq!(hosts.generation(), Some(1));

    // The publisher writes generation 2 while the kill switch holds it back: behind.
    sim.kv_put(STOP_KEY, "maintenance");
    sim.kv_put(KEY, encoded(2));
    gauges.wait_for(1.0, 2.0).await;
    assert_eq!(events.count("kill_switch"), 1);
    assert_eq!(hosts.generation(), Some(1));
    assert_eq!(lines(&counter), ["1"]);
    // Released: applied, delivered, up to date.
    sim.kv_put(STOP_KEY, "");
    wait_until("generation 2 delivered", || lines(&counter) == ["1", "2"]).await;
    gauges.wait_for(0.0, 2.0).await;
    assert_eq!(
        std::fs::read_to_string(&path).expect("hosts file"),
        to_hosts_file(&snapshot(2), "consul")
    );
    let alerts: Vec<AlertType> = events
        .0
        .lock()
        .expect("events")
        .iter()
        .map(|event| event.alert)
        .collect();
    assert_eq!(
        alerts,
        [
            AlertType::Info,
            AlertType::Error,
            AlertType::Warning,
            AlertType::Info
        ]
    );
    shutdown.cancel();
    follower.await.expect("follower ends");
}

#[tokio::test]
async fn publisher_sends_an_event_for_each_snapshot_it_writes() {
    let sim = Sim::new();
    sim.register(
        consul_sim::Registration::new("web")
            .id("web-1")
            .node("n1", "10.0.0.1")
            .port(80)
            .check("service:web-1", "passing"),
    );
    let server = sim
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim");
    let events = Arc::new(Collected::default());
    let config = PublisherConfig {
        min_interval: Duration::from_millis(100),
        session_ttl: Duration::from_secs(10),
        lock_delay: Duration::ZERO,
        events: Some(events.clone()),
        ..PublisherConfig::new("pub-a")
    };
    let shutdown = CancellationToken::new();
    let publisher = tokio::spawn(Publisher::new(config, client(&server)).run(shutdown.clone()));
    wait_until("the published event", || events.count("published") == 1).await;
    let event = events.0.lock().expect("events")[0].clone();
    assert_eq!(event.title, "dnsfront snapshot published");
    assert_eq!(event.alert, AlertType::Info);
    assert!(
        event
            .text
            .starts_with("Hosts snapshot generation 1 published by pub-a: 1 services"),
        "{event:?}"
    );
    assert!(event.tags.contains(&format!("snapshot_key:{KEY}")));
    shutdown.cancel();
    publisher
        .await
        .expect("joins")
        .expect("publisher ends cleanly");
}
