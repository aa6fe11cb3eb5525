//! LocalHosts over real files in a temporary directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dnsfront_hosts::{Error, LocalHosts, Lookup, MAX_FILE_SIZE, Stats};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio_util::sync::CancellationToken;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip literal")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write hosts file");
}

fn addresses(hosts: &LocalHosts, name: &str) -> Option<Vec<IpAddr>> {
    hosts.addresses(name).map(|list| list.to_vec())
}

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        write(&path, text);
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn merges_files_and_answers_both_directions() {
    let dir = Dir::new();
    let etc = dir.file("hosts", "127.0.0.1 localhost\n10.0.0.1 db.internal db\n");
    let extra = dir.file("extra", "10.0.0.2 DB.internal\nfd00::7 db\n");
    let hosts = LocalHosts::load(vec![etc, extra]).expect("load");

    assert_eq!(
        addresses(&hosts, "db.internal."),
        Some(vec![ip("10.0.0.1"), ip("10.0.0.2")])
    );
    assert_eq!(
        addresses(&hosts, "DB"),
        Some(vec![ip("10.0.0.1"), ip("fd00::7")])
    );
    assert_eq!(addresses(&hosts, "nope.internal"), None);
    match hosts.lookup("1.0.0.10.in-addr.arpa.") {
        Some(Lookup::Names { address, names }) => {
            assert_eq!(address, ip("10.0.0.1"));
            let names: Vec<&str> = names.iter().map(|name| &**name).collect();
            assert_eq!(names, vec!["db.internal", "db"]);
        }
        other => panic!("expected reverse names, got {other:?}"),
    }
    assert_eq!(
        hosts.lookup("2.0.0.10.in-addr.arpa"),
        Some(Lookup::Names {
            address: ip("10.0.0.2"),
            names: vec!["db.internal".into()].into(),
        })
    );
    assert_eq!(hosts.lookup("9.0.0.10.in-addr.arpa."), None);
    assert_eq!(
        hosts.stats(),
        Stats {
            files: 2,
            missing: 0,
            names: 3,
            addresses: 4,
            entries: 5,
            bad_lines: 0,
        }
    );
}

#[test]
fn missing_file_is_skipped_and_picked_up_on_reload() {
    let dir = Dir::new();
    let present = dir.file("hosts", "10.0.0.1 a\n");
    let later = dir.path("later");
    let hosts = LocalHosts::load(vec![present, later.clone()]).expect("missing is not fatal");
    assert_eq!(hosts.stats().missing, 1);
    assert!(addresses(&hosts, "a").is_some());

    write(&later, "10.0.0.2 b\n");
    let stats = hosts.reload().expect("reload");
    assert_eq!((stats.files, stats.missing), (2, 0));
    assert_eq!(addresses(&hosts, "b"), Some(vec![ip("10.0.0.2")]));
}

