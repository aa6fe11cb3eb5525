//! Fixtures shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use consul_sim::{Registration, Sim, SimServer};
use dnsfront_consul::{self as consul, InstanceStatus, Node, ServiceInstance};
use dnsfront_snapshot::codec::{FORMAT_VERSION, MAGIC};
use dnsfront_snapshot::{SigningKey, Snapshot};
use flate2::{Compression, write::GzEncoder};
use sha2::{Digest, Sha256};

/// Seed of the test signing key whose public half is in `tests/data/test-verifying.key`.
pub(crate) const TEST_SEED: [u8; 32] = [7; 32];
/// Seed of a key the followers do not trust.
pub(crate) const OTHER_SEED: [u8; 32] = [8; 32];

pub(crate) fn test_signing_key() -> SigningKey {
    SigningKey::from_bytes(&TEST_SEED)
}

pub(crate) fn other_signing_key() -> SigningKey {
    SigningKey::from_bytes(&OTHER_SEED)
}

pub(crate) fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

pub(crate) fn instance(
    node: &str,
    node_address: Option<&str>,
    service_address: Option<&str>,
    port: u16,
    tags: &[&str],
) -> ServiceInstance {
    ServiceInstance {
        node: node.to_owned(),
        datacenter: String::new(),
        node_address: node_address.map(ip),
        service_address: service_address.map(ip),
        port,
        tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
        weight: 1,
        status: InstanceStatus::Passing,
        hostname: None,
        details: None,
    }
}

pub(crate) fn node(name: &str, address: Option<&str>) -> Node {
    Node {
        name: name.to_owned(),
        datacenter: String::new(),
        address: address.map(ip),
        hostname: None,
        details: None,
    }
}

/// The small catalog the golden files and the hosts export are built from.
pub(crate) fn fixture() -> Snapshot {
    let mut web_warning = instance("node-b", Some("10.0.0.2"), None, 8080, &["v2"]);
    web_warning.status = InstanceStatus::Warning;
    web_warning.weight = 1;
    let mut services = BTreeMap::new();
    services.insert(
        "web".to_owned(),
        vec![
            web_warning,
            instance("node-a", Some("10.0.0.1"), None, 8080, &["v1", "primary"]),
        ],
    );
    services.insert(
        "db".to_owned(),
        vec![instance(
            "node-c",
            Some("10.0.0.3"),
            Some("fd00::5"),
            5432,
            &["primary", "version=15"],
        )],
    );
    services.insert(
        "batch".to_owned(),
        vec![instance("node-d", None, None, 0, &[])],
    );
    let mut nodes = BTreeMap::new();
    nodes.insert("node-a".to_owned(), node("node-a", Some("10.0.0.1")));
    nodes.insert("node-b".to_owned(), node("node-b", Some("10.0.0.2")));
    nodes.insert("node-c".to_owned(), node("node-c", Some("10.0.0.3")));
    nodes.insert("node-d".to_owned(), node("node-d", None));
    let mut snapshot = Snapshot {
        generation: 42,
        consul_index: 1_920_777,
        created_unix_ms: 1_700_000_000_000,
        publisher: "consul-server-1".to_owned(),
        datacenter: "dc1".to_owned(),
        services,
        nodes,
    };
    snapshot.normalize();
    snapshot
}

/// Small deterministic PRNG (SplitMix64) so synthetic catalogs are reproducible.
pub(crate) struct Prng(u64);

impl Prng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

const TAG_POOL: &[&str] = &[
    "primary",
    "secondary",
    "v1",
    "v2",
    "v3",
    "canary",
    "blue",
    "green",
    "http",
    "grpc",
    "metrics",
    "internal",
    "public",
    "leader",
    "replica",
    "az-a",
    "az-b",
    "az-c",
];

