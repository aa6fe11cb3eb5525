//! Answers for names in the Consul domain, built from catalog data.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use dnsfront_catalog::{Addresses, Freshness, Lookup, Node, ServiceInstance, Witness};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::backend::CatalogView;
use crate::config::{Config, ServiceTtls, ttl_secs};
use crate::name::{self, ConsulName};

/// Where the data behind a reply came from (the `source` metric tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Fresh catalog data.
    Fresh,
    /// Stale catalog data (Consul unreachable).
    Stale,
    /// The KV-distributed hosts snapshot (Consul unreachable, nothing cached).
    Snapshot,
    /// An upstream resolver, just now.
    Upstream,
    /// The forwarder's response cache.
    Cache,
    /// The local hosts files.
    Local,
    /// A forwarding policy answered without asking upstream (`domain_needed`,
    /// `bogus_priv`) or emptied the answer (`rebind_protection`).
    Policy,
    /// The Consul agent's DNS interface (a Consul form dnsfront does not answer itself).
    Agent,
    /// No data source (synthesised, invalid name, failure).
    None,
}

impl Source {
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Stale => "stale",
            Self::Snapshot => "snapshot",
            Self::Upstream => "upstream",
            Self::Cache => "cache",
            Self::Local => "local",
            Self::Policy => "policy",
            Self::Agent => "agent",
            Self::None => "none",
        }
    }

    pub(crate) fn from_freshness(freshness: Freshness) -> Self {
        match freshness {
            Freshness::Fresh => Self::Fresh,
            Freshness::Stale => Self::Stale,
            Freshness::Snapshot => Self::Snapshot,
        }
    }

    /// Stale cache or snapshot: short TTL and EDE 3 (Stale Answer).
    pub(crate) fn is_degraded(self) -> bool {
        matches!(self, Self::Stale | Self::Snapshot)
    }
}

/// A response before encoding.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) response_code: ResponseCode,
    pub(crate) authoritative: bool,
    pub(crate) authentic_data: bool,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) additionals: Vec<Record>,
    pub(crate) source: Source,
    /// The fresh catalog data the reply was built from, for the fast path to
    /// check a cached copy against (`None`: not from a catalog lookup).
    pub(crate) basis: Option<Arc<Basis>>,
}

/// A fresh catalog lookup an answer was built from: a cached copy of the
/// answer stays valid while the same lookup still gives the same data, fresh.
#[derive(Debug)]
pub(crate) struct Basis {
    lookup: BasisLookup,
    /// The catalog's cheap re-check of the same data, when it offers one.
    witness: Option<Witness>,
}

#[derive(Debug)]
enum BasisLookup {
    /// `<name>.service[.<dc>]`: the instance list (`None`: not found).
    Service {
        name: String,
        datacenter: Option<String>,
        data: Option<Arc<[ServiceInstance]>>,
    },
    /// `<name>.node[.<dc>]`: the node (`None`: not found).
    Node {
        name: String,
        datacenter: Option<String>,
        data: Option<Arc<Node>>,
    },
}

impl Basis {
    fn service<C: CatalogView>(
        catalog: &C,
        name: String,
        datacenter: Option<String>,
        lookup: Lookup<Arc<[ServiceInstance]>>,
    ) -> Option<Arc<Self>> {
        let data = lookup.into_fresh()?;
        let witness = catalog.service_witness(&name, datacenter.as_deref(), data.as_ref());
        Some(Arc::new(Self {
            lookup: BasisLookup::Service {
                name,
                datacenter,
                data,
            },
            witness,
        }))
    }

    fn node<C: CatalogView>(
        catalog: &C,
        name: String,
        datacenter: Option<String>,
        lookup: Lookup<Arc<Node>>,
    ) -> Option<Arc<Self>> {
        let data = lookup.into_fresh()?;
        let witness = catalog.node_witness(&name, datacenter.as_deref(), data.as_ref());
        Some(Arc::new(Self {
            lookup: BasisLookup::Node {
                name,
                datacenter,
                data,
            },
            witness,
        }))
    }

