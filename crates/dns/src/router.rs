//! The request handler: routes a question to the Consul zone, the local hosts
//! files or the forwarder, then encodes the reply within the transport's size limit.

use std::iter;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dnsfront_catalog::View;
use dnsfront_forward::{Forwarder, Source as ForwardSource};
use dnsfront_hosts::LocalHosts;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::rdata::HINFO;
use hickory_server::proto::rr::rdata::opt::EdnsOption;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::time::Instant;
use tracing::{info, trace};

use crate::alias::{self, Section};
use crate::answer::{Basis, Reply, Source, Zone};
use crate::backend::{CatalogView, Upstream};
use crate::config::{Config, ttl_secs};
use crate::encode::Response;
use crate::explain::Explanation;
use crate::fallback::Fallback;
use crate::fast::FastCache;
use crate::local;
use crate::metrics::{
    REQUEST_DURATION_SECONDS, REQUESTS, RESPONSES, TRUNCATED, proto_tag, qtype_tag, rcode_name,
    rcode_tag,
};
use crate::name::{self, ConsulName};
use crate::trim;

/// RFC 8914 Extended DNS Error option code.
const EDE_OPTION_CODE: u16 = 15;
/// RFC 8914 INFO-CODE 3, "Stale Answer".
const EDE_STALE_ANSWER: u16 = 3;
/// RFC 1035 §4.2.1: the UDP limit for clients without EDNS.
const PLAIN_UDP_LIMIT: u16 = 512;
/// TTL of the RFC 8482 HINFO answer to ANY (an hour: it never changes).
const ANY_HINFO_TTL: u32 = 3600;
/// Log target of the per-query log.
const QUERY_LOG_TARGET: &str = "dnsfront::query";

/// The DNS front's request handler (implements hickory's [`RequestHandler`]).
///
/// Names at or under the Consul domain are answered from the catalog and are
/// never forwarded; names in the local hosts files (if any) are answered from
/// them; everything else goes to the forwarder. Clones share everything,
/// including [`reload`](Self::reload)ed settings.
pub struct Router<C = View, F = Forwarder> {
    inner: Arc<Inner<C, F>>,
}

struct Inner<C, F> {
    settings: ArcSwap<Settings>,
    /// The UDP fast path's wire answer cache (cleared by `reload`).
    fast: FastCache,
    catalog: C,
    forwarder: Option<F>,
    hosts: Option<LocalHosts>,
}

/// Everything [`Router::reload`] can change, swapped as one.
struct Settings {
    zone: Zone,
    /// Consul's `alt_domain` (lower-case FQDN): answered like `zone`'s domain.
    alt_domain: Option<Name>,
    /// The agent's DNS interface, for the Consul forms we do not answer ourselves.
    fallback: Option<Fallback>,
    max_udp_payload: u16,
    /// Consul's `udp_answer_limit` (`None`: as many as fit).
    udp_answer_limit: Option<usize>,
    local_ttl: u32,
    /// `Some(sample fraction)` when the query log is on.
    query_log: Option<f64>,
}

impl Settings {
    fn new(config: &Config) -> Self {
        let query_log = config.query_log.enabled.then(|| {
            let sample = config.query_log.sample;
            if sample.is_nan() {
                0.0
            } else {
                sample.clamp(0.0, 1.0)
            }
        });
        let alt_domain = config.alt_domain.as_ref().map(|alt| {
            let mut alt = alt.to_lowercase();
            alt.set_fqdn(true);
            alt
        });
        Self {
            zone: Zone::new(config),
            alt_domain,
            fallback: config.agent_dns.map(|server| Fallback {
                server,
                timeout: config.agent_dns_timeout,
            }),
            max_udp_payload: config.max_udp_payload.max(PLAIN_UDP_LIMIT),
            udp_answer_limit: config.udp_answer_limit,
            local_ttl: ttl_secs(config.local_ttl),
            query_log,
        }
    }

    /// The OPT we attach for an EDNS client: our payload limit, the client's DO bit.
    fn response_edns(&self, request_edns: &Edns) -> Edns {
        let mut edns = Edns::new();
        let payload = request_edns
            .max_payload()
            .clamp(PLAIN_UDP_LIMIT, self.max_udp_payload);
        edns.set_max_payload(payload);
        edns.set_dnssec_ok(request_edns.flags().dnssec_ok);
        edns
    }
}

impl<C, F> Clone for Router<C, F> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Router {
    /// Builds the router over the production catalog view (cache, then hosts
    /// snapshot) and forwarder (`None`: names outside the Consul domain get SERVFAIL).
    pub fn new(config: Config, catalog: View, forwarder: Option<Forwarder>) -> Self {
        Self::with_backends(config, catalog, forwarder)
    }
}

/// Which part answered, plus a remark for `explain`.
struct Routed {
    zone: &'static str,
    reply: Reply,
    note: Option<Note>,
}

/// Why the forwarder gave no answer, or that the Consul agent's DNS did
/// (kept as data: formatted only by `explain`).
enum Note {
    NoForwarder,
    ForwardFailed(dnsfront_forward::Error),
    /// A Consul form dnsfront does not answer itself, asked of the agent's DNS.
    Fallback {
        server: SocketAddr,
        failure: Option<dnsfront_forward::AttemptError>,
    },
    /// Such a form, with `dns.agent_dns` off.
    NoFallback,
}

