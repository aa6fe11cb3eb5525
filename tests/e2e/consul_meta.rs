//! Node meta as TXT, tagged addresses, `translate_wan_addrs`, PTR for Consul
//! addresses, and NS/SOA naming the Consul servers (issue 12 §3), through real
//! sockets against the simulator, every reply parsed strictly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use consul_sim::{Registration, Sim};
use dnsfront_consul::{InstanceStatus, Node, ServiceInstance};
use dnsfront_snapshot::Snapshot;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use test_support::{Ask, FakeUpstream, sorted_addresses, tcp, udp};

use crate::harness::{Harness, ip};

/// Three Consul servers (the `consul` service; one IPv6), node-1 with meta and a
/// `lan_ipv6` (and a `wan`) tagged address, api with service addresses of both
/// families, db on an IPv6 node, and web in dc2 behind a `wan` address.
fn meta_sim() -> Sim {
    let sim = Sim::new();
    for (node, address) in [
        ("server-1", "10.0.9.1"),
        ("server-2", "10.0.9.2"),
        ("server-3", "fd00:9::3"),
    ] {
        sim.register(Registration::consul_server(node, address));
    }
    sim.register(
        Registration::new("web")
            .id("web-1")
            .node("node-1", "10.0.0.1")
            .node_meta("role", "web")
            .node_meta("rfc1035-location", "rack 12")
            .node_meta("with=eq", "a`b")
            .node_tagged_address("lan_ipv6", "fd00::1")
            .node_tagged_address("wan", "203.0.113.1")
            .node_tagged_address("wan_ipv4", "203.0.113.1")
            .port(80)
            .passing(),
    );
    sim.register(
        Registration::new("web")
            .id("web-2")
            .node("node-2", "10.0.0.2")
            .node_meta("role", "web")
            .port(80)
            .passing(),
    );
    sim.register(
        Registration::new("api")
            .id("api-1")
            .node("node-1", "10.0.0.1")
            .address("10.1.0.1")
            .port(9090)
            .passing(),
    );
    sim.register(
        Registration::new("api")
            .id("api-6")
            .node("node-3", "10.0.0.3")
            .address("fd00:1::6")
            .port(9090)
            .passing(),
    );
    sim.register(
        Registration::new("db")
            .id("db-1")
            .node("node-4", "2001:db8::4")
            .port(5432)
            .passing(),
    );
    sim.register(
        Registration::new("web")
            .id("web-edge")
            .node("edge-1", "10.2.0.1")
            // As an agent with `advertise_addr_wan` registers itself.
            .node_tagged_address("wan", "198.51.100.1")
            .node_tagged_address("wan_ipv4", "198.51.100.1")
            .port(80)
            .passing()
            .datacenter("dc2"),
    );
    sim
}

fn texts(records: &[Record]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

fn owners(records: &[Record], record_type: RecordType) -> BTreeSet<String> {
    records
        .iter()
        .filter(|record| record.record_type() == record_type)
        .map(|record| record.name.to_ascii())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

fn ptr_targets(message: &Message) -> Vec<String> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::PTR(ptr) => Some(ptr.0.to_ascii()),
            _ => None,
        })
        .collect()
}

/// The reverse name of `address` (`in-addr.arpa.` or `ip6.arpa.`).
fn reverse(address: &str) -> String {
    match ip(address) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(v6) => {
            let mut name = String::new();
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name + "ip6.arpa."
        }
    }
}

const NODE_1_META: [&str; 3] = ["role=web", "rack 12", "with`=eq=a``b"];

