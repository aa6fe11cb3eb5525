//! Whether the agent serves the catalog's watches from its streaming view
//! (issue 14 §3): `dnsfront check` warns when it does not (then every watch
//! read is an RPC on a server, on every node), and `dnsfront explain` shows
//! how the agent served a name's last read. Against the real binary and the
//! simulator with its streaming backend on and off.

use std::time::Duration;

use consul_sim::Registration;

use crate::binary::{Server, Setup, run_async as run};
use crate::harness::{eventually, standard_sim};

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("free port")
        .port()
}

/// The report line for `what` (exactly one).
fn line<'a>(report: &'a str, what: &str) -> &'a str {
    let lines: Vec<&str> = report
        .lines()
        .filter(|line| line.get(5..).is_some_and(|rest| rest.starts_with(what)))
        .collect();
    assert_eq!(lines.len(), 1, "one {what:?} line in:\n{report}");
    lines[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_when_the_agent_does_not_serve_watches_from_streaming() {
    let sim = standard_sim();
    let setup = Setup::with_sim(sim.clone()).await;
    let upstream = test_support::FakeUpstream::start().await;
    setup.write_config(&format!(
        "[dns]\nlisten = [\"127.0.0.1:{}\"]\n\n[forward]\nupstreams = [\"{}\"]\n\n[snapshot]\nfollow = false\n",
        free_port(),
        upstream.addr()
    ));
    let server = Server::start(&setup.config).await;
    let config = setup.config.to_str().expect("utf8");

    let (code, report, stderr) = run(&["check", "--config", config]).await;
    assert_eq!(code, Some(0), "all ok:\n{report}\n{stderr}");
    assert!(
        line(&report, "consul streaming").starts_with("ok "),
        "{report}"
    );

    // An agent with use_streaming_backend = false: every watch read would
    // reach a server.
    sim.set_streaming(false);
    let (code, report, _) = run(&["check", "--config", config]).await;
    assert_eq!(code, Some(1), "a warning:\n{report}");
    let streaming = line(&report, "consul streaming");
    assert!(streaming.starts_with("warn "), "{report}");
    assert!(streaming.contains("use_streaming_backend"), "{streaming}");
    assert!(
        streaming.contains("the whole fleet is in the expensive mode"),
        "{streaming}"
    );
    let (_, json, _) = run(&["check", "--config", config, "--json"]).await;
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(value["status"], "warning", "{value}");
    server.stop().await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_how_the_agent_served_the_last_read() {
    let sim = standard_sim();
    let setup = Setup::with_sim(sim.clone()).await;
    let upstream = test_support::FakeUpstream::start().await;
    setup.write_config(&format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nupstreams = [\"{}\"]\n",
        upstream.addr()
    ));
    let server = Server::start(&setup.config).await;
    let config = setup.config.to_str().expect("utf8").to_owned();
    let catalog = |config: String| async move {
        let (code, out, err) = run(&[
            "explain",
            "web.service.consul",
            "A",
            "--config",
            &config,
            "--json",
        ])
        .await;
        assert_eq!(code, Some(0), "{out}{err}");
        let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
        report["catalog"].clone()
    };

    // The first fetch is a plain read: served by a server (blocking-query).
    let first = catalog(config.clone()).await;
    assert_eq!(first["query_backend"], "blocking-query", "{first}");
    // Watched, its next answer comes from the agent's streaming view.
    let mut n = 10;
    let mut register = || {
        n += 1;
        sim.register(
            Registration::new("web")
                .id(&format!("web-{n}"))
                .node(&format!("node-{n}"), &format!("10.0.0.{n}"))
                .port(80),
        );
    };
    assert!(
        eventually(Duration::from_secs(10), || {
            register();
            let config = config.clone();
            async move {
                let catalog = catalog(config).await;
                catalog["refresh"] == "watching" && catalog["query_backend"] == "streaming"
            }
        })
        .await,
        "a streamed watch answer: {}",
        catalog(config.clone()).await
    );
    let streamed = catalog(config.clone()).await;
    assert!(
        matches!(streamed["agent_cache"].as_str(), Some("hit" | "miss")),
        "{streamed}"
    );
    let (code, text, _) = run(&["explain", "web.service.consul", "--config", &config]).await;
    assert_eq!(code, Some(0));
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("backend:") && l.contains("streaming")),
        "{text}"
    );

    // The agent stops streaming: the next watch answer says so.
    sim.set_streaming(false);
    assert!(
        eventually(Duration::from_secs(10), || {
            register();
            let config = config.clone();
            async move { catalog(config).await["query_backend"] == "blocking-query" }
        })
        .await,
        "{}",
        catalog(config.clone()).await
    );
    server.stop().await;
    setup.stop().await;
}