impl Note {
    fn describe(&self) -> String {
        match self {
            Self::NoForwarder => "no upstream resolvers configured: SERVFAIL".to_owned(),
            Self::ForwardFailed(error) => format!("forwarding failed: {error}"),
            Self::Fallback {
                server,
                failure: None,
            } => format!(
                "a Consul form dnsfront does not answer itself: answered by the Consul agent's DNS at {server} (dns.agent_dns)"
            ),
            Self::Fallback {
                server,
                failure: Some(error),
            } => format!(
                "a Consul form dnsfront does not answer itself: the Consul agent's DNS at {server} (dns.agent_dns) failed ({error}): SERVFAIL"
            ),
            Self::NoFallback => {
                "a Consul form dnsfront does not answer itself, and dns.agent_dns is off: SERVFAIL"
                    .to_owned()
            }
        }
    }
}

impl<C: CatalogView, F: Upstream> Router<C, F> {
    /// Builds the router over any catalog view and upstream (tests use fakes).
    pub fn with_backends(config: Config, catalog: C, forwarder: Option<F>) -> Self {
        Self {
            inner: Arc::new(Inner {
                fast: FastCache::new(!config.query_log.enabled),
                settings: ArcSwap::from_pointee(Settings::new(&config)),
                catalog,
                forwarder,
                hosts: None,
            }),
        }
    }

    /// Answers names listed in `hosts` (outside the Consul domain) from them,
    /// authoritatively, before forwarding. Call it while building: the result
    /// no longer shares state with clones made earlier.
    pub fn with_local_hosts(self, hosts: LocalHosts) -> Self {
        let inner = &*self.inner;
        Self {
            inner: Arc::new(Inner {
                fast: FastCache::new(inner.fast.enabled()),
                settings: ArcSwap::new(inner.settings.load_full()),
                catalog: inner.catalog.clone(),
                forwarder: inner.forwarder.clone(),
                hosts: Some(hosts),
            }),
        }
    }

    /// Applies new answer settings at once (TTLs, overrides, the domain, max
    /// answers, the query log, the UDP payload limit) for every clone of this
    /// router, without dropping queries in flight (they finish with the old
    /// settings). Every key of [`Config`] is live.
    pub fn reload(&self, config: Config) {
        self.inner.settings.store(Arc::new(Settings::new(&config)));
        self.inner.fast.reset(!config.query_log.enabled);
    }

    /// The UDP fast path's answer cache.
    pub(crate) fn fast(&self) -> &FastCache {
        &self.inner.fast
    }

    /// The catalog view answers are built from.
    pub(crate) fn catalog(&self) -> &C {
        &self.inner.catalog
    }

    /// Routes `name`/`qtype` exactly like a query (it may hit the caches and
    /// Consul as a query would) and says where the answer came from.
    pub async fn explain(&self, name: &str, qtype: RecordType) -> Explanation {
        // ASCII names keep their case (owner names echo it); others go through IDNA.
        let parsed = if name.is_ascii() {
            Name::from_ascii(name)
        } else {
            Name::from_utf8(name)
        };
        let mut asked = match parsed {
            Ok(asked) => asked,
            Err(error) => return Explanation::invalid_name(error.to_string()),
        };
        asked.set_fqdn(true);
        let lower = asked.to_lowercase();
        let query = Query::query(asked, qtype);
        let settings = self.inner.settings.load_full();
        // As a query from an EDNS client (as `dig` sends): no plain-DNS caps.
        let routed = self.route(&settings, &lower, &query, false, true).await;
        Explanation::new(
            routed.zone,
            &routed.reply,
            routed.note.as_ref().map(Note::describe),
        )
    }

    /// The Consul name a question for `name`/`qtype` asks for, parsed by the
    /// grammar and the live domain a query is answered with; `None` when such
    /// a query is not answered by the Consul zone (outside the domain, or in a
    /// zone a `forward.rules` entry sends upstream). No I/O.
    pub fn consul_name(&self, name: &Name, qtype: RecordType) -> Option<ConsulName> {
        let mut lower = name.to_lowercase();
        lower.set_fqdn(true);
        let settings = self.inner.settings.load();
        self.consul_domain(&settings, &lower)
            .map(|domain| name::parse_in_zone(domain, &lower, qtype))
    }

