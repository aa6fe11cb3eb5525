//! `dnsfront check` and `dnsfront explain` against the real binary, the
//! simulator and a fake upstream.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use dnsfront::control::{self, ExplainReport, Request};
use hickory_proto::rr::RecordType;
use test_support::{Ask, FakeUpstream, udp};

use crate::binary::{Server, Setup, run_async as run, write};
use crate::harness::{eventually, standard_sim};

/// The report line for `what`, asserting there is exactly one.
fn line<'a>(report: &'a str, what: &str) -> &'a str {
    let lines: Vec<&str> = report
        .lines()
        .filter(|line| line.get(5..).is_some_and(|rest| rest.starts_with(what)))
        .collect();
    assert_eq!(lines.len(), 1, "one {what:?} line in:\n{report}");
    lines[0]
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("free port")
        .port()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_is_healthy_with_a_running_server_and_fails_when_consul_is_down() {
    let setup = Setup::start().await;
    let upstream = FakeUpstream::start().await;
    let dead = test_support::closed_port().await;
    let port = free_port();
    setup.write_config(&format!(
        "[dns]\nlisten = [\"127.0.0.1:{port}\"]\n\n[forward]\nupstreams = [\"{}\", \"{dead}\"]\n",
        upstream.addr()
    ));

    // Before the server runs: its port is free, nothing answers on the control socket.
    let (code, report, stderr) = run(&["check", "--config", path_arg(&setup.config)]).await;
    // Warnings (no server yet, no snapshot, a dead upstream): exit 1.
    assert_eq!(code, Some(1), "degraded:\n{report}\n{stderr}");
    assert!(
        line(&report, "config").starts_with("ok   config: "),
        "{report}"
    );
    assert!(
        line(&report, "consul leader").starts_with("ok "),
        "{report}"
    );
    assert!(line(&report, "consul acl").starts_with("ok "), "{report}");
    let listen = line(&report, &format!("listen 127.0.0.1:{port}"));
    assert!(
        listen.starts_with("ok ") && listen.contains("free"),
        "{listen}"
    );
    assert!(line(&report, "server").starts_with("warn "), "{report}");
    assert!(line(&report, "snapshot").starts_with("warn "), "{report}");
    let good = line(&report, &format!("upstream {}", upstream.addr()));
    assert!(good.starts_with("ok ") && good.contains(" ms"), "{good}");
    // One dead upstream beside a live one is degraded, not failed.
    assert!(
        line(&report, &format!("upstream {dead}")).starts_with("warn "),
        "{report}"
    );

    let server = Server::start(&setup.config).await;
    let (code, report, _) = run(&["check", "--config", path_arg(&setup.config)]).await;
    assert_eq!(
        code,
        Some(1),
        "a dead upstream is still a warning:\n{report}"
    );
    let listen = line(&report, &format!("listen 127.0.0.1:{port}"));
    assert!(
        listen.starts_with("ok ") && listen.contains("answering DNS"),
        "{listen}"
    );
    let running = line(&report, "server");
    assert!(
        running.starts_with("ok ") && running.contains(&format!("127.0.0.1:{port}")),
        "{running}"
    );

    setup.consul.set_down(true);
    let (code, report, _) = run(&["check", "--config", path_arg(&setup.config)]).await;
    assert_eq!(code, Some(2), "Consul down is critical:\n{report}");
    assert!(
        line(&report, "consul leader").starts_with("fail "),
        "{report}"
    );
    assert!(line(&report, "consul acl").starts_with("warn "), "{report}");
    server.stop().await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_rejected_token_without_printing_it() {
    let sim = standard_sim();
    sim.set_acl_tokens(&["the-right-token"]);
    let setup = Setup::with_sim(sim).await;
    let secret = "wrong-secret-8a7f";
    let text = |token: &str| {
        format!(
            "{}\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n",
            setup.base()
        )
        .replace("[consul]\n", &format!("[consul]\ntoken = \"{token}\"\n"))
    };
    write(&setup.config, &text(secret));
    let (code, report, stderr) = run(&["check", "--config", path_arg(&setup.config)]).await;
    assert_eq!(code, Some(2), "{report}");
    let acl = line(&report, "consul acl");
    assert!(
        acl.starts_with("fail ") && acl.contains("token rejected") && acl.contains("consul.token"),
        "{acl}"
    );
    assert!(
        !report.contains(secret) && !stderr.contains(secret),
        "the token was printed:\n{report}\n{stderr}"
    );
    // Upstreams: none configured is a warning, not a failure.
    assert!(line(&report, "upstreams").starts_with("warn "), "{report}");

    write(&setup.config, &text("the-right-token"));
    let (code, report, _) = run(&["check", "--config", path_arg(&setup.config)]).await;
    assert_eq!(code, Some(1), "no upstream is a warning: {report}");
    assert!(line(&report, "consul acl").contains("accepted"), "{report}");
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_tells_fresh_from_stale_and_forwarded_from_cached() {
    let setup = Setup::start().await;
    let upstream = FakeUpstream::start().await;
    upstream.set("www.example", &["192.0.2.80"], 300);
    setup.write_config(&format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nupstreams = [\"{}\"]\n",
        upstream.addr()
    ));
    let server = Server::start(&setup.config).await;
    let socket = setup.socket();
    let mode = std::fs::metadata(&socket)
        .expect("control socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket is private");

    let explain = |args: Vec<String>| async move {
        let mut full = vec!["explain".to_owned()];
        full.extend(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        run(&refs).await
    };
    let config_arg = path_arg(&setup.config).to_owned();
    let json = |name: &str, qtype: &str| {
        vec![
            name.to_owned(),
            qtype.to_owned(),
            "--config".to_owned(),
            config_arg.clone(),
            "--json".to_owned(),
        ]
    };

    let (code, out, err) = explain(json("web.service.consul", "A")).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["zone"], "consul", "{report}");
    assert_eq!(report["kind"], "service");
    assert_eq!(report["source"], "fresh", "{report}");
    assert_eq!(report["answer"]["rcode"], "NOERROR");
    assert_eq!(
        report["answer"]["answers"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(report["answer"]["ede"], serde_json::json!([]));
    assert_eq!(report["catalog"]["state"], "fresh");
    assert_eq!(report["catalog"]["instances"], 2);
    assert!(
        report["catalog"]["consul_index"]
            .as_u64()
            .is_some_and(|index| index > 0),
        "the Consul index of the cached data: {report}"
    );
    assert!(
        report["catalog"]["age_seconds"]
            .as_f64()
            .is_some_and(|age| age < 10.0),
        "{report}"
    );
    // Watched (the default) once the refresher has seen it, polled until then.
    assert!(
        matches!(
            report["catalog"]["refresh"].as_str(),
            Some("polling" | "watching")
        ),
        "{report}"
    );
    assert_eq!(report["consul_unavailable"], false);

    // The human form, with the socket given directly.
    let (code, text, _) = explain(vec![
        "web.service.consul".to_owned(),
        "--control".to_owned(),
        path_arg(&socket).to_owned(),
    ])
    .await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("answer:    NOERROR"), "{text}");
    assert!(text.contains("source:    fresh"), "{text}");
    assert!(
        text.contains("catalog:   service web: fresh, 2 healthy"),
        "{text}"
    );

    // Forwarded: first from the upstream, then from the cache.
    let (_, out, _) = explain(json("www.example", "A")).await;
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["zone"], "forward", "{report}");
    assert_eq!(report["source"], "upstream", "{report}");
    assert_eq!(report["answer"]["answers"][0]["data"], "192.0.2.80");
    let (_, out, _) = explain(json("www.example", "A")).await;
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["source"], "cache", "{report}");
    assert_eq!(report["forward_cache"]["state"], "fresh", "{report}");

    // Consul goes away: past two refresh periods the same name is stale, with EDE 3.
    setup.consul.set_down(true);
    let stale = eventually(Duration::from_secs(8), || {
        let args = json("web.service.consul", "A");
        async move {
            let (_, out, _) = explain(args).await;
            serde_json::from_str::<serde_json::Value>(&out)
                .is_ok_and(|report| report["source"] == "stale")
        }
    })
    .await;
    assert!(stale, "explain never reported stale data");
    let (_, out, _) = explain(json("web.service.consul", "A")).await;
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["answer"]["rcode"], "NOERROR", "{report}");
    assert_eq!(report["answer"]["ede"], serde_json::json!([3]), "{report}");
    assert_eq!(report["catalog"]["state"], "stale", "{report}");
    assert!(
        report["catalog"]["last_error"].is_string(),
        "the failed refresh is shown: {report}"
    );
    assert!(
        report["note"].as_str().is_some_and(|n| n.contains("stale")),
        "{report}"
    );

    // A name nobody asked before the outage: SERVFAIL, no data.
    let (_, out, _) = explain(json("other.service.consul", "A")).await;
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["answer"]["rcode"], "SERVFAIL", "{report}");
    assert_eq!(report["source"], "none", "{report}");

    server.stop().await;
    assert!(
        !socket.exists(),
        "the control socket is removed on shutdown"
    );
    setup.stop().await;
}

