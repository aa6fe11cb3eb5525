//! Forwarder behaviour against fake upstream resolvers on real 127.0.0.1 sockets.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{addresses, answer_a, ask, config_with, question};
use dnsfront_forward::{Config, Error, Forwarder, Source, metrics as names};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use test_support::{DebuggingRecorder, FakeUpstream, Knobs, Recorded, closed_port, negative};
use tokio::time::Instant;

fn config(upstreams: &[SocketAddr]) -> Config {
    config_with(
        upstreams,
        Duration::from_millis(300),
        Duration::from_secs(1),
    )
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

#[tokio::test]
async fn answer_is_cached_and_ttls_count_down() {
    let upstream = FakeUpstream::start().await;
    answer_a(&upstream, "www.example.", 300, &[1]);
    answer_a(&upstream, "short.example.", 1, &[9]);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));

    let first = ask(&forwarder, "www.example.").await.expect("answer");
    assert_eq!(first.source, Source::Upstream);
    assert_eq!(first.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&first), ["192.0.2.1"]);
    assert_eq!(first.answers[0].ttl, 300);
    assert_eq!(upstream.udp_queries(), 1);

    // what went upstream: RD, EDNS with our payload, no DO
    let sent = upstream.last_query().expect("query seen");
    assert!(sent.metadata.recursion_desired);
    let edns = sent.edns.expect("EDNS OPT sent");
    assert_eq!(edns.max_payload(), 1232);
    assert!(!edns.flags().dnssec_ok);

    ask(&forwarder, "short.example.")
        .await
        .expect("short answer");
    assert_eq!(upstream.udp_queries(), 2);

    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // a hit, in another letter case, with the TTL counted down
    let second = ask(&forwarder, "WWW.Example.").await.expect("cached");
    assert_eq!(second.source, Source::Cache);
    assert_eq!(addresses(&second), ["192.0.2.1"]);
    assert!(
        (298..=299).contains(&second.answers[0].ttl),
        "ttl {}",
        second.answers[0].ttl
    );

    // the 1 s entry has expired: a miss that goes upstream again
    let again = ask(&forwarder, "short.example.").await.expect("refetched");
    assert_eq!(again.source, Source::Upstream);
    assert_eq!(upstream.udp_queries(), 3);
}

#[tokio::test]
async fn dnssec_ok_sets_the_do_bit_and_is_cached_separately() {
    let upstream = FakeUpstream::start().await;
    answer_a(&upstream, "www.example.", 300, &[1]);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));

    let plain = ask(&forwarder, "www.example.").await.expect("answer");
    assert!(!plain.authentic_data);
    let secure = forwarder
        .resolve(&question("www.example."), true)
        .await
        .expect("answer");
    assert_eq!(
        secure.source,
        Source::Upstream,
        "DO=1 must not reuse the DO=0 entry"
    );
    assert!(
        secure.authentic_data,
        "the upstream's AD bit is passed through"
    );
    assert!(
        upstream
            .last_query()
            .and_then(|q| q.edns)
            .expect("EDNS")
            .flags()
            .dnssec_ok
    );
    assert_eq!(upstream.udp_queries(), 2);

    let cached = forwarder
        .resolve(&question("www.example."), true)
        .await
        .expect("cached");
    assert_eq!(cached.source, Source::Cache);
    assert!(cached.authentic_data);
}

