//! T3 wire tests of the agent connection: HTTPS (CA, server name, mutual TLS,
//! verification off, rotation of the files) and a Unix socket, against
//! consul-sim's real listeners.

use std::path::{Path, PathBuf};
use std::time::Duration;

use consul_sim::{Registration, Sim, SimServer, TlsOptions};
use dnsfront_consul::{Client, Config, Error, QueryOptions, TlsConfig, Token};
use test_support::{CertPair, TestCa};

const SECRET: &str = "7d1e-tls-test-s3cret";

fn sim() -> Sim {
    let sim = Sim::new();
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("n1", "10.0.0.1")
            .port(80),
    );
    sim
}

fn options(server: &CertPair, client_ca: Option<&TestCa>) -> TlsOptions {
    TlsOptions {
        cert_pem: server.cert_pem.clone(),
        key_pem: server.key_pem.clone(),
        client_ca_pem: client_ca.map(|ca| ca.cert_pem().to_owned()),
    }
}

async fn serve_tls(sim: &Sim, tls: &TlsOptions) -> SimServer {
    sim.serve_tls("127.0.0.1:0".parse().expect("addr"), tls)
        .await
        .expect("sim serves TLS")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    // Replaced by rename, as consul-template and Vault agent do.
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).expect("write");
    std::fs::rename(&temporary, &path).expect("rename");
    path
}

fn client(address: String, tls: TlsConfig) -> Client {
    Client::new(Config {
        address,
        token: Some(Token::new(SECRET.to_owned())),
        request_timeout: Duration::from_secs(2),
        tls,
        ..Config::default()
    })
    .expect("valid config")
}

async fn instances(client: &Client) -> Result<usize, Error> {
    tokio::time::timeout(
        Duration::from_secs(10),
        client.health_service("web", &QueryOptions::default()),
    )
    .await
    .expect("call finished within 10s")
    .map(|response| response.value.len())
}

fn tls_reason(error: Error) -> String {
    assert_eq!(error.kind(), "tls", "{error:?}");
    assert!(error.is_retryable(), "a TLS failure may heal (rotation)");
    let message = error.to_string();
    assert!(!message.contains(SECRET), "{message}");
    message
}

#[tokio::test]
async fn https_with_the_ca_and_a_server_name_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("dc1 CA");
    let server = serve_tls(
        &sim(),
        &options(&ca.server_cert(&["server.dc1.consul"]), None),
    )
    .await;
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());

    // Dialled by IP, the certificate names server.dc1.consul: server_name bridges them.
    let named = client(
        server.url(),
        TlsConfig {
            ca_file: Some(ca_file.clone()),
            server_name: Some("server.dc1.consul".to_owned()),
            ..TlsConfig::default()
        },
    );
    assert_eq!(instances(&named).await.expect("served over TLS"), 1);

    let unnamed = client(
        server.url(),
        TlsConfig {
            ca_file: Some(ca_file),
            ..TlsConfig::default()
        },
    );
    let message = tls_reason(instances(&unnamed).await.expect_err("name mismatch"));
    assert!(message.contains("server_name"), "{message}");

    // A CA directory works as well as a file.
    let ca_dir = dir.path().join("ca.d");
    std::fs::create_dir(&ca_dir).expect("mkdir");
    write(&ca_dir, "dc1.pem", ca.cert_pem());
    let by_path = client(
        server.url(),
        TlsConfig {
            ca_path: Some(ca_dir),
            server_name: Some("server.dc1.consul".to_owned()),
            ..TlsConfig::default()
        },
    );
    assert_eq!(instances(&by_path).await.expect("served"), 1);

    // Verification off: any certificate is accepted.
    let unverified = client(
        server.url(),
        TlsConfig {
            verify: false,
            ..TlsConfig::default()
        },
    );
    assert_eq!(instances(&unverified).await.expect("served"), 1);
}

#[tokio::test]
async fn a_wrong_ca_or_an_expired_certificate_is_a_clear_tls_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("dc1 CA");
    let other = TestCa::new("someone else");
    let server = serve_tls(&sim(), &options(&ca.server_cert(&["127.0.0.1"]), None)).await;
    let wrong = client(
        server.url(),
        TlsConfig {
            ca_file: Some(write(dir.path(), "other.pem", other.cert_pem())),
            ..TlsConfig::default()
        },
    );
    let message = tls_reason(instances(&wrong).await.expect_err("untrusted"));
    assert!(message.contains("not signed by a trusted CA"), "{message}");
    assert!(message.contains("/v1/health/service/web"), "{message}");

    let expired = serve_tls(
        &sim(),
        &options(&ca.expired_server_cert(&["127.0.0.1"]), None),
    )
    .await;
    let trusting = client(
        expired.url(),
        TlsConfig {
            ca_file: Some(write(dir.path(), "ca.pem", ca.cert_pem())),
            ..TlsConfig::default()
        },
    );
    let message = tls_reason(instances(&trusting).await.expect_err("expired"));
    assert!(message.contains("expired"), "{message}");

    // Plain HTTP to a TLS listener: not a TLS error of ours, but no answer either.
    let plain = client(
        server.url().replace("https://", "http://"),
        TlsConfig::default(),
    );
    assert!(instances(&plain).await.is_err());
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("dc1 CA");
    let server = serve_tls(&sim(), &options(&ca.server_cert(&["127.0.0.1"]), Some(&ca))).await;
    let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());
    let without = client(
        server.url(),
        TlsConfig {
            ca_file: Some(ca_file.clone()),
            ..TlsConfig::default()
        },
    );
    let error = instances(&without)
        .await
        .expect_err("no client certificate");
    let message = tls_reason(error);
    assert!(message.contains("client certificate"), "{message}");

    let pair = ca.client_cert("dnsfront");
    let with = client(
        server.url(),
        TlsConfig {
            ca_file: Some(ca_file),
            cert_file: Some(write(dir.path(), "client.pem", &pair.cert_pem)),
            key_file: Some(write(dir.path(), "client-key.pem", &pair.key_pem)),
            ..TlsConfig::default()
        },
    );
    assert_eq!(instances(&with).await.expect("mutual TLS"), 1);
}

