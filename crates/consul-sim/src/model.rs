//! JSON shapes as Consul 1.16 emits them (Go structs marshalled with PascalCase names),
//! written from Consul's API docs rather than from any client's models.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::duration::format_go_duration;
use crate::state::{Check, Dc, KvEntry, Node, Service, Session};

/// The node fields that open both `structs.Node` and `structs.ServiceNode` (flattened into each).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeHeadJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    tagged_addresses: BTreeMap<String, String>,
}

impl<'a> NodeHeadJson<'a> {
    fn new(node: &'a Node, datacenter: &'a str) -> Self {
        Self {
            id: &node.id,
            node: &node.name,
            address: &node.address,
            datacenter,
            tagged_addresses: node.tagged_addresses(),
        }
    }
}

/// `structs.Node` as it appears in health results and `/v1/catalog/nodes`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NodeJson<'a> {
    #[serde(flatten)]
    head: NodeHeadJson<'a>,
    meta: &'a BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> NodeJson<'a> {
    pub(crate) fn new(node: &'a Node, datacenter: &'a str) -> Self {
        Self {
            head: NodeHeadJson::new(node, datacenter),
            meta: &node.meta,
            create_index: node.create_index,
            modify_index: node.modify_index,
        }
    }
}

/// `{"Passing": n, "Warning": n}`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WeightsJson {
    passing: u32,
    warning: u32,
}

fn weights(service: &Service) -> Option<WeightsJson> {
    service
        .weights
        .map(|(passing, warning)| WeightsJson { passing, warning })
}

/// Service tagged addresses an agent adds for a service registered with an IP address,
/// with the explicitly registered ones over them.
fn service_tagged_addresses(service: &Service) -> BTreeMap<String, Value> {
    let mut tagged = BTreeMap::new();
    let family = match service.address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => Some("ipv4"),
        Ok(std::net::IpAddr::V6(_)) => Some("ipv6"),
        Err(_) => None,
    };
    if let Some(family) = family {
        let entry = json!({"Address": service.address, "Port": service.port});
        tagged.insert(format!("lan_{family}"), entry.clone());
        tagged.insert(format!("wan_{family}"), entry);
    }
    for (key, address) in &service.tagged {
        let port = service
            .tagged_ports
            .get(key)
            .copied()
            .unwrap_or(service.port);
        tagged.insert(key.clone(), json!({"Address": address, "Port": port}));
    }
    tagged
}

fn empty_proxy() -> Value {
    json!({"Mode": "", "MeshGateway": {}, "Expose": {}, "TransparentProxy": {}, "AccessLogs": {}})
}

fn is_zero(port: &u16) -> bool {
    *port == 0
}

/// `structs.NodeService` as it appears in health results and `/v1/catalog/node/:node`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    address: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tagged_addresses: BTreeMap<String, Value>,
    meta: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_zero")]
    port: u16,
    weights: Option<WeightsJson>,
    enable_tag_override: bool,
    proxy: Value,
    connect: Value,
    create_index: u64,
    modify_index: u64,
}

impl<'a> ServiceJson<'a> {
    pub(crate) fn new(service: &'a Service) -> Self {
        Self {
            id: &service.id,
            service: &service.service,
            tags: &service.tags,
            address: &service.address,
            tagged_addresses: service_tagged_addresses(service),
            meta: &service.meta,
            port: service.port,
            weights: weights(service),
            enable_tag_override: service.enable_tag_override,
            proxy: empty_proxy(),
            connect: json!({}),
            create_index: service.create_index,
            modify_index: service.modify_index,
        }
    }
}

/// `structs.HealthCheck`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CheckJson<'a> {
    node: &'a str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: &'a str,
    notes: &'a str,
    output: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    #[serde(rename = "Type")]
    check_type: &'a str,
    interval: &'a str,
    timeout: &'a str,
    exposed_port: u16,
    definition: Value,
    create_index: u64,
    modify_index: u64,
}

impl<'a> CheckJson<'a> {
    pub(crate) fn new(check: &'a Check, service_tags: &'a [String]) -> Self {
        Self {
            node: &check.node,
            check_id: &check.check_id,
            name: &check.name,
            status: &check.status,
            notes: &check.notes,
            output: &check.output,
            service_id: &check.service_id,
            service_name: &check.service_name,
            service_tags,
            check_type: &check.check_type,
            interval: "",
            timeout: "",
            exposed_port: 0,
            definition: json!({}),
            create_index: check.create_index,
            modify_index: check.modify_index,
        }
    }
}

/// One `structs.CheckServiceNode`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthEntryJson<'a> {
    node: NodeJson<'a>,
    service: ServiceJson<'a>,
    checks: Vec<CheckJson<'a>>,
}

/// True when every tag in `wanted` is on the service (case-insensitive), as Consul's `?tag` filter.
pub(crate) fn has_tags(service: &Service, wanted: &[&str]) -> bool {
    wanted.iter().all(|tag| {
        service
            .tags
            .iter()
            .any(|have| have.eq_ignore_ascii_case(tag))
    })
}

const EMPTY_TAGS: &[String] = &[];

