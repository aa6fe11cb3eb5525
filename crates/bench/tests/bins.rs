//! The helper binaries of `benches/load`, run as real processes on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::Ask;

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `binary` and returns it with its first stdout line parsed as JSON.
fn start(binary: &str, args: &[&str]) -> (Running, serde_json::Value) {
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn helper binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the first line");
    let value = serde_json::from_str(&line).unwrap_or_else(|error| {
        panic!("first line {line:?} is not JSON: {error}");
    });
    (running, value)
}

#[tokio::test]
async fn udp_responder_answers_every_query_with_one_a_record() {
    let (_responder, ready) = start(env!("CARGO_BIN_EXE_udp-responder"), &[]);
    let addr: SocketAddr = ready["dns"][0]
        .as_str()
        .expect("dns address")
        .parse()
        .expect("socket address");
    for name in ["web.service.consul", "Some.Name.Bench.Test"] {
        let (message, _) = test_support::udp(addr, &Ask::new(name, RecordType::A)).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert_eq!(message.queries[0].name().to_ascii(), format!("{name}."));
        assert_eq!(
            test_support::addresses(&message),
            vec!["192.0.2.1".parse::<std::net::IpAddr>().expect("literal")]
        );
    }
}

const FIXTURE: &str = r#"{
  "nodes": [{"node": "node-1", "address": "10.0.0.1"}],
  "services": [{"node": "node-1", "id": "web-1", "service": "web", "port": 80,
                "checks": [{"id": "service:web-1", "status": "passing"}]}]
}"#;

#[tokio::test]
async fn bench_consul_sim_counts_requests_and_scripts_delays_and_checks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = dir.path().join("fixture.json");
    std::fs::write(&fixture, FIXTURE).expect("write fixture");
    let (_sim, ready) = start(
        env!("CARGO_BIN_EXE_bench-consul-sim"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--fixture",
            fixture.to_str().expect("utf-8 path"),
        ],
    );
    let consul = ready["consul"].as_str().expect("consul url").to_owned();
    let debug = ready["debug"].as_str().expect("debug url").to_owned();
    test_support::install_crypto_provider();
    let http = reqwest::Client::new();
    let health = |http: reqwest::Client| {
        let url = format!("{consul}/v1/health/service/web?stale");
        async move {
            http.get(url)
                .send()
                .await
                .expect("health request")
                .json::<serde_json::Value>()
                .await
                .expect("health json")
        }
    };

    let entries = health(http.clone()).await;
    assert_eq!(entries.as_array().expect("array").len(), 1);
    let counts = request_counts(&http, &debug).await;
    assert_eq!(counts["total"], 1);
    assert_eq!(counts["paths"]["/v1/health/service/web"], 1);

    post(
        &http,
        &format!("{debug}/debug/check?node=node-1&id=service:web-1&status=critical"),
    )
    .await;
    let entries = health(http.clone()).await;
    assert_eq!(entries[0]["Checks"][0]["Status"], "critical");

    post(
        &http,
        &format!("{debug}/debug/delay?path=/v1/health/service/web&ms=300"),
    )
    .await;
    let started = Instant::now();
    health(http.clone()).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    post(&http, &format!("{debug}/debug/clear-faults")).await;

    post(&http, &format!("{debug}/debug/requests/reset")).await;
    let counts = request_counts(&http, &debug).await;
    assert_eq!(counts["total"], 0);
}

/// The simulator's request counters (`GET /debug/requests`).
async fn request_counts(http: &reqwest::Client, debug: &str) -> serde_json::Value {
    http.get(format!("{debug}/debug/requests"))
        .send()
        .await
        .expect("counts")
        .json()
        .await
        .expect("counts json")
}

async fn post(http: &reqwest::Client, url: &str) {
    let response = http.post(url).send().await.expect("debug request");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
}
