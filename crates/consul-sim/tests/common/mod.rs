//! Helpers shared by the HTTP test binaries: a sim server on 127.0.0.1:0 and a plain client.

use std::time::Duration;

use consul_sim::{Sim, SimServer};

/// Serves `sim` over HTTP on a free port.
pub(crate) async fn start(sim: &Sim) -> SimServer {
    sim.serve("127.0.0.1:0".parse().expect("valid address"))
        .await
        .expect("bind consul-sim")
}

/// A client that ignores proxy settings and gives up after 20 s.
pub(crate) fn client() -> reqwest::Client {
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