    /// The Consul domain that answers `lower` (the lower-cased question
    /// name): the main one or `alt_domain` (the longer when both contain it),
    /// unless a `forward.rules` zone sends the name upstream.
    fn consul_domain<'s>(&self, settings: &'s Settings, lower: &Name) -> Option<&'s Name> {
        let main = settings.zone.domain();
        let domain = match &settings.alt_domain {
            Some(alt)
                if alt.zone_of(lower)
                    && !(main.zone_of(lower) && main.num_labels() > alt.num_labels()) =>
            {
                alt
            }
            _ if main.zone_of(lower) => main,
            _ => return None,
        };
        let forwarded_by_rule = self
            .inner
            .forwarder
            .as_ref()
            .is_some_and(|forwarder| forwarder.has_rule_for(lower));
        (!forwarded_by_rule).then_some(domain)
    }

    /// The routing shared by queries and `explain`: `lower` is the lower-cased
    /// question name, `query` the question as the client wrote it;
    /// `client_edns` whether the client sent an OPT (without one, a hostname
    /// chain in a service answer is cut as Consul cuts it).
    async fn route(
        &self,
        settings: &Settings,
        lower: &Name,
        query: &Query,
        dnssec_ok: bool,
        client_edns: bool,
    ) -> Routed {
        let qtype = query.query_type();
        if let Some(domain) = self.consul_domain(settings, lower) {
            let (reply, note) = self
                .consul_answer(settings, domain, lower, query.name(), qtype, client_edns, 0)
                .await;
            return Routed {
                zone: "consul",
                reply,
                note,
            };
        }
        if let Some(hosts) = &self.inner.hosts
            && !hosts.is_empty()
            && let Some(lookup) = hosts.lookup(&lower.to_ascii())
        {
            return Routed {
                zone: "local",
                reply: local::reply(&lookup, query.name(), qtype, settings.local_ttl),
                note: None,
            };
        }
        if let Some(routed) = self.reverse_consul_address(settings, lower, query) {
            return routed;
        }
        if query.query_type() == RecordType::ANY {
            return Routed {
                zone: "forward",
                reply: minimal_any(query.name()),
                note: None,
            };
        }
        let (reply, note) = self.forward(query, dnssec_ok).await;
        Routed {
            zone: "forward",
            reply,
            note,
        }
    }

    /// A PTR question for an address the catalog knows (a node's, a service's),
    /// answered from the Consul zone before the forwarder (and its `bogus_priv`
    /// policy) sees it; `None` for any other question or address. Local hosts files
    /// were asked first: the operator's own entries win, as for forward names.
    fn reverse_consul_address(
        &self,
        settings: &Settings,
        lower: &Name,
        query: &Query,
    ) -> Option<Routed> {
        if query.query_type() != RecordType::PTR {
            return None;
        }
        let reply = settings
            .zone
            .reverse(&self.inner.catalog, lower, query.name())?;
        Some(Routed {
            zone: "consul",
            reply,
            note: None,
        })
    }

    async fn forward(&self, query: &Query, dnssec_ok: bool) -> (Reply, Option<Note>) {
        let Some(forwarder) = &self.inner.forwarder else {
            return (
                Reply::empty(ResponseCode::ServFail, false),
                Some(Note::NoForwarder),
            );
        };
        match forwarder.resolve(query, dnssec_ok).await {
            Ok(answer) => {
                let asked = query.name();
                let mut answers = answer.answers;
                // Echo the question's case in owner names, whatever case the cache holds.
                for record in &mut answers {
                    if record.name == *asked {
                        record.name = asked.clone();
                    }
                }
                let reply = Reply {
                    response_code: answer.response_code,
                    authoritative: false,
                    authentic_data: answer.authentic_data,
                    answers,
                    authorities: answer.authorities,
                    additionals: answer.additionals,
                    source: match answer.source {
                        ForwardSource::Cache => Source::Cache,
                        ForwardSource::Upstream => Source::Upstream,
                        // RFC 8767 serve-stale: the forwarder already set the 30 s TTL;
                        // `Stale` adds EDE 3 like a stale catalog answer.
                        ForwardSource::Stale => Source::Stale,
                        ForwardSource::Policy(_) => Source::Policy,
                    },
                    basis: None,
                };
                (reply, None)
            }
            Err(error) => {
                trace!(error = %error, "forwarding failed");
                (
                    Reply::empty(ResponseCode::ServFail, false),
                    Some(Note::ForwardFailed(error)),
                )
            }
        }
    }
}

// === impl Router: the Consul zone's aliases and fallback ===

/// A boxed answer future (the hostname chain recurses through it).
type ConsulAnswer<'a> = Pin<Box<dyn Future<Output = (Reply, Option<Note>)> + Send + 'a>>;

