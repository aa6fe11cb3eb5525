//! The dnsmasq addn-hosts export.

mod common;

use dnsfront_snapshot::{Snapshot, to_hosts_file};

#[test]
fn hosts_file_lists_services_tags_and_nodes() {
    let text = to_hosts_file(&common::fixture(), "consul.");
    let expected = "\
# dnsfront hosts snapshot: datacenter dc1, generation 42, consul index 1920777, created 1700000000000 (unix ms), publisher consul-server-1
fd00::5 db.service.consul
fd00::5 primary.db.service.consul
10.0.0.1 web.service.consul
10.0.0.1 primary.web.service.consul
10.0.0.1 v1.web.service.consul
10.0.0.2 web.service.consul
10.0.0.2 v2.web.service.consul
10.0.0.1 node-a.node.consul
10.0.0.2 node-b.node.consul
10.0.0.3 node-c.node.consul
";
    // batch has no address (skipped); the `version=15` tag is not a host name (skipped);
    // node-d has no address (skipped).
    assert_eq!(text, expected);
}

#[test]
fn hosts_file_is_deterministic_lower_case_and_deduplicated() {
    let mut snapshot = common::fixture();
    // Same address twice (two ports on one node) yields one line per name.
    let mut second_port = snapshot.services["web"][0].clone();
    second_port.port = 9090;
    second_port.tags = vec!["V1".to_owned()];
    snapshot
        .services
        .get_mut("web")
        .expect("web")
        .push(second_port);
    let first = to_hosts_file(&snapshot, "Consul");
    let mut shuffled = snapshot.clone();
    shuffled.services.get_mut("web").expect("web").reverse();
    assert_eq!(to_hosts_file(&shuffled, "Consul"), first);
    assert_eq!(first.matches("10.0.0.1 web.service.consul\n").count(), 1);
    assert_eq!(first.matches("10.0.0.1 v1.web.service.consul\n").count(), 1);
    assert!(!first.contains("Consul"), "{first}");
}

#[test]
fn empty_snapshot_is_just_the_header() {
    let text = to_hosts_file(&Snapshot::default(), "consul");
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with("# dnsfront hosts snapshot"));
}

/// Issue 13: publisher-controlled strings cannot add a line outside the Consul domain.
#[test]
fn crafted_names_cannot_add_lines_outside_the_domain() {
    let mut snapshot = common::fixture();
    snapshot.publisher = "p\n6.6.6.6 evil.example".into();
    snapshot.datacenter = "dc1\r\n6.6.6.6 evil2.example #".into();
    let tags = [
        "x evil.example",
        "x\n6.6.6.6 evil.example",
        "#",
        "a\tb",
        "evil.example ",
        "ok",
    ];
    snapshot.services.insert(
        "evil.example #".into(),
        vec![common::instance("n", Some("10.9.9.9"), None, 80, &[])],
    );
    snapshot.services.insert(
        "api".into(),
        vec![common::instance("n", Some("10.9.9.9"), None, 80, &tags)],
    );
    snapshot.nodes.insert(
        "evil.example\n6.6.6.6 x".into(),
        common::node("evil", Some("10.9.9.9")),
    );
    let text = to_hosts_file(&snapshot, "consul");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with('#') && !header.contains('\r'),
        "{header}"
    );
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 2, "one address, one name: {line:?}");
        assert!(
            fields[1].ends_with(".service.consul") || fields[1].ends_with(".node.consul"),
            "{line:?}"
        );
    }
    assert!(
        text.lines().skip(1).all(|line| !line.contains("6.6.6.6")),
        "{text}"
    );
    assert!(text.contains("10.9.9.9 ok.api.service.consul"), "{text}");
}
