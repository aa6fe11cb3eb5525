//! `catalog::View`: the fallback order fresh → stale (within `max_stale`) →
//! hosts snapshot → unavailable, against consul-sim over real HTTP on 127.0.0.1.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use consul_sim::{Fault, Registration, Sim, SimServer};
use dnsfront_catalog::{
    Cache, Config, Freshness, InstanceStatus, Lookup, Node, ServiceInstance, View,
};
use dnsfront_consul as consul;
use dnsfront_snapshot::{Hosts, Snapshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait, so a broken fallback fails instead of hanging.
async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), future)
        .await
        .expect("step finished within 15s")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip literal")
}

async fn start_sim() -> (Sim, SimServer) {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("n1", "10.0.0.1")
            .port(80)
            .check("service:web-1", "passing"),
    );
    let server = sim
        .serve("127.0.0.1:0".parse().expect("valid addr"))
        .await
        .expect("sim serves");
    (sim, server)
}

/// Short intervals so that going stale, and past `max_stale`, takes under a second.
fn config(only_passing: bool) -> Config {
    Config {
        refresh_interval: Duration::from_millis(100),
        refresh_jitter: 0.0,
        first_fetch_timeout: Duration::from_secs(1),
        negative_ttl: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(30),
        max_stale: Duration::from_millis(800),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(100),
        only_passing,
        ..Config::default()
    }
}

fn view(config: Config, server: &SimServer, hosts: &Hosts) -> (View, CancellationToken) {
    let client = consul::Client::new(consul::Config {
        address: server.url(),
        request_timeout: Duration::from_millis(500),
        ..consul::Config::default()
    })
    .expect("valid client config");
    let cache = Cache::new(config, client).expect("valid cache config");
    let shutdown = CancellationToken::new();
    tokio::spawn(cache.clone().run(shutdown.clone()));
    (View::new(cache, hosts.clone()), shutdown)
}

fn instance(node: &str, address: &str, status: InstanceStatus) -> ServiceInstance {
    ServiceInstance {
        node: node.to_owned(),
        datacenter: String::new(),
        node_address: Some(ip(address)),
        service_address: None,
        port: 8080,
        tags: Vec::new(),
        weight: 1,
        status,
        hostname: None,
        details: None,
    }
}

/// The snapshot a publisher in dc1 would have written: `web` on other addresses than
/// Consul's (to tell the sources apart), `legacy` only the snapshot knows, `warned`
/// with a warning instance only, and node `n7`.
fn hosts_with_snapshot() -> Hosts {
    let mut services = BTreeMap::new();
    services.insert(
        "web".to_owned(),
        vec![
            instance("n8", "10.9.0.8", InstanceStatus::Passing),
            instance("n9", "10.9.0.9", InstanceStatus::Warning),
        ],
    );
    services.insert(
        "legacy".to_owned(),
        vec![instance("n7", "10.9.0.7", InstanceStatus::Passing)],
    );
    services.insert(
        "warned".to_owned(),
        vec![instance("n9", "10.9.0.9", InstanceStatus::Warning)],
    );
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "n7".to_owned(),
        Node {
            name: "N7".to_owned(),
            datacenter: String::new(),
            address: Some(ip("10.9.0.7")),
            hostname: None,
            details: None,
        },
    );
    let mut snapshot = Snapshot {
        generation: 1,
        datacenter: "dc1".to_owned(),
        services,
        nodes,
        ..Snapshot::default()
    };
    snapshot.normalize();
    let hosts = Hosts::new();
    hosts.replace(Arc::new(snapshot));
    hosts
}

fn addresses(lookup: &Lookup<Arc<[ServiceInstance]>>) -> Vec<IpAddr> {
    match lookup {
        Lookup::Found(instances, _) => {
            let mut addresses: Vec<IpAddr> = instances.iter().filter_map(|i| i.address()).collect();
            addresses.sort();
            addresses
        }
        _ => Vec::new(),
    }
}

fn freshness<T>(lookup: &Lookup<T>) -> Option<Freshness> {
    match lookup {
        Lookup::Found(_, freshness) | Lookup::NotFound(freshness) => Some(*freshness),
        Lookup::Unavailable => None,
    }
}

#[tokio::test]
async fn consul_answers_win_over_the_snapshot() {
    let (_sim, server) = start_sim().await;
    let hosts = hosts_with_snapshot();
    let (view, shutdown) = view(config(false), &server, &hosts);

    let web = bounded(view.service("web", None)).await;
    assert_eq!(freshness(&web), Some(Freshness::Fresh));
    assert_eq!(addresses(&web), [ip("10.0.0.1")]);
    // Consul says `legacy` does not exist: that is authoritative, the snapshot is not asked.
    let legacy = bounded(view.service("legacy", None)).await;
    assert!(
        matches!(legacy, Lookup::NotFound(Freshness::Fresh)),
        "{legacy:?}"
    );
    // Fresh cache data has witnesses (the UDP fast path's cheap re-check).
    let Lookup::Found(data, _) = &web else {
        panic!("web found")
    };
    assert!(view.service_witness("web", None, Some(data)).is_some());
    shutdown.cancel();
}