    /// Whether `catalog` still gives the same data, fresh at `now`, without
    /// waiting: the witness when there is one, else the lookup polled once (a lookup
    /// that would wait counts as changed).
    pub(crate) fn still_holds<C: CatalogView>(&self, catalog: &C, now: Instant) -> bool {
        if let Some(witness) = &self.witness {
            return witness.holds_at(now);
        }
        match &self.lookup {
            BasisLookup::Service {
                name,
                datacenter,
                data,
            } => same_fresh(
                data,
                poll_once(catalog.service(name, datacenter.as_deref())),
            ),
            BasisLookup::Node {
                name,
                datacenter,
                data,
            } => same_fresh(data, poll_once(catalog.node(name, datacenter.as_deref()))),
        }
    }
}

/// Whether a lookup polled now (`None`: it would wait) still gives `data`, fresh:
/// the same allocation, or still a fresh negative.
fn same_fresh<T: ?Sized>(data: &Option<Arc<T>>, now: Option<Lookup<Arc<T>>>) -> bool {
    match now.and_then(Lookup::into_fresh) {
        Some(Some(now)) => data.as_ref().is_some_and(|data| Arc::ptr_eq(data, &now)),
        Some(None) => data.is_none(),
        None => false,
    }
}

/// Polls `future` once; `None` if it is not ready (it is then dropped).
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut context) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

impl Reply {
    pub(crate) fn empty(response_code: ResponseCode, authoritative: bool) -> Self {
        Self {
            response_code,
            authoritative,
            authentic_data: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            source: Source::None,
            basis: None,
        }
    }

    fn records_mut(&mut self) -> impl Iterator<Item = &mut Record> {
        self.answers
            .iter_mut()
            .chain(self.authorities.iter_mut())
            .chain(self.additionals.iter_mut())
    }
}

/// The Consul zone: answers names at or under the configured domain.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    domain: Name,
    mname: Name,
    rname: Name,
    service_ttls: ServiceTtls,
    node_ttl: u32,
    negative_ttl: u32,
    stale_ttl: u32,
    max_answer_records: Option<usize>,
    node_meta_txt: bool,
    translate_wan_addrs: bool,
}

/// The service every Consul server registers; its nodes are the zone's name servers.
const SERVERS_SERVICE: &str = "consul";
/// Name servers named in NS answers and under a SOA (Consul: 3, shuffled).
const MAX_NAMESERVERS: usize = 3;
/// Longest character-string in a TXT record (RFC 1035 §3.3).
const MAX_TXT_STRING: usize = 255;

impl Zone {
    pub(crate) fn new(config: &Config) -> Self {
        let mut domain = config.domain.to_lowercase();
        domain.set_fqdn(true);
        let prefixed = |label: &str| {
            Name::from_ascii(label)
                .and_then(|name| name.append_domain(&domain))
                .unwrap_or_else(|_| domain.clone())
        };
        Self {
            mname: prefixed("ns"),
            rname: prefixed("hostmaster"),
            service_ttls: ServiceTtls::new(config.service_ttl, &config.service_ttl_overrides),
            node_ttl: ttl_secs(config.node_ttl),
            negative_ttl: ttl_secs(config.negative_ttl),
            stale_ttl: ttl_secs(config.stale_ttl),
            max_answer_records: config.max_answer_records,
            node_meta_txt: config.node_meta_txt,
            translate_wan_addrs: config.translate_wan_addrs,
            domain,
        }
    }

    /// Whether `max_answer_records` may cut service answers.
    pub(crate) fn caps_answers(&self) -> bool {
        self.max_answer_records.is_some()
    }

    pub(crate) fn domain(&self) -> &Name {
        &self.domain
    }

    /// Answers `lower` (the lower-cased question name, inside the domain);
    /// `asked` is the name as the client wrote it, used as the owner name.
    pub(crate) async fn answer<C: CatalogView>(
        &self,
        catalog: &C,
        lower: &Name,
        asked: &Name,
        qtype: RecordType,
    ) -> Reply {
        let mut reply = self.answer_uncapped(catalog, lower, asked, qtype).await;
        if reply.source.is_degraded() {
            let cap = self.stale_ttl;
            for record in reply.records_mut() {
                record.ttl = record.ttl.min(cap);
            }
        }
        reply
    }