impl<C: CatalogView, F: Upstream> Router<C, F> {
    /// Answers `lower` (lower-cased, inside `domain`, the main Consul domain or
    /// `alt_domain`; `asked` as the client wrote it): a form we do not answer
    /// ourselves goes to the agent's DNS, the others to the catalog (in the
    /// main domain, names moved back to the asked one), then hostname
    /// addresses are resolved. `depth` counts Consul names followed so far.
    #[allow(clippy::too_many_arguments)]
    fn consul_answer<'a>(
        &'a self,
        settings: &'a Settings,
        domain: &'a Name,
        lower: &'a Name,
        asked: &'a Name,
        qtype: RecordType,
        client_edns: bool,
        depth: u8,
    ) -> ConsulAnswer<'a> {
        Box::pin(async move {
            let main = settings.zone.domain();
            // In `alt_domain`: the same question in the main domain, and the
            // domain as the question wrote it (owners and targets go back there).
            let moved = (domain != main).then(|| {
                let asked_domain = asked.trim_to(domain.iter().count());
                (alias::rebase(lower, domain, main), asked_domain)
            });
            let question = moved.as_ref().map_or(lower, |(question, _)| question);
            let parsed = name::parse_in_zone(main, question, qtype);
            // SOA and NS are answered here at every name, as Consul answers them
            // before reading the name.
            if parsed == ConsulName::Fallback && !matches!(qtype, RecordType::SOA | RecordType::NS)
            {
                let Some(fallback) = &settings.fallback else {
                    return (
                        Reply::empty(ResponseCode::ServFail, false),
                        Some(Note::NoFallback),
                    );
                };
                let (mut reply, failure) = match fallback.ask(question, qtype).await {
                    Ok(reply) => (reply, None),
                    Err(error) => {
                        trace!(error = %error, "the Consul agent's DNS failed");
                        (Reply::empty(ResponseCode::ServFail, false), Some(error))
                    }
                };
                if let Some((_, asked_domain)) = &moved {
                    alias::rebase_reply(&mut reply, main, asked_domain);
                }
                alias::echo_owner(&mut reply, lower, asked);
                let note = Note::Fallback {
                    server: fallback.server,
                    failure,
                };
                return (reply, Some(note));
            }
            let mut reply = settings
                .zone
                .answer(&self.inner.catalog, question, asked, qtype)
                .await;
            if let Some((_, asked_domain)) = &moved {
                alias::rebase_reply(&mut reply, main, asked_domain);
            }
            // Consul's `maxRecurseRecords`: a plain-DNS client gets at most 5
            // records of each hostname's chain in a service answer.
            let chain_limit = (!client_edns && matches!(parsed, ConsulName::Service { .. }))
                .then_some(alias::MAX_CHAIN_RECORDS_WITHOUT_EDNS);
            self.resolve_hostnames(settings, &mut reply, qtype, client_edns, chain_limit, depth)
                .await;
            (reply, None)
        })
    }

    /// Appends the records of the hostnames `reply` points at (CNAME targets
    /// to Answer, SRV targets to Additional): Consul names answered here, at
    /// most [`alias::MAX_DEPTH`] levels deep; other names through the
    /// forwarder, as it answers them. A hostname that cannot be resolved
    /// leaves its CNAME or SRV without records, as in Consul. `chain_limit`
    /// caps the records appended for each hostname.
    async fn resolve_hostnames(
        &self,
        settings: &Settings,
        reply: &mut Reply,
        qtype: RecordType,
        client_edns: bool,
        chain_limit: Option<usize>,
        depth: u8,
    ) {
        let targets = alias::dangling(reply);
        if targets.is_empty() {
            return;
        }
        // The chain's records change without the catalog changing: the fast
        // path never keeps such an answer (it is only kept with a basis).
        reply.basis = None;
        for (target, section) in targets {
            let lower = target.to_lowercase();
            let mut records = if let Some(domain) = self.consul_domain(settings, &lower) {
                if depth >= alias::MAX_DEPTH {
                    continue;
                }
                let chain_qtype = alias::chain_qtype(qtype, true);
                let (answer, _) = self
                    .consul_answer(
                        settings,
                        domain,
                        &lower,
                        &target,
                        chain_qtype,
                        client_edns,
                        depth + 1,
                    )
                    .await;
                answer.answers
            } else if let Some(forwarder) = &self.inner.forwarder {
                let query = Query::query(target, alias::chain_qtype(qtype, false));
                match forwarder.resolve(&query, false).await {
                    Ok(answer) => answer.answers,
                    Err(error) => {
                        trace!(error = %error, "resolving a hostname address failed");
                        continue;
                    }
                }
            } else {
                continue;
            };
            if let Some(limit) = chain_limit {
                records.truncate(limit);
            }
            match section {
                Section::Answer => reply.answers.extend(records),
                Section::Additional => reply.additionals.extend(records),
            }
        }
    }
}

/// The RFC 8482 §4.2 answer to `ANY` for a forwarded name: one synthesised
/// `HINFO "RFC8482" ""` record, without asking an upstream. ANY is the
/// classic amplification query and no stub needs it (RFC 8482 §3); a small
/// fixed answer keeps both the reply and the upstreams out of reflection
/// floods, where answering with a subset (§4.1) would still forward. (The
/// Consul domain keeps Consul's ANY: the A and AAAA records.)
fn minimal_any(asked: &Name) -> Reply {
    let hinfo = HINFO::new("RFC8482".to_owned(), String::new());
    let mut reply = Reply::empty(ResponseCode::NoError, false);
    reply.answers.push(Record::from_rdata(
        asked.clone(),
        ANY_HINFO_TTL,
        RData::HINFO(hinfo),
    ));
    reply.source = Source::Policy;
    reply
}

/// What one handled request amounted to, for metrics and the query log.
struct Outcome {
    zone: &'static str,
    qtype: Option<RecordType>,
    source: Source,
    truncated: bool,
    /// `udp_answer_limit` dropped answers (a random subset each time: not kept).
    capped: bool,
}

/// The tags of an answer the fast path may keep (its wire form is checked there).
pub(crate) struct Cacheable {
    /// For Consul answers: the catalog lookup a cached copy is checked against.
    pub(crate) basis: Option<Arc<Basis>>,
    pub(crate) zone: &'static str,
    pub(crate) qtype: &'static str,
    pub(crate) rcode: &'static str,
    pub(crate) source: &'static str,
    /// A forwarded answer: its TTLs count down while it is cached.
    pub(crate) ttl_counts_down: bool,
}

