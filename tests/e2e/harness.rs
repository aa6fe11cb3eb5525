//! Starts an in-process dnsfront against a simulated Consul.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use consul_sim::{Registration, Sim, SimServer};
use dnsfront::App;
use dnsfront::config::{Env, RawConfig};
use tokio_util::sync::CancellationToken;

/// Refresh interval used by tests that watch changes propagate.
pub(crate) const FAST_REFRESH: Duration = Duration::from_millis(400);

pub(crate) struct Harness {
    pub(crate) sim: Sim,
    pub(crate) consul: SimServer,
    pub(crate) dns: SocketAddr,
    /// The resolver's in-memory hosts snapshot.
    pub(crate) hosts: dnsfront_snapshot::Hosts,
    _state_dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    /// A sim with the standard test catalog, and dnsfront with defaults
    /// except for loopback port 0 and no upstreams.
    pub(crate) async fn start() -> Self {
        Self::start_with(standard_sim(), |_| {}).await
    }

    pub(crate) async fn start_with(sim: Sim, tweak: impl FnOnce(&mut RawConfig)) -> Self {
        let consul = serve(&sim).await;
        let mut raw = RawConfig::default();
        raw.dns.listen = vec!["127.0.0.1:0".into()];
        raw.consul.address = Some(consul.url());
        raw.forward.resolv_file = PathBuf::from("/nonexistent/dnsfront-tests/resolv.conf");
        raw.catalog.refresh_jitter = 0.0;
        // Each test gets its own state dir unless it sets one (never /var/lib).
        let state_dir = tempfile::tempdir().expect("tempdir");
        raw.state.dir = state_dir.path().to_owned();
        tweak(&mut raw);
        let settings = raw.validate(&Env::default()).expect("test config is valid");
        let app = App::build(settings).expect("app builds");
        let dns = app.local_addrs()[0];
        let hosts = app.hosts().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            sim,
            consul,
            dns,
            hosts,
            _state_dir: state_dir,
            shutdown,
            task,
        }
    }

    /// Generation of the snapshot the resolver holds.
    pub(crate) fn hosts_generation(&self) -> Option<u64> {
        self.hosts.generation()
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.consul.shutdown().await;
    }
}

/// Serves `sim` on a free loopback port.
pub(crate) async fn serve(sim: &Sim) -> SimServer {
    sim.serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim serves")
}

/// Parses a test address.
pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// web: 3 instances (one warning, one critical); api: 2 with own addresses;
/// db: IPv6 node; nodes node-1..node-4.
pub(crate) fn standard_sim() -> Sim {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("node-1", "10.0.0.1")
            .port(80)
            .tags(&["primary", "v1.blue"])
            .check("service:web-1", "passing")
            .node_check("serfHealth", "passing"),
    );
    sim.register(
        Registration::new("web")
            .id("web-2")
            .node("node-2", "10.0.0.2")
            .port(8080)
            .tags(&["canary"])
            .check("service:web-2", "warning")
            .node_check("serfHealth", "passing"),
    );
    sim.register(
        Registration::new("web")
            .id("web-3")
            .node("node-3", "10.0.0.3")
            .port(80)
            .tags(&["primary"])
            .check("service:web-3", "critical")
            .node_check("serfHealth", "passing"),
    );
    sim.register(
        Registration::new("api")
            .id("api-1")
            .node("node-1", "10.0.0.1")
            .address("10.1.0.1")
            .port(9090)
            .check("service:api-1", "passing"),
    );
    sim.register(
        Registration::new("api")
            .id("api-2")
            .node("node-2", "10.0.0.2")
            .address("10.1.0.2")
            .port(9090)
            .check("service:api-2", "passing"),
    );
    sim.register(
        Registration::new("db")
            .id("db-1")
            .node("node-4", "2001:db8::4")
            .port(5432)
            .check("service:db-1", "passing"),
    );
    sim
}

/// Polls `probe` every 50 ms until it returns true or `within` passes.
pub(crate) async fn eventually<F, Fut>(within: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
