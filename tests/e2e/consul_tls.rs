//! The agent as hardened clusters run it: HTTPS with a private CA, mutual
//! TLS, certificates rotated under a running resolver, a Unix socket, and the
//! `consul` CLI's TLS variables read by the real binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use consul_sim::{SimServer, TlsOptions};
use dnsfront::App;
use dnsfront::config::{Env, RawConfig};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use test_support::{Ask, CertPair, TestCa, sorted_addresses, udp};
use tokio_util::sync::CancellationToken;

use crate::binary::{spawn_with_env, terminate};
use crate::harness::{FAST_REFRESH, eventually, ip, standard_sim};

/// The name in the agent's certificate (dialled as 127.0.0.1).
const SERVER_NAME: &str = "server.dc1.consul";

/// A resolver built in-process against `address`.
struct Resolver {
    dns: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _state_dir: tempfile::TempDir,
}

impl Resolver {
    async fn start(address: String, tweak: impl FnOnce(&mut RawConfig)) -> Self {
        let mut raw = RawConfig::default();
        raw.dns.listen = vec!["127.0.0.1:0".into()];
        raw.consul.address = Some(address);
        raw.forward.resolv_file = PathBuf::from("/nonexistent/dnsfront-tests/resolv.conf");
        raw.catalog.refresh_jitter = 0.0;
        raw.catalog.refresh_interval = FAST_REFRESH;
        raw.catalog.negative_cache_ttl = FAST_REFRESH;
        raw.catalog.backoff_min = Duration::from_millis(200);
        raw.catalog.backoff_max = Duration::from_secs(1);
        let state_dir = tempfile::tempdir().expect("tempdir");
        raw.state.dir = state_dir.path().to_owned();
        tweak(&mut raw);
        let settings = raw.validate(&Env::default()).expect("test config is valid");
        let app = App::build(settings).expect("app builds");
        let dns = app.local_addrs()[0];
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            dns,
            shutdown,
            task,
            _state_dir: state_dir,
        }
    }

    async fn ask(&self, name: &str) -> Message {
        udp(self.dns, &Ask::new(name, RecordType::A).edns(1232))
            .await
            .0
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// The PEM files of one node, replaced by rename as consul-template does.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let temporary = self.path(&format!(".{name}.tmp"));
        std::fs::write(&temporary, text).expect("write");
        std::fs::rename(&temporary, self.path(name)).expect("rename");
        self.path(name)
    }

    /// ca.pem, cert.pem and key.pem for a client of `ca`.
    fn client_of(&self, ca: &TestCa) {
        let client = ca.client_cert("dnsfront");
        self.write("ca.pem", ca.cert_pem());
        self.write("cert.pem", &client.cert_pem);
        self.write("key.pem", &client.key_pem);
    }

    /// The resolver's TLS keys pointing at these files.
    fn configure(&self, raw: &mut RawConfig, client_cert: bool) {
        raw.consul.ca_file = Some(self.path("ca.pem"));
        raw.consul.tls_server_name = Some(SERVER_NAME.to_owned());
        if client_cert {
            raw.consul.cert_file = Some(self.path("cert.pem"));
            raw.consul.key_file = Some(self.path("key.pem"));
        }
    }
}

fn agent_tls(server: &CertPair, client_ca: Option<&TestCa>) -> TlsOptions {
    TlsOptions {
        cert_pem: server.cert_pem.clone(),
        key_pem: server.key_pem.clone(),
        client_ca_pem: client_ca.map(|ca| ca.cert_pem().to_owned()),
    }
}

async fn serve_tls(tls: &TlsOptions) -> SimServer {
    standard_sim()
        .serve_tls("127.0.0.1:0".parse().expect("addr"), tls)
        .await
        .expect("sim serves TLS")
}

/// The agent changes its TLS setup; its open connections are closed, so the
/// resolver's next request meets the new setup.
fn agent_switches(server: &SimServer, tls: &TlsOptions) {
    server.set_tls(tls).expect("usable agent certificate");
    server.set_down(true);
    server.set_down(false);
}

fn web() -> Vec<std::net::IpAddr> {
    vec![ip("10.0.0.1"), ip("10.0.0.2")]
}

fn api() -> Vec<std::net::IpAddr> {
    vec![ip("10.1.0.1"), ip("10.1.0.2")]
}

fn has_ede_stale(answer: &Message) -> bool {
    answer.edns.as_ref().is_some_and(|edns| {
        edns.options()
            .as_ref()
            .iter()
            .any(|(code, _)| u16::from(*code) == 15)
    })
}