#[tokio::test]
async fn explain_without_a_server_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("dnsfront.toml");
    let state = dir.path().join("state");
    write(
        &config,
        &format!("[state]\ndir = \"{}\"\n", state.display()),
    );
    let (code, _, stderr) = run(&[
        "explain",
        "web.service.consul",
        "--config",
        path_arg(&config),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no control socket found") && stderr.contains(path_arg(&state)),
        "{stderr}"
    );
}

/// A name under the Consul domain that a `forward.rules` zone sends upstream is
/// explained as forwarded (upstreams, the forwarder's cache), not as a Consul name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_11_explain_of_a_rule_forwarded_consul_name_shows_the_forwarder() {
    let setup = Setup::start().await;
    let upstream = FakeUpstream::start().await;
    let agent_dns = FakeUpstream::start().await;
    agent_dns.set("geo-web.query.consul", &["192.0.2.77"], 300);
    setup.write_config(&format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nupstreams = [\"{}\"]\n\n[[forward.rules]]\nzone = \"query.consul\"\nupstreams = [\"{}\"]\n",
        upstream.addr(),
        agent_dns.addr()
    ));
    let server = Server::start(&setup.config).await;
    let (code, out, err) = run(&[
        "explain",
        "geo-web.query.consul",
        "A",
        "--config",
        path_arg(&setup.config),
        "--json",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["zone"], "forward", "{report}");
    assert_eq!(report["answer"]["answers"][0]["data"], "192.0.2.77");
    assert_eq!(report["kind"], serde_json::Value::Null, "{report}");
    assert_eq!(report["catalog"], serde_json::Value::Null, "{report}");
    assert_eq!(report["snapshot"], serde_json::Value::Null, "{report}");
    assert!(report["upstreams"].is_array(), "{report}");
    assert_eq!(report["forward_cache"]["rule"], "query.consul.", "{report}");
    server.stop().await;
    setup.stop().await;
}

