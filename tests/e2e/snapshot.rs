//! The outage fallback: fresh cache → stale cache → hosts snapshot → SERVFAIL.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use dnsfront_consul::{InstanceStatus, Node, ServiceInstance};
use dnsfront_snapshot::Snapshot;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, sorted_addresses, udp};

use crate::harness::{FAST_REFRESH, Harness, eventually, standard_sim};

const KEY: &str = "dnsfront/hosts";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// What a publisher would write for `standard_sim()` (web-1, web-2, api, db)
/// plus `legacy`, a service only the snapshot knows.
pub(crate) fn sample_snapshot(generation: u64) -> Snapshot {
    let instance = |node: &str, node_ip: &str, service_ip: Option<&str>, port| ServiceInstance {
        node: node.into(),
        datacenter: "dc1".into(),
        node_address: Some(ip(node_ip)),
        service_address: service_ip.map(ip),
        port,
        tags: vec!["primary".into()],
        weight: 1,
        status: InstanceStatus::Passing,
        hostname: None,
        details: None,
    };
    let mut services = BTreeMap::new();
    services.insert(
        "web".to_owned(),
        vec![
            instance("node-1", "10.0.0.1", None, 80),
            instance("node-2", "10.0.0.2", None, 8080),
        ],
    );
    services.insert(
        "legacy".to_owned(),
        vec![instance("node-7", "10.0.0.7", None, 80)],
    );
    let mut nodes = BTreeMap::new();
    for (name, address) in [
        ("node-1", "10.0.0.1"),
        ("node-2", "10.0.0.2"),
        ("node-7", "10.0.0.7"),
    ] {
        nodes.insert(
            name.to_owned(),
            Node {
                name: name.into(),
                datacenter: "dc1".into(),
                address: Some(ip(address)),
                hostname: None,
                details: None,
            },
        );
    }
    let mut snapshot = Snapshot {
        generation,
        consul_index: 42,
        created_unix_ms: 1_700_000_000_000,
        publisher: "test-publisher".into(),
        datacenter: "dc1".into(),
        services,
        nodes,
    };
    snapshot.normalize();
    snapshot
}

fn with_state_dir(dir: &Path) -> impl FnOnce(&mut dnsfront::config::RawConfig) + '_ {
    move |raw| {
        raw.state.dir = dir.to_owned();
        raw.catalog.refresh_interval = FAST_REFRESH;
        raw.catalog.negative_cache_ttl = FAST_REFRESH;
        raw.catalog.idle_timeout = Duration::from_secs(60);
        raw.catalog.max_stale = Duration::from_millis(1500);
        raw.catalog.backoff_min = Duration::from_millis(200);
        raw.catalog.backoff_max = Duration::from_secs(1);
        raw.snapshot.wait = Duration::from_secs(2);
        // These tests publish unsigned snapshots (signing has its own tests).
        raw.snapshot.allow_unsigned = true;
    }
}

