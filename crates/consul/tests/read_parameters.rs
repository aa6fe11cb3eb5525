//! Issue 14 §3: the client never sends a read parameter that turns the agent's
//! streaming backend off or multiplies its server subscriptions (`near`, `filter`,
//! `tag`, `node-meta`), nor `max_stale` (which sends every agent to the new leader
//! during an election). Every read the client can make, with every combination of
//! its options and of the client settings that shape reads, is sent to the
//! simulator over HTTP and the query strings it received are checked.

use std::time::Duration;

use consul_sim::{Registration, Sim, SimServer};
use dnsfront_consul::{Client, Config, QueryOptions};

/// Parameters that must never be sent on a read.
const FORBIDDEN: &[&str] = &["near", "filter", "tag", "node-meta", "max_stale"];

/// Every parameter a read may carry (`read_call` and `Client::url`).
const ALLOWED: &[&str] = &[
    "dc",
    "stale",
    "cached",
    "passing",
    "index",
    "wait",
    "ns",
    "partition",
];

async fn start() -> (Sim, SimServer) {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("n1", "10.0.0.1")
            .port(80)
            .tags(&["primary"])
            .check("service:web-1", "passing"),
    );
    sim.kv_put("dnsfront/hosts", "x");
    let server = sim
        .serve("127.0.0.1:0".parse().expect("valid addr"))
        .await
        .expect("sim serves");
    (sim, server)
}

/// Every combination of the per-read options (blocking reads use index 1 and a
/// short wait: the simulator's index is past 1, so they answer at once).
fn every_option_combination() -> Vec<QueryOptions> {
    let mut all = Vec::new();
    for datacenter in [None, Some("dc1".to_owned())] {
        for passing in [false, true] {
            for index in [None, Some(0), Some(1)] {
                for wait in [None, Some(Duration::from_millis(20))] {
                    for cached in [false, true] {
                        all.push(QueryOptions {
                            datacenter: datacenter.clone(),
                            passing,
                            index,
                            wait,
                            cached,
                        });
                    }
                }
            }
        }
    }
    all
}

/// Sends every read the client has with `opts`; answers are not the point (a
/// namespace the simulator does not know may be refused), only what was sent.
async fn every_read(client: &Client, opts: &QueryOptions) {
    tokio::time::timeout(Duration::from_secs(5), async {
        let _ = client.health_service("web", opts).await;
        let _ = client.health_state("critical", opts).await;
        let _ = client.health_state("any", opts).await;
        let _ = client.catalog_node("n1", opts).await;
        let _ = client.catalog_services(opts).await;
        let _ = client.catalog_nodes(opts).await;
        let _ = client.kv_get("dnsfront/hosts", opts).await;
        let _ = client.status_leader().await;
        let _ = client.agent_self().await;
    })
    .await
    .expect("every read answers within 5 s");
}

#[tokio::test]
async fn no_read_ever_sends_near_filter_tag_node_meta_or_max_stale() {
    let (sim, server) = start().await;
    let options = every_option_combination();
    let mut clients = 0;
    for stale in [true, false] {
        for cached in [false, true] {
            for scope in [None, Some("team-a".to_owned())] {
                let client = Client::new(Config {
                    address: server.url(),
                    stale,
                    cached,
                    namespace: scope.clone(),
                    partition: scope,
                    ..Config::default()
                })
                .expect("valid config");
                clients += 1;
                for opts in &options {
                    every_read(&client, opts).await;
                }
            }
        }
    }
    let requests = sim.requests();
    assert_eq!(
        requests.len(),
        clients * options.len() * 9,
        "every read reached the simulator"
    );
    let mut seen = std::collections::BTreeSet::new();
    for record in &requests {
        assert_eq!(record.method, "GET", "{record:?}");
        for pair in record.query.split('&').filter(|pair| !pair.is_empty()) {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            assert!(
                !FORBIDDEN.contains(&key),
                "{} sent {key}: {}",
                record.path,
                record.query
            );
            assert!(
                ALLOWED.contains(&key),
                "{} sent unexpected {key}: {}",
                record.path,
                record.query
            );
            seen.insert(key.to_owned());
        }
    }
    // The combinations did exercise every allowed parameter.
    assert_eq!(
        seen,
        ALLOWED.iter().map(|key| (*key).to_owned()).collect(),
        "parameters seen"
    );
}