/// One Consul name form: the question, what the router parses it as (the
/// catalog key explain must show, `None` for `.addr`), and the rcode.
struct Form {
    name: &'static str,
    qtype: RecordType,
    kind: &'static str,
    /// (service or node name, tag, datacenter).
    key: Option<(&'static str, Option<&'static str>, Option<&'static str>)>,
    rcode: &'static str,
}

/// Every form the router answers, with the key each one asks the catalog for.
fn name_forms() -> Vec<Form> {
    use RecordType::{A, AAAA, SRV};
    let form = |name, qtype, kind, key, rcode| Form {
        name,
        qtype,
        kind,
        key,
        rcode,
    };
    let service = |name, qtype, key| form(name, qtype, "service", Some(key), "NOERROR");
    let node = |name, qtype, key| form(name, qtype, "node", Some(key), "NOERROR");
    let addr = |name, qtype| form(name, qtype, "addr", None, "NOERROR");
    vec![
        service("web.service.consul", A, ("web", None, None)),
        service("web.service.dc1.consul", A, ("web", None, Some("dc1"))),
        service("web.service.dc1.dc.consul", A, ("web", None, Some("dc1"))),
        service(
            "primary.web.service.consul",
            A,
            ("web", Some("primary"), None),
        ),
        service(
            "primary.web.service.dc1.consul",
            A,
            ("web", Some("primary"), Some("dc1")),
        ),
        service(
            "primary.web.service.dc1.dc.consul",
            A,
            ("web", Some("primary"), Some("dc1")),
        ),
        service(
            "v1.blue.web.service.consul",
            A,
            ("web", Some("v1.blue"), None),
        ),
        service("db.service.consul", AAAA, ("db", None, None)),
        service("web.service.consul", SRV, ("web", None, None)),
        service("api.service.dc1.consul", SRV, ("api", None, Some("dc1"))),
        service("_web._tcp.service.consul", SRV, ("web", None, None)),
        service(
            "_web._primary.service.consul",
            SRV,
            ("web", Some("primary"), None),
        ),
        service(
            "_web._tcp.service.dc1.consul",
            SRV,
            ("web", None, Some("dc1")),
        ),
        service(
            "_web._tcp.service.dc1.dc.consul",
            SRV,
            ("web", None, Some("dc1")),
        ),
        service("_web._tcp.consul", SRV, ("web", None, None)),
        service("_web._tcp.dc1.consul", SRV, ("web", None, Some("dc1"))),
        service("_web._tcp.dc1.dc.consul", SRV, ("web", None, Some("dc1"))),
        service(
            "_web._primary.dc1.consul",
            SRV,
            ("web", Some("primary"), Some("dc1")),
        ),
        form(
            "nope.service.consul",
            A,
            "service",
            Some(("nope", None, None)),
            "NXDOMAIN",
        ),
        node("node-1.node.consul", A, ("node-1", None, None)),
        node("node-1.node.dc1.consul", A, ("node-1", None, Some("dc1"))),
        node(
            "node-1.node.dc1.dc.consul",
            A,
            ("node-1", None, Some("dc1")),
        ),
        node("node-4.node.consul", AAAA, ("node-4", None, None)),
        form(
            "nope.node.dc1.consul",
            A,
            "node",
            Some(("nope", None, Some("dc1"))),
            "NXDOMAIN",
        ),
        addr("0a000001.addr.consul", A),
        addr("0a000001.addr.dc1.consul", A),
        addr("20010db8000000000000000000000004.addr.consul", AAAA),
    ]
}

/// The (type, data) of every answer record, sorted (service answers are shuffled).
fn answer_data(records: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut data: Vec<(String, String)> = records.collect();
    data.sort();
    data
}

/// Every name form the router answers, as written and upper-cased, goes to
/// the server as a real query and to `explain` over the control socket (the
/// call `dnsfront explain` makes): explain must report the same route and
/// answer, and the catalog key behind the name with what the cache holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_router_for_every_name_form() {
    let setup = Setup::start().await;
    setup.write_config(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n",
    );
    let server = Server::start(&setup.config).await;
    let socket = setup.socket();