    async fn answer_uncapped<C: CatalogView>(
        &self,
        catalog: &C,
        lower: &Name,
        asked: &Name,
        qtype: RecordType,
    ) -> Reply {
        if qtype == RecordType::SOA {
            // As Consul: the SOA, the servers as NS in Authority, their addresses as glue.
            let mut reply = Reply::empty(ResponseCode::NoError, true);
            reply.answers.push(self.soa());
            if let Some((servers, glue, source)) = self.nameservers(catalog, asked).await {
                reply.authorities = servers;
                reply.additionals = glue;
                reply.source = source;
            }
            return reply;
        }
        if qtype == RecordType::NS {
            // As Consul (`handleQuery`, before the name is parsed): NS at any name
            // in the domain, existing or not, answers the apex's name servers.
            return match self.nameservers(catalog, asked).await {
                Some((servers, glue, source)) => {
                    let mut reply = Reply::empty(ResponseCode::NoError, true);
                    reply.answers = servers;
                    reply.additionals = glue;
                    reply.source = source;
                    reply
                }
                None => self.negative(ResponseCode::NoError, Source::None),
            };
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Reply::empty(ResponseCode::NotImp, true);
        }

        match name::parse_in_zone(&self.domain, lower, qtype) {
            ConsulName::Apex | ConsulName::Invalid => {
                self.negative(ResponseCode::NXDomain, Source::None)
            }
            // Reached only without `agent_dns` (the router asks the agent first).
            ConsulName::Fallback => Reply::empty(ResponseCode::ServFail, true),
            ConsulName::Addr(ip) => {
                let mut reply = Reply::empty(ResponseCode::NoError, true);
                if let Some(record) = address_record(asked.clone(), self.node_ttl, ip, qtype) {
                    reply.answers.push(record);
                }
                reply
            }
            ConsulName::Node { name, datacenter } => {
                let wan = self.uses_wan(catalog, datacenter.as_deref());
                let lookup = catalog.node(&name, datacenter.as_deref()).await;
                let mut reply = match &lookup {
                    Lookup::Unavailable => Reply::empty(ResponseCode::ServFail, true),
                    Lookup::NotFound(freshness) => {
                        self.negative(ResponseCode::NXDomain, Source::from_freshness(*freshness))
                    }
                    Lookup::Found(node, freshness) => {
                        self.node_reply(node, asked, qtype, wan, Source::from_freshness(*freshness))
                    }
                };
                reply.basis = Basis::node(catalog, name, datacenter, lookup);
                reply
            }
            ConsulName::Service {
                name,
                tag,
                datacenter,
            } => {
                let wan = self.uses_wan(catalog, datacenter.as_deref());
                let lookup = catalog.service(&name, datacenter.as_deref()).await;
                let mut reply = match &lookup {
                    Lookup::Unavailable => Reply::empty(ResponseCode::ServFail, true),
                    Lookup::NotFound(freshness) => {
                        self.negative(ResponseCode::NXDomain, Source::from_freshness(*freshness))
                    }
                    Lookup::Found(instances, freshness) => self.service_reply(
                        instances,
                        tag.as_deref(),
                        &name,
                        asked,
                        qtype,
                        wan,
                        Source::from_freshness(*freshness),
                    ),
                };
                reply.basis = Basis::service(catalog, name, datacenter, lookup);
                reply
            }
        }
    }

    /// Whether an answer for `datacenter` uses `wan` tagged addresses: under
    /// `translate_wan_addrs`, for a datacenter named in the question that is not the
    /// agent's (as far as the catalog knows it: an unknown one counts as another).
    fn uses_wan<C: CatalogView>(&self, catalog: &C, datacenter: Option<&str>) -> bool {
        self.translate_wan_addrs
            && datacenter.is_some_and(|datacenter| {
                catalog
                    .local_datacenter()
                    .is_none_or(|local| !local.eq_ignore_ascii_case(datacenter))
            })
    }