#[test]
fn failed_reload_keeps_the_previous_entries() {
    let dir = Dir::new();
    let path = dir.file("hosts", "10.0.0.1 a\n");
    let hosts = LocalHosts::load(vec![path.clone()]).expect("load");

    let big = std::fs::File::create(&path).expect("create");
    big.set_len(MAX_FILE_SIZE + 1).expect("grow sparse file");
    let error = hosts.reload().expect_err("oversized file");
    assert!(matches!(error, Error::TooLarge { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "the error names the file: {error}"
    );
    assert_eq!(addresses(&hosts, "a"), Some(vec![ip("10.0.0.1")]));

    let error = LocalHosts::load(vec![dir.dir.path().to_owned()]).expect_err("a directory");
    assert!(matches!(error, Error::Read { .. }), "{error:?}");
}

#[test]
fn set_paths_replaces_the_files() {
    let dir = Dir::new();
    let first = dir.file("one", "10.0.0.1 one\n");
    let second = dir.file("two", "10.0.0.2 two\n");
    let hosts = LocalHosts::load(vec![first]).expect("load");
    assert!(addresses(&hosts, "one").is_some());
    let stats = hosts.set_paths(vec![second.clone()]).expect("set paths");
    assert_eq!(stats.names, 1);
    assert_eq!(addresses(&hosts, "one"), None);
    assert!(addresses(&hosts, "two").is_some());
    assert_eq!(hosts.paths(), vec![second]);

    hosts.set_paths(Vec::new()).expect("no files");
    assert!(hosts.is_empty());
    assert_eq!(hosts.lookup("two"), None);
}

#[test]
fn entries_gauge_follows_loads() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = Dir::new();
    let path = dir.file("hosts", "10.0.0.1 a b\n10.0.0.2 a\nnot-an-address x\n");
    metrics::with_local_recorder(&recorder, || {
        let hosts = LocalHosts::load(vec![path.clone()]).expect("load");
        assert_eq!(hosts.stats().entries, 3);
        assert_eq!(hosts.stats().bad_lines, 1);
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let gauge = snapshot
        .iter()
        .find(|(key, ..)| key.key().name() == "hosts.entries")
        .map(|(.., value)| value);
    assert_eq!(gauge, Some(&DebugValue::Gauge(3.0.into())));
    let reloads = snapshot
        .iter()
        .find(|(key, ..)| key.key().name() == "hosts.reloads_total")
        .map(|(key, .., value)| {
            (
                key.key()
                    .labels()
                    .map(|l| l.value().to_owned())
                    .collect::<Vec<_>>(),
                value,
            )
        });
    assert_eq!(
        reloads,
        Some((vec!["ok".to_owned()], &DebugValue::Counter(1)))
    );
}

#[tokio::test]
async fn watch_reloads_when_a_file_changes() {
    let dir = Dir::new();
    let path = dir.file("hosts", "10.0.0.1 web\n");
    let hosts = LocalHosts::load(vec![path.clone()]).expect("load");
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(
        hosts
            .clone()
            .watch(Duration::from_millis(20), shutdown.clone()),
    );

    write(&path, "10.0.0.9 web\n10.0.0.8 api\n");
    wait_for(|| addresses(&hosts, "web") == Some(vec![ip("10.0.0.9")])).await;
    assert!(addresses(&hosts, "api").is_some());

    // Replace by rename, as editors and config management do.
    let staged = dir.file("staged", "10.0.0.7 web\n");
    std::fs::rename(&staged, &path).expect("rename");
    wait_for(|| addresses(&hosts, "web") == Some(vec![ip("10.0.0.7")])).await;

    std::fs::remove_file(&path).expect("remove");
    wait_for(|| hosts.is_empty()).await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops on shutdown")
        .expect("watcher did not panic");
}

/// With a poll far longer than the test, only inotify can bring the changes in:
/// an edit, a replacement by rename, a file appearing, and after a config
/// reload (`set_paths`) a file in another directory.
#[tokio::test]
async fn watch_sees_changes_without_waiting_for_the_poll() {
    let dir = Dir::new();
    let other = Dir::new();
    let path = dir.file("hosts", "10.0.0.1 web\n");
    let missing = dir.path("addn-hosts");
    let hosts = LocalHosts::load(vec![path.clone(), missing.clone()]).expect("load");
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(
        hosts
            .clone()
            .watch(Duration::from_secs(3600), shutdown.clone()),
    );

    write(&path, "10.0.0.9 web\n");
    wait_for(|| addresses(&hosts, "web") == Some(vec![ip("10.0.0.9")])).await;

    let staged = dir.file("staged", "10.0.0.7 web\n");
    std::fs::rename(&staged, &path).expect("rename");
    wait_for(|| addresses(&hosts, "web") == Some(vec![ip("10.0.0.7")])).await;

    write(&missing, "10.0.0.5 printer\n");
    wait_for(|| addresses(&hosts, "printer") == Some(vec![ip("10.0.0.5")])).await;

    let moved = other.file("hosts", "10.0.0.3 db\n");
    hosts.set_paths(vec![moved.clone()]).expect("set paths");
    assert_eq!(addresses(&hosts, "db"), Some(vec![ip("10.0.0.3")]));
    write(&moved, "10.0.0.4 db\n");
    wait_for(|| addresses(&hosts, "db") == Some(vec![ip("10.0.0.4")])).await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops on shutdown")
        .expect("watcher did not panic");
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