#[async_trait::async_trait]
impl<C: CatalogView, F: Upstream> RequestHandler for Router<C, F> {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.handle(request, &mut Hickory(&mut response_handle))
            .await
            .0
    }
}

impl<C: CatalogView, F: Upstream> Router<C, F> {
    /// Answers `request` through `responder`; also says whether the
    /// answer may be kept by the UDP fast path.
    pub(crate) async fn handle<R: Respond>(
        &self,
        request: &Request,
        responder: &mut R,
    ) -> (ResponseInfo, Option<Cacheable>) {
        let started = Instant::now();
        let settings = self.inner.settings.load_full();
        let mut edns = request
            .edns
            .as_ref()
            .map(|edns| settings.response_edns(edns));
        let mut outcome = Outcome {
            zone: "none",
            qtype: None,
            source: Source::None,
            truncated: false,
            capped: false,
        };

        let mut reply = if request.metadata.op_code != OpCode::Query {
            Reply::empty(ResponseCode::NotImp, false)
        } else if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            // RFC 6891 §6.1.3: we only speak EDNS version 0.
            Reply::empty(ResponseCode::BADVERS, false)
        } else {
            match request.request_info() {
                Err(_) => Reply::empty(ResponseCode::FormErr, false),
                Ok(info) => {
                    let lower: &Name = info.query.name();
                    let original = info.query.original();
                    let qtype = info.query.query_type();
                    outcome.qtype = Some(qtype);
                    let dnssec_ok = request
                        .edns
                        .as_ref()
                        .is_some_and(|edns| edns.flags().dnssec_ok);
                    let client_edns = request.edns.is_some();
                    let routed = self
                        .route(&settings, lower, original, dnssec_ok, client_edns)
                        .await;
                    outcome.zone = routed.zone;
                    trace!(name = %original.name(), %qtype, response_code = %routed.reply.response_code, "answered");
                    let mut reply = routed.reply;
                    // Consul's `udp_answer_limit`: only for its own answers, only
                    // where a client has 512 bytes (no EDNS, or EDNS of 512).
                    if routed.zone == "consul"
                        && let Some(limit) = settings.udp_answer_limit
                        && request.protocol() == Protocol::Udp
                        && request
                            .edns
                            .as_ref()
                            .is_none_or(|edns| edns.max_payload() <= PLAIN_UDP_LIMIT)
                    {
                        outcome.capped =
                            trim::cap_answers(limit, &mut reply.answers, &mut reply.additionals);
                    }
                    reply
                }
            }
        };
        outcome.source = reply.source;
        let basis = reply.basis.take();

        if reply.source.is_degraded()
            && let Some(edns) = edns.as_mut()
        {
            let info_code = EDE_STALE_ANSWER.to_be_bytes().to_vec();
            edns.options_mut()
                .insert(EdnsOption::Unknown(EDE_OPTION_CODE, info_code));
        }

        let response_code = reply.response_code;
        let (info, truncated) = send(request, responder, reply, edns.as_ref()).await;
        outcome.truncated = truncated;
        record_metrics(request.protocol(), &outcome, response_code, started);
        if let Some(sample) = settings.query_log
            && sampled(sample)
        {
            log_query(request, &outcome, response_code, &info, started);
        }
        let cacheable = (settings.query_log.is_none()
            && request.protocol() == Protocol::Udp
            && !outcome.truncated
            && !outcome.capped
            && matches!(
                response_code,
                ResponseCode::NoError | ResponseCode::NXDomain
            )
            && matches!(
                outcome.source,
                Source::Fresh | Source::Cache | Source::Upstream | Source::Local
            )
            // A capped answer picks a random subset each time: keep that. Other
            // Consul answers are kept only with the lookup to re-check them by.
            && !(outcome.zone == "consul" && (settings.zone.caps_answers() || basis.is_none())))
        .then(|| Cacheable {
            basis,
            zone: outcome.zone,
            qtype: outcome.qtype.map_or("other", qtype_tag),
            rcode: rcode_tag(response_code),
            source: outcome.source.tag(),
            ttl_counts_down: matches!(outcome.source, Source::Cache | Source::Upstream),
        });
        (info, cacheable)
    }
}

fn sampled(sample: f64) -> bool {
    sample >= 1.0 || (sample > 0.0 && rand::random::<f64>() < sample)
}

fn log_query(
    request: &Request,
    outcome: &Outcome,
    response_code: ResponseCode,
    info: &ResponseInfo,
    started: Instant,
) {
    let info_query = request.request_info().ok();
    let name = info_query.as_ref().map(|info| info.query.original().name());
    let qtype = outcome
        .qtype
        .map_or_else(|| "-".to_owned(), |qtype| qtype.to_string());
    let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    info!(
        target: QUERY_LOG_TARGET,
        client = %request.src(),
        protocol = %request.protocol(),
        name = %name.map_or_else(|| "-".to_owned(), ToString::to_string),
        qtype = %qtype,
        rcode = %rcode_name(response_code),
        zone = %outcome.zone,
        source = %outcome.source.tag(),
        answers = info.counts().answers,
        duration_us,
        "query"
    );
}