#[tokio::test]
async fn node_txt_and_any_answer_the_meta_as_rfc1464_text() {
    let h = Harness::start_with(meta_sim(), |_| {}).await;
    let (txt, _) = udp(h.dns, &Ask::new("node-1.node.consul.", RecordType::TXT)).await;
    assert_eq!(txt.metadata.response_code, ResponseCode::NoError);
    assert_eq!(texts(&txt.answers), set(&NODE_1_META));
    assert_eq!(txt.answers.len(), 3, "one TXT per meta key, nothing else");
    assert_eq!(
        owners(&txt.answers, RecordType::TXT),
        set(&["node-1.node.consul."])
    );

    let any = tcp(h.dns, &Ask::new("node-1.node.consul.", RecordType::ANY)).await;
    assert_eq!(sorted_addresses(&any), vec![ip("10.0.0.1"), ip("fd00::1")]);
    assert_eq!(texts(&any.answers), set(&NODE_1_META));
    assert!(any.additionals.is_empty(), "ANY has the meta in the answer");
    h.stop().await;
}

#[tokio::test]
async fn node_a_carries_its_meta_in_additional_unless_switched_off() {
    let h = Harness::start_with(meta_sim(), |_| {}).await;
    let (a, _) = udp(h.dns, &Ask::new("node-1.node.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&a), vec![ip("10.0.0.1")]);
    assert_eq!(texts(&a.additionals), set(&NODE_1_META));
    assert_eq!(
        owners(&a.additionals, RecordType::TXT),
        set(&["node-1.node.consul."])
    );
    h.stop().await;

    let h = Harness::start_with(meta_sim(), |raw| {
        raw.dns.enable_additional_node_meta_txt = false;
    })
    .await;
    let (a, _) = udp(h.dns, &Ask::new("node-1.node.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&a), vec![ip("10.0.0.1")]);
    assert!(a.additionals.is_empty(), "no meta TXT when switched off");
    let (srv, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::SRV)).await;
    assert!(
        texts(&srv.additionals).is_empty(),
        "no meta beside SRV targets"
    );
    let (txt, _) = udp(h.dns, &Ask::new("node-1.node.consul.", RecordType::TXT)).await;
    assert_eq!(
        texts(&txt.answers),
        set(&NODE_1_META),
        "a TXT question is answered whatever the setting"
    );
    h.stop().await;
}

#[tokio::test]
async fn srv_targets_carry_both_address_families_and_the_node_meta() {
    let h = Harness::start_with(meta_sim(), |_| {}).await;
    let (srv, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::SRV)).await;
    let targets: BTreeSet<String> = srv
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.target.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(
        targets,
        set(&["node-1.node.dc1.consul.", "node-2.node.dc1.consul."])
    );
    assert_eq!(
        owners(&srv.additionals, RecordType::AAAA),
        set(&["node-1.node.dc1.consul."]),
        "lan_ipv6 glue for node-1"
    );
    assert_eq!(
        owners(&srv.additionals, RecordType::A),
        set(&["node-1.node.dc1.consul.", "node-2.node.dc1.consul."])
    );
    assert_eq!(
        owners(&srv.additionals, RecordType::TXT),
        set(&["node-1.node.dc1.consul.", "node-2.node.dc1.consul."])
    );
    assert_eq!(
        texts(&srv.additionals),
        set(&["role=web", "rack 12", "with`=eq=a``b"])
    );
    h.stop().await;
}

#[tokio::test]
async fn a_lan_ipv6_tagged_address_answers_aaaa_for_an_ipv4_node() {
    let h = Harness::start_with(meta_sim(), |_| {}).await;
    let (node, _) = udp(h.dns, &Ask::new("node-1.node.consul.", RecordType::AAAA)).await;
    assert_eq!(sorted_addresses(&node), vec![ip("fd00::1")]);
    let (service, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::AAAA)).await;
    assert_eq!(
        sorted_addresses(&service),
        vec![ip("fd00::1")],
        "node-2 has no IPv6 address"
    );
    let (service, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(
        sorted_addresses(&service),
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
    h.stop().await;
}

#[tokio::test]
async fn translate_wan_addrs_answers_other_datacenters_with_their_wan_addresses() {
    let h = Harness::start_with(meta_sim(), |_| {}).await;
    let (lan, _) = udp(h.dns, &Ask::new("web.service.dc2.consul.", RecordType::A)).await;
    assert_eq!(
        sorted_addresses(&lan),
        vec![ip("10.2.0.1")],
        "off by default"
    );
    h.stop().await;

    let h = Harness::start_with(meta_sim(), |raw| raw.dns.translate_wan_addrs = true).await;
    let (wan, _) = udp(h.dns, &Ask::new("web.service.dc2.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&wan), vec![ip("198.51.100.1")]);
    let (node, _) = udp(h.dns, &Ask::new("edge-1.node.dc2.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&node), vec![ip("198.51.100.1")]);
    let (srv, _) = udp(h.dns, &Ask::new("web.service.dc2.consul.", RecordType::SRV)).await;
    assert_eq!(
        owners(&srv.additionals, RecordType::A),
        set(&["c6336401.addr.dc2.consul."]),
        "a translated address is an .addr target"
    );
    // The agent's own datacenter, named explicitly, keeps its LAN addresses.
    let (local, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(
        sorted_addresses(&local),
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
    let (local, _) = udp(h.dns, &Ask::new("web.service.dc1.consul.", RecordType::A)).await;
    assert_eq!(
        sorted_addresses(&local),
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
    h.stop().await;
}

#[tokio::test]
async fn translate_wan_addrs_gives_srv_the_port_of_the_wan_tagged_address() {
    let sim = || {
        let sim = meta_sim();
        // A gateway in dc2 reached from outside at another address and port.
        sim.register(
            Registration::new("gw")
                .id("gw-1")
                .node("gw-node", "10.2.0.7")
                .address("10.2.0.8")
                .tagged_address_port("wan", "198.51.100.8", 8443)
                .port(443)
                .passing()
                .datacenter("dc2"),
        );
        sim
    };
    let srv_ports = |message: &Message| -> Vec<u16> {
        message
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(srv.port),
                _ => None,
            })
            .collect()
    };
    let h = Harness::start_with(sim(), |_| {}).await;
    let (lan, _) = udp(h.dns, &Ask::new("gw.service.dc2.consul.", RecordType::SRV)).await;
    assert_eq!(srv_ports(&lan), vec![443], "off by default: Service.Port");
    h.stop().await;

    let h = Harness::start_with(sim(), |raw| raw.dns.translate_wan_addrs = true).await;
    let (wan, _) = udp(h.dns, &Ask::new("gw.service.dc2.consul.", RecordType::SRV)).await;
    assert_eq!(srv_ports(&wan), vec![8443], "the wan tagged address's port");
    let glue: Vec<IpAddr> = wan
        .additionals
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    assert_eq!(glue, vec![ip("198.51.100.8")], "at the wan address");
    // Services without a wan port keep theirs.
    let (web, _) = udp(h.dns, &Ask::new("web.service.dc2.consul.", RecordType::SRV)).await;
    assert_eq!(srv_ports(&web), vec![80]);
    h.stop().await;
}

#[tokio::test]
async fn ptr_names_cached_nodes_and_services_before_bogus_priv_and_forwards_the_rest() {
    let upstream = FakeUpstream::start().await;
    let up = upstream.addr().to_string();
    let h = Harness::start_with(meta_sim(), |raw| {
        raw.forward.upstreams = vec![up];
        assert!(raw.forward.bogus_priv, "bogus_priv is on by default");
    })
    .await;
    // Not asked for yet: the cache does not know 10.0.0.1, so bogus_priv answers.
    let (before, _) = udp(h.dns, &Ask::new(&reverse("10.0.0.1"), RecordType::PTR)).await;
    assert_eq!(before.metadata.response_code, ResponseCode::NXDomain);

    for name in [
        "web.service.consul.",
        "api.service.consul.",
        "db.service.consul.",
    ] {
        udp(h.dns, &Ask::new(name, RecordType::A)).await;
    }
    for (address, target) in [
        ("10.0.0.1", "node-1.node.dc1.consul."),
        ("10.0.0.2", "node-2.node.dc1.consul."),
        ("2001:db8::4", "node-4.node.dc1.consul."),
        ("10.1.0.1", "api.service.dc1.consul."),
        ("fd00:1::6", "api.service.dc1.consul."),
    ] {
        let ask = Ask::new(&reverse(address), RecordType::PTR);
        let (answer, _) = udp(h.dns, &ask).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{address}"
        );
        assert_eq!(ptr_targets(&answer), [target], "{address}");
        assert_eq!(answer.answers[0].ttl, 0, "PTR TTL is 0, as Consul");
        assert_eq!(answer.answers[0].name.to_ascii(), reverse(address));
        let over_tcp = tcp(h.dns, &ask).await;
        assert_eq!(ptr_targets(&over_tcp), [target], "{address} over TCP");
    }
    assert_eq!(
        upstream.queries(),
        0,
        "Consul addresses are never forwarded"
    );

    // Not Consul's: a private address still meets bogus_priv, a public one is forwarded.
    let (private, _) = udp(h.dns, &Ask::new(&reverse("10.99.0.1"), RecordType::PTR)).await;
    assert_eq!(private.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(upstream.queries(), 0);
    let (public, _) = udp(h.dns, &Ask::new(&reverse("192.0.2.55"), RecordType::PTR)).await;
    assert!(ptr_targets(&public).is_empty());
    assert_eq!(upstream.queries(), 1, "a public address is forwarded");
    h.stop().await;
}

/// node-1 (v4), node-6 (v6) and api (one service address per family).
fn ptr_snapshot() -> Snapshot {
    let instance = |node: &str, node_ip: &str, service_ip: Option<&str>| ServiceInstance {
        node: node.into(),
        datacenter: "dc1".into(),
        node_address: Some(ip(node_ip)),
        service_address: service_ip.map(ip),
        port: 80,
        tags: Vec::new(),
        weight: 1,
        status: InstanceStatus::Passing,
        hostname: None,
        details: None,
    };
    let mut services = BTreeMap::new();
    services.insert(
        "api".to_owned(),
        vec![
            instance("node-1", "10.0.0.1", Some("10.1.0.1")),
            instance("node-6", "fd00::16", Some("fd00:1::6")),
        ],
    );
    let mut nodes = BTreeMap::new();
    for (name, address) in [("node-1", "10.0.0.1"), ("node-6", "fd00::16")] {
        nodes.insert(
            name.to_owned(),
            Node {
                name: name.into(),
                datacenter: "dc1".into(),
                address: Some(ip(address)),
                hostname: None,
                details: None,
            },
        );
    }
    let mut snapshot = Snapshot {
        generation: 1,
        consul_index: 7,
        created_unix_ms: 1_700_000_000_000,
        publisher: "test-publisher".into(),
        datacenter: "dc1".into(),
        services,
        nodes,
    };
    snapshot.normalize();
    snapshot
}

fn outage_config(dir: &Path) -> impl FnOnce(&mut dnsfront::config::RawConfig) + '_ {
    move |raw| {
        raw.state.dir = dir.to_owned();
        raw.snapshot.allow_unsigned = true;
        raw.snapshot.wait = Duration::from_secs(2);
    }
}

#[tokio::test]
async fn ptr_is_answered_from_the_snapshot_while_consul_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let encoded = dnsfront_snapshot::encode(&ptr_snapshot(), None).expect("encode");
    dnsfront_snapshot::store::save(dir.path(), &encoded).expect("save");
    let h = Harness::start_with(Sim::new(), outage_config(dir.path())).await;
    h.consul.set_down(true);
    for (address, target) in [
        ("10.0.0.1", "node-1.node.dc1.consul."),
        ("fd00::16", "node-6.node.dc1.consul."),
        ("10.1.0.1", "api.service.dc1.consul."),
        ("fd00:1::6", "api.service.dc1.consul."),
    ] {
        let (answer, _) = udp(h.dns, &Ask::new(&reverse(address), RecordType::PTR)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{address}"
        );
        assert_eq!(ptr_targets(&answer), [target], "{address}");
    }
    h.stop().await;
}

#[tokio::test]
async fn ns_and_soa_name_the_consul_servers_with_glue() {
    let h = Harness::start_with(meta_sim(), |_| {}).await;
    let servers = set(&[
        "server-1.node.dc1.consul.",
        "server-2.node.dc1.consul.",
        "server-3.node.dc1.consul.",
    ]);
    let (ns, _) = udp(h.dns, &Ask::new("Consul.", RecordType::NS)).await;
    assert_eq!(ns.metadata.response_code, ResponseCode::NoError);
    assert!(ns.metadata.authoritative);
    let named: BTreeSet<String> = ns
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::NS(target) => Some(target.0.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(named, servers);
    assert_eq!(
        owners(&ns.answers, RecordType::NS),
        set(&["Consul."]),
        "owned by the apex as asked"
    );
    let mut glue: Vec<IpAddr> = ns
        .additionals
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    glue.sort();
    assert_eq!(
        glue,
        vec![ip("10.0.9.1"), ip("10.0.9.2"), ip("fd00:9::3")],
        "glue for every server"
    );

    let (soa, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::SOA)).await;
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    let named: BTreeSet<String> = soa
        .authorities
        .iter()
        .filter_map(|record| match &record.data {
            RData::NS(target) => Some(target.0.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(named, servers, "the servers in Authority");
    assert_eq!(owners(&soa.authorities, RecordType::NS), set(&["consul."]));
    assert_eq!(soa.additionals.len(), 3, "their glue");
    h.stop().await;
}

#[tokio::test]
async fn consul_service_answers_the_servers() {
    let h = Harness::start_with(meta_sim(), |_| {}).await;
    let (a, _) = udp(h.dns, &Ask::new("consul.service.consul.", RecordType::A)).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&a), vec![ip("10.0.9.1"), ip("10.0.9.2")]);
    let (srv, _) = udp(h.dns, &Ask::new("consul.service.consul.", RecordType::SRV)).await;
    assert_eq!(srv.answers.len(), 3);
    assert!(
        srv.answers
            .iter()
            .all(|record| matches!(&record.data, RData::SRV(srv) if srv.port == 8300))
    );
    h.stop().await;
}

#[tokio::test]
async fn srv_answers_with_meta_fit_every_size_limit_with_whole_groups() {
    let sim = Sim::new();
    for index in 0..96u16 {
        let node = format!("ip-10-3-{}-{}-compute-internal", index / 256, index % 256);
        sim.register(
            Registration::new("big")
                .id(&format!("big-{index}"))
                .node(&node, &format!("10.3.{}.{}", index / 256, index % 256))
                .node_meta("consul-version", "1.16.4")
                .node_meta("rack", &format!("r{}", index % 7))
                .port(8080)
                .passing(),
        );
    }
    let h = Harness::start_with(sim, |_| {}).await;
    let ask = Ask::new("big.service.consul.", RecordType::SRV);
    let mut replies = Vec::new();
    for (variant, limit) in test_support::udp_size_variants(&ask) {
        let (reply, size) = udp(h.dns, &variant).await;
        assert!(size <= limit, "{size} > {limit}");
        replies.push(reply);
    }
    let (over_tcp, _) = test_support::tcp_sized(h.dns, &ask).await;
    assert_eq!(over_tcp.answers.len(), 96, "TCP carries every SRV");
    replies.push(over_tcp);
    for reply in replies {
        assert!(!reply.answers.is_empty());
        let targets: BTreeSet<String> = reply
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(srv.target.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(
            owners(&reply.additionals, RecordType::A),
            targets,
            "each kept SRV keeps its address"
        );
        let meta_owners = owners(&reply.additionals, RecordType::TXT);
        assert!(
            meta_owners.is_subset(&targets),
            "no meta of a dropped target"
        );
        if !reply.metadata.truncation {
            assert_eq!(meta_owners, targets, "untrimmed: meta for every target");
        }
    }
    h.stop().await;
}
