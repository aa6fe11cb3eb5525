//! `dnsfront reload` / SIGHUP re-reads the Consul credentials at once (issue 14
//! §1/§2): the token file is read again even when its modification time, size and
//! inode are what they were (a rotation the per-request check cannot see), and the
//! TLS files are looked at before the reload is logged rather than at the next
//! periodic check; through the real binary, the real SIGHUP path and the
//! simulator's ACLs over HTTP and its TLS listener.

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, sorted_addresses, udp};

use crate::binary::{Server, write};
use crate::harness::{eventually, ip, standard_sim};
use crate::token_rotation::start_with_token_file;

const REJECTED: &str = "Consul rejects the ACL token";
const ACCEPTED: &str = "Consul accepts the ACL token again";

/// What the client's per-request check of the token file looks at.
fn stamp(path: &std::path::Path) -> (std::time::SystemTime, u64, u64) {
    let metadata = std::fs::metadata(path).expect("token file");
    (
        metadata.modified().expect("mtime"),
        metadata.len(),
        metadata.ino(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_a_token_file_rotated_without_a_visible_change() {
    let (sim, setup, token_file, server) = start_with_token_file("token-aaaa").await;
    let web = Ask::new("web.service.consul.", RecordType::A);
    let (answer, _) = udp(server.dns, &web).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);

    // The token is rewritten in place, same length, and the file's modification
    // time put back: nothing the per-request check looks at has changed.
    let before = stamp(&token_file);
    std::fs::write(&token_file, "token-bbbb\n").expect("rewrite");
    std::fs::File::options()
        .write(true)
        .open(&token_file)
        .and_then(|file| file.set_modified(before.0))
        .expect("restore mtime");
    assert_eq!(stamp(&token_file), before, "the rotation is invisible");
    sim.set_acl_tokens(&["token-bbbb"]);

    // The client keeps sending the old token: refused, refresh after refresh.
    server.wait_for(REJECTED, 1, Duration::from_secs(10)).await;
    let refused = sim.request_count("/v1/health/service/web");
    assert!(
        eventually(Duration::from_secs(10), || async {
            sim.request_count("/v1/health/service/web") >= refused + 3
        })
        .await,
        "web is refreshed again"
    );
    assert!(server.lines_with(ACCEPTED).is_empty(), "{:?}", server.log());

    // SIGHUP: the file is read at once, the new token is accepted.
    server.hangup();
    server
        .wait_for("Configuration reloaded", 1, Duration::from_secs(10))
        .await;
    server.wait_for(ACCEPTED, 1, Duration::from_secs(10)).await;
    let api = Ask::new("api.service.consul.", RecordType::A);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (answer, _) = udp(server.dns, &api).await;
            answer.metadata.response_code == ResponseCode::NoError
                && sorted_addresses(&answer) == [ip("10.1.0.1"), ip("10.1.0.2")]
        })
        .await,
        "a new name is answered with the re-read token"
    );
    assert!(
        server
            .log()
            .iter()
            .all(|line| !line.contains("token-aaaa") && !line.contains("token-bbbb")),
        "a token was logged"
    );
    server.stop().await;
    setup.stop().await;
}

/// SIGHUP looks at the TLS files at once instead of at the next periodic check
/// (every 5 s): certificates replaced just before the reload are in use by the
/// time the reload is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_rotated_tls_files_at_once() {
    const SERVER_NAME: &str = "server.dc1.consul";
    let ca = test_support::TestCa::new("dc1 CA");
    let pair = ca.server_cert(&[SERVER_NAME]);
    let agent = consul_sim::TlsOptions {
        cert_pem: pair.cert_pem.clone(),
        key_pem: pair.key_pem.clone(),
        client_ca_pem: Some(ca.cert_pem().to_owned()),
    };
    let consul = standard_sim()
        .serve_tls("127.0.0.1:0".parse().expect("addr"), &agent)
        .await
        .expect("sim serves TLS");
    let dir = tempfile::tempdir().expect("tempdir");
    let client = ca.client_cert("dnsfront");
    let files = [
        ("ca.pem", ca.cert_pem().to_owned()),
        ("cert.pem", client.cert_pem.clone()),
        ("key.pem", client.key_pem.clone()),
    ];
    for (name, text) in &files {
        write(&dir.path().join(name), text);
    }
    let tls_keys = format!(
        "[consul]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\ntls_server_name = \"{SERVER_NAME}\"\n",
        dir.path().join("ca.pem").display().to_string(),
        dir.path().join("cert.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string(),
    );
    let config_file = dir.path().join("dnsfront.toml");
    let config = format!(
        "{}\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n",
        crate::binary::base_config(&consul.url(), &dir.path().join("state"))
    )
    .replace("[consul]\n", &tls_keys);
    write(&config_file, &config);
    let server = Server::start(&config_file).await;
    let (answer, _) = udp(server.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&answer), [ip("10.0.0.1"), ip("10.0.0.2")]);

    // consul-template renders the files again (each replaced by rename), and
    // the reload follows at once.
    for (name, text) in &files {
        write(&dir.path().join(name), text);
    }
    server.hangup();
    server
        .wait_for("Configuration reloaded", 1, Duration::from_secs(10))
        .await;
    // Looked at before the reload line was written, not seconds later.
    assert_eq!(
        server.lines_with("Consul TLS files changed").len(),
        1,
        "{:?}",
        server.log()
    );
    let (answer, _) = udp(server.dns, &Ask::new("api.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    server.stop().await;
    consul.shutdown().await;
}
