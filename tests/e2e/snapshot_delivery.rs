//! The snapshot delivered beyond DNS (issue 17): the hosts file, the after-delivery
//! command, DogStatsD events, and "files sent == files delivered" in `dnsfront check`.

use std::net::UdpSocket;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dnsfront::check::Status;
use dnsfront::cli::CheckArgs;
use dnsfront::config::RawConfig;

use crate::binary::{base_config, write};
use crate::harness::{FAST_REFRESH, Harness, eventually, standard_sim};
use crate::snapshot::sample_snapshot;

const KEY: &str = "dnsfront/hosts";
const STOP_KEY: &str = "dnsfront/hosts-stop";

fn encoded(generation: u64) -> Vec<u8> {
    dnsfront_snapshot::encode(&sample_snapshot(generation), None).expect("encode")
}

/// The test's settings: a fast catalog, unsigned snapshots, the state dir `state`.
fn base(raw: &mut RawConfig, state: &Path) {
    raw.state.dir = state.to_owned();
    raw.catalog.refresh_interval = FAST_REFRESH;
    raw.snapshot.wait = Duration::from_secs(2);
    raw.snapshot.allow_unsigned = true;
}

/// One DogStatsD event, parsed strictly: `_e{T,X}:TITLE|TEXT|t:ALERT|#TAGS`, nothing after.
#[derive(Debug)]
struct ParsedEvent {
    title: String,
    text: String,
    alert: String,
    tags: Vec<String>,
}

fn parse_event(datagram: &str) -> ParsedEvent {
    let rest = datagram
        .strip_prefix("_e{")
        .unwrap_or_else(|| panic!("not an event: {datagram:?}"));
    let (lengths, rest) = rest.split_once("}:").expect("lengths");
    let (title_len, text_len) = lengths.split_once(',').expect("two lengths");
    let title_len: usize = title_len.parse().expect("title length");
    let text_len: usize = text_len.parse().expect("text length");
    let title = &rest[..title_len];
    let rest = rest[title_len..].strip_prefix('|').expect("| after title");
    let text = &rest[..text_len];
    let rest = rest[text_len..]
        .strip_prefix("|t:")
        .expect("alert type after text");
    let (alert, tags) = rest.split_once("|#").expect("tags");
    assert!(
        matches!(alert, "info" | "warning" | "error"),
        "alert type {alert:?}"
    );
    assert!(
        !tags.contains('|') && !tags.contains(' ') && !tags.contains('\n'),
        "tags {tags:?}"
    );
    ParsedEvent {
        title: title.to_owned(),
        text: text.to_owned(),
        alert: alert.to_owned(),
        tags: tags.split(',').map(str::to_owned).collect(),
    }
}

/// Receives datagrams until an event tagged `snapshot_event:WHAT` arrives (metrics lines
/// from a global recorder, if any, are skipped).
fn next_event(agent: &UdpSocket, what: &str) -> ParsedEvent {
    let tag = format!("snapshot_event:{what}");
    let mut buffer = [0_u8; 9000];
    loop {
        let length = agent
            .recv(&mut buffer)
            .unwrap_or_else(|error| panic!("no {what} event: {error}"));
        let datagram = std::str::from_utf8(&buffer[..length]).expect("utf-8 datagram");
        if !datagram.starts_with("_e{") {
            continue;
        }
        let event = parse_event(datagram);
        if event.tags.contains(&tag) {
            return event;
        }
    }
}