#[tokio::test]
async fn unusable_tls_files_are_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");
    for (tls, names) in [
        (
            TlsConfig {
                ca_file: Some(garbage.clone()),
                ..TlsConfig::default()
            },
            "ca_file",
        ),
        (
            TlsConfig {
                ca_file: Some(dir.path().join("missing.pem")),
                ..TlsConfig::default()
            },
            "missing.pem",
        ),
        (
            TlsConfig {
                cert_file: Some(garbage.clone()),
                ..TlsConfig::default()
            },
            "together",
        ),
    ] {
        let error = Client::new(Config {
            address: "https://127.0.0.1:8501".to_owned(),
            tls,
            ..Config::default()
        })
        .expect_err("unusable TLS files");
        assert_eq!(error.kind(), "config");
        assert!(error.to_string().contains(names), "{error}");
    }
}

#[tokio::test]
async fn rotated_certificates_are_used_without_a_new_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let old_client_cert = old_ca.client_cert("dnsfront");
    let server = serve_tls(
        &sim(),
        &options(&old_ca.server_cert(&["127.0.0.1"]), Some(&old_ca)),
    )
    .await;
    let tls = TlsConfig {
        ca_file: Some(write(dir.path(), "ca.pem", old_ca.cert_pem())),
        cert_file: Some(write(dir.path(), "cert.pem", &old_client_cert.cert_pem)),
        key_file: Some(write(dir.path(), "key.pem", &old_client_cert.key_pem)),
        ..TlsConfig::default()
    };
    let client = client(server.url(), tls);
    assert_eq!(instances(&client).await.expect("old CA"), 1);
    assert!(
        !client.reload_tls().expect("unchanged"),
        "nothing changed yet"
    );

    // The whole PKI moves to a new CA: the agent first (open connections
    // closed), then the files on this node.
    server
        .set_tls(&options(&new_ca.server_cert(&["127.0.0.1"]), Some(&new_ca)))
        .expect("new server certificate");
    server.set_down(true);
    server.set_down(false);
    // The first call may meet the pooled connection the agent just closed.
    let mut error = instances(&client).await.expect_err("old files, new agent");
    if error.kind() == "unreachable" {
        error = instances(&client).await.expect_err("old files, new agent");
    }
    let message = tls_reason(error);
    assert!(message.contains("trusted CA"), "{message}");

    // A half-written key: the rebuild fails, the previous material stays.
    write(dir.path(), "key.pem", "-----BEGIN PRIVATE KEY-----\n");
    let error = client.reload_tls().expect_err("unusable key");
    assert!(error.to_string().contains("key.pem"), "{error}");

    let new_client_cert = new_ca.client_cert("dnsfront");
    write(dir.path(), "ca.pem", new_ca.cert_pem());
    write(dir.path(), "cert.pem", &new_client_cert.cert_pem);
    write(dir.path(), "key.pem", &new_client_cert.key_pem);
    assert!(client.reload_tls().expect("new files load"));
    assert_eq!(instances(&client).await.expect("new CA"), 1);
}

#[tokio::test]
async fn a_changed_file_is_noticed_by_the_calls_themselves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let server = serve_tls(&sim(), &options(&old_ca.server_cert(&["127.0.0.1"]), None)).await;
    let ca_file = write(dir.path(), "ca.pem", old_ca.cert_pem());
    let client = client(
        server.url(),
        TlsConfig {
            ca_file: Some(ca_file),
            ..TlsConfig::default()
        },
    );
    assert_eq!(instances(&client).await.expect("old CA"), 1);
    server
        .set_tls(&options(&new_ca.server_cert(&["127.0.0.1"]), None))
        .expect("new server certificate");
    server.set_down(true);
    server.set_down(false);
    write(dir.path(), "ca.pem", new_ca.cert_pem());
    // No reload_tls: within a few TLS_CHECK_INTERVALs a call picks the new CA up.
    let mut outcome = instances(&client).await;
    for _ in 0..40 {
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        outcome = instances(&client).await;
    }
    assert_eq!(outcome.expect("the new CA is used"), 1);
}

#[tokio::test]
async fn a_unix_socket_address_reaches_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("http.sock");
    let server = sim().serve_unix(&path).await.expect("sim on a socket");
    assert_eq!(server.url(), format!("unix://{}", path.display()));
    let client = client(server.url(), TlsConfig::default());
    assert_eq!(instances(&client).await.expect("over the socket"), 1);
    assert_eq!(server.sim().request_count("/v1/health/service/web"), 1);

    drop(server);
    let error = instances(&client).await.expect_err("socket gone");
    assert_eq!(error.kind(), "unreachable", "{error:?}");
}
