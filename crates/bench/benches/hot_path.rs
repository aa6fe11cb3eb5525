//! Criterion benches of dnsfront's query hot path: raw query bytes → hickory's
//! `Request` parse → the real `dnsfront_dns::Router` → the serialized answer,
//! captured in memory (no socket on the query path).
//!
//! - `service_hit/fake_catalog`: `web.service.consul A` (3 instances) from an
//!   in-memory `CatalogView`: the router's own cost for a Consul name.
//! - `service_hit/catalog_cache`: the same name through the real
//!   `dnsfront_catalog::Cache`, warmed once from an in-process consul-sim over
//!   loopback HTTP (background refresh keeps it fresh; the query path never waits).
//! - `forward_hit/forwarder_cache`: `www.bench.test A` through the real
//!   `dnsfront_forward::Forwarder`, whose cache was warmed from
//!   `test_support::FakeUpstream` (TTL 1 h, so every iteration is a cache hit).
//!
//! No metrics recorder is installed, so the `metrics` macros are no-ops here; the
//! production exporters' cost shows up in `benches/load`, not in these numbers.
//!
//! Smoke mode (each bench once, with its answer checked): `cargo bench -p dnsfront-bench -- --test`
//! (`cargo test -p dnsfront-bench --benches` does the same in the debug profile).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dnsfront_catalog::{Freshness, InstanceStatus, Lookup, Node, ServiceInstance};
use dnsfront_dns::{CatalogView, Config, Router, Upstream};
use dnsfront_forward::Forwarder;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use test_support::Ask;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40_000);

/// A `ResponseHandler` that serializes the answer into memory, as the UDP path
/// would (same 512-byte / EDNS limit), and keeps the last one.
#[derive(Clone, Default)]
struct Capture {
    last: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.last.lock().expect("capture lock"))
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(512);
        let info = response.destructive_emit(&mut encoder)?;
        *self.last.lock().expect("capture lock") = bytes;
        Ok(info)
    }
}

/// In-memory catalog: a fixed map of service name → instances, always fresh.
#[derive(Clone, Default)]
struct FakeCatalog {
    services: Arc<HashMap<String, Arc<[ServiceInstance]>>>,
}

impl CatalogView for FakeCatalog {
    fn service(
        &self,
        service: &str,
        _datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<[ServiceInstance]>>> + Send {
        let lookup = match self.services.get(service) {
            Some(instances) => Lookup::Found(Arc::clone(instances), Freshness::Fresh),
            None => Lookup::NotFound(Freshness::Fresh),
        };
        async move { lookup }
    }

    async fn node(&self, _node: &str, _datacenter: Option<&str>) -> Lookup<Arc<Node>> {
        Lookup::NotFound(Freshness::Fresh)
    }
}

fn instance(index: u8) -> ServiceInstance {
    ServiceInstance {
        node: format!("node-{index}"),
        datacenter: "dc1".to_owned(),
        node_address: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            10, 0, 0, index,
        ))),
        service_address: None,
        port: 80,
        tags: vec!["primary".to_owned()],
        weight: 1,
        status: InstanceStatus::Passing,
        hostname: None,
        details: None,
    }
}

/// One full trip through the hot path; returns the answer's bytes.
async fn answer<C: CatalogView, F: Upstream>(
    router: &Router<C, F>,
    capture: &Capture,
    packet: &[u8],
) -> Vec<u8> {
    let request =
        Request::from_bytes(packet.to_vec(), CLIENT, Protocol::Udp).expect("bench query parses");
    router
        .handle_request::<_, TokioTime>(&request, capture.clone())
        .await;
    capture.take()
}

/// Runs the hot path once and checks the answer, so the smoke run fails on a broken path.
fn check_answer<C: CatalogView, F: Upstream>(
    runtime: &Runtime,
    router: &Router<C, F>,
    packet: &[u8],
    expected_answers: usize,
) {
    let capture = Capture::default();
    let bytes = runtime.block_on(answer(router, &capture, packet));
    let message = Message::from_vec(&bytes).expect("the answer parses");
    assert_eq!(message.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        message.answers.len(),
        expected_answers,
        "answer records: {message:?}"
    );
}