#[tokio::test]
async fn outage_serves_stale_cache_then_the_snapshot_then_servfail_for_unknown_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = standard_sim();
    let encoded = dnsfront_snapshot::encode(&sample_snapshot(1), None).expect("encode");
    sim.kv_put(KEY, encoded);
    let h = Harness::start_with(sim, with_state_dir(dir.path())).await;

    // The follower brings the snapshot to disk and memory.
    let file = dnsfront_snapshot::store::path(dir.path());
    assert!(
        eventually(Duration::from_secs(3), || async { file.exists() }).await,
        "snapshot never reached the state dir"
    );
    let web = Ask::new("web.service.consul.", RecordType::A).edns(1232);
    let (answer, _) = udp(h.dns, &web).await;
    assert_eq!(
        sorted_addresses(&answer),
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );

    h.consul.set_down(true);
    // Stale cache first (within max_stale)...
    tokio::time::sleep(FAST_REFRESH * 3).await;
    let (answer, _) = udp(h.dns, &web).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::NoError,
        "stale cache"
    );
    // ...then, with the cache entry past max_stale, the snapshot still answers.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (answer, _) = udp(h.dns, &web).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::NoError,
        "snapshot after max_stale"
    );
    assert_eq!(
        sorted_addresses(&answer),
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
    assert!(
        answer.answers.iter().all(|r| r.ttl <= 5),
        "short TTL for snapshot answers"
    );
    let has_ede = answer.edns.as_ref().is_some_and(|edns| {
        edns.options()
            .as_ref()
            .iter()
            .any(|(code, _)| u16::from(*code) == 15)
    });
    assert!(has_ede, "snapshot answers carry EDE 3 (Stale Answer)");

    // A name never asked before the outage, known only to the snapshot.
    let (answer, _) = udp(h.dns, &Ask::new("legacy.service.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("10.0.0.7")]);
    let (answer, _) = udp(h.dns, &Ask::new("node-7.node.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("10.0.0.7")]);
    // Unknown to everyone during the outage: SERVFAIL, never NXDOMAIN.
    let (answer, _) = udp(h.dns, &Ask::new("nosuch.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    h.stop().await;
}

#[tokio::test]
async fn a_resolver_started_during_an_outage_answers_from_its_state_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let encoded = dnsfront_snapshot::encode(&sample_snapshot(3), None).expect("encode");
    dnsfront_snapshot::store::save(dir.path(), &encoded).expect("save");
    let sim = standard_sim();
    let h = Harness::start_with(sim, with_state_dir(dir.path())).await;
    h.consul.set_down(true);
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        sorted_addresses(&answer),
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::SRV)).await;
    assert_eq!(answer.answers.len(), 2, "SRV from the snapshot");
    let (answer, _) = udp(h.dns, &Ask::new("api.service.consul.", RecordType::A)).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::ServFail,
        "not in the snapshot"
    );
    h.stop().await;
}

#[tokio::test]
async fn follower_rejects_bad_snapshots_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = standard_sim();
    sim.kv_put(
        KEY,
        dnsfront_snapshot::encode(&sample_snapshot(5), None).expect("encode"),
    );
    let h = Harness::start_with(sim, with_state_dir(dir.path())).await;
    let file = dnsfront_snapshot::store::path(dir.path());
    assert!(eventually(Duration::from_secs(3), || async { file.exists() }).await);
    let good = std::fs::read(&file).expect("read");

    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    for bad in [
        corrupt,
        good[..good.len() / 2].to_vec(),
        b"not a snapshot".to_vec(),
        dnsfront_snapshot::encode(&sample_snapshot(4), None).expect("older generation"),
    ] {
        let reads_before = data_key_reads(&h.sim);
        h.sim.kv_put(KEY, bad);
        // Two more reads of the key: the one that returned the bad value and
        // the next, which the follower only sends after it dealt with it.
        let sim = h.sim.clone();
        assert!(
            eventually(Duration::from_secs(8), || async {
                data_key_reads(&sim) >= reads_before + 2
            })
            .await,
            "follower did not read the bad value"
        );
        assert_eq!(
            std::fs::read(&file).expect("read"),
            good,
            "a bad snapshot replaced the good one"
        );
        assert_eq!(h.hosts_generation(), Some(5));
    }
    // A newer good one is applied.
    h.sim.kv_put(
        KEY,
        dnsfront_snapshot::encode(&sample_snapshot(6), None).expect("encode"),
    );
    let hosts = h.hosts.clone();
    assert!(
        eventually(Duration::from_secs(3), || async {
            hosts.generation() == Some(6)
        })
        .await
    );
    h.stop().await;
}

fn data_key_reads(sim: &consul_sim::Sim) -> usize {
    sim.requests()
        .iter()
        .filter(|request| request.method == "GET" && request.path == format!("/v1/kv/{KEY}"))
        .count()
}
