//! Issue 14 §3, the client's share of keeping Consul's load flat at fleet scale,
//! against the simulator over real HTTP: the blocking-read deadline, a watch whose
//! index goes backwards, the cap on requests open to the agent, and reads counted by
//! how the agent served them.

use std::future::Future;
use std::time::Duration;

use consul_sim::{Fault, Registration, Sim, SimServer};
use dnsfront_consul::{Client, Config, QueryOptions, Watch};
use test_support::{DebuggingRecorder, Recorded};

const WEB: &str = "/v1/health/service/web";

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("step finished within 20s")
}

fn web(id: &str, node: &str, address: &str) -> Registration {
    Registration::new("web")
        .id(id)
        .node(node, address)
        .port(80)
        .check(&format!("service:{id}"), "passing")
}

async fn start() -> (Sim, SimServer) {
    let sim = Sim::new();
    sim.register(web("web-1", "n1", "10.0.0.1"));
    let server = sim
        .serve("127.0.0.1:0".parse().expect("valid addr"))
        .await
        .expect("sim serves");
    (sim, server)
}

fn client(server: &SimServer, edit: impl FnOnce(&mut Config)) -> Client {
    let mut config = Config {
        address: server.url(),
        request_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    edit(&mut config);
    Client::new(config).expect("valid config")
}

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((name, value)) if name == key => Some(value),
            None if pair == key => Some(""),
            _ => None,
        })
}

/// Polls `condition` (no timing asserted: the bound only stops a broken test).
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never happened: {what}");
}

/// A blocking read is not given up on while the agent may still be retrying the
/// server call inside `rpc_hold_timeout`: the deadline is `wait + wait/16 +
/// max(request_timeout, 10 s)`, not `request_timeout + wait + wait/16`.
#[tokio::test]
async fn a_blocking_read_waits_out_an_agent_that_holds_the_rpc() {
    let (sim, server) = start().await;
    let client = client(&server, |_| {});
    let first = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect("first read");
    // The agent holds the call 2 s (a server restarting, retried within
    // rpc_hold_timeout), then blocks 200 ms: far past 300 ms + 200 ms + 12 ms.
    sim.inject(Fault::delay(WEB, Duration::from_secs(2)));
    let opts = QueryOptions {
        index: Some(first.meta.index),
        wait: Some(Duration::from_millis(200)),
        ..QueryOptions::default()
    };
    let answer = bounded(client.health_service("web", &opts))
        .await
        .expect("the blocking read outlasts the agent's hold");
    assert_eq!(answer.meta.index, first.meta.index);
    // A plain read keeps the plain deadline.
    let error = bounded(client.health_service("web", &QueryOptions::default()))
        .await
        .expect_err("a non-blocking read times out at request_timeout");
    assert_eq!(error.kind(), "timeout", "{error}");
}

/// When every held query returns with a lower index (a snapshot restore, a
/// server that lost its state), the answer is already a full read: the watch
/// blocks on the index just returned, and never sends a second, non-blocking
/// read of the same data.
#[tokio::test]
async fn a_watch_whose_index_goes_backwards_blocks_on_it_without_a_second_full_read() {
    let (sim, server) = start().await;
    let client = client(&server, |_| {});
    let mut watch = Watch::new(Duration::from_millis(100));
    let read = |options: QueryOptions| {
        let client = client.clone();
        async move { client.health_service("web", &options).await }
    };
    bounded(watch.round(read)).await.expect("first read");
    sim.register(web("web-2", "n2", "10.0.0.2"));
    bounded(watch.round(read)).await.expect("moves forward");
    let high = watch.index();
    sim.inject(Fault::index_backwards(WEB));
    let (answer, change) = bounded(watch.round(read)).await.expect("backwards");
    assert!(answer.meta.index < high, "the fault took the index back");
    assert_eq!(change, dnsfront_consul::IndexChange::Reset);
    assert_eq!(watch.index(), answer.meta.index.max(1));
    sim.clear_faults();
    bounded(watch.round(read)).await.expect("after the fault");

    let queries: Vec<String> = sim
        .requests()
        .into_iter()
        .filter(|record| record.path == WEB)
        .map(|record| record.query)
        .collect();
    assert_eq!(queries.len(), 4, "{queries:?}");
    assert_eq!(param(&queries[0], "index"), None, "only the first is plain");
    for query in &queries[1..] {
        assert!(
            param(query, "index").is_some_and(|index| index != "0")
                && param(query, "wait").is_some(),
            "every later read blocks: {queries:?}"
        );
    }
    assert_eq!(
        param(&queries[3], "index"),
        Some(answer.meta.index.max(1).to_string().as_str()),
        "blocks on the lower index: {queries:?}"
    );
}

