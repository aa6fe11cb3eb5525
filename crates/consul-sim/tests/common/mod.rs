//! Helpers shared by the test binaries: a sim server on 127.0.0.1:0, a plain client,
//! blocking queries, and in-process calls.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use consul_sim::{DEMO_FIXTURE, Sim, SimServer};
use tokio::task::JoinHandle;

/// Serves `sim` over HTTP on a free port.
pub(crate) async fn start(sim: &Sim) -> SimServer {
    sim.serve("127.0.0.1:0".parse().expect("valid address"))
        .await
        .expect("bind consul-sim")
}

/// A client that ignores proxy settings and gives up after 20 s.
pub(crate) fn client() -> reqwest::Client {
    test_support::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// `GET` on the server, e.g. `get(&server, "/v1/catalog/services?stale")`.
pub(crate) async fn get(server: &SimServer, path_and_query: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path_and_query}", server.url()))
        .send()
        .await
        .expect("request succeeds")
}

/// A simulator with the demo catalog, served on a free port.
pub(crate) async fn demo() -> (Sim, SimServer) {
    let sim = Sim::new();
    sim.load_fixture(DEMO_FIXTURE).expect("demo fixture loads");
    let server = start(&sim).await;
    (sim, server)
}

/// The response's `X-Consul-Index`.
pub(crate) fn index_of(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("x-consul-index")
        .expect("X-Consul-Index present")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("numeric index")
}

/// Starts a blocking `GET` (its query names `index` and a long `wait`) and asserts that it
/// is still waiting 100 ms later.
pub(crate) async fn start_blocking_get(
    server: &SimServer,
    path_and_query: &str,
) -> JoinHandle<reqwest::Result<reqwest::Response>> {
    let url = format!("{}{path_and_query}", server.url());
    let waiter = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "blocking query must wait for a change"
    );
    waiter
}

/// The answer of a blocking `GET`, which must come within 10 s (long before its wait ends).
pub(crate) async fn blocking_answer(
    waiter: JoinHandle<reqwest::Result<reqwest::Response>>,
) -> reqwest::Response {
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("blocking query returned before its wait")
        .expect("task")
        .expect("response")
}

/// One in-process request through [`Sim::handle`].
pub(crate) async fn call(
    sim: &Sim,
    method: &str,
    uri: &str,
    body: &'static str,
) -> http::Response<Bytes> {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Bytes::from_static(body.as_bytes()))
        .expect("request");
    sim.handle(request).await
}