#[tokio::test]
async fn nxdomain_is_negatively_cached_for_the_soa_ttl() {
    let upstream = FakeUpstream::start().await;
    upstream.answer(
        "gone.example.",
        RecordType::A,
        negative(ResponseCode::NXDomain, Some((600, 60))),
    );
    upstream.answer(
        "nodata.example.",
        RecordType::A,
        negative(ResponseCode::NoError, Some((30, 300))),
    );
    let forwarder = Forwarder::new(config(&[upstream.addr()]));

    let first = ask(&forwarder, "gone.example.").await.expect("answer");
    assert_eq!(first.response_code, ResponseCode::NXDomain);
    assert_eq!(
        first.authorities[0].ttl, 60,
        "SOA TTL set to min(SOA TTL, MINIMUM)"
    );
    let second = ask(&forwarder, "gone.example.").await.expect("cached");
    assert_eq!(second.source, Source::Cache);
    assert_eq!(second.response_code, ResponseCode::NXDomain);
    assert!(matches!(second.authorities[0].data, RData::SOA(_)));

    let nodata = ask(&forwarder, "nodata.example.").await.expect("answer");
    assert_eq!(nodata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    let nodata = ask(&forwarder, "nodata.example.").await.expect("cached");
    assert_eq!(nodata.source, Source::Cache);
    assert!(nodata.authorities[0].ttl <= 30);
    assert_eq!(upstream.udp_queries(), 2);
}

#[tokio::test]
async fn nxdomain_without_soa_is_not_cached() {
    let upstream = FakeUpstream::start().await;
    upstream.answer(
        "unknown.example.",
        RecordType::A,
        negative(ResponseCode::NXDomain, None),
    );
    let forwarder = Forwarder::new(config(&[upstream.addr()]));
    for _ in 0..2 {
        let answer = ask(&forwarder, "unknown.example.").await.expect("answer");
        assert_eq!(answer.response_code, ResponseCode::NXDomain);
        assert!(answer.authorities.is_empty(), "the fake sent no SOA");
        assert_eq!(answer.source, Source::Upstream);
    }
    assert_eq!(upstream.udp_queries(), 2);
}

#[tokio::test]
async fn ttl_zero_is_cached_only_with_a_min_ttl() {
    let upstream = FakeUpstream::start().await;
    answer_a(&upstream, "zero.example.", 0, &[5]);

    let forwarder = Forwarder::new(config(&[upstream.addr()]));
    for _ in 0..2 {
        let answer = ask(&forwarder, "zero.example.").await.expect("answer");
        assert_eq!(answer.source, Source::Upstream);
        assert_eq!(answer.answers[0].ttl, 0);
    }
    assert_eq!(upstream.udp_queries(), 2);

    let floored = Forwarder::new(Config {
        min_ttl: Duration::from_secs(5),
        ..config(&[upstream.addr()])
    });
    let first = ask(&floored, "zero.example.").await.expect("answer");
    assert_eq!(first.answers[0].ttl, 5, "the floor is what clients see");
    let second = ask(&floored, "zero.example.").await.expect("cached");
    assert_eq!(second.source, Source::Cache);
    assert_eq!(upstream.udp_queries(), 3);
}

#[tokio::test]
async fn fails_over_when_the_first_upstream_times_out() {
    let silent = FakeUpstream::start().await;
    silent.set_knobs(Knobs {
        drop: true,
        ..Knobs::default()
    });
    let good = FakeUpstream::start().await;
    answer_a(&good, "www.example.", 60, &[2]);
    let forwarder = Forwarder::new(config(&[silent.addr(), good.addr()]));

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let answer = ask(&forwarder, "www.example.").await.expect("answer");
    assert_eq!(addresses(&answer), ["192.0.2.2"]);
    assert_eq!((silent.udp_queries(), good.udp_queries()), (1, 1));
    let recorded = Recorded::take(&snapshotter);
    let silent_label = silent.addr().to_string();
    let good_label = good.addr().to_string();
    let timeouts = [
        ("upstream", silent_label.as_str()),
        ("outcome", names::OUTCOME_TIMEOUT),
    ];
    assert_eq!(recorded.counter(names::UPSTREAM_QUERIES, &timeouts), 1);
    let oks = [
        ("upstream", good_label.as_str()),
        ("outcome", names::OUTCOME_OK),
    ];
    assert_eq!(recorded.counter(names::UPSTREAM_QUERIES, &oks), 1);
}

#[tokio::test]
async fn fails_over_on_servfail_and_on_a_closed_port() {
    let failing = FakeUpstream::start().await;
    failing.set_knobs(Knobs {
        servfail: true,
        ..Knobs::default()
    });
    let closed = closed_port().await;
    let good = FakeUpstream::start().await;
    answer_a(&good, "www.example.", 60, &[3]);
    let forwarder = Forwarder::new(config(&[failing.addr(), closed, good.addr()]));

    let started = Instant::now();
    let answer = ask(&forwarder, "www.example.").await.expect("answer");
    assert_eq!(addresses(&answer), ["192.0.2.3"]);
    assert_eq!((failing.udp_queries(), good.udp_queries()), (1, 1));
    // neither SERVFAIL nor ICMP port-unreachable waits for the attempt timeout
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn all_failed_within_the_deadline_and_not_cached() {
    let first = FakeUpstream::start().await;
    first.set_knobs(Knobs {
        drop: true,
        ..Knobs::default()
    });
    let second = FakeUpstream::start().await;
    second.set_knobs(Knobs {
        drop: true,
        ..Knobs::default()
    });
    answer_a(&second, "www.example.", 60, &[4]);
    let forwarder = Forwarder::new(Config {
        attempt_timeout: Duration::from_millis(300),
        deadline: Duration::from_millis(500),
        ..config(&[first.addr(), second.addr()])
    });

    let started = Instant::now();
    let error = ask(&forwarder, "www.example.").await.expect_err("all fail");
    let elapsed = started.elapsed();
    assert!(matches!(error, Error::AllFailed { .. }), "{error}");
    assert!(
        elapsed >= Duration::from_millis(450),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(900),
        "overran the deadline: {elapsed:?}"
    );
    assert_eq!(
        (first.udp_queries(), second.udp_queries()),
        (1, 1),
        "second gets the rest"
    );

    second.set_knobs(Knobs::default());
    let answer = ask(&forwarder, "www.example.").await.expect("recovered");
    assert_eq!(
        answer.source,
        Source::Upstream,
        "the failure was not cached"
    );
}

#[tokio::test]
async fn truncated_udp_answer_is_retried_over_tcp() {
    let upstream = FakeUpstream::start().await;
    upstream.set_knobs(Knobs {
        truncate_udp: true,
        ..Knobs::default()
    });
    answer_a(&upstream, "big.example.", 60, &[1, 2, 3]);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let answer = ask(&forwarder, "big.example.").await.expect("answer");
    assert_eq!(
        sorted(addresses(&answer)),
        ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    );
    assert_eq!((upstream.udp_queries(), upstream.tcp_queries()), (1, 1));
    let label = upstream.addr().to_string();
    let retried = [
        ("upstream", label.as_str()),
        ("outcome", names::OUTCOME_TRUNCATED_RETRY),
    ];
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(recorded.counter(names::UPSTREAM_QUERIES, &retried), 1);
}

#[tokio::test]
async fn mismatched_replies_are_ignored() {
    let upstream = FakeUpstream::start().await;
    upstream.set_knobs(Knobs {
        wrong_first: true,
        ..Knobs::default()
    });
    answer_a(&upstream, "www.example.", 60, &[7]);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));

    let answer = ask(&forwarder, "www.example.").await.expect("answer");
    assert_eq!(addresses(&answer), ["192.0.2.7"]);
    assert_eq!(upstream.udp_queries(), 1);
}

