//! systemd readiness and watchdog, against a fake NOTIFY_SOCKET.

use std::time::Duration;

use tokio::net::UnixDatagram;

use crate::cli::{sigterm, spawn_with_env};

async fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buf))
        .await
        .expect("a notification within 20s")
        .expect("recv");
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    let sim = crate::harness::standard_sim();
    let consul = sim
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim");
    let state = dir.path().join("state");
    let running = spawn_with_env(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--consul",
            &consul.url(),
            "--state-dir",
            state.to_str().expect("utf8"),
        ],
        &[
            ("NOTIFY_SOCKET", path.to_str().expect("utf8")),
            ("WATCHDOG_USEC", "200000"),
        ],
    )
    .await;

    let first = next_message(&socket).await;
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first notification: {first:?}"
    );
    // The DNS socket is bound by the time READY=1 is sent (the listening line came first).
    assert!(running.dns[0].port() != 0);

    // WatchdogSec=200ms ⇒ pings every ~100 ms.
    let mut pings = 0;
    while pings < 3 {
        if next_message(&socket)
            .await
            .lines()
            .any(|l| l == "WATCHDOG=1")
        {
            pings += 1;
        }
    }

    sigterm(&running.child);
    loop {
        let message = next_message(&socket).await;
        if message.lines().any(|l| l == "STOPPING=1") {
            break;
        }
    }
    consul.shutdown().await;
}
