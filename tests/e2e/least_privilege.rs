//! Least privilege (issue 14 §2): the resolver and the publisher each run with
//! exactly the ACL policy documented in `deploy/examples/consul-acl-*.hcl`, against a simulator that
//! enforces per-endpoint rules as Consul does, and no call of either is
//! refused or filtered; a call outside a policy is.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use consul_sim::{Access, AclPolicy, Sim};
use dnsfront_consul as consul;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, sorted_addresses, udp};
use tokio::process::Command;

use crate::binary::{command, run_async, sigterm, spawn};
use crate::harness::{eventually, ip, serve, standard_sim};

const RESOLVER_TOKEN: &str = "resolver-secret-3f1c";
const PUBLISHER_TOKEN: &str = "publisher-secret-9d2e";

/// The documented resolver policy (`deploy/examples/consul-acl-resolver.hcl`).
fn resolver_policy() -> AclPolicy {
    AclPolicy::parse(include_str!(
        "../../deploy/examples/consul-acl-resolver.hcl"
    ))
    .expect("the resolver policy parses")
}

/// The documented publisher policy (`deploy/examples/consul-acl-publisher.hcl`).
fn publisher_policy() -> AclPolicy {
    AclPolicy::parse(include_str!(
        "../../deploy/examples/consul-acl-publisher.hcl"
    ))
    .expect("the publisher policy parses")
}

fn token_file(dir: &Path, name: &str, secret: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, secret).expect("write token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.display().to_string()
}

fn with_acls() -> Sim {
    let sim = standard_sim();
    sim.set_acl_token(RESOLVER_TOKEN, resolver_policy());
    sim.set_acl_token(PUBLISHER_TOKEN, publisher_policy());
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolver_and_the_publisher_work_with_exactly_their_documented_policies() {
    let sim = with_acls();
    let consul = serve(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let publish_config = dir.path().join("publish.toml");
    std::fs::write(
        &publish_config,
        format!(
            "[consul]\ntoken_file = {:?}\n\n[publish]\nmin_interval = \"1s\"\nlock_delay = \"0s\"\n",
            token_file(dir.path(), "publisher-token", PUBLISHER_TOKEN)
        ),
    )
    .expect("write");
    let mut publisher = Command::from(command(&[
        "publish",
        "--consul",
        &consul.url(),
        "--config",
        publish_config.to_str().expect("utf8"),
    ]))
    .kill_on_drop(true)
    .spawn()
    .expect("spawn publisher");
    let state = dir.path().join("state");
    let serve_config = dir.path().join("serve.toml");
    std::fs::write(
        &serve_config,
        format!(
            "[consul]\naddress = \"{}\"\ntoken_file = {:?}\n\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[state]\ndir = {:?}\n\n[snapshot]\nallow_unsigned = true\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n\n[metrics]\nstatsd = false\n",
            consul.url(),
            token_file(dir.path(), "resolver-token", RESOLVER_TOKEN),
            state.display().to_string()
        ),
    )
    .expect("write");
    let mut resolver = spawn(&["serve", "--config", serve_config.to_str().expect("utf8")]).await;
    let dns = resolver.dns[0];

    // The publisher elects itself (session, lock), reads the catalog and
    // writes the snapshot; the resolver follows it (snapshot and stop keys).
    let file = dnsfront_snapshot::store::path(&state);
    assert!(
        eventually(Duration::from_secs(15), || async { file.exists() }).await,
        "the snapshot never reached the resolver; refused calls: {:?}",
        sim.acl_denials()
    );
    // The pointer too: written by the publisher and read by the resolver.
    let pointer_calls = |method: &'static str| {
        let sim = sim.clone();
        async move {
            sim.requests()
                .iter()
                .filter(|r| r.method == method && r.path == "/v1/kv/dnsfront/hosts.pointer")
                .count()
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            pointer_calls("PUT").await >= 1
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            pointer_calls("GET").await >= 1
        })
        .await
    );
    // Services, SRV and nodes, from Consul.
    let (answer, _) = udp(dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), [ip("10.0.0.1"), ip("10.0.0.2")]);
    let (answer, _) = udp(dns, &Ask::new("_web._tcp.service.consul.", RecordType::SRV)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 2, "{answer:?}");
    let (answer, _) = udp(dns, &Ask::new("node-4.node.consul.", RecordType::AAAA)).await;
    assert_eq!(sorted_addresses(&answer), [ip("2001:db8::4")]);
    assert_eq!(
        sim.acl_denials(),
        Vec::<String>::new(),
        "a call of the resolver or the publisher was refused or filtered"
    );

    // `dnsfront check` accepts the resolver's token: it does not need agent:read.
    let (_, report, _) =
        run_async(&["check", "--config", serve_config.to_str().expect("utf8")]).await;
    let acl = report
        .lines()
        .find(|line| line.contains("consul acl:"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        acl.starts_with("ok") && acl.contains("accepted") && acl.contains("agent:read"),
        "{acl}"
    );
    // Only its optional agent details were refused.
    let denials = sim.acl_denials();
    assert!(
        denials.len() == 1 && denials[0].starts_with("GET /v1/agent/self: Permission denied"),
        "{denials:#?}"
    );

    sigterm(&publisher);
    let status = tokio::time::timeout(Duration::from_secs(10), publisher.wait())
        .await
        .expect("publisher exits on SIGTERM")
        .expect("wait");
    assert!(status.success(), "publisher exit status {status:?}");
    let _ = resolver.child.kill().await;
    consul.shutdown().await;
}