#[tokio::test]
async fn concurrent_identical_misses_share_one_upstream_query() {
    let upstream = FakeUpstream::start().await;
    upstream.set_knobs(Knobs {
        delay: Duration::from_millis(200),
        ..Knobs::default()
    });
    answer_a(&upstream, "www.example.", 60, &[8]);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let query = question("www.example.");
    let results =
        futures::future::join_all((0..50).map(|_| forwarder.resolve(&query, false))).await;
    for result in results {
        assert_eq!(addresses(&result.expect("answer")), ["192.0.2.8"]);
    }
    assert_eq!(upstream.udp_queries(), 1);
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(recorded.counter(names::COALESCED, &[]), 49);
    assert_eq!(recorded.counter(names::CACHE_MISSES, &[]), 50);
}

#[tokio::test]
async fn coalesced_failure_reaches_every_waiter_and_is_not_cached() {
    let upstream = FakeUpstream::start().await;
    upstream.set_knobs(Knobs {
        servfail: true,
        delay: Duration::from_millis(100),
        ..Knobs::default()
    });
    answer_a(&upstream, "www.example.", 60, &[9]);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));

    let query = question("www.example.");
    let results =
        futures::future::join_all((0..20).map(|_| forwarder.resolve(&query, false))).await;
    let messages: HashSet<String> = results
        .into_iter()
        .map(|result| match result {
            Err(error @ Error::AllFailed { .. }) => error.to_string(),
            other => panic!("expected AllFailed, got {other:?}"),
        })
        .collect();
    assert_eq!(
        messages.len(),
        1,
        "every waiter sees the same error: {messages:?}"
    );
    assert_eq!(upstream.udp_queries(), 1);

    upstream.set_knobs(Knobs::default());
    let answer = forwarder
        .resolve(&query, false)
        .await
        .expect("answer after recovery");
    assert_eq!(answer.source, Source::Upstream);
    assert_eq!(upstream.udp_queries(), 2);
}

#[tokio::test]
async fn overload_fails_fast() {
    let upstream = FakeUpstream::start().await;
    upstream.set_knobs(Knobs {
        delay: Duration::from_millis(400),
        ..Knobs::default()
    });
    answer_a(&upstream, "one.example.", 60, &[1]);
    let forwarder = Forwarder::new(Config {
        max_in_flight: 1,
        attempt_timeout: Duration::from_millis(900),
        ..config(&[upstream.addr()])
    });

    let busy = tokio::spawn({
        let forwarder = forwarder.clone();
        async move { ask(&forwarder, "one.example.").await }
    });
    let waiting_since = Instant::now();
    while upstream.udp_queries() == 0 {
        assert!(
            waiting_since.elapsed() < Duration::from_secs(2),
            "first query never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let started = Instant::now();
    let error = ask(&forwarder, "two.example.")
        .await
        .expect_err("overloaded");
    assert!(matches!(error, Error::Overloaded), "{error}");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "must not queue"
    );
    // an identical query still joins the one in flight instead of being refused
    let joined = ask(&forwarder, "one.example.").await.expect("joined");
    assert_eq!(addresses(&joined), ["192.0.2.1"]);

    let first = busy.await.expect("task").expect("first answer");
    assert_eq!(addresses(&first), ["192.0.2.1"]);
    assert_eq!(upstream.udp_queries(), 1);
}

#[tokio::test]
async fn rrsets_are_shuffled_on_cache_hits() {
    let upstream = FakeUpstream::start().await;
    answer_a(&upstream, "pool.example.", 300, &[1, 2, 3, 4]);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));

    let mut orders = HashSet::new();
    for _ in 0..50 {
        let answer = ask(&forwarder, "pool.example.").await.expect("answer");
        assert_eq!(
            sorted(addresses(&answer)),
            ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
        );
        orders.insert(addresses(&answer));
    }
    assert_eq!(upstream.udp_queries(), 1);
    assert!(orders.len() > 1, "50 answers all had one order");
}

#[tokio::test]
async fn no_upstreams_is_an_error() {
    let forwarder = Forwarder::new(config(&[]));
    let error = ask(&forwarder, "www.example.").await.expect_err("none");
    assert!(matches!(error, Error::NoUpstreams));
}
