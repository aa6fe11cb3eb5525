//! The Consul forms dnsfront does not answer from its own data (prepared
//! queries, cluster peers, `.connect`, `.ingress`, `.virtual`, sameness groups:
//! [`ConsulName::Fallback`](crate::ConsulName::Fallback)) are asked of the local
//! agent's DNS interface, and its answer is passed on as it came: records,
//! rcode (NXDOMAIN only when Consul says so), AA flag. No answer in time is
//! SERVFAIL, never NXDOMAIN (clients would cache it).
//!
//! One question on a fresh socket per query ([`dnsfront_forward::exchange_once`]:
//! UDP, TCP when truncated), outside the forwarder: its policies (rebind
//! protection drops the private addresses Consul answers with), health and cache
//! are for the Internet's resolvers. Nothing is cached here, and these answers
//! never enter the fast path, so no answer outlives its TTL.

use std::net::SocketAddr;
use std::time::Duration;

use dnsfront_forward::{AttemptError, exchange_once};
use hickory_proto::op::Query;
use hickory_proto::rr::{Name, RecordType};

use crate::answer::{Reply, Source};
use crate::metrics::FALLBACK_QUERIES;

/// The agent's DNS interface and how long to wait for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fallback {
    pub(crate) server: SocketAddr,
    pub(crate) timeout: Duration,
}

impl Fallback {
    /// Asks the agent `question` (a lower-case name in the main Consul domain).
    pub(crate) async fn ask(
        &self,
        question: &Name,
        qtype: RecordType,
    ) -> Result<Reply, AttemptError> {
        let query = Query::query(question.clone(), qtype);
        match exchange_once(self.server, &query, self.timeout).await {
            Ok(exchanged) => {
                metrics::counter!(FALLBACK_QUERIES, "result" => "answered").increment(1);
                let message = exchanged.reply;
                Ok(Reply {
                    response_code: message.metadata.response_code,
                    authoritative: message.metadata.authoritative,
                    authentic_data: false,
                    answers: message.answers,
                    authorities: message.authorities,
                    additionals: message.additionals,
                    source: Source::Agent,
                    basis: None,
                })
            }
            Err(error) => {
                let result = match error {
                    AttemptError::Timeout => "timeout",
                    _ => "error",
                };
                metrics::counter!(FALLBACK_QUERIES, "result" => result).increment(1);
                Err(error)
            }
        }
    }
}