#[tokio::test]
async fn answers_over_mutual_tls_and_keeps_answering_through_a_ca_rotation() {
    let old_ca = TestCa::new("dc1 CA 2025");
    let new_ca = TestCa::new("dc1 CA 2026");
    let server = serve_tls(&agent_tls(
        &old_ca.server_cert(&[SERVER_NAME]),
        Some(&old_ca),
    ))
    .await;
    let files = Files::new();
    files.client_of(&old_ca);
    let resolver = Resolver::start(server.url(), |raw| files.configure(raw, true)).await;
    let answer = resolver.ask("web.service.consul.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&answer), web());

    // The cluster moves to a new CA: the agent first, then this node's files
    // (consul-template renders them a little later). No restart, no reload.
    agent_switches(
        &server,
        &agent_tls(&new_ca.server_cert(&[SERVER_NAME]), Some(&new_ca)),
    );
    let answer = resolver.ask("web.service.consul.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&answer), web(), "cached answer kept");
    files.client_of(&new_ca);

    // A name never asked before can only be answered through the new CA.
    let dns = resolver.dns;
    assert!(
        eventually(Duration::from_secs(20), || async {
            sorted_addresses(
                &udp(dns, &Ask::new("api.service.consul.", RecordType::A))
                    .await
                    .0,
            ) == api()
        })
        .await,
        "the rotated certificates were never used"
    );
    // And the known one is fresh again (no EDE 3), its data never dropped.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let answer = udp(
                dns,
                &Ask::new("web.service.consul.", RecordType::A).edns(1232),
            )
            .await
            .0;
            sorted_addresses(&answer) == web() && !has_ede_stale(&answer)
        })
        .await,
        "web never fresh again"
    );
    resolver.stop().await;
}

#[tokio::test]
async fn tls_failures_serve_known_names_stale_and_servfail_new_ones() {
    let ca = TestCa::new("dc1 CA");
    let other_ca = TestCa::new("not our CA");
    let failures = [
        (
            "a certificate from another CA",
            agent_tls(&other_ca.server_cert(&[SERVER_NAME]), None),
        ),
        (
            "an expired certificate",
            agent_tls(&ca.expired_server_cert(&[SERVER_NAME]), None),
        ),
        (
            "a client certificate required",
            agent_tls(&ca.server_cert(&[SERVER_NAME]), Some(&ca)),
        ),
    ];
    for (what, failure) in failures {
        let server = serve_tls(&agent_tls(&ca.server_cert(&[SERVER_NAME]), None)).await;
        let files = Files::new();
        files.client_of(&ca);
        let resolver = Resolver::start(server.url(), |raw| files.configure(raw, false)).await;
        let answer = resolver.ask("web.service.consul.").await;
        assert_eq!(sorted_addresses(&answer), web(), "{what}");
        assert!(!has_ede_stale(&answer), "{what}");

        agent_switches(&server, &failure);
        // Past the fresh window the known name is served stale, with EDE 3.
        tokio::time::sleep(FAST_REFRESH * 3).await;
        let answer = resolver.ask("web.service.consul.").await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{what}"
        );
        assert_eq!(sorted_addresses(&answer), web(), "{what}");
        assert!(has_ede_stale(&answer), "{what}: stale answers carry EDE 3");
        // A never-seen name: SERVFAIL, never NXDOMAIN.
        let answer = resolver.ask("api.service.consul.").await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::ServFail,
            "{what}"
        );
        // No request got through the handshake.
        assert_eq!(
            server.sim().request_count("/v1/health/service/api"),
            0,
            "{what}"
        );
        resolver.stop().await;
    }
}

#[tokio::test]
async fn answers_through_the_agents_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("http.sock");
    let server = standard_sim()
        .serve_unix(&socket)
        .await
        .expect("sim on a socket");
    let resolver = Resolver::start(format!("unix://{}", socket.display()), |_| {}).await;
    let answer = resolver.ask("web.service.consul.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&answer), web());
    assert_eq!(server.sim().request_count("/v1/health/service/web"), 1);
    resolver.stop().await;
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("dnsfront.toml");
    std::fs::write(
        &path,
        format!(
            "[state]\ndir = \"{}\"\n\n[forward]\nresolv_file = \"/nonexistent/resolv.conf\"\n\n\
             [metrics]\nstatsd = false\n",
            dir.display()
        ),
    )
    .expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_the_consul_cli_tls_variables() {
    let ca = TestCa::new("dc1 CA");
    let server = serve_tls(&agent_tls(&ca.server_cert(&[SERVER_NAME]), Some(&ca))).await;
    let files = Files::new();
    files.client_of(&ca);
    let config = config(files.dir.path());
    // The consul CLI's form: host:port, with CONSUL_HTTP_SSL for https.
    let address = server.addr().to_string();
    let (ca_file, cert_file, key_file) = (
        files.path("ca.pem"),
        files.path("cert.pem"),
        files.path("key.pem"),
    );
    let mut running = spawn_with_env(
        &[
            "serve",
            "--config",
            &config.display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("CONSUL_HTTP_ADDR", address.as_str()),
            ("CONSUL_HTTP_SSL", "true"),
            ("CONSUL_CACERT", &ca_file.display().to_string()),
            ("CONSUL_CLIENT_CERT", &cert_file.display().to_string()),
            ("CONSUL_CLIENT_KEY", &key_file.display().to_string()),
            ("CONSUL_TLS_SERVER_NAME", SERVER_NAME),
        ],
    )
    .await;
    let (answer, _) = udp(
        running.dns[0],
        &Ask::new("web.service.consul.", RecordType::A),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&answer), web());
    terminate(&mut running.child, Duration::from_secs(10)).await;
}
