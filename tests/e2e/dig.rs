//! A few end-to-end checks with Debian's `dig`, a client we did not write.

use test_support::dig;

use crate::cli::spawn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_resolves_demo_names_over_udp_and_tcp() {
    let mut running = spawn(&["demo", "--listen", "127.0.0.1:0"]).await;
    let dns = running.dns[0];
    let port = dns.port().to_string();
    let server = format!("@{}", dns.ip());
    let short = |args: &[&str]| {
        let mut all = vec![
            server.as_str(),
            "-p",
            port.as_str(),
            "+short",
            "+time=3",
            "+tries=1",
        ];
        all.extend_from_slice(args);
        let out = tokio::task::block_in_place(|| dig(&all));
        let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let web = short(&["web.service.consul"]);
    assert!(!web.is_empty(), "dig got no address for web.service.consul");
    assert_eq!(
        short(&["+tcp", "web.service.consul"]),
        web,
        "TCP and UDP agree"
    );
    let srv = short(&["web.service.consul", "SRV"]);
    assert!(
        srv.iter()
            .all(|line| line.starts_with("1 ") && line.contains(".node.dc1.consul.")),
        "{srv:?}"
    );

    // The other forms the demo prints that need no upstream.
    assert_eq!(short(&["0a00000b.addr.consul"]), vec!["10.0.0.11"]);
    let ns = short(&["consul", "NS"]);
    assert_eq!(ns.len(), 3, "{ns:?}");
    assert!(
        ns.iter().all(|line| line.ends_with(".node.dc1.consul.")),
        "{ns:?}"
    );

    let full = tokio::task::block_in_place(|| {
        dig(&[
            server.as_str(),
            "-p",
            port.as_str(),
            "+time=3",
            "+tries=1",
            "nosuch.service.consul",
        ])
    });
    assert!(full.contains("status: NXDOMAIN"), "{full}");
    assert!(full.contains("SOA"), "{full}");
    // SIGTERM, so the demo removes its temporary state dir.
    crate::cli::sigterm(&running.child);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), running.child.wait()).await;
}
