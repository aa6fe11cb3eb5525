//! Live reload of the real binary: SIGHUP, the control channel's `reload`,
//! and the upstream resolv file poll.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dnsfront::control::{self, Request};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, FakeUpstream, sorted_addresses, udp};

use crate::binary::{Server, Setup, write};
use crate::harness::ip;

/// Sends queries until stopped; counts those that got no NOERROR answer.
struct QueryLoad {
    stop: tokio_util::sync::CancellationToken,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl QueryLoad {
    fn start(dns: SocketAddr) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (token, s, f) = (stop.clone(), Arc::clone(&sent), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let ask = Ask::new("web.service.consul.", RecordType::A);
            while !token.is_cancelled() {
                let ok = test_support::udp_raw_wait(dns, &ask.to_bytes(), Duration::from_secs(2))
                    .await
                    .and_then(|bytes| hickory_proto::op::Message::from_vec(&bytes).ok())
                    .is_some_and(|m| m.metadata.response_code == ResponseCode::NoError);
                s.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            stop,
            sent,
            failed,
            task,
        }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.cancel();
        let _ = self.task.await;
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_log_level_and_upstreams_and_names_restart_only_keys() {
    let setup = Setup::start().await;
    let old_upstream = FakeUpstream::start().await;
    old_upstream.set("before.example", &["192.0.2.10"], 300);
    old_upstream.set("after.example", &["192.0.2.11"], 300);
    let new_upstream = FakeUpstream::start().await;
    new_upstream.set("after.example", &["192.0.2.21"], 300);

    let base = setup.base();
    write(
        &setup.config,
        &format!(
            "{base}\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nupstreams = [\"{}\"]\n\n[log]\nlevel = \"info\"\n",
            old_upstream.addr()
        ),
    );
    let server = Server::start(&setup.config).await;
    let (answer, _) = udp(server.dns, &Ask::new("before.example.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.10")]);

    // At info, control requests (logged at debug) leave no line.
    let socket = setup.socket();
    control::request(&socket, &Request::Stats, Duration::from_secs(5))
        .await
        .expect("stats");
    assert!(server.lines_with("Control request").is_empty());

    let load = QueryLoad::start(server.dns);
    tokio::time::sleep(Duration::from_millis(200)).await;
    write(
        &setup.config,
        &format!(
            "{base}\n[dns]\nlisten = [\"127.0.0.1:5399\"]\n\n[forward]\nupstreams = [\"{}\"]\n\n[log]\nlevel = \"info,dnsfront::control=debug\"\n",
            new_upstream.addr()
        ),
    );
    server.hangup();
    let reloaded = server
        .wait_for("Configuration reloaded", 1, Duration::from_secs(10))
        .await;
    assert!(reloaded.contains("SIGHUP"), "{reloaded}");
    for key in ["dns.listen", "forward.upstreams", "log.level"] {
        assert!(
            reloaded.contains(key),
            "{key} not named as changed: {reloaded}"
        );
    }
    let restart = server.lines_with("restart_required");
    assert_eq!(restart.len(), 1, "one restart_required line: {restart:?}");
    assert!(restart[0].contains("dns.listen"), "{}", restart[0]);
    assert!(
        !restart[0].contains("log.level") && !restart[0].contains("forward.upstreams"),
        "live keys are not restart-only: {}",
        restart[0]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sent, failed) = load.finish().await;
    assert!(sent > 5, "the load ran ({sent} queries)");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} queries failed around the reload"
    );

    // The new upstream answers names not cached yet; the cache was kept.
    let (answer, _) = udp(server.dns, &Ask::new("after.example.", RecordType::A)).await;
    assert_eq!(
        sorted_addresses(&answer),
        vec![ip("192.0.2.21")],
        "forward.upstreams applied live"
    );
    let before_queries = old_upstream.queries();
    let (answer, _) = udp(server.dns, &Ask::new("before.example.", RecordType::A)).await;
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(
        old_upstream.queries(),
        before_queries,
        "cached answers survive the reload"
    );

    // The new level is in effect: a control request is now logged.
    control::request(&socket, &Request::Stats, Duration::from_secs(5))
        .await
        .expect("stats");
    server
        .wait_for("Control request", 1, Duration::from_secs(5))
        .await;

    // The restart-only key keeps its running value, so it is named again.
    server.hangup();
    server
        .wait_for("Configuration reloaded", 2, Duration::from_secs(10))
        .await;
    let restart = server
        .wait_for("restart_required", 2, Duration::from_secs(5))
        .await;
    assert!(restart.contains("dns.listen"), "{restart}");
    server.stop().await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_on_sighup_is_logged_once_and_serving_goes_on() {
    let setup = Setup::start().await;
    let base = setup.base();
    let secret = "s3cret-token-4711";
    let valid = format!(
        "{base}\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nresolv_file = \"/nonexistent/dnsfront-tests/resolv.conf\"\n"
    )
    .replace(
        "[consul]\n",
        &format!("[consul]\ntoken = \"{secret}\"\n"),
    );
    write(&setup.config, &valid);
    let server = Server::start(&setup.config).await;
    let web = Ask::new("web.service.consul.", RecordType::A);
    let (answer, _) = udp(server.dns, &web).await;
    assert_eq!(answer.answers.len(), 2);

    // An out-of-range value, and the token beside it.
    write(
        &setup.config,
        &valid.replace("refresh_interval = \"400ms\"", "refresh_interval = \"0s\""),
    );
    server.hangup();
    let failed = server
        .wait_for("Configuration reload failed", 1, Duration::from_secs(10))
        .await;
    assert!(failed.contains("catalog.refresh_interval"), "{failed}");
    let (answer, _) = udp(server.dns, &web).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        answer.answers.len(),
        2,
        "still serving with the old settings"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.lines_with("Configuration reload failed").len(),
        1,
        "logged once"
    );
    assert!(server.lines_with("Configuration reloaded").is_empty());