#[tokio::test]
async fn unreachable_consul_falls_back_to_the_snapshot_of_its_datacenter() {
    let (sim, server) = start_sim().await;
    sim.inject(Fault::unavailable("/v1/"));
    let hosts = hosts_with_snapshot();
    let (view, shutdown) = view(config(false), &server, &hosts);

    let web = bounded(view.service("web", None)).await;
    assert_eq!(freshness(&web), Some(Freshness::Snapshot));
    assert_eq!(addresses(&web), [ip("10.9.0.8"), ip("10.9.0.9")]);
    let Lookup::Found(instances, _) = &web else {
        panic!("web found")
    };
    assert!(instances.iter().all(|i| i.datacenter == "dc1"));
    assert!(
        view.service_witness("web", None, Some(instances)).is_none(),
        "snapshot data has no witness: the fast path never caches it"
    );
    let same_dc = bounded(view.service("WEB", Some("DC1"))).await;
    assert_eq!(freshness(&same_dc), Some(Freshness::Snapshot));
    // Another datacenter, or a name the snapshot does not hold: SERVFAIL, never NXDOMAIN.
    assert!(matches!(
        bounded(view.service("web", Some("dc2"))).await,
        Lookup::Unavailable
    ));
    assert!(matches!(
        bounded(view.service("nope", None)).await,
        Lookup::Unavailable
    ));

    match bounded(view.node("n7", None)).await {
        Lookup::Found(node, Freshness::Snapshot) => {
            assert_eq!(node.name, "N7");
            assert_eq!(node.datacenter, "dc1");
            assert_eq!(node.address, Some(ip("10.9.0.7")));
        }
        other => panic!("n7 from the snapshot: {other:?}"),
    }
    assert!(matches!(
        bounded(view.node("n8", None)).await,
        Lookup::Unavailable
    ));
    assert!(matches!(
        bounded(view.node("n7", Some("dc2"))).await,
        Lookup::Unavailable
    ));

    // Without a snapshot nothing is usable.
    let (empty, empty_shutdown) = self::view(config(false), &server, &Hosts::new());
    assert!(matches!(
        bounded(empty.service("web", None)).await,
        Lookup::Unavailable
    ));
    shutdown.cancel();
    empty_shutdown.cancel();
}

#[tokio::test]
async fn snapshot_data_follows_the_caches_only_passing_rule() {
    let (sim, server) = start_sim().await;
    sim.inject(Fault::unavailable("/v1/"));
    let hosts = hosts_with_snapshot();

    let (all, all_shutdown) = view(config(false), &server, &hosts);
    assert_eq!(
        addresses(&bounded(all.service("web", None)).await),
        [ip("10.9.0.8"), ip("10.9.0.9")]
    );
    assert_eq!(
        addresses(&bounded(all.service("warned", None)).await),
        [ip("10.9.0.9")]
    );

    let (passing, passing_shutdown) = view(config(true), &server, &hosts);
    let web = bounded(passing.service("web", None)).await;
    assert_eq!(freshness(&web), Some(Freshness::Snapshot));
    assert_eq!(addresses(&web), [ip("10.9.0.8")]);
    // Every instance in warning: the snapshot knows the name, so NXDOMAIN-worthy.
    let warned = bounded(passing.service("warned", None)).await;
    assert!(
        matches!(warned, Lookup::NotFound(Freshness::Snapshot)),
        "{warned:?}"
    );
    all_shutdown.cancel();
    passing_shutdown.cancel();
}

#[tokio::test]
async fn stale_cache_data_comes_before_the_snapshot_until_max_stale() {
    let (sim, server) = start_sim().await;
    let hosts = hosts_with_snapshot();
    let (view, shutdown) = view(config(false), &server, &hosts);
    let web = bounded(view.service("web", None)).await;
    assert_eq!(freshness(&web), Some(Freshness::Fresh));

    sim.inject(Fault::unavailable("/v1/"));
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        let lookup = bounded(view.service("web", None)).await;
        let now = freshness(&lookup);
        if seen.last() != Some(&now) {
            seen.push(now);
            match now {
                Some(Freshness::Stale) => assert_eq!(addresses(&lookup), [ip("10.0.0.1")]),
                Some(Freshness::Snapshot) => {
                    assert_eq!(addresses(&lookup), [ip("10.9.0.8"), ip("10.9.0.9")]);
                }
                _ => {}
            }
        }
        if now == Some(Freshness::Snapshot) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen,
        [
            Some(Freshness::Fresh),
            Some(Freshness::Stale),
            Some(Freshness::Snapshot)
        ],
        "fresh, then stale within max_stale, then the snapshot"
    );
    shutdown.cancel();
}
