//! The request handler: routes a question to the Consul zone or the forwarder,
//! then encodes the reply within the transport's size limit.

use std::iter;
use std::sync::Arc;

use dnsfront_forward::{Forwarder, Source as ForwardSource};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::rdata::opt::EdnsOption;
use hickory_server::proto::rr::{Name, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tokio::time::Instant;
use tracing::trace;

use crate::answer::{Reply, Source, Zone};
use crate::backend::{CatalogView, CatalogWithFallback, Upstream};
use crate::config::Config;
use crate::metrics::{QUERIES, QUERY_DURATION_SECONDS, TRUNCATED, qtype_tag, rcode_tag};
use crate::trim;

/// RFC 8914 Extended DNS Error option code.
const EDE_OPTION_CODE: u16 = 15;
/// RFC 8914 INFO-CODE 3, "Stale Answer".
const EDE_STALE_ANSWER: u16 = 3;
/// RFC 1035 §4.2.1: the UDP limit for clients without EDNS.
const PLAIN_UDP_LIMIT: u16 = 512;

/// The DNS front's request handler (implements hickory's [`RequestHandler`]).
///
/// Names at or under the Consul domain are answered from the catalog and are
/// never forwarded; everything else goes to the forwarder.
pub struct Router<C = CatalogWithFallback, F = Forwarder> {
    inner: Arc<Inner<C, F>>,
}

struct Inner<C, F> {
    zone: Zone,
    max_udp_payload: u16,
    catalog: C,
    forwarder: Option<F>,
}

impl<C, F> Clone for Router<C, F> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Router {
    /// Builds the router over the production catalog cache and forwarder
    /// (`None`: names outside the Consul domain get SERVFAIL).
    pub fn new(config: Config, catalog: CatalogWithFallback, forwarder: Option<Forwarder>) -> Self {
        Self::with_backends(config, catalog, forwarder)
    }
}

impl<C: CatalogView, F: Upstream> Router<C, F> {
    /// Builds the router over any catalog view and upstream (tests use fakes).
    pub fn with_backends(config: Config, catalog: C, forwarder: Option<F>) -> Self {
        Self {
            inner: Arc::new(Inner {
                zone: Zone::new(&config),
                max_udp_payload: config.max_udp_payload.max(PLAIN_UDP_LIMIT),
                catalog,
                forwarder,
            }),
        }
    }

    async fn forward(&self, query: &Query, dnssec_ok: bool) -> Reply {
        let Some(forwarder) = &self.inner.forwarder else {
            return Reply::empty(ResponseCode::ServFail, false);
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
                Reply {
                    response_code: answer.response_code,
                    authoritative: false,
                    authentic_data: answer.authentic_data,
                    answers,
                    authorities: answer.authorities,
                    additionals: answer.additionals,
                    source: match answer.source {
                        ForwardSource::Cache => Source::Cache,
                        ForwardSource::Upstream => Source::Upstream,
                    },
                }
            }
            Err(error) => {
                trace!(error = %error, "forwarding failed");
                Reply::empty(ResponseCode::ServFail, false)
            }
        }
    }

    /// The OPT we attach for an EDNS client: our payload limit, the client's DO bit.
    fn response_edns(&self, request_edns: &Edns) -> Edns {
        let mut edns = Edns::new();
        let payload = request_edns
            .max_payload()
            .clamp(PLAIN_UDP_LIMIT, self.inner.max_udp_payload);
        edns.set_max_payload(payload);
        edns.set_dnssec_ok(request_edns.flags().dnssec_ok);
        edns
    }
}

/// What one handled request amounted to, for metrics.
struct Outcome {
    zone: &'static str,
    qtype: Option<RecordType>,
    source: Source,
    truncated: bool,
}

#[async_trait::async_trait]
impl<C: CatalogView, F: Upstream> RequestHandler for Router<C, F> {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let mut edns = request.edns.as_ref().map(|edns| self.response_edns(edns));
        let mut outcome = Outcome {
            zone: "none",
            qtype: None,
            source: Source::None,
            truncated: false,
        };

