//! A flood of distinct names, through the real binary (issue 13 §4): 20,000
//! forwarded names and 2,000 never-seen Consul services leave the resolver's
//! memory within its configured caches, and a forwarded and a Consul name in
//! steady use keep being answered from cache.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, FakeUpstream, Knobs, udp, udp_raw_wait};

use crate::binary::{Server, Setup, write};
use crate::harness::standard_sim;

/// Distinct forwarded names asked.
const FORWARDED: usize = 20_000;
/// Distinct never-seen Consul service names asked.
const SERVICES: usize = 2_000;
/// Queries in flight at once (loopback only).
const PARALLEL: usize = 8;
/// The forwarder's cache budget in this test.
const FORWARD_CACHE_BYTES: u64 = 2 << 20;
/// The catalog cache's budget in this test.
const CATALOG_BYTES: u64 = 1 << 20;
/// The UDP wire cache's bound (8,192 entries × about 1 KiB, see the README).
const WIRE_CACHE_BYTES: u64 = 8 << 20;
/// Growth allowed beyond the caches: the allocator's slack and the query tasks.
const MARGIN: u64 = 24 << 20;

async fn ask_hot(dns: SocketAddr) {
    let (answer, _) = udp(dns, &Ask::new("hot.example.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        test_support::addresses(&answer),
        ["192.0.2.80".parse::<std::net::IpAddr>().expect("ip")]
    );
    let (answer, _) = udp(dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.answers.is_empty(), "web answered");
}

/// Asks every name once, `PARALLEL` at a time; returns how many were answered
/// (a loaded loopback may drop a few datagrams: this is a bound check, not a
/// delivery test).
async fn flood(dns: SocketAddr, names: Vec<String>) -> usize {
    let chunk = names.len().div_ceil(PARALLEL);
    let mut tasks = Vec::new();
    for part in names.chunks(chunk) {
        let part = part.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut answered = 0;
            for (n, name) in part.iter().enumerate() {
                let query = Ask::new(name, RecordType::A).to_bytes();
                if udp_raw_wait(dns, &query, Duration::from_secs(3))
                    .await
                    .is_some()
                {
                    answered += 1;
                }
                if n % 500 == 0 {
                    ask_hot(dns).await;
                }
            }
            answered
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.expect("flood task");
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_flood_stays_within_the_configured_caches_and_hot_names_keep_hitting() {
    let sim = standard_sim();
    let setup = Setup::with_sim(sim.clone()).await;
    let upstream = FakeUpstream::start().await;
    upstream.set("hot.example", &["192.0.2.80"], 3_600);
    // No background re-read during the test (poll mode: a watch would hold a
    // blocking read of `web`): every Consul request for `web` would be a miss.
    write(
        &setup.config,
        &format!(
            "[consul]\naddress = \"{}\"\n\n[state]\ndir = \"{}\"\n\n[catalog]\nrefresh = \"poll\"\nrefresh_interval = \"5m\"\nidle_timeout = \"10m\"\nnegative_cache_ttl = \"5m\"\nmax_bytes = {CATALOG_BYTES}\n\n[metrics]\nstatsd = false\n\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nupstreams = [\"{}\"]\ncache_max_bytes = {FORWARD_CACHE_BYTES}\n",
            setup.consul.url(),
            setup.state.display(),
            upstream.addr()
        ),
    );
    let server = Server::start(&setup.config).await;
    let pid = server.child.id().expect("pid");
    ask_hot(server.dns).await;
    let web_requests = sim.request_count("/v1/health/service/web");
    assert_eq!(web_requests, 1, "web fetched once");
    let hot_upstream = upstream.queries();
    // Warm the allocator up with a few of each kind before measuring.
    let warm: Vec<String> = (0..200)
        .map(|n| format!("warm{n}.flood.example."))
        .chain((0..50).map(|n| format!("warm{n}.service.consul.")))
        .collect();
    flood(server.dns, warm).await;
    let before = test_support::rss_bytes(pid);

    let names: Vec<String> = (0..FORWARDED)
        .map(|n| format!("n{n}.flood.example."))
        .chain((0..SERVICES).map(|n| format!("never{n}.service.consul.")))
        .collect();
    let answered = flood(server.dns, names).await;
    assert!(
        answered >= (FORWARDED + SERVICES) * 9 / 10,
        "{answered} of {} flood queries answered",
        FORWARDED + SERVICES
    );
    let after = test_support::rss_bytes(pid);
    eprintln!(
        "RSS {} MiB before the flood, {} MiB after",
        before >> 20,
        after >> 20
    );
    // The flood really reached Consul and the upstream (nothing answered it early).
    assert!(sim.request_count("/v1/health/service/never") >= SERVICES * 9 / 10);
    assert!(upstream.queries() - hot_upstream >= FORWARDED * 9 / 10);
    let bound = FORWARD_CACHE_BYTES + CATALOG_BYTES + WIRE_CACHE_BYTES + MARGIN;
    assert!(
        after.saturating_sub(before) < bound,
        "RSS grew by {} MiB (from {} MiB) over {answered} distinct names; bound {} MiB",
        after.saturating_sub(before) >> 20,
        before >> 20,
        bound >> 20
    );

    // The hot names were answered from cache throughout: Consul was asked for
    // `web` once, and the upstream for `hot.example` only when first asked
    // (each flood name costs one upstream query, none is asked twice).
    ask_hot(server.dns).await;
    assert_eq!(
        sim.request_count("/v1/health/service/web"),
        web_requests,
        "web answered from the catalog cache throughout"
    );
    upstream.set_knobs(Knobs {
        drop: true,
        ..Knobs::default()
    });
    let asked = upstream.queries();
    tokio::time::timeout(Duration::from_secs(2), ask_hot(server.dns))
        .await
        .expect("the hot names are answered at once, from the caches");
    assert_eq!(upstream.queries(), asked, "hot.example did not go upstream");
    server.stop().await;
    setup.stop().await;
}
