//! The Consul name grammar through `Router::consul_name` (every name form),
//! and the whole routing of a question through `Router::explain` over
//! in-memory fakes (a catalog that knows every service and node, an upstream
//! that answers NXDOMAIN).
//!
//! Input: byte 0 picks the query type, the rest is the name as text (ASCII
//! keeps its case, anything else goes through IDNA, as `explain` does).
#![no_main]

use std::future::Future;
use std::sync::{Arc, LazyLock};

use dnsfront_catalog::{Freshness, InstanceStatus, Lookup, Node, ServiceInstance};
use dnsfront_dns::{CatalogView, Config, ConsulName, Router, Upstream};
use dnsfront_forward::{Answer, Source};
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use libfuzzer_sys::fuzz_target;

#[derive(Clone)]
struct Catalog;

impl CatalogView for Catalog {
    fn service(
        &self,
        service: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<[ServiceInstance]>>> + Send {
        let instance = ServiceInstance {
            node: format!("{service}-node"),
            datacenter: datacenter.unwrap_or("dc1").to_owned(),
            node_address: Some("10.0.0.1".parse().expect("ip")),
            service_address: Some("2001:db8::1".parse().expect("ip")),
            port: 8080,
            tags: vec!["primary".to_owned(), "v1".to_owned()],
            weight: 1,
            status: InstanceStatus::Passing,
            hostname: None,
            details: None,
        };
        let lookup = if service.len() % 3 == 0 {
            Lookup::NotFound(Freshness::Fresh)
        } else {
            Lookup::Found(vec![instance.clone(), instance].into(), Freshness::Fresh)
        };
        async move { lookup }
    }

    fn node(
        &self,
        node: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<Node>>> + Send {
        let lookup = Lookup::Found(
            Arc::new(Node {
                name: node.to_owned(),
                datacenter: datacenter.unwrap_or("dc1").to_owned(),
                address: Some("10.0.0.2".parse().expect("ip")),
                hostname: None,
                details: None,
            }),
            Freshness::Stale,
        );
        async move { lookup }
    }
}

#[derive(Clone)]
struct Nxdomain;

impl Upstream for Nxdomain {
    fn resolve(
        &self,
        _query: &Query,
        _dnssec_ok: bool,
    ) -> impl Future<Output = Result<Answer, dnsfront_forward::Error>> + Send {
        async {
            Ok(Answer {
                response_code: ResponseCode::NXDomain,
                answers: Vec::new(),
                authorities: Vec::new(),
                additionals: Vec::new(),
                authentic_data: false,
                source: Source::Upstream,
            })
        }
    }
}

static ROUTER: LazyLock<Router<Catalog, Nxdomain>> = LazyLock::new(|| {
    // No agent DNS: the forms it answers are SERVFAIL here, without socket I/O.
    let config = Config {
        agent_dns: None,
        ..Config::default()
    };
    Router::with_backends(config, Catalog, Some(Nxdomain))
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

const QTYPES: [RecordType; 8] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::ANY,
    RecordType::TXT,
    RecordType::PTR,
    RecordType::SOA,
    RecordType::NS,
];

/// `name` with every ASCII letter of every label upper-cased.
fn upper(name: &Name) -> Name {
    let labels: Vec<Vec<u8>> = name
        .iter()
        .map(|label| label.to_ascii_uppercase())
        .collect();
    let mut upper = Name::from_labels(labels).expect("same lengths");
    upper.set_fqdn(name.is_fqdn());
    upper
}

/// The canonical spelling of a parsed service or node name, when it has one
/// that must parse back to the same value.
fn canonical(parsed: &ConsulName) -> Option<Vec<String>> {
    let plain = |label: &str| !label.starts_with('_');
    let mut labels = Vec::new();
    match parsed {
        ConsulName::Service {
            name,
            tag,
            datacenter,
        } => {
            if !plain(name) || tag.as_deref().is_some_and(|tag| !plain(tag)) {
                return None;
            }
            labels.extend(tag.iter().flat_map(|tag| tag.split('.')).map(str::to_owned));
            labels.push(name.clone());
            labels.push("service".to_owned());
            labels.extend(datacenter.clone());
        }
        ConsulName::Node { name, datacenter } => {
            labels.extend(name.split('.').map(str::to_owned));
            labels.push("node".to_owned());
            labels.extend(datacenter.clone());
        }
        _ => return None,
    }
    labels.push("consul".to_owned());
    Some(labels)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let qtype = QTYPES[usize::from(pick) % QTYPES.len()];
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let router = &*ROUTER;

    let parsed = if text.is_ascii() {
        Name::from_ascii(text)
    } else {
        Name::from_utf8(text)
    };
    if let Ok(mut name) = parsed {
        name.set_fqdn(true);
        let consul = router.consul_name(&name, qtype);
        // Inside the domain exactly when it is a Consul name; case never matters.
        let domain = Name::from_ascii("consul.").expect("domain");
        assert_eq!(consul.is_some(), domain.zone_of(&name), "{name}");
        assert_eq!(router.consul_name(&upper(&name), qtype), consul, "{name}");
        if let Some(consul) = &consul {
            match consul {
                ConsulName::Service {
                    name: service,
                    tag,
                    datacenter,
                } => {
                    for part in [Some(service), tag.as_ref(), datacenter.as_ref()]
                        .into_iter()
                        .flatten()
                    {
                        assert!(!part.is_empty(), "{name}: empty part");
                        assert!(
                            !part.bytes().any(|b| b.is_ascii_uppercase()),
                            "{name}: not lower-case"
                        );
                    }
                }
                ConsulName::Node {
                    name: node,
                    datacenter,
                } => {
                    assert!(!node.is_empty(), "{name}: empty node");
                    assert!(datacenter.as_ref().is_none_or(|dc| !dc.is_empty()));
                }
                _ => {}
            }
            if let Some(labels) = canonical(consul) {
                let labels: Vec<&[u8]> = labels.iter().map(String::as_bytes).collect();
                if let Ok(mut again) = Name::from_labels(labels) {
                    again.set_fqdn(true);
                    assert_eq!(
                        router.consul_name(&again, RecordType::A).as_ref(),
                        Some(consul),
                        "{name} → {again}"
                    );
                }
            }
        }
    }

    // The whole route: never panics, and says which zone answered.
    let explanation = RUNTIME.block_on(router.explain(text, qtype));
    assert!(
        matches!(explanation.zone, "consul" | "forward" | "local" | "none"),
        "{}",
        explanation.zone
    );
});
