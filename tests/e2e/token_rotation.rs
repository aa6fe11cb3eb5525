//! ACL tokens that expire and rotate (issue 14 §2), through the real binary and
//! the simulator over HTTP: a revoked token is logged once, leaves the names
//! answered before flowing (stale) and fails `dnsfront check`; the token file
//! rewritten with a new token takes effect with no restart and no reload.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use consul_sim::Sim;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, sorted_addresses, udp};

use crate::binary::{Server, Setup, run_async, write};
use crate::harness::{eventually, ip, standard_sim};

const REJECTED: &str = "Consul rejects the ACL token";
const ACCEPTED: &str = "Consul accepts the ACL token again";

fn acl_line(report: &str) -> String {
    report
        .lines()
        .find(|line| line.contains("consul acl:"))
        .unwrap_or_else(|| panic!("no consul acl line in:\n{report}"))
        .to_owned()
}

/// The real binary against a simulator that accepts only `token`, read from a 0600
/// `token_file` in the setup's directory: (simulator, setup, token file, server).
pub(crate) async fn start_with_token_file(token: &str) -> (Sim, Setup, PathBuf, Server) {
    let sim = standard_sim();
    sim.set_acl_tokens(&[token]);
    let setup = Setup::with_sim(sim.clone()).await;
    let token_file = setup.dir.path().join("consul-token");
    write(&token_file, &format!("{token}\n"));
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = format!(
        "{}\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n",
        setup.base()
    )
    .replace(
        "[consul]\n",
        &format!("[consul]\ntoken_file = {:?}\n", token_file.display().to_string()),
    );
    write(&setup.config, &config);
    let server = Server::start(&setup.config).await;
    (sim, setup, token_file, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_logged_once_keeps_stale_answers_and_a_rotated_file_takes_effect_live() {
    let (sim, setup, token_file, server) = start_with_token_file("token-one").await;
    let web = Ask::new("web.service.consul.", RecordType::A);
    let (answer, _) = udp(server.dns, &web).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let addresses = vec![ip("10.0.0.1"), ip("10.0.0.2")];
    assert_eq!(sorted_addresses(&answer), addresses);

    // The token is revoked (or expires): Consul answers 403 ACL not found.
    sim.set_acl_tokens(&["token-two"]);
    server.wait_for(REJECTED, 1, Duration::from_secs(10)).await;
    // Many refused refreshes later, still one log line.
    let refused = sim.request_count("/v1/health/service/web");
    assert!(
        eventually(Duration::from_secs(10), || async {
            sim.request_count("/v1/health/service/web") >= refused + 4
        })
        .await,
        "web is refreshed again"
    );
    assert_eq!(server.lines_with(REJECTED).len(), 1, "{:?}", server.log());
    // The name answered before keeps flowing, stale; a new one gets SERVFAIL.
    let (answer, _) = udp(server.dns, &web).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&answer), addresses);
    let api = Ask::new("api.service.consul.", RecordType::A);
    let (answer, _) = udp(server.dns, &api).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    let config_arg = setup.config.to_str().expect("utf8");
    let (code, report, _) = run_async(&["check", "--config", config_arg]).await;
    assert_eq!(code, Some(2), "a rejected token is critical: {report}");
    let acl = acl_line(&report);
    assert!(
        acl.starts_with("fail") && acl.contains("token rejected"),
        "{acl}"
    );
    assert!(!report.contains("token-one"), "{report}");

    // The new token is written to the file (rename, as Vault agent does): no
    // restart, no reload.
    write(&token_file, "token-two\n");
    server.wait_for(ACCEPTED, 1, Duration::from_secs(10)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (answer, _) = udp(server.dns, &api).await;
            answer.metadata.response_code == ResponseCode::NoError
                && sorted_addresses(&answer) == [ip("10.1.0.1"), ip("10.1.0.2")]
        })
        .await,
        "a new name is answered with the rotated token"
    );
    let (code, report, _) = run_async(&["check", "--config", config_arg]).await;
    assert_eq!(
        code,
        Some(1),
        "warnings only (no snapshot, no upstreams): {report}"
    );
    assert!(acl_line(&report).contains("accepted"), "{report}");
    assert_eq!(server.lines_with(REJECTED).len(), 1);
    assert!(
        server
            .log()
            .iter()
            .all(|line| !line.contains("token-one") && !line.contains("token-two")),
        "a token was logged"
    );
    server.stop().await;
    setup.stop().await;
}