        let reply = if request.metadata.op_code != OpCode::Query {
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
                    let reply = if self.inner.zone.domain().zone_of(lower) {
                        outcome.zone = "consul";
                        self.inner
                            .zone
                            .answer(&self.inner.catalog, lower, original.name(), qtype)
                            .await
                    } else {
                        outcome.zone = "forward";
                        let dnssec_ok = request
                            .edns
                            .as_ref()
                            .is_some_and(|edns| edns.flags().dnssec_ok);
                        self.forward(original, dnssec_ok).await
                    };
                    trace!(name = %original.name(), %qtype, response_code = %reply.response_code, "answered");
                    reply
                }
            }
        };
        outcome.source = reply.source;

        if reply.source.is_degraded()
            && let Some(edns) = edns.as_mut()
        {
            let info_code = EDE_STALE_ANSWER.to_be_bytes().to_vec();
            edns.options_mut()
                .insert(EdnsOption::Unknown(EDE_OPTION_CODE, info_code));
        }

        let response_code = reply.response_code;
        let (info, truncated) = send(request, &mut response_handle, reply, edns.as_ref()).await;
        outcome.truncated = truncated;
        record_metrics(&outcome, response_code, started);
        info
    }
}

fn record_metrics(outcome: &Outcome, response_code: ResponseCode, started: Instant) {
    let qtype = outcome.qtype.map_or("other", qtype_tag);
    metrics::counter!(
        QUERIES,
        "zone" => outcome.zone,
        "qtype" => qtype,
        "rcode" => rcode_tag(response_code),
        "source" => outcome.source.tag()
    )
    .increment(1);
    metrics::histogram!(QUERY_DURATION_SECONDS, "zone" => outcome.zone)
        .record(started.elapsed().as_secs_f64());
    if outcome.truncated {
        metrics::counter!(TRUNCATED, "zone" => outcome.zone).increment(1);
    }
}

/// Encodes and sends `reply`, trimmed to the transport's limit; returns the
/// response info and whether Answer/Authority records were cut (TC).
async fn send<R: ResponseHandler>(
    request: &Request,
    response_handle: &mut R,
    mut reply: Reply,
    edns: Option<&Edns>,
) -> (ResponseInfo, bool) {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = reply.authoritative;
    metadata.recursion_available = true;
    metadata.authentic_data = reply.authentic_data;
    metadata.response_code = reply.response_code;

    let limit = match request.protocol() {
        Protocol::Udp => edns.map_or(PLAIN_UDP_LIMIT, Edns::max_payload),
        _ => u16::MAX,
    };
    let truncated = trim::fit(
        usize::from(limit),
        &mut reply.answers,
        &mut reply.authorities,
        &mut reply.additionals,
        |answers, authorities, additionals| {
            encoded_len(
                &request.queries,
                metadata,
                edns,
                answers,
                authorities,
                additionals,
            )
        },
    );
    metadata.truncation = truncated;

    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(edns) = edns {
        builder.edns(edns);
    }
    let response = builder.build(
        metadata,
        reply.answers.iter(),
        reply.authorities.iter(),
        iter::empty(),
        reply.additionals.iter(),
    );
    match response_handle.send_response(response).await {
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

/// Exact encoded size of a response, as hickory will encode it (usize::MAX if
/// it does not fit in a DNS message at all).
fn encoded_len(
    queries: &Queries,
    metadata: Metadata,
    edns: Option<&Edns>,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> usize {
    let mut buffer = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buffer);
    let mut builder = MessageResponseBuilder::new(queries, None);
    if let Some(edns) = edns {
        builder.edns(edns);
    }
    let response = builder.build(
        metadata,
        answers.iter(),
        authorities.iter(),
        iter::empty(),
        additionals.iter(),
    );
    match response.destructive_emit(&mut encoder) {
        Ok(header) if !header.truncation => buffer.len(),
        _ => usize::MAX,
    }
}