    /// A node lookup (Consul `nodeLookup`): A/AAAA/ANY from its addresses; its meta as
    /// TXT in the answer for TXT and ANY, in Additional for A/AAAA when
    /// `node_meta_txt` is on. A wrong family or another qtype: NOERROR, empty, no SOA.
    fn node_reply(
        &self,
        node: &Node,
        asked: &Name,
        qtype: RecordType,
        wan: bool,
        source: Source,
    ) -> Reply {
        let mut reply = Reply::empty(ResponseCode::NoError, true);
        reply.source = source;
        let addresses = node.addresses(wan);
        reply.answers.extend(
            family_ips(&addresses, qtype)
                .filter_map(|ip| address_record(asked.clone(), self.node_ttl, ip, qtype)),
        );
        // A node at a hostname: a CNAME the router follows, and nothing else at the
        // name (a CNAME owner holds no other data), so its meta goes to Additional.
        let alias = if reply.answers.is_empty()
            && let Some(record) = node
                .hostname
                .as_deref()
                .and_then(|host| alias_record(asked, self.node_ttl, host, qtype))
        {
            reply.answers.push(record);
            true
        } else {
            false
        };
        let meta = meta_records(asked, self.node_ttl, node.meta());
        match qtype {
            RecordType::TXT | RecordType::ANY if !alias => reply.answers.extend(meta),
            RecordType::A | RecordType::AAAA | RecordType::ANY if self.node_meta_txt => {
                reply.additionals.extend(meta);
            }
            _ => {}
        }
        reply
    }