    // A TOML syntax error on the token line: named, never quoted.
    write(
        &setup.config,
        &valid.replace(
            &format!("token = \"{secret}\""),
            &format!("token = {secret}"),
        ),
    );
    let error = control::request(&setup.socket(), &Request::Reload, Duration::from_secs(5))
        .await
        .expect_err("an invalid file fails the reload");
    assert!(!error.to_string().contains(secret), "{error}");
    server
        .wait_for("Configuration reload failed", 2, Duration::from_secs(5))
        .await;

    // Fixed: the next reload goes through, with nothing changed.
    write(&setup.config, &valid);
    let outcome = control::request(&setup.socket(), &Request::Reload, Duration::from_secs(5))
        .await
        .expect("reload");
    assert_eq!(outcome["trigger"], "control");
    assert_eq!(outcome["changed"], serde_json::json!([]));
    server
        .wait_for("Configuration reloaded", 1, Duration::from_secs(5))
        .await;
    let log = server.log().join("\n");
    assert!(!log.contains(secret), "the token leaked into the log");
    server.stop().await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_resolv_file_is_picked_up_without_a_signal() {
    let setup = Setup::start().await;
    let resolv = setup.dir.path().join("resolv.conf");
    write(&resolv, "nameserver 192.0.2.1\n");
    setup.write_config(&format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nresolv_file = \"{}\"\n",
        resolv.display()
    ));
    let server = Server::start(&setup.config).await;
    // Same length, other content: the content hash sees it.
    write(&resolv, "nameserver 192.0.2.2\n");
    let reloaded = server
        .wait_for("Configuration reloaded", 1, Duration::from_secs(8))
        .await;
    assert!(reloaded.contains("resolv file"), "{reloaded}");
    assert!(reloaded.contains("forward.upstreams"), "{reloaded}");
    let stats = control::request(&setup.socket(), &Request::Stats, Duration::from_secs(5))
        .await
        .expect("stats");
    assert_eq!(stats["upstreams"], serde_json::json!(["192.0.2.2:53"]));
    assert_eq!(stats["last_reload"]["outcome"]["trigger"], "resolv file");
    // Untouched: no further reload.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.lines_with("Configuration reloaded").len(), 1);
    let (answer, _) = udp(server.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.answers.len(), 2);
    server.stop().await;
    setup.stop().await;
}

#[tokio::test]
async fn hosts_files_are_answered_and_sighup_re_reads_them() {
    let setup = Setup::start().await;
    let hosts = setup.dir.path().join("hosts");
    let extra = setup.dir.path().join("addn-hosts");
    write(
        &hosts,
        "# local names\n192.0.2.50 build-box build-box.lan\n",
    );
    write(&extra, "192.0.2.60 printer.lan\n");
    // The file is edited in place through a hard link in another directory: inotify
    // watches the hosts file's directory, so it never hears of that edit, and the safety
    // poll (watch_interval) is longer than the test: only SIGHUP can bring the edit in.
    let elsewhere = tempfile::tempdir().expect("second directory");
    let hosts_link = elsewhere.path().join("hosts-link");
    std::fs::hard_link(&hosts, &hosts_link).expect("hard link");
    let config_text = |files: &str| {
        format!(
            "{}\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[hosts]\nfiles = [{files}]\nwatch_interval = \"5m\"\n",
            setup.base(),
        )
    };
    write(
        &setup.config,
        &config_text(&format!("\"{}\"", hosts.display())),
    );
    let server = Server::start(&setup.config).await;
    let ask = Ask::new("Build-Box.lan.", RecordType::A);
    let (answer, _) = udp(server.dns, &ask).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        answer.metadata.authoritative,
        "hosts answers are authoritative"
    );
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.50")]);

    std::fs::write(&hosts_link, "192.0.2.51 build-box.lan\n").expect("edit in place");
    server.hangup();
    server
        .wait_for("Hosts files re-read", 1, Duration::from_secs(8))
        .await;
    let (answer, _) = udp(server.dns, &ask).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.51")]);

    // A second file added to hosts.files applies live, without a restart warning.
    write(
        &setup.config,
        &config_text(&format!("\"{}\", \"{}\"", hosts.display(), extra.display())),
    );
    server.hangup();
    let reloaded = server
        .wait_for("Configuration reloaded", 2, Duration::from_secs(8))
        .await;
    assert!(reloaded.contains("hosts.files"), "{reloaded}");
    let (answer, _) = udp(server.dns, &Ask::new("printer.lan.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.60")]);
    assert!(
        server.lines_with("restart_required").is_empty(),
        "{:?}",
        server.lines_with("restart_required")
    );
    server.stop().await;
    setup.stop().await;
}