#[tokio::test]
async fn calls_outside_a_policy_are_refused_or_filtered_as_consul_does() {
    let sim = with_acls();
    let server = serve(&sim).await;
    let client = |secret: &str| {
        consul::Client::new(consul::Config {
            address: server.url(),
            token: Some(secret.into()),
            ..consul::Config::default()
        })
        .expect("client")
    };
    let resolver = client(RESOLVER_TOKEN);
    // Writes, sessions and the agent are the publisher's.
    let put = resolver
        .kv_put("dnsfront/hosts", b"x", &consul::KvPutOptions::default())
        .await
        .expect_err("the resolver may not write");
    assert!(
        matches!(&put, consul::Error::Forbidden { message, .. } if message.contains("lacks permission 'key:write'")),
        "{put:?}"
    );
    assert!(
        !put.token_rejected(),
        "a missing permission is not a rejected token"
    );
    let agent = resolver.agent_self().await.expect_err("no agent:read");
    assert!(
        matches!(agent, consul::Error::Forbidden { .. }),
        "{agent:?}"
    );
    let other_key = resolver
        .kv_get("secret/db", &consul::QueryOptions::default())
        .await
        .expect_err("outside key_prefix");
    assert!(
        matches!(other_key, consul::Error::Forbidden { .. }),
        "{other_key:?}"
    );
    // A service outside the policy is filtered out, not refused (Consul's filterACL).
    sim.set_acl_token(
        "web-only",
        AclPolicy::new()
            .service("web", Access::Read)
            .node_prefix("node-", Access::Read),
    );
    let web_only = client("web-only");
    let api = web_only
        .health_service("api", &consul::QueryOptions::default())
        .await
        .expect("filtered, not refused");
    assert!(api.value.is_empty());
    let web = web_only
        .health_service("web", &consul::QueryOptions::default())
        .await
        .expect("allowed");
    assert_eq!(web.value.len(), 3);
    let denials = sim.acl_denials();
    assert_eq!(denials.len(), 4, "{denials:#?}");
    assert!(
        denials[3].starts_with("GET /v1/health/service/api"),
        "{denials:#?}"
    );
    // A revoked token is unknown: 403 ACL not found, a rejected token.
    sim.revoke_acl_token(RESOLVER_TOKEN);
    let revoked = resolver
        .health_service("web", &consul::QueryOptions::default())
        .await
        .expect_err("revoked");
    assert!(revoked.token_rejected(), "{revoked:?}");
    server.shutdown().await;
}