    #[allow(clippy::too_many_arguments)]
    fn service_reply(
        &self,
        instances: &[ServiceInstance],
        tag: Option<&str>,
        service_name: &str,
        asked: &Name,
        qtype: RecordType,
        wan: bool,
        source: Source,
    ) -> Reply {
        let mut usable: Vec<(&ServiceInstance, Addresses)> = instances
            .iter()
            .filter(|instance| tag.is_none_or(|tag| instance.has_tag(tag)))
            .map(|instance| (instance, addresses_of(instance, asked, wan)))
            .filter(|(instance, addresses)| {
                addresses.primary.is_some() || hostname_target(instance, addresses).is_some()
            })
            .collect();
        if usable.is_empty() {
            return self.negative(ResponseCode::NXDomain, source);
        }
        usable.shuffle(&mut rand::rng());
        let ttl = self.service_ttls.for_service(service_name);

        let mut reply = Reply::empty(ResponseCode::NoError, true);
        reply.source = source;
        match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let mut seen = HashSet::new();
                for ip in usable
                    .iter()
                    .flat_map(|(_, addresses)| family_ips(addresses, qtype))
                {
                    if seen.insert(ip)
                        && let Some(record) = address_record(asked.clone(), ttl, ip, qtype)
                    {
                        reply.answers.push(record);
                    }
                }
                if let Some(max) = self.max_answer_records {
                    reply.answers.truncate(max);
                }
                // Hostname instances only when no IP instance answered (Consul
                // prefers addresses), and then one CNAME: a random instance's.
                if reply.answers.is_empty()
                    && let Some(record) = usable
                        .iter()
                        .filter(|(_, addresses)| addresses.primary.is_none())
                        .find_map(|(instance, _)| {
                            alias_record(asked, ttl, instance.hostname.as_deref()?, qtype)
                        })
                {
                    reply.answers.push(record);
                }
            }
            RecordType::SRV => {
                let mut seen = HashSet::new();
                let mut targets = HashSet::new();
                let mut meta_owners = HashSet::new();
                for (instance, addresses) in usable {
                    let node_name = self.node_name(&instance.datacenter, &instance.node);
                    // The node's name when the instance is reached at the node's own
                    // addresses (which its lookups give, both families); else the
                    // `.addr` name of the one address; for a hostname instance the
                    // hostname itself, without glue here: the router resolves it into
                    // Additional.
                    let (target, glue) = match (addresses.primary, &node_name) {
                        (Some(_), Some(node_name)) if addresses.at_node => (
                            Some(node_name.clone()),
                            family_ips(&addresses, RecordType::ANY).collect::<Vec<_>>(),
                        ),
                        (Some(ip), _) => (self.addr_name(&instance.datacenter, ip), vec![ip]),
                        (None, _) => (hostname_target(instance, &addresses), Vec::new()),
                    };
                    let Some(target) = target else {
                        continue;
                    };
                    let port = instance.srv_port(wan);
                    if !seen.insert((instance.node.as_str(), target.clone(), port)) {
                        continue;
                    }
                    let srv = SRV::new(1, instance.weight, port, target.clone());
                    reply
                        .answers
                        .push(Record::from_rdata(asked.clone(), ttl, RData::SRV(srv)));
                    if targets.insert(target.clone()) {
                        reply.additionals.extend(glue.into_iter().filter_map(|ip| {
                            address_record(target.clone(), ttl, ip, RecordType::ANY)
                        }));
                    }
                    // Node meta beside the addresses, owned by the node's name (as
                    // Consul, also for an `.addr` target).
                    if self.node_meta_txt
                        && let Some(node_name) = node_name
                        && meta_owners.insert(node_name.clone())
                    {
                        reply.additionals.extend(meta_records(
                            &node_name,
                            ttl,
                            instance.node_meta(),
                        ));
                    }
                }
            }
            // TXT deliberately gets NODATA (Consul 1.16 answers it with A records).
            _ => {}
        }
        if reply.answers.is_empty() {
            return self.negative(ResponseCode::NoError, source);
        }
        reply
    }

    /// The Consul servers (the `consul` service's nodes in the agent's datacenter) as
    /// NS records owned by the zone apex as the question spelled it, up to 3 in random
    /// order, with their addresses as glue; `None` when none is known.
    async fn nameservers<C: CatalogView>(
        &self,
        catalog: &C,
        asked: &Name,
    ) -> Option<(Vec<Record>, Vec<Record>, Source)> {
        let Lookup::Found(servers, freshness) = catalog.service(SERVERS_SERVICE, None).await else {
            return None;
        };
        // The apex as the question spelled it; a question in `alt_domain` (answered
        // in the main domain) gets the main apex, which the router moves back.
        let apex = if self.domain.zone_of(asked) {
            asked.trim_to(self.domain.iter().count())
        } else {
            self.domain.clone()
        };
        let mut servers: Vec<&ServiceInstance> = servers.iter().collect();
        servers.shuffle(&mut rand::rng());
        let (mut records, mut glue) = (Vec::new(), Vec::new());
        let mut named = HashSet::new();
        for server in servers {
            if records.len() == MAX_NAMESERVERS {
                break;
            }
            // Nodes whose names are not valid DNS names are skipped (as Consul).
            let Some(target) = self.node_name(&server.datacenter, &server.node) else {
                continue;
            };
            if !named.insert(target.clone()) {
                continue;
            }
            let ns = RData::NS(NS(target.clone()));
            records.push(Record::from_rdata(apex.clone(), self.node_ttl, ns));
            let addresses = server.addresses(false);
            glue.extend(family_ips(&addresses, RecordType::ANY).filter_map(|ip| {
                address_record(target.clone(), self.node_ttl, ip, RecordType::ANY)
            }));
        }
        if records.is_empty() {
            return None;
        }
        Some((records, glue, Source::from_freshness(freshness)))
    }

    /// `<node>.node.<dc>.<domain>` (lower-case), or `None` when the node name is not a
    /// valid DNS name.
    pub(crate) fn node_name(&self, datacenter: &str, node: &str) -> Option<Name> {
        self.kind_name(datacenter, node, "node")
    }

    /// `<service>.service.<dc>.<domain>` (lower-case), or `None` when not a valid name.
    pub(crate) fn service_name(&self, datacenter: &str, service: &str) -> Option<Name> {
        self.kind_name(datacenter, service, "service")
    }

    fn kind_name(&self, datacenter: &str, name: &str, kind: &str) -> Option<Name> {
        let name = name.to_ascii_lowercase();
        let target = Name::from_ascii(format!(
            "{name}.{kind}.{}{}",
            datacenter_labels(datacenter),
            self.domain.to_ascii()
        ))
        .ok()?;
        (target.is_fqdn() && target.iter().all(|label| !label.is_empty())).then_some(target)
    }

    /// `<hex>.addr.<dc>.<domain>` for `ip`.
    fn addr_name(&self, datacenter: &str, ip: IpAddr) -> Option<Name> {
        let hex = name::encode_hex_addr(ip);
        Name::from_ascii(format!(
            "{hex}.addr.{}{}",
            datacenter_labels(datacenter),
            self.domain.to_ascii()
        ))
        .ok()
    }

    /// NXDOMAIN or NODATA with the SOA in Authority.
    fn negative(&self, response_code: ResponseCode, source: Source) -> Reply {
        let mut reply = Reply::empty(response_code, true);
        reply.source = source;
        reply.authorities.push(self.soa());
        reply
    }

    fn soa(&self) -> Record {
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs() as u32)
            .unwrap_or(1);
        let soa = SOA::new(
            self.mname.clone(),
            self.rname.clone(),
            serial,
            3600,
            600,
            86400,
            self.negative_ttl,
        );
        Record::from_rdata(self.domain.clone(), self.negative_ttl, RData::SOA(soa))
    }
}