    for form in name_forms() {
        for name in [form.name.to_owned(), form.name.to_uppercase()] {
            let what = format!("{name} {}", form.qtype);
            let (reply, _) = udp(server.dns, &Ask::new(&format!("{name}."), form.qtype)).await;
            let queried = dnsfront_dns::rcode_name(reply.metadata.response_code);
            assert_eq!(queried, form.rcode, "{what}: the query's rcode");

            let value = control::request(
                &socket,
                &Request::Explain {
                    name: name.clone(),
                    qtype: Some(form.qtype.to_string()),
                },
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|error| panic!("{what}: explain failed: {error:#}"));
            let report: ExplainReport = serde_json::from_value(value.clone())
                .unwrap_or_else(|error| panic!("{what}: malformed report {value}: {error}"));

            assert_eq!(report.zone, "consul", "{what}: {value}");
            assert_eq!(report.kind.as_deref(), Some(form.kind), "{what}: {value}");
            let answer = report
                .answer
                .as_ref()
                .expect("explain's own query answered");
            assert_eq!(answer.rcode, form.rcode, "{what}: {value}");
            assert_eq!(
                answer_data(
                    answer
                        .answers
                        .iter()
                        .map(|record| (record.rtype.clone(), record.data.clone()))
                ),
                answer_data(
                    reply
                        .answers
                        .iter()
                        .map(|record| (record.record_type().to_string(), record.data.to_string()))
                ),
                "{what}: explain's answer is the query's: {value}"
            );
            if form.rcode == "NOERROR" {
                assert!(!answer.answers.is_empty(), "{what}: {value}");
            }

            let Some((key_name, tag, datacenter)) = form.key else {
                assert_eq!(report.source, "none", "{what}: synthesised: {value}");
                assert!(report.catalog.is_none(), "{what}: {value}");
                continue;
            };
            let catalog = report
                .catalog
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: no catalog details: {value}"));
            assert_eq!(catalog.kind, form.kind, "{what}: {value}");
            assert_eq!(catalog.name, key_name, "{what}: {value}");
            assert_eq!(catalog.tag.as_deref(), tag, "{what}: {value}");
            assert_eq!(catalog.datacenter.as_deref(), datacenter, "{what}: {value}");
            assert_eq!(report.source, "fresh", "{what}: {value}");
            if form.rcode == "NOERROR" {
                assert_eq!(catalog.state, "fresh", "{what}: {value}");
                assert!(
                    catalog.consul_index.is_some_and(|index| index > 0),
                    "{what}: the Consul index of the cached data: {value}"
                );
            } else {
                assert_eq!(catalog.state, "not_found (fresh)", "{what}: {value}");
            }
            if form.kind == "service" && form.rcode == "NOERROR" {
                assert!(catalog.instances.is_some_and(|n| n > 0), "{what}: {value}");
            }
        }
    }
    server.stop().await;
    setup.stop().await;
}