fn record_metrics(
    protocol: Protocol,
    outcome: &Outcome,
    response_code: ResponseCode,
    started: Instant,
) {
    let proto = proto_tag(protocol);
    let qtype = outcome.qtype.map_or("other", qtype_tag);
    metrics::counter!(
        REQUESTS,
        "proto" => proto,
        "zone" => outcome.zone,
        "type" => qtype
    )
    .increment(1);
    metrics::counter!(
        RESPONSES,
        "proto" => proto,
        "zone" => outcome.zone,
        "type" => qtype,
        "rcode" => rcode_tag(response_code),
        "source" => outcome.source.tag()
    )
    .increment(1);
    metrics::histogram!(
        REQUEST_DURATION_SECONDS,
        "proto" => proto,
        "zone" => outcome.zone,
        "type" => qtype
    )
    .record(started.elapsed().as_secs_f64());
    if outcome.truncated {
        metrics::counter!(TRUNCATED, "zone" => outcome.zone).increment(1);
    }
}

/// Where a fitted response goes. Our UDP and TCP loops encode it with
/// [`Response::encode`] (every owner name compressed); hickory's response
/// handles (the [`RequestHandler`] API) with hickory's own encoder.
pub(crate) trait Respond: Send {
    /// The exact size `response` will have when this responder sends it
    /// (`usize::MAX`: it does not fit a DNS message at all).
    fn encoded_len(&self, response: &Response<'_>) -> usize;

    /// Encodes and sends `response`.
    fn respond(
        &mut self,
        response: Response<'_>,
    ) -> impl Future<Output = Result<ResponseInfo, NetError>> + Send;
}

/// A hickory [`ResponseHandler`] as a [`Respond`] (the [`RequestHandler`]
/// API; the benches use it). dnsfront serves UDP and TCP itself: hickory's
/// own UDP handle caps its encoder at the client's limit, and may then drop a
/// record that fits once compressed (leaving its partial bytes behind).
struct Hickory<'h, R>(&'h mut R);

impl<R: ResponseHandler> Respond for Hickory<'_, R> {
    fn encoded_len(&self, response: &Response<'_>) -> usize {
        hickory_encoded_len(response)
    }

    async fn respond(&mut self, response: Response<'_>) -> Result<ResponseInfo, NetError> {
        self.0.send_response(hickory_message(&response)).await
    }
}

/// `response` as hickory's message type.
fn hickory_message<'q, 'a>(
    response: &Response<'q>,
) -> MessageResponse<
    'q,
    'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
>
where
    'q: 'a,
{
    let mut builder = MessageResponseBuilder::new(response.queries, None);
    if let Some(edns) = response.edns {
        builder.edns(edns);
    }
    let answers: &'a [Record] = response.answers;
    let authorities: &'a [Record] = response.authorities;
    let additionals: &'a [Record] = response.additionals;
    builder.build(
        response.metadata,
        answers.iter(),
        authorities.iter(),
        iter::empty(),
        additionals.iter(),
    )
}

/// Encodes and sends `reply`, trimmed to the transport's limit ([`trim::fit`]);
/// returns the response info and whether TC was set.
///
/// TC is set only over UDP, where the client can retry over TCP; a TCP answer
/// that does not fit 65,535 bytes is cut the same way, without TC (there is
/// nowhere to retry), as Consul does.
///
/// A response whose uncompressed size bound fits the limit is sent as it is,
/// so the common case encodes once; only a response that may not fit is
/// measured by trial encodes (and trimmed), with the responder's own encoder,
/// so that what fits here is exactly what is sent.
async fn send<R: Respond>(
    request: &Request,
    responder: &mut R,
    mut reply: Reply,
    edns: Option<&Edns>,
) -> (ResponseInfo, bool) {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = reply.authoritative;
    metadata.recursion_available = true;
    metadata.authentic_data = reply.authentic_data;
    metadata.response_code = reply.response_code;

    let udp = request.protocol() == Protocol::Udp;
    let limit = if udp {
        edns.map_or(PLAIN_UDP_LIMIT, Edns::max_payload)
    } else {
        u16::MAX
    };
    let surely_fits =
        size_bound(&request.queries, edns, &reply).is_some_and(|bound| bound <= usize::from(limit));
    let cut = !surely_fits
        && trim::fit(
            usize::from(limit),
            &mut reply.answers,
            &mut reply.authorities,
            &mut reply.additionals,
            |answers, authorities, additionals| {
                responder.encoded_len(&Response {
                    metadata,
                    queries: &request.queries,
                    edns,
                    answers,
                    authorities,
                    additionals,
                })
            },
        );
    let truncated = cut && udp;
    metadata.truncation = truncated;

    let response = Response {
        metadata,
        queries: &request.queries,
        edns,
        answers: &reply.answers,
        authorities: &reply.authorities,
        additionals: &reply.additionals,
    };
    match responder.respond(response).await {
        Ok(info) => (info, truncated),
        Err(error) => {
            trace!(error = %error, "sending response failed");
            metadata.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            (ResponseInfo::from(header), truncated)
        }
    }
}

