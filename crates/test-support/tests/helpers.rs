//! The helpers themselves: the fake upstream over real sockets and the metrics reader.

use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use test_support::{
    Ask, DebuggingRecorder, FakeUpstream, Knobs, Recorded, a_records, addresses, capture_metrics,
    negative, positive, tcp, udp, udp_raw_wait,
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip literal")
}

#[tokio::test]
async fn fake_upstream_answers_from_its_tables() {
    let upstream = FakeUpstream::start().await;
    upstream.set("Host.Example", &["192.0.2.10", "2001:db8::1"], 120);
    upstream.set("canned.example.", &["192.0.2.20"], 60);
    upstream.answer(
        "canned.example",
        RecordType::A,
        positive(a_records("canned.example.", 30, &[7])),
    );
    upstream.answer(
        "nodata.example.",
        RecordType::A,
        negative(ResponseCode::NoError, Some((30, 10))),
    );

    let (reply, _) = udp(upstream.addr(), &Ask::new("host.example.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), [ip("192.0.2.10")]);
    assert_eq!(reply.answers[0].ttl, 120);
    let reply = tcp(
        upstream.addr(),
        &Ask::new("HOST.example.", RecordType::AAAA),
    )
    .await;
    assert_eq!(addresses(&reply), [ip("2001:db8::1")]);
    let (reply, _) = udp(upstream.addr(), &Ask::new("host.example.", RecordType::MX)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());

    // a canned reply wins over the address table
    let (reply, _) = udp(upstream.addr(), &Ask::new("canned.example.", RecordType::A)).await;
    assert_eq!(addresses(&reply), [ip("192.0.2.7")]);

    let (reply, _) = udp(upstream.addr(), &Ask::new("nodata.example.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert!(matches!(reply.authorities[0].data, RData::SOA(_)));

    let (reply, _) = udp(
        upstream.addr(),
        &Ask::new("missing.example.", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(reply.authorities[0].data, RData::SOA(_)));

    assert_eq!((upstream.udp_queries(), upstream.tcp_queries()), (5, 1));
    assert_eq!(upstream.queries(), 6);
    let last = upstream.last_query().expect("a query was seen");
    assert_eq!(last.queries[0].name().to_ascii(), "missing.example.");
}

#[tokio::test]
async fn silent_and_servfail_knobs() {
    let upstream = FakeUpstream::start().await;
    upstream.set("host.example.", &["192.0.2.10"], 60);
    let ask = Ask::new("host.example.", RecordType::A);

    upstream.set_silent(true);
    let reply = udp_raw_wait(upstream.addr(), &ask.to_bytes(), Duration::from_millis(200)).await;
    assert!(reply.is_none(), "a silent fake answered");
    assert_eq!(upstream.queries(), 1, "silent fakes still count queries");

    upstream.set_silent(false);
    upstream.set_knobs(Knobs {
        servfail: true,
        ..Knobs::default()
    });
    let (reply, _) = udp(upstream.addr(), &ask).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);

    upstream.set_knobs(Knobs::default());
    let (reply, _) = udp(upstream.addr(), &ask).await;
    assert_eq!(addresses(&reply), [ip("192.0.2.10")]);
}

#[test]
fn recorded_counters_match_name_and_exact_labels() {
    let ((), recorded) = capture_metrics(|| {
        metrics::counter!("hits", "zone" => "a", "kind" => "x").increment(2);
        metrics::counter!("hits", "zone" => "b").increment(1);
        metrics::counter!("plain").increment(3);
        metrics::histogram!("took", "zone" => "a").record(0.5);
        metrics::histogram!("took", "zone" => "a").record(1.5);
    });
    assert_eq!(recorded.counter("hits", &[("kind", "x"), ("zone", "a")]), 2);
    assert_eq!(recorded.counter("hits", &[("zone", "b")]), 1);
    assert_eq!(
        recorded.counter("hits", &[("zone", "a")]),
        0,
        "labels are exact"
    );
    assert_eq!(recorded.counter("plain", &[]), 3);
    assert_eq!(recorded.counter("missing", &[]), 0);
    assert_eq!(recorded.histogram_samples("took", &[("zone", "a")]), 2);
    assert_eq!(
        recorded.counter("took", &[("zone", "a")]),
        0,
        "kinds differ"
    );
}

#[tokio::test]
async fn recorder_can_be_the_default_for_async_code() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    tokio::task::yield_now().await;
    metrics::counter!("async").increment(1);
    assert_eq!(Recorded::take(&snapshotter).counter("async", &[]), 1);
}