/// The hostname an instance is reached at, as a DNS name, when it has no address to
/// answer with (`addresses` from [`addresses_of`]).
fn hostname_target(instance: &ServiceInstance, addresses: &Addresses) -> Option<Name> {
    addresses.primary.is_none().then_some(())?;
    hostname_name(instance.hostname.as_deref()?)
}

/// The addresses an instance is answered with ([`ServiceInstance::addresses`]); for an
/// instance registered at the very hostname asked (`db.service.consul` for `db`), its
/// node's, as Consul does instead of a CNAME to itself.
fn addresses_of(instance: &ServiceInstance, asked: &Name, wan: bool) -> Addresses {
    let addresses = instance.addresses(wan);
    if addresses.primary.is_some() {
        return addresses;
    }
    let self_named = instance
        .hostname
        .as_deref()
        .and_then(hostname_name)
        .is_some_and(|hostname| hostname == *asked);
    match instance.node_address {
        Some(ip) if self_named => Addresses {
            v4: match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            },
            v6: match ip {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            },
            primary: Some(ip),
            at_node: true,
        },
        _ => addresses,
    }
}

/// A registered hostname (`db.example.com`, with or without the final dot) as a
/// fully qualified name; `None` when it is not a valid DNS name.
fn hostname_name(host: &str) -> Option<Name> {
    let mut name = Name::from_ascii(host).ok()?;
    name.set_fqdn(true);
    (name.num_labels() > 0).then_some(name)
}

/// The CNAME from `asked` to a hostname address, when `qtype` asks for
/// addresses (A, AAAA, ANY); the router then follows it.
fn alias_record(asked: &Name, ttl: u32, host: &str, qtype: RecordType) -> Option<Record> {
    if !matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
        return None;
    }
    let target = hostname_name(host)?;
    Some(Record::from_rdata(
        asked.clone(),
        ttl,
        RData::CNAME(CNAME(target)),
    ))
}

/// `<dc>.` (lower-case), or nothing when Consul gave no datacenter.
fn datacenter_labels(datacenter: &str) -> String {
    if datacenter.is_empty() {
        String::new()
    } else {
        format!("{}.", datacenter.to_ascii_lowercase())
    }
}

/// The addresses of `addresses` that `qtype` asks for: the IPv4 one for A, the IPv6
/// one for AAAA, both for ANY (and for SRV glue).
fn family_ips(addresses: &Addresses, qtype: RecordType) -> impl Iterator<Item = IpAddr> + use<> {
    let v4 = matches!(qtype, RecordType::A | RecordType::ANY)
        .then_some(addresses.v4)
        .flatten()
        .map(IpAddr::V4);
    let v6 = matches!(qtype, RecordType::AAAA | RecordType::ANY)
        .then_some(addresses.v6)
        .flatten()
        .map(IpAddr::V6);
    v4.into_iter().chain(v6)
}