/// Header (12 bytes).
const HEADER_LEN: usize = 12;
/// OPT record without options: root name, type, class, TTL, RDLENGTH.
const OPT_LEN: usize = 11;
/// Per record after the owner name: type, class, TTL, RDLENGTH.
const RECORD_FIXED_LEN: usize = 10;

/// An upper bound on the encoded size (no name compression assumed), or
/// `None` when a record type is not covered and the response must be measured.
fn size_bound(queries: &Queries, edns: Option<&Edns>, reply: &Reply) -> Option<usize> {
    let mut total = HEADER_LEN + queries.as_bytes().len();
    if let Some(edns) = edns {
        total += OPT_LEN;
        for (_, option) in &edns.options().options {
            total += 4 + usize::from(option.len());
        }
    }
    for record in reply
        .answers
        .iter()
        .chain(&reply.authorities)
        .chain(&reply.additionals)
    {
        total += name_bound(&record.name) + RECORD_FIXED_LEN + rdata_bound(&record.data)?;
    }
    Some(total)
}

/// A name's wire length without compression is at most its presentation length + 1.
fn name_bound(name: &Name) -> usize {
    name.len() + 1
}

fn rdata_bound(data: &RData) -> Option<usize> {
    Some(match data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::CNAME(name) => name_bound(&name.0),
        RData::NS(name) => name_bound(&name.0),
        RData::PTR(name) => name_bound(&name.0),
        RData::MX(mx) => 2 + name_bound(&mx.exchange),
        RData::SRV(srv) => 6 + name_bound(&srv.target),
        RData::SOA(soa) => name_bound(&soa.mname) + name_bound(&soa.rname) + 20,
        RData::TXT(txt) => txt.txt_data.iter().map(|text| 1 + text.len()).sum(),
        _ => return None,
    })
}