fn bench_router<C: CatalogView, F: Upstream>(
    criterion: &mut Criterion,
    runtime: &Runtime,
    id: &str,
    router: &Router<C, F>,
    packet: &[u8],
) {
    let capture = Capture::default();
    let mut group = criterion.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function(id, |bencher| {
        bencher
            .to_async(runtime)
            .iter(|| answer(router, &capture, packet));
    });
    group.finish();
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn service_hit_fake_catalog(criterion: &mut Criterion) {
    let runtime = runtime();
    let instances: Arc<[ServiceInstance]> = (1..=3).map(instance).collect();
    let catalog = FakeCatalog {
        services: Arc::new(HashMap::from([("web".to_owned(), instances)])),
    };
    let router: Router<FakeCatalog, Forwarder> =
        Router::with_backends(Config::default(), catalog, None);
    let packet = Ask::new("web.service.consul", RecordType::A).to_bytes();
    check_answer(&runtime, &router, &packet, 3);
    bench_router(
        criterion,
        &runtime,
        "service_hit/fake_catalog",
        &router,
        &packet,
    );
}

fn service_hit_catalog_cache(criterion: &mut Criterion) {
    let runtime = runtime();
    let sim = consul_sim::Sim::new();
    for index in 1..=3u8 {
        sim.register(
            sim.service("web")
                .id(&format!("web-{index}"))
                .node(&format!("node-{index}"), &format!("10.0.0.{index}"))
                .port(80)
                .check(&format!("service:web-{index}"), "passing")
                .node_check("serfHealth", "passing"),
        );
    }
    let server = runtime
        .block_on(sim.serve("127.0.0.1:0".parse().expect("literal")))
        .expect("consul-sim binds on loopback");
    let client = dnsfront_consul::Client::new(dnsfront_consul::Config {
        address: server.url(),
        request_timeout: Duration::from_secs(5),
        ..dnsfront_consul::Config::default()
    })
    .expect("consul client");
    let cache = dnsfront_catalog::Cache::new(dnsfront_catalog::Config::default(), client)
        .expect("catalog cache");
    let shutdown = CancellationToken::new();
    runtime.spawn(cache.clone().run(shutdown.clone()));
    // The view the server reads (no snapshot loaded: every answer comes from the cache).
    let view = dnsfront_catalog::View::new(cache, dnsfront_snapshot::Hosts::new());
    let router: Router<dnsfront_catalog::View, Forwarder> =
        Router::with_backends(Config::default(), view, None);
    let packet = Ask::new("web.service.consul", RecordType::A).to_bytes();
    check_answer(&runtime, &router, &packet, 3); // the first fetch warms the cache
    let warm_requests = sim.request_count("/v1/health/service/web");
    bench_router(
        criterion,
        &runtime,
        "service_hit/catalog_cache",
        &router,
        &packet,
    );
    // Only background refreshes (every ~10 s) may have reached Consul during the bench.
    let during = sim.request_count("/v1/health/service/web") - warm_requests;
    assert!(
        during <= 100,
        "{during} Consul reads while benchmarking cache hits"
    );
    shutdown.cancel();
    runtime.block_on(server.shutdown());
}

fn forward_hit_forwarder_cache(criterion: &mut Criterion) {
    let runtime = runtime();
    let upstream = runtime.block_on(test_support::FakeUpstream::start());
    upstream.set("www.bench.test", &["192.0.2.10"], 3600);
    let forwarder = Forwarder::new(dnsfront_forward::Config {
        upstreams: vec![upstream.addr()],
        ..dnsfront_forward::Config::default()
    });
    let router: Router<FakeCatalog, Forwarder> =
        Router::with_backends(Config::default(), FakeCatalog::default(), Some(forwarder));
    let packet = Ask::new("www.bench.test", RecordType::A).to_bytes();
    check_answer(&runtime, &router, &packet, 1); // the miss that fills the cache
    let warm_queries = upstream.queries();
    check_answer(&runtime, &router, &packet, 1);
    assert_eq!(
        upstream.queries(),
        warm_queries,
        "the second query must be a cache hit"
    );
    bench_router(
        criterion,
        &runtime,
        "forward_hit/forwarder_cache",
        &router,
        &packet,
    );
    assert_eq!(
        upstream.queries(),
        warm_queries,
        "every benchmarked query must be a cache hit"
    );
}

criterion_group!(
    hot_path,
    service_hit_fake_catalog,
    service_hit_catalog_cache,
    forward_hit_forwarder_cache
);
criterion_main!(hot_path);