/// Body of `/v1/health/service/:service`.
pub(crate) fn health_service<'a>(
    dc: &'a Dc,
    service_name: &str,
    tags: &[&str],
    passing_only: bool,
) -> Vec<HealthEntryJson<'a>> {
    let mut entries = Vec::new();
    for service in dc.services.values() {
        if service.service != service_name || !has_tags(service, tags) {
            continue;
        }
        let Some(node) = dc.nodes.get(&service.node) else {
            continue;
        };
        let node_checks = dc
            .checks
            .values()
            .filter(|check| check.node == service.node && check.service_id.is_empty());
        let service_checks = dc
            .checks
            .values()
            .filter(|check| check.node == service.node && check.service_id == service.id);
        let checks: Vec<CheckJson<'a>> = node_checks
            .map(|check| CheckJson::new(check, EMPTY_TAGS))
            .chain(service_checks.map(|check| CheckJson::new(check, &service.tags)))
            .collect();
        if passing_only && checks.iter().any(|check| check.status != "passing") {
            continue;
        }
        entries.push(HealthEntryJson {
            node: NodeJson::new(node, &dc.name),
            service: ServiceJson::new(service),
            checks,
        });
    }
    entries
}

/// Body of `/v1/health/state/:state`: every check in `state` (`any` = all), ordered by node
/// then check ID; `node_meta` pairs must all be on the check's node.
pub(crate) fn health_state<'a>(
    dc: &'a Dc,
    state: &str,
    node_meta: &[(String, String)],
) -> Vec<CheckJson<'a>> {
    dc.checks
        .values()
        .filter(|check| state == "any" || check.status == state)
        .filter(|check| {
            node_meta.is_empty()
                || dc.nodes.get(&check.node).is_some_and(|node| {
                    node_meta
                        .iter()
                        .all(|(key, value)| node.meta.get(key) == Some(value))
                })
        })
        .map(|check| {
            let tags = if check.service_id.is_empty() {
                EMPTY_TAGS
            } else {
                dc.services
                    .get(&(check.node.clone(), check.service_id.clone()))
                    .map_or(EMPTY_TAGS, |service| service.tags.as_slice())
            };
            CheckJson::new(check, tags)
        })
        .collect()
}

/// One flat `structs.ServiceNode` of `/v1/catalog/service/:service`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CatalogServiceJson<'a> {
    #[serde(flatten)]
    head: NodeHeadJson<'a>,
    node_meta: &'a BTreeMap<String, String>,
    service_kind: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    service_address: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    service_tagged_addresses: BTreeMap<String, Value>,
    service_weights: Option<WeightsJson>,
    service_meta: &'a BTreeMap<String, String>,
    service_port: u16,
    service_enable_tag_override: bool,
    service_proxy: Value,
    service_connect: Value,
    create_index: u64,
    modify_index: u64,
}

/// Body of `/v1/catalog/service/:service`.
pub(crate) fn catalog_service<'a>(
    dc: &'a Dc,
    service_name: &str,
    tags: &[&str],
) -> Vec<CatalogServiceJson<'a>> {
    dc.services
        .values()
        .filter(|service| service.service == service_name && has_tags(service, tags))
        .filter_map(|service| {
            let node = dc.nodes.get(&service.node)?;
            Some(CatalogServiceJson {
                head: NodeHeadJson::new(node, &dc.name),
                node_meta: &node.meta,
                service_kind: "",
                service_id: &service.id,
                service_name: &service.service,
                service_tags: &service.tags,
                service_address: &service.address,
                service_tagged_addresses: service_tagged_addresses(service),
                service_weights: weights(service),
                service_meta: &service.meta,
                service_port: service.port,
                service_enable_tag_override: service.enable_tag_override,
                service_proxy: empty_proxy(),
                service_connect: json!({}),
                create_index: service.create_index,
                modify_index: service.modify_index,
            })
        })
        .collect()
}

/// Body of `/v1/catalog/services`: name → union of tags (first-seen order).
pub(crate) fn catalog_services(dc: &Dc) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for service in dc.services.values() {
        let tags = out.entry(&service.service).or_default();
        for tag in &service.tags {
            if !tags.contains(&tag.as_str()) {
                tags.push(tag);
            }
        }
    }
    out
}

/// Body of `/v1/catalog/node/:node` (`None` renders as `null`).
pub(crate) fn catalog_node(dc: &Dc, node_name: &str) -> Option<Value> {
    let node = dc.nodes.get(node_name)?;
    let mut services = serde_json::Map::new();
    for service in dc.services.values().filter(|s| s.node == node_name) {
        services.insert(
            service.id.clone(),
            serde_json::to_value(ServiceJson::new(service)).ok()?,
        );
    }
    Some(json!({
        "Node": serde_json::to_value(NodeJson::new(node, &dc.name)).ok()?,
        "Services": services,
    }))
}

/// One `structs.DirEntry`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvJson<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> KvJson<'a> {
    pub(crate) fn new(entry: &'a KvEntry) -> Self {
        Self {
            lock_index: entry.lock_index,
            key: &entry.key,
            flags: entry.flags,
            value: (!entry.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&entry.value)),
            session: entry.session.as_deref(),
            create_index: entry.create_index,
            modify_index: entry.modify_index,
        }
    }
}

/// One `structs.Session`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SessionJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    node: &'a str,
    /// Nanoseconds, as Go marshals `time.Duration`.
    lock_delay: u64,
    behavior: &'a str,
    #[serde(rename = "TTL")]
    ttl: String,
    node_checks: &'a [String],
    service_checks: Option<Vec<Value>>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> SessionJson<'a> {
    pub(crate) fn new(session: &'a Session) -> Self {
        Self {
            id: &session.id,
            name: &session.name,
            node: &session.node,
            lock_delay: u64::try_from(session.lock_delay.as_nanos()).unwrap_or(u64::MAX),
            behavior: session.behavior.as_str(),
            ttl: session.ttl.map(format_go_duration).unwrap_or_default(),
            node_checks: &session.node_checks,
            service_checks: None,
            create_index: session.create_index,
            modify_index: session.modify_index,
        }
    }
}