/// Exact encoded size of a response as hickory will encode it (usize::MAX if
/// it does not fit in a DNS message at all).
fn hickory_encoded_len(response: &Response<'_>) -> usize {
    let mut buffer = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buffer);
    match hickory_message(response).destructive_emit(&mut encoder) {
        Ok(header) if !header.truncation => buffer.len(),
        _ => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use hickory_server::proto::op::{Message, MessageType};
    use hickory_server::proto::rr::rdata::{A, AAAA, MX, SOA, SRV, TXT};
    use hickory_server::proto::rr::rdata::{CNAME, NS, PTR};
    use hickory_server::proto::serialize::binary::BinDecoder;

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("name literal")
    }

    /// The bound is never below the real encoding, for every record type it covers.
    #[test]
    fn size_bound_is_an_upper_bound() {
        let owner = name("Some-Name.Example.ORG.");
        let target = name("target.example.org.");
        let records = [
            Record::from_rdata(owner.clone(), 5, RData::A(A(Ipv4Addr::LOCALHOST))),
            Record::from_rdata(
                owner.clone(),
                5,
                RData::AAAA(AAAA::new(1, 0, 0, 0, 0, 0, 0, 1)),
            ),
            Record::from_rdata(owner.clone(), 5, RData::CNAME(CNAME(target.clone()))),
            Record::from_rdata(owner.clone(), 5, RData::PTR(PTR(name("x.")))),
            Record::from_rdata(owner.clone(), 5, RData::MX(MX::new(10, target.clone()))),
            Record::from_rdata(
                owner.clone(),
                5,
                RData::SRV(SRV::new(1, 1, 80, target.clone())),
            ),
            Record::from_rdata(
                owner.clone(),
                5,
                RData::TXT(TXT::new(vec!["a".repeat(200), String::new()])),
            ),
            Record::from_rdata(
                Name::root(),
                5,
                RData::SOA(SOA::new(
                    name("ns.consul."),
                    name("h.consul."),
                    1,
                    2,
                    3,
                    4,
                    5,
                )),
            ),
        ];
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(owner, RecordType::ANY));
        let bytes = query.to_vec().expect("encode query");
        let mut decoder = BinDecoder::new(&bytes[HEADER_LEN..]);
        let queries = Queries::read(&mut decoder, 1).expect("queries");
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(EdnsOption::Unknown(EDE_OPTION_CODE, vec![0, 3]));

        for count in 0..=records.len() {
            let reply = Reply {
                response_code: ResponseCode::NoError,
                authoritative: true,
                authentic_data: false,
                answers: records[..count].to_vec(),
                authorities: Vec::new(),
                additionals: records[count..].to_vec(),
                source: Source::None,
                basis: None,
            };
            for edns in [None, Some(&edns)] {
                let response = Response {
                    metadata: Metadata::new(7, MessageType::Response, OpCode::Query),
                    queries: &queries,
                    edns,
                    answers: &reply.answers,
                    authorities: &reply.authorities,
                    additionals: &reply.additionals,
                };
                let bound = size_bound(&queries, edns, &reply).expect("covered types");
                for exact in [hickory_encoded_len(&response), response.encoded_len()] {
                    assert!(bound >= exact, "bound {bound} < exact {exact} ({count})");
                }
            }
        }
    }

    /// Encodes like our UDP responder, keeping the bytes.
    #[derive(Default)]
    struct Capture(Option<Vec<u8>>);

    impl Respond for Capture {
        fn encoded_len(&self, response: &Response<'_>) -> usize {
            response.encoded_len()
        }

        async fn respond(&mut self, response: Response<'_>) -> Result<ResponseInfo, NetError> {
            let (info, bytes) = crate::udp::encode(&response);
            self.0 = Some(bytes);
            Ok(info)
        }
    }

    /// Answer shapes at the limits: many A, many SRV with A and TXT glue
    /// (node names of real fleets' length), and a forwarded CNAME chain with
    /// NS and glue.
    fn large_replies(owner: &Name) -> Vec<Reply> {
        let reply = |answers, authorities, additionals| Reply {
            response_code: ResponseCode::NoError,
            authoritative: true,
            authentic_data: false,
            answers,
            authorities,
            additionals,
            source: Source::None,
            basis: None,
        };
        let ip = |i: usize| Ipv4Addr::new(10, 1, (i / 256) as u8, (i % 256) as u8);
        let many_a = (0..270)
            .map(|i| Record::from_rdata(owner.clone(), 5, RData::A(A(ip(i)))))
            .collect();
        let target = |i: usize| name(&format!("ip-10-1-0-{i}-compute-internal.node.dc1.consul."));
        let srv = (0..45)
            .map(|i| {
                let srv = SRV::new(1, 1, 8080, target(i));
                Record::from_rdata(owner.clone(), 5, RData::SRV(srv))
            })
            .collect();
        let mut glue: Vec<Record> = (0..45)
            .map(|i| Record::from_rdata(target(i), 5, RData::A(A(ip(i)))))
            .collect();
        glue.extend((0..45).step_by(3).map(|i| {
            let txt = TXT::new(vec![format!("rack=r{i}")]);
            Record::from_rdata(target(i), 5, RData::TXT(txt))
        }));
        let edge = name("edge.cdn.example.net.");
        let mut chain = vec![Record::from_rdata(
            owner.clone(),
            300,
            RData::CNAME(CNAME(edge.clone())),
        )];
        chain.extend((0..260).map(|i| Record::from_rdata(edge.clone(), 300, RData::A(A(ip(i))))));
        let ns = (0..4)
            .map(|i| {
                let host = name(&format!("ns{i}.cdn.example.net."));
                Record::from_rdata(name("cdn.example.net."), 300, RData::NS(NS(host)))
            })
            .collect();
        let ns_glue = (0..4)
            .map(|i| {
                let host = name(&format!("ns{i}.cdn.example.net."));
                Record::from_rdata(host, 300, RData::A(A(ip(i))))
            })
            .collect();
        vec![
            reply(many_a, Vec::new(), Vec::new()),
            reply(srv, Vec::new(), glue),
            reply(chain, ns, ns_glue),
        ]
    }

    /// Every UDP size limit from 512 to 4096 (and 512 without EDNS): each
    /// reply is within the limit and decodes to exactly the records its
    /// header counts; SRV records keep their addresses. Each size is tried
    /// with one of the shapes in turn (all of them at every size took 20 s
    /// of CI time), so each shape meets every third size.
    #[tokio::test]
    async fn replies_fit_every_udp_limit_and_are_well_formed() {
        let owner = name("Web-Frontend.service.dc1.consul.");
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(owner.clone(), RecordType::A));
        let plain = query.to_vec().expect("encode query");
        let src = "127.0.0.1:53000".parse().expect("literal");
        let request = Request::from_bytes(plain, src, Protocol::Udp).expect("request");
        let shapes = large_replies(&owner);
        let limits = iter::once(None).chain((512..=4096).map(Some));
        for payload in limits {
            let mut edns = Edns::new();
            if let Some(payload) = payload {
                edns.set_max_payload(payload);
            }
            let edns = payload.map(|_| &edns);
            let limit = usize::from(payload.unwrap_or(PLAIN_UDP_LIMIT));
            let turn = usize::from(payload.unwrap_or(0)) % shapes.len();
            for (shape, reply) in shapes.iter().enumerate() {
                if payload.is_some() && shape != turn {
                    continue;
                }
                let mut capture = Capture::default();
                let (_, truncated) = send(&request, &mut capture, reply.clone(), edns).await;
                let bytes = capture.0.expect("sent");
                let context = format!("shape {shape}, limit {limit}");
                let message = test_support::strict_parse(&bytes)
                    .unwrap_or_else(|error| panic!("{context}: {error}"));
                assert!(bytes.len() <= limit, "{context}: {} bytes", bytes.len());
                assert_eq!(message.metadata.truncation, truncated, "{context}");
                assert!(!message.answers.is_empty(), "{context}");
                assert_eq!(message.edns.is_some(), payload.is_some(), "{context}");
                let targets: HashSet<Name> = message
                    .answers
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) => Some(srv.target.clone()),
                        _ => None,
                    })
                    .collect();
                if !targets.is_empty() {
                    let glued: HashSet<Name> = message
                        .additionals
                        .iter()
                        .filter(|record| matches!(record.data, RData::A(_)))
                        .map(|record| record.name.clone())
                        .collect();
                    assert_eq!(targets, glued, "{context}: SRV groups are whole");
                }
            }
        }
    }
}