/// Node metadata as TXT records owned by `owner`, one per key, in key order.
fn meta_records<'m>(
    owner: &'m Name,
    ttl: u32,
    meta: &'m [(String, String)],
) -> impl Iterator<Item = Record> + 'm {
    meta.iter().map(move |(key, value)| {
        let txt = meta_txt(key, value);
        Record::from_rdata(owner.clone(), ttl, RData::TXT(txt))
    })
}

/// One meta entry as TXT (Consul `generateMeta`): RFC 1464 `key=value`, or the value
/// alone for a key starting with `rfc1035-` (any case). Text past 255 bytes continues
/// in further character-strings of the same record.
pub(crate) fn meta_txt(key: &str, value: &str) -> TXT {
    let raw = key
        .get(..8)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("rfc1035-"));
    let text = if raw {
        value.to_owned()
    } else {
        rfc1464(key, value)
    };
    let mut strings: Vec<&[u8]> = text.as_bytes().chunks(MAX_TXT_STRING).collect();
    if strings.is_empty() {
        strings.push(b"");
    }
    TXT::from_bytes(strings)
}

/// RFC 1464 §2 `key=value`: in the key, a backquote, `=` and leading or trailing
/// spaces are quoted with a backquote; in the value, a backquote.
fn rfc1464(key: &str, value: &str) -> String {
    let key = key.replace('`', "``").replace('=', "`=");
    let body = key.trim_matches(' ');
    let leading = key.len() - key.trim_start_matches(' ').len();
    let trailing = if body.is_empty() {
        0
    } else {
        key.len() - key.trim_end_matches(' ').len()
    };
    let mut text = "` ".repeat(leading);
    text.push_str(body);
    text.push_str(&"` ".repeat(trailing));
    text.push('=');
    text.push_str(&value.replace('`', "``"));
    text
}

/// An A or AAAA record for `ip` when `qtype` asks for its family (ANY asks for both).
pub(crate) fn address_record(
    owner: Name,
    ttl: u32,
    ip: IpAddr,
    qtype: RecordType,
) -> Option<Record> {
    let rdata = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(owner, ttl, rdata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(txt: &TXT) -> Vec<String> {
        txt.txt_data
            .iter()
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect()
    }

    /// Consul's `encodeKVasRFC1464` cases (agent/dns_test.go `TestDNS_TXT_RFC1464`).
    #[test]
    fn meta_is_rfc1464_text_and_rfc1035_keys_give_the_value() {
        for (key, value, expected) in [
            ("key", "value", "key=value"),
            ("k=y", "v=l", "k`=y=v=l"),
            ("k`y", "v`l", "k``y=v``l"),
            (" key ", " value ", "` key` = value "),
            ("  ", "v", "` ` =v"),
            ("consul-network-segment", "", "consul-network-segment="),
            ("rfc1035-location", "rack 12", "rack 12"),
            ("RFC1035-x", "raw=`", "raw=`"),
            ("rfc1035-", "", ""),
        ] {
            assert_eq!(text(&meta_txt(key, value)), [expected], "{key:?}={value:?}");
        }
    }

    #[test]
    fn long_meta_continues_in_further_strings_of_one_record() {
        let txt = meta_txt("k", &"v".repeat(600));
        let parts = text(&txt);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|part| part.len() <= MAX_TXT_STRING));
        assert_eq!(parts.concat(), format!("k={}", "v".repeat(600)));
        // Multi-byte characters may be split across strings, bytes are kept.
        let txt = meta_txt("rfc1035-k", &"é".repeat(200));
        let bytes: Vec<u8> = txt.txt_data.iter().flat_map(|part| part.to_vec()).collect();
        assert_eq!(bytes, "é".repeat(200).into_bytes());
    }
}