/// A synthetic catalog: `n_nodes` nodes `node-0000.dc1.internal` on 10.x addresses, and
/// `n_services` services `service-000`, each on `instances_per_service` distinct random
/// nodes with about two tags, a port, 20% with their own service address, 5% warning.
pub(crate) fn synthetic_catalog(
    n_nodes: usize,
    n_services: usize,
    instances_per_service: usize,
) -> Snapshot {
    let mut prng = Prng::new(0x5eed);
    let node_address = |index: usize| -> IpAddr {
        IpAddr::from([
            10,
            1 + (index / 65_536) as u8,
            (index / 256 % 256) as u8,
            (index % 256) as u8,
        ])
    };
    let mut nodes = BTreeMap::new();
    let node_names: Vec<String> = (0..n_nodes)
        .map(|index| format!("node-{index:04}.dc1.internal"))
        .collect();
    for (index, name) in node_names.iter().enumerate() {
        nodes.insert(
            name.clone(),
            node(name, Some(&node_address(index).to_string())),
        );
    }
    let mut services = BTreeMap::new();
    for service_index in 0..n_services {
        let port = 8000 + prng.below(2000) as u16;
        let mut chosen = std::collections::BTreeSet::new();
        while chosen.len() < instances_per_service.min(n_nodes) {
            chosen.insert(prng.below(n_nodes as u64) as usize);
        }
        let mut instances = Vec::new();
        for node_index in chosen {
            let n_tags = 1 + prng.below(3) as usize; // 1..=3, mean 2
            let tags = (0..n_tags)
                .map(|_| TAG_POOL[prng.below(TAG_POOL.len() as u64) as usize].to_owned())
                .collect();
            let service_address = (prng.below(5) == 0).then(|| {
                IpAddr::from([
                    10,
                    200 + prng.below(50) as u8,
                    prng.below(256) as u8,
                    prng.below(256) as u8,
                ])
            });
            let warning = prng.below(20) == 0;
            instances.push(ServiceInstance {
                node: node_names[node_index].clone(),
                datacenter: String::new(),
                node_address: Some(node_address(node_index)),
                service_address,
                port,
                tags,
                weight: if warning { 1 } else { 10 },
                status: if warning {
                    InstanceStatus::Warning
                } else {
                    InstanceStatus::Passing
                },
                hostname: None,
                details: None,
            });
        }
        services.insert(format!("service-{service_index:03}"), instances);
    }
    let mut snapshot = Snapshot {
        generation: 1,
        consul_index: 123_456_789,
        created_unix_ms: 1_700_000_000_000,
        publisher: "consul-server-1.dc1.internal".to_owned(),
        datacenter: "dc1".to_owned(),
        services,
        nodes,
    };
    snapshot.normalize();
    snapshot
}

/// An unsigned envelope with a valid checksum around `json`.
pub(crate) fn envelope(json: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(json).expect("gzip into memory");
    let compressed = encoder.finish().expect("gzip into memory");
    let mut out = MAGIC.to_vec();
    out.push(FORMAT_VERSION);
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(compressed.len())
            .expect("small")
            .to_be_bytes(),
    );
    out.extend_from_slice(&u32::try_from(json.len()).expect("small").to_be_bytes());
    out.extend_from_slice(&Sha256::digest(json));
    out.extend_from_slice(&compressed);
    out
}

/// One service, one instance whose tags are `count` empty strings: 3 bytes of JSON each,
/// 24 bytes (plus vector growth) each once decoded by a plain `Vec<String>` reader.
pub(crate) fn tags_document(count: usize) -> Vec<u8> {
    let mut json = br#"{"generation":9,"consul_index":1,"created_unix_ms":1,"publisher":"x","datacenter":"dc1","services":{"web":[{"node":"n1","node_address":"10.0.0.1","service_address":null,"port":80,"tags":["#
        .to_vec();
    json.reserve(count * 3 + 100);
    for n in 0..count {
        if n > 0 {
            json.push(b',');
        }
        json.extend_from_slice(b"\"\"");
    }
    json.extend_from_slice(br#"],"weight":1,"status":"passing"}]},"nodes":{}}"#);
    json
}

/// A simulator served on an ephemeral loopback port.
pub(crate) async fn start(sim: &Sim) -> SimServer {
    sim.serve("127.0.0.1:0".parse().expect("valid address"))
        .await
        .expect("bind consul-sim")
}

/// A client of `server` with a 5 s request timeout.
pub(crate) fn client(server: &SimServer) -> consul::Client {
    consul::Client::new(consul::Config {
        address: server.url(),
        request_timeout: Duration::from_secs(5),
        ..consul::Config::default()
    })
    .expect("valid client config")
}

/// Registers one passing instance of `service` on `node`.
pub(crate) fn register(sim: &Sim, service: &str, node: &str, address: &str) {
    sim.register(
        Registration::new(service)
            .id(&format!("{service}-{node}"))
            .node(node, address)
            .port(80)
            .check(&format!("service:{service}-{node}"), "passing"),
    );
}
