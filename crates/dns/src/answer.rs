//! Answers for names in the Consul domain, built from catalog data.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use dnsfront_catalog::{Freshness, Lookup, Node, ServiceInstance, Witness};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
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

    fn from_freshness(freshness: Freshness) -> Self {
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
}

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
            let mut reply = Reply::empty(ResponseCode::NoError, true);
            reply.answers.push(self.soa());
            return reply;
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Reply::empty(ResponseCode::NotImp, true);
        }

        match name::parse_in_zone(&self.domain, lower, qtype) {
            ConsulName::Apex if qtype == RecordType::NS => {
                self.negative(ResponseCode::NoError, Source::None)
            }
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
                let lookup = catalog.node(&name, datacenter.as_deref()).await;
                let mut reply =
                    match &lookup {
                        Lookup::Unavailable => Reply::empty(ResponseCode::ServFail, true),
                        Lookup::NotFound(freshness) => self
                            .negative(ResponseCode::NXDomain, Source::from_freshness(*freshness)),
                        Lookup::Found(node, freshness) => {
                            // Wrong family or another qtype: NOERROR, empty, no SOA (as Consul).
                            let mut reply = Reply::empty(ResponseCode::NoError, true);
                            reply.source = Source::from_freshness(*freshness);
                            if let Some(record) = node.address.and_then(|ip| {
                                address_record(asked.clone(), self.node_ttl, ip, qtype)
                            }) {
                                reply.answers.push(record);
                            } else if let Some(record) = node
                                .hostname
                                .as_deref()
                                .and_then(|host| alias_record(asked, self.node_ttl, host, qtype))
                            {
                                reply.answers.push(record);
                            }
                            reply
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
                        Source::from_freshness(*freshness),
                    ),
                };
                reply.basis = Basis::service(catalog, name, datacenter, lookup);
                reply
            }
        }
    }

    fn service_reply(
        &self,
        instances: &[ServiceInstance],
        tag: Option<&str>,
        service_name: &str,
        asked: &Name,
        qtype: RecordType,
        source: Source,
    ) -> Reply {
        let mut usable: Vec<&ServiceInstance> = instances
            .iter()
            .filter(|instance| tag.is_none_or(|tag| instance.has_tag(tag)))
            .filter(|instance| {
                address_of(instance, asked).is_some() || hostname_target(instance, asked).is_some()
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
                    .filter_map(|instance| address_of(instance, asked))
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
                        .filter(|instance| address_of(instance, asked).is_none())
                        .find_map(|instance| {
                            alias_record(asked, ttl, instance.hostname.as_deref()?, qtype)
                        })
                {
                    reply.answers.push(record);
                }
            }
            RecordType::SRV => {
                let mut seen = HashSet::new();
                let mut targets = HashSet::new();
                for instance in usable {
                    // A hostname instance's target is the hostname itself, without
                    // glue here: the router resolves it into Additional.
                    let (target, ip) = match address_of(instance, asked) {
                        Some(ip) => (self.srv_target(instance, ip), Some(ip)),
                        None => (hostname_target(instance, asked), None),
                    };
                    let Some(target) = target else {
                        continue;
                    };
                    if !seen.insert((instance.node.as_str(), target.clone(), instance.port)) {
                        continue;
                    }
                    let srv = SRV::new(1, instance.weight, instance.port, target.clone());
                    reply
                        .answers
                        .push(Record::from_rdata(asked.clone(), ttl, RData::SRV(srv)));
                    if targets.insert(target.clone())
                        && let Some(glue) =
                            ip.and_then(|ip| address_record(target, ttl, ip, RecordType::ANY))
                    {
                        reply.additionals.push(glue);
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

    /// `<node>.node.<dc>.<domain>` when the instance uses its node's address,
    /// `<hex>.addr.<dc>.<domain>` when it has its own service address (or the
    /// node name is not a valid DNS name).
    fn srv_target(&self, instance: &ServiceInstance, ip: IpAddr) -> Option<Name> {
        let datacenter = if instance.datacenter.is_empty() {
            String::new()
        } else {
            format!("{}.", instance.datacenter.to_ascii_lowercase())
        };
        let domain = self.domain.to_ascii();
        if instance.uses_node_address() {
            let node = instance.node.to_ascii_lowercase();
            if let Ok(target) = Name::from_ascii(format!("{node}.node.{datacenter}{domain}"))
                && target.is_fqdn()
                && target.iter().all(|label| !label.is_empty())
            {
                return Some(target);
            }
        }
        let hex = name::encode_hex_addr(ip);
        Name::from_ascii(format!("{hex}.addr.{datacenter}{domain}")).ok()
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

/// The hostname an instance is reached at, as a DNS name, when its address is one.
fn hostname_target(instance: &ServiceInstance, asked: &Name) -> Option<Name> {
    address_of(instance, asked).is_none().then_some(())?;
    hostname_name(instance.hostname.as_deref()?)
}

/// The instance's IP address; for an instance registered at the very name
/// asked (`db.service.consul` for `db`), its node's, as Consul does instead
/// of a CNAME to itself.
fn address_of(instance: &ServiceInstance, asked: &Name) -> Option<IpAddr> {
    instance.address().or_else(|| {
        let hostname = hostname_name(instance.hostname.as_deref()?)?;
        (hostname == *asked).then_some(instance.node_address)?
    })
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
