//! The `dnsfront` binary: exit codes, messages, the listening line, signals.

use std::time::Duration;

use tokio::process::Command;

// dig, systemd and metrics start the binary through this module.
use crate::binary::{command, run, terminate};
pub(crate) use crate::binary::{sigterm, spawn, spawn_with_env};
use crate::harness::{eventually, serve, standard_sim};

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let ok = run(&[
        "check-config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/dnsfront.toml"),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "[catalog]\nrefresh_intervall = \"10s\"\n",
            "catalog.refresh_intervall",
        ),
        (
            "[catalog]\nrefresh_interval = \"0s\"\n",
            "catalog.refresh_interval",
        ),
        ("[dns]\nlisten = [\"localhost\"]\n", "dns.listen"),
        ("[dns\n", "expected"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let out = run(&["check-config", path.to_str().expect("utf8")]);
        assert_eq!(out.status.code(), Some(64), "{text:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "{text:?}: stderr {stderr:?} lacks {expected:?}"
        );
    }
    let missing = run(&["check-config", "/nonexistent/dnsfront.toml"]);
    assert_eq!(missing.status.code(), Some(64));
}

/// Issue 13 §6: an ACL open to every address is refused unless acknowledged.
#[test]
fn check_config_refuses_an_open_resolver_unless_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("open.toml");
    let open = "[dns]\nlisten = [\"0.0.0.0:53\"]\nallowed_networks = [\"0.0.0.0/0\", \"::/0\"]\n";
    std::fs::write(&path, open).expect("write");
    let out = run(&["check-config", path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dns.allowed_networks: covers 0.0.0.0/0")
            && stderr.contains("open resolver")
            && stderr.contains("dns.allow_open_resolver = true"),
        "{stderr}"
    );
    std::fs::write(&path, format!("{open}allow_open_resolver = true\n")).expect("write");
    let out = run(&["check-config", path.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_flags_exit_non_zero_with_a_clear_message() {
    let out = run(&["serve", "--listen", "not-an-addr"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dns.listen") && stderr.contains("not-an-addr"),
        "{stderr}"
    );

    let out = run(&["serve", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(64));
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--upstream", "banana"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forward.upstreams"));
}

#[test]
fn print_config_shows_defaults_without_secrets() {
    let out = run(&["print-config"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("refresh_interval = \"10s\""), "{text}");
    assert!(text.contains("[forward]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_its_addresses_answers_and_exits_promptly_on_sigterm() {
    let sim = standard_sim();
    let consul = serve(&sim).await;
    let mut running = spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--consul",
        &consul.url(),
        "--state-dir",
        "/tmp",
    ])
    .await;
    let dns = running.dns[0];
    assert!(dns.port() != 0);
    let (answer, _) = test_support::udp(
        dns,
        &test_support::Ask::new("web.service.consul.", hickory_proto::rr::RecordType::A),
    )
    .await;
    assert_eq!(answer.answers.len(), 2);

    // The same port is taken: a second instance says so and exits non-zero.
    let out = run(&[
        "serve",
        "--listen",
        &dns.to_string(),
        "--consul",
        &consul.url(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.to_lowercase().contains("in use"), "{stderr}");

    terminate(&mut running.child, Duration::from_secs(5)).await;
    consul.shutdown().await;
}

#[test]
fn snapshot_commands_show_export_verify_and_keygen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let keys = dir.path();
    let private = keys.join("snap.key");
    let public = keys.join("snap.pub");
    let out = run(&[
        "snapshot",
        "keygen",
        "--private-key",
        private.to_str().expect("utf8"),
        "--public-key",
        public.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&private)
        .expect("private key")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "private key must not be readable by others"
    );
    // keygen never overwrites a key.
    let again = run(&[
        "snapshot",
        "keygen",
        "--private-key",
        private.to_str().expect("utf8"),
        "--public-key",
        public.to_str().expect("utf8"),
    ]);
    assert!(!again.status.success());

    let signing = dnsfront_snapshot::keys::load_signing_key(&private).expect("load key");
    let encoded = dnsfront_snapshot::encode(&crate::snapshot::sample_snapshot(9), Some(&signing))
        .expect("encode");
    dnsfront_snapshot::store::save(&state, &encoded).expect("save");
    let state_arg = state.to_str().expect("utf8");

    // Without the public key the signature is present but not checked: never "yes".
    let show = run(&["snapshot", "show", "--state-dir", state_arg]);
    assert!(show.status.success());
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("signed:       unverified"), "{text}");
    let show = run(&[
        "snapshot",
        "show",
        "--state-dir",
        state_arg,
        "--public-key",
        public.to_str().expect("utf8"),
    ]);
    assert!(show.status.success());
    let text = String::from_utf8_lossy(&show.stdout);
    for expected in [
        "generation:   9",
        "datacenter:   dc1",
        "publisher:    test-publisher",
        "signed:       yes",
        "services:     2",
        "nodes:        3",
    ] {
        assert!(text.contains(expected), "show lacks {expected:?}: {text}");
    }

    let hosts = run(&[
        "snapshot",
        "export",
        "--state-dir",
        state_arg,
        "--format",
        "hosts",
    ]);
    assert!(hosts.status.success());
    let text = String::from_utf8_lossy(&hosts.stdout);
    for line in [
        "10.0.0.1 web.service.consul",
        "10.0.0.2 primary.web.service.consul",
        "10.0.0.7 legacy.service.consul",
        "10.0.0.7 node-7.node.consul",
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == line),
            "hosts export lacks {line:?}:\n{text}"
        );
    }
    let json = run(&[
        "snapshot",
        "export",
        "--state-dir",
        state_arg,
        "--format",
        "json",
    ]);
    let value: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("json export parses");
    assert_eq!(value["generation"], 9);

    let file = dnsfront_snapshot::store::path(&state);
    let file_arg = file.to_str().expect("utf8");
    let verify = run(&[
        "snapshot",
        "verify",
        file_arg,
        "--public-key",
        public.to_str().expect("utf8"),
    ]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("signature verified"));
    // Another key: rejected. A corrupt file: rejected.
    let other_private = keys.join("other.key");
    let other_public = keys.join("other.pub");
    assert!(
        run(&[
            "snapshot",
            "keygen",
            "--private-key",
            other_private.to_str().expect("utf8"),
            "--public-key",
            other_public.to_str().expect("utf8")
        ])
        .status
        .success()
    );
    let wrong = run(&[
        "snapshot",
        "verify",
        file_arg,
        "--public-key",
        other_public.to_str().expect("utf8"),
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    let mut bytes = std::fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    let corrupt = keys.join("corrupt.bin");
    std::fs::write(&corrupt, bytes).expect("write");
    let bad = run(&["snapshot", "verify", corrupt.to_str().expect("utf8")]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("failed verification"));

    let empty = dir.path().join("empty");
    let missing = run(&[
        "snapshot",
        "show",
        "--state-dir",
        empty.to_str().expect("utf8"),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no snapshot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_process_feeds_a_resolver_that_survives_a_consul_outage() {
    let sim = standard_sim();
    let consul = serve(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("publish.toml");
    std::fs::write(
        &config,
        "[publish]\nmin_interval = \"1s\"\nlock_delay = \"0s\"\n",
    )
    .expect("write");
    let mut publisher = Command::from(command(&[
        "publish",
        "--consul",
        &consul.url(),
        "--config",
        config.to_str().expect("utf8"),
    ]))
    .kill_on_drop(true)
    .spawn()
    .expect("spawn publisher");
    let state = dir.path().join("state");
    // The publisher here signs nothing, so the resolver must be told to accept that.
    let serve_config = dir.path().join("serve.toml");
    std::fs::write(&serve_config, "[snapshot]\nallow_unsigned = true\n").expect("write");
    let mut running = spawn(&[
        "serve",
        "--config",
        serve_config.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
        "--consul",
        &consul.url(),
        "--state-dir",
        state.to_str().expect("utf8"),
    ])
    .await;
    let file = dnsfront_snapshot::store::path(&state);
    assert!(
        eventually(Duration::from_secs(10), || async { file.exists() }).await,
        "the published snapshot never reached the resolver's state dir"
    );
    let dns = running.dns[0];
    // Never asked before the outage: answered from the snapshot once Consul is gone.
    consul.set_down(true);
    let (answer, _) = test_support::udp(
        dns,
        &test_support::Ask::new("api.service.consul.", hickory_proto::rr::RecordType::A),
    )
    .await;
    assert_eq!(
        test_support::sorted_addresses(&answer).len(),
        2,
        "{answer:?}"
    );
    sigterm(&publisher);
    let status = tokio::time::timeout(Duration::from_secs(10), publisher.wait())
        .await
        .expect("publisher exits on SIGTERM")
        .expect("wait");
    assert!(status.success(), "publisher exit status {status:?}");
    let _ = running.child.kill().await;
    consul.shutdown().await;
}

/// Issue 13: a snapshot cannot add lines outside the Consul domain to a dnsmasq hosts file.
#[test]
fn snapshot_export_hosts_keeps_crafted_names_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut snapshot = crate::snapshot::sample_snapshot(3);
    snapshot.publisher = "p 6.6.6.6 evil.example #".into();
    let web = snapshot.services.get("web").expect("web")[0].clone();
    let mut crafted = web.clone();
    crafted.tags = vec!["x 6.6.6.6 evil.example".into(), "#".into(), "ok".into()];
    snapshot
        .services
        .insert("evil.example #".into(), vec![web.clone()]);
    snapshot.services.insert("api".into(), vec![crafted]);
    let encoded = dnsfront_snapshot::encode(&snapshot, None).expect("encode");
    dnsfront_snapshot::store::save(dir.path(), &encoded).expect("save");
    let out = run(&[
        "snapshot",
        "export",
        "--state-dir",
        dir.path().to_str().expect("utf8"),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert!(lines.next().expect("header").starts_with('#'));
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(
            fields.len() == 2
                && (fields[1].ends_with(".service.consul") || fields[1].ends_with(".node.consul")),
            "{line:?} in\n{text}"
        );
    }
    assert!(text.contains(" ok.api.service.consul"), "{text}");
}
