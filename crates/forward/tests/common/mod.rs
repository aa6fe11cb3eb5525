//! Helpers shared by the forwarder's integration tests.

use std::net::SocketAddr;
use std::time::Duration;

use dnsfront_forward::{Answer, Config, Error, Forwarder};
use hickory_proto::op::Query;
use hickory_proto::rr::RecordType;
use test_support::{FakeUpstream, a_records, name_of, positive};

/// The default config with these upstreams and timeouts.
pub(crate) fn config_with(
    upstreams: &[SocketAddr],
    attempt_timeout: Duration,
    deadline: Duration,
) -> Config {
    Config {
        upstreams: upstreams.to_vec(),
        attempt_timeout,
        deadline,
        ..Config::default()
    }
}

/// An A question for `name`.
pub(crate) fn question(name: &str) -> Query {
    Query::query(name_of(name), RecordType::A)
}

/// Resolves `name`/A with DO=0.
pub(crate) async fn ask(forwarder: &Forwarder, name: &str) -> Result<Answer, Error> {
    forwarder.resolve(&question(name), false).await
}

/// The answer section's record data as text, in answer order.
pub(crate) fn addresses(answer: &Answer) -> Vec<String> {
    answer
        .answers
        .iter()
        .map(|record| record.data.to_string())
        .collect()
}

/// Makes `upstream` answer `name`/A with 192.0.2.N for each N in `last_octets`.
pub(crate) fn answer_a(upstream: &FakeUpstream, name: &str, ttl: u32, last_octets: &[u8]) {
    upstream.answer(
        name,
        RecordType::A,
        positive(a_records(name, ttl, last_octets)),
    );
}