/// GETs of the snapshot key itself (not its stop or lock siblings).
fn key_reads(sim: &consul_sim::Sim) -> usize {
    sim.requests()
        .iter()
        .filter(|record| record.method == "GET" && record.path == format!("/v1/kv/{KEY}"))
        .count()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Inode and modification time: what a rewrite changes.
fn identity(path: &Path) -> (u64, i64, i64) {
    let metadata = std::fs::metadata(path).expect("hosts file");
    (metadata.ino(), metadata.mtime(), metadata.mtime_nsec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_delivers_the_hosts_file_runs_its_command_once_and_sends_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let out = dir.path().join("out");
    let hosts_file = out.join("consul.hosts");
    let ran = dir.path().join("ran");
    let agent = UdpSocket::bind("127.0.0.1:0").expect("agent socket");
    agent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let agent_address = agent.local_addr().expect("addr");
    let h = Harness::start_with(standard_sim(), |raw| {
        base(raw, &state);
        raw.snapshot.hosts_file = Some(hosts_file.clone());
        raw.snapshot.hosts_file_mode = "0640".to_owned();
        raw.snapshot.after_delivery_command = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!(
                "echo \"$DNSFRONT_SNAPSHOT_GENERATION $DNSFRONT_HOSTS_FILE\" >> {}",
                ran.display()
            ),
        ];
        raw.metrics.statsd = true;
        raw.metrics.statsd_address = agent_address.to_string();
        raw.metrics.events = true;
    })
    .await;

    h.sim.kv_put(KEY, encoded(1));
    let applied = tokio::task::block_in_place(|| next_event(&agent, "applied"));
    assert_eq!(applied.title, "dnsfront snapshot applied");
    assert_eq!(applied.alert, "info");
    assert!(applied.text.contains("generation 1 "), "{applied:?}");
    assert!(
        applied.tags.contains(&format!("snapshot_key:{KEY}")),
        "{applied:?}"
    );
    let expected_line = format!("1 {}", hosts_file.display());
    assert!(
        eventually(Duration::from_secs(10), || async {
            lines(&ran) == [expected_line.clone()]
        })
        .await,
        "the command ran once for generation 1: {:?}",
        lines(&ran)
    );
    // The file was in place before the command ran, whole, with its mode.
    let expected = dnsfront_snapshot::to_hosts_file(&sample_snapshot(1), "consul");
    assert_eq!(
        std::fs::read_to_string(&hosts_file).expect("hosts file"),
        expected
    );
    let mode = std::fs::metadata(&hosts_file)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    let names: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("out dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert_eq!(
        names,
        std::slice::from_ref(&hosts_file),
        "no temp file left behind"
    );
    let before = identity(&hosts_file);

    // The same value written again: read, found already applied, nothing delivered. Two
    // more reads of the key prove the follower has been through it.
    let reads = key_reads(&h.sim);
    h.sim.kv_put(KEY, encoded(1));
    assert!(
        eventually(Duration::from_secs(10), || async {
            key_reads(&h.sim) >= reads + 2
        })
        .await
    );
    // A rejected value: an event, and no file or command.
    let mut corrupt = encoded(2);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    h.sim.kv_put(KEY, corrupt);
    let rejected = tokio::task::block_in_place(|| next_event(&agent, "rejected"));
    assert_eq!(rejected.alert, "error");
    assert!(
        rejected.tags.iter().any(|tag| tag.starts_with("reason:")),
        "{rejected:?}"
    );
    assert_eq!(
        identity(&hosts_file),
        before,
        "the hosts file was not rewritten"
    );
    assert_eq!(
        std::fs::read_to_string(&hosts_file).expect("hosts file"),
        expected
    );
    assert_eq!(
        lines(&ran),
        std::slice::from_ref(&expected_line),
        "no command for them"
    );

    // The next good generation is delivered and runs the command once more.
    h.sim.kv_put(KEY, encoded(2));
    let applied = tokio::task::block_in_place(|| next_event(&agent, "applied"));
    assert!(applied.text.contains("generation 2 "), "{applied:?}");
    assert!(
        eventually(Duration::from_secs(10), || async { lines(&ran).len() == 2 }).await,
        "{:?}",
        lines(&ran)
    );
    assert_eq!(
        lines(&ran),
        [expected_line, format!("2 {}", hosts_file.display())]
    );
    assert_eq!(
        std::fs::read_to_string(&hosts_file).expect("hosts file"),
        dnsfront_snapshot::to_hosts_file(&sample_snapshot(2), "consul")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_behind_while_kv_holds_a_snapshot_the_node_has_not_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let h = Harness::start_with(standard_sim(), |raw| base(raw, &state)).await;
    let config = dir.path().join("dnsfront.toml");
    write(
        &config,
        &format!(
            "{}\n[dns]\nlisten = [\"{}\"]\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n\n[snapshot]\nallow_unsigned = true\n",
            base_config(&h.consul.url(), &state),
            h.dns
        ),
    );
    let delivery = || {
        let config = config.clone();
        async move {
            let lines = dnsfront::check::checks(&CheckArgs {
                config: Some(config),
                control: None,
                json: false,
            })
            .await;
            let line = lines
                .into_iter()
                .find(|line| line.what == "delivery")
                .expect("a delivery line");
            (line.status, line.detail)
        }
    };

    // Held back by the kill switch: KV has generation 1, the node nothing.
    h.sim.kv_put(STOP_KEY, "testing");
    h.sim.kv_put(KEY, encoded(1));
    let (status, detail) = delivery().await;
    assert_eq!(status, Status::Warn, "{detail}");
    assert!(
        detail.starts_with("behind: holds nothing") && detail.contains("generation 1 "),
        "{detail}"
    );

    // Released: the follower applies it and the line turns ok.
    h.sim.kv_put(STOP_KEY, "");
    assert!(
        eventually(Duration::from_secs(10), || async {
            delivery().await.0 == Status::Ok
        })
        .await,
        "never up to date: {:?}",
        delivery().await
    );
    let (_, detail) = delivery().await;
    assert!(
        detail.starts_with("up to date: generation 1 (sha256 "),
        "{detail}"
    );

    // The publisher writes generation 2 while the switch holds it back: behind again.
    h.sim.kv_put(STOP_KEY, "testing again");
    h.sim.kv_put(KEY, encoded(2));
    let (status, detail) = delivery().await;
    assert_eq!(status, Status::Warn, "{detail}");
    assert!(
        detail.starts_with("behind: holds generation 1 ") && detail.contains("has generation 2 "),
        "{detail}"
    );
    h.stop().await;
}