/// Issue 13 §6: a token file every user can read is warned about once at
/// start (in the log, without the token) and by `dnsfront check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_readable_token_file_is_warned_about_at_start_and_by_check() {
    let sim = standard_sim();
    let secret = "token-5ec7e7-b0b";
    sim.set_acl_tokens(&[secret]);
    let setup = Setup::with_sim(sim).await;
    let token_file = setup.dir.path().join("consul-token");
    std::fs::write(&token_file, format!("{secret}\n")).expect("write token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = format!(
        "{}\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n",
        setup.base()
    )
    .replace(
        "[consul]\n",
        &format!("[consul]\ntoken_file = {:?}\n", path_arg(&token_file)),
    );
    write(&setup.config, &text);

    let server = Server::start(&setup.config).await;
    let warning = server
        .wait_for("Risky configuration", 1, Duration::from_secs(5))
        .await;
    assert!(
        warning.contains("WARN")
            && warning.contains("consul.token_file")
            && warning.contains("readable by every user (mode 0644)"),
        "{warning}"
    );
    let answer = udp(server.dns, &Ask::new("web.service.consul.", RecordType::A))
        .await
        .0;
    assert_eq!(
        answer.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError,
        "the token still works"
    );
    assert!(
        server.log().iter().all(|line| !line.contains(secret)),
        "the token was logged"
    );
    server.stop().await;

    let (code, report, stderr) = run(&["check", "--config", path_arg(&setup.config)]).await;
    assert!(
        line(&report, "security").starts_with("warn ")
            && line(&report, "security").contains("consul.token_file"),
        "{report}"
    );
    assert!(!report.contains(secret) && !stderr.contains(secret));
    assert_eq!(code, Some(1), "a warning is exit 1, not critical: {report}");

    // 0600: no warning.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (_, report, _) = run(&["check", "--config", path_arg(&setup.config)]).await;
    assert!(!report.contains("security:"), "{report}");
    setup.stop().await;
}

/// Issue 13: `check` says plainly how snapshots are trusted.
#[tokio::test]
async fn check_says_when_snapshots_are_accepted_unsigned() {
    let setup = Setup::start().await;
    let port = free_port();
    let listen = format!("[dns]\nlisten = [\"127.0.0.1:{port}\"]\n");
    setup.write_config(&listen);
    let (_, report, _) = run(&["check", "--config", path_arg(&setup.config)]).await;
    let signing = line(&report, "signing");
    assert!(
        signing.starts_with("warn ") && signing.contains("every snapshot refused"),
        "{report}"
    );
    setup.write_config(&format!("{listen}\n[snapshot]\nallow_unsigned = true\n"));
    let (_, report, _) = run(&["check", "--config", path_arg(&setup.config)]).await;
    let signing = line(&report, "signing");
    assert!(
        signing.starts_with("warn ") && signing.contains("UNSIGNED snapshots accepted"),
        "{report}"
    );
    let (private, public) = dnsfront_snapshot::keys::generate_keypair();
    drop(private);
    let key = setup.dir.path().join("snap.pub");
    write(&key, &format!("{public}\n"));
    setup.write_config(&format!(
        "{listen}\n[snapshot]\npublic_key_file = \"{}\"\n",
        key.display()
    ));
    let (_, report, _) = run(&["check", "--config", path_arg(&setup.config)]).await;
    assert!(
        line(&report, "signing").starts_with("ok ")
            && line(&report, "signing").contains("signed snapshots only"),
        "{report}"
    );
}

/// Issue 13: the resolver's start-up log says plainly when snapshots are accepted unsigned.
#[tokio::test]
async fn start_up_log_says_when_snapshots_are_accepted_unsigned() {
    let setup = Setup::start().await;
    setup.write_config("[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[snapshot]\nallow_unsigned = true\n");
    let server = Server::start(&setup.config).await;
    let line = server
        .wait_for("accepted UNSIGNED", 1, Duration::from_secs(5))
        .await;
    assert!(line.contains("WARN"), "{line}");
    server.stop().await;

    setup.write_config("[dns]\nlisten = [\"127.0.0.1:0\"]\n");
    let server = Server::start(&setup.config).await;
    server
        .wait_for(
            "every hosts snapshot will be refused",
            1,
            Duration::from_secs(5),
        )
        .await;
    server.stop().await;
}