/// At most `max_concurrent_requests` requests are open to the agent: with every
/// slot held by a blocking watch, the next request (a first fetch) waits for a
/// slot before it connects, and goes as soon as a watch returns.
#[test]
fn requests_beyond_the_cap_wait_for_a_slot_before_connecting() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    runtime.block_on(async {
        let (sim, server) = start().await;
        let client = client(&server, |config| config.max_concurrent_requests = 2);
        let first = bounded(client.health_service("web", &QueryOptions::default()))
            .await
            .expect("first read");
        sim.reset_requests();
        let blocking = QueryOptions {
            index: Some(first.meta.index),
            wait: Some(Duration::from_secs(60)),
            ..QueryOptions::default()
        };
        let watches: Vec<_> = (0..2)
            .map(|_| {
                let (client, opts) = (client.clone(), blocking.clone());
                tokio::spawn(async move { client.health_service("web", &opts).await })
            })
            .collect();
        until("both watches are held", || sim.requests().len() == 2).await;
        let fetch = tokio::spawn({
            let client = client.clone();
            async move { client.catalog_node("n1", &QueryOptions::default()).await }
        });
        // The fetch found no free slot (counted when it starts waiting)...
        let mut waited = 0;
        until("the fetch waits for a slot", || {
            waited += Recorded::take(&snapshotter).counter("consul.request_slot_waits_total", &[]);
            waited == 1
        })
        .await;
        // ... so it has not reached the agent: two requests, both the watches.
        let log = sim.requests();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(log.iter().all(|record| record.path == WEB), "{log:?}");
        assert!(!fetch.is_finished());

        // A change wakes the watches; their slots go to the fetch.
        sim.register(web("web-2", "n2", "10.0.0.2"));
        for watch in watches {
            bounded(watch)
                .await
                .expect("joined")
                .expect("watch answered");
        }
        let node = bounded(fetch)
            .await
            .expect("joined")
            .expect("fetch answered");
        assert!(node.value.is_some());
        let log = sim.requests();
        assert_eq!(log.len(), 3, "{log:?}");
        assert_eq!(log[2].path, "/v1/catalog/node/n1");
        assert_eq!(sim.in_flight_high_water(), 2, "never more than the cap");
        let recorded = Recorded::take(&snapshotter);
        assert_eq!(
            recorded.gauge("consul.requests_in_flight", &[]),
            Some(0.0),
            "every slot returned"
        );
    });
}

/// Successful reads are counted by `X-Consul-Query-Backend` and `X-Cache`, per
/// endpoint: the fleet's cost on the servers is visible from every node.
#[test]
fn reads_are_counted_by_query_backend_and_agent_cache() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    runtime.block_on(async {
        let (sim, server) = start().await;
        let client = client(&server, |_| {});
        let plain = bounded(client.health_service("web", &QueryOptions::default()))
            .await
            .expect("plain read");
        let cached = QueryOptions {
            cached: true,
            ..QueryOptions::default()
        };
        for _ in 0..2 {
            bounded(client.health_service("web", &cached))
                .await
                .expect("cached read");
        }
        let blocking = QueryOptions {
            index: Some(plain.meta.index),
            wait: Some(Duration::from_millis(10)),
            ..QueryOptions::default()
        };
        bounded(client.health_service("web", &blocking))
            .await
            .expect("blocking read");
        bounded(client.kv_get("missing", &QueryOptions::default()))
            .await
            .expect("a 404 is a read");
        sim.set_streaming(false);
        bounded(client.health_service("web", &blocking))
            .await
            .expect("blocking read without streaming");
        sim.inject(Fault::unavailable(WEB));
        bounded(client.health_service("web", &QueryOptions::default()))
            .await
            .expect_err("a failure is no read");
    });
    let recorded = Recorded::take(&snapshotter);
    let reads = |endpoint: &str, backend: &str, cache: &str| {
        recorded.counter(
            "consul.reads_total",
            &[
                ("endpoint", endpoint),
                ("backend", backend),
                ("cache", cache),
            ],
        )
    };
    assert_eq!(reads("health_service", "blocking-query", "none"), 2);
    // The first ?cached read fills the agent's view (MISS); the second, and the
    // blocking read the streaming view serves, are HITs.
    assert_eq!(reads("health_service", "streaming", "miss"), 1);
    assert_eq!(reads("health_service", "streaming", "hit"), 2);
    assert_eq!(reads("kv", "blocking-query", "none"), 1);
}
