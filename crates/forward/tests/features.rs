//! Per-domain rules, upstream health, race, TCP-only, policy, serve-stale, prefetch,
//! reconfigure and explain, against fake upstreams on real 127.0.0.1 sockets.
//!
//! Long waits (TTLs, stale windows) are skipped by pausing the tokio clock, advancing
//! it and resuming it: the forwarder's freshness runs on the tokio clock, while the
//! sockets and attempt timeouts keep running in real time.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{addresses, answer_a, ask, config_with, question};
use dnsfront_forward::{
    CacheState, Config, DomainRule, Error, Field, Forwarder, Policy, Source, Strategy,
    UpstreamStats, metrics as names,
};
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::PTR;
use hickory_proto::rr::{RData, Record, RecordType};
use test_support::{DebuggingRecorder, FakeUpstream, Knobs, Recorded, name_of, negative, positive};
use tokio::time::Instant;

fn config(upstreams: &[SocketAddr]) -> Config {
    config_with(
        upstreams,
        Duration::from_millis(200),
        Duration::from_millis(600),
    )
}

fn rule(zone: &str, upstreams: &[SocketAddr]) -> DomainRule {
    DomainRule {
        zone: name_of(zone),
        upstreams: upstreams.to_vec(),
    }
}

/// Moves the tokio clock forward by `by` without waiting.
async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Polls `condition` every 10 ms for up to 3 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stats_of(forwarder: &Forwarder, addr: SocketAddr) -> UpstreamStats {
    forwarder
        .upstream_stats()
        .into_iter()
        .find(|stats| stats.addr == addr)
        .expect("upstream listed")
}

// === per-domain rules and policy ===

#[tokio::test]
async fn rules_route_by_longest_suffix_including_reverse_zones() {
    let default = FakeUpstream::start().await;
    default.set("www.other.", &["192.0.2.1"], 60);
    let corp = FakeUpstream::start().await;
    corp.set("host.corp.example.", &["192.0.2.2"], 60);
    let eu = FakeUpstream::start().await;
    eu.set("db.eu.corp.example.", &["192.0.2.3"], 60);
    let reverse = FakeUpstream::start().await;
    reverse.answer(
        "5.0.0.10.in-addr.arpa.",
        RecordType::PTR,
        positive(vec![Record::from_rdata(
            name_of("5.0.0.10.in-addr.arpa."),
            60,
            RData::PTR(PTR(name_of("db.corp.example."))),
        )]),
    );
    let forwarder = Forwarder::new(Config {
        rules: vec![
            rule("corp.example", &[corp.addr()]),
            rule("EU.corp.example.", &[eu.addr()]),
            rule("10.in-addr.arpa.", &[reverse.addr()]),
        ],
        ..config(&[default.addr()])
    });

    let other = ask(&forwarder, "www.other.").await.expect("default");
    assert_eq!(addresses(&other), ["192.0.2.1"]);
    let host = ask(&forwarder, "HOST.Corp.Example.")
        .await
        .expect("corp rule");
    assert_eq!(addresses(&host), ["192.0.2.2"]);
    let db = ask(&forwarder, "db.eu.corp.example.")
        .await
        .expect("longest rule");
    assert_eq!(addresses(&db), ["192.0.2.3"]);
    assert_eq!(
        (default.queries(), corp.queries(), eu.queries()),
        (1, 1, 1),
        "each name went to its own upstream only"
    );

    // a reverse zone with a rule is forwarded even though bogus_priv is on
    let ptr = forwarder
        .resolve(
            &Query::query(name_of("5.0.0.10.in-addr.arpa."), RecordType::PTR),
            false,
        )
        .await
        .expect("reverse rule");
    assert_eq!(addresses(&ptr), ["db.corp.example."]);
    assert_eq!(reverse.queries(), 1);

    // a private reverse zone without a rule is answered locally
    let private = forwarder
        .resolve(
            &Query::query(name_of("1.1.168.192.in-addr.arpa."), RecordType::PTR),
            false,
        )
        .await
        .expect("policy answer");
    assert_eq!(private.response_code, ResponseCode::NXDomain);
    assert_eq!(private.source, Source::Policy(Policy::BogusPriv));
    assert_eq!(default.queries(), 1, "not forwarded");

    let info = forwarder.explain(&question("db.eu.corp.example."), false);
    assert_eq!(info.rule.as_deref(), Some("eu.corp.example."));
    assert_eq!(info.upstreams, [eu.addr()]);
    assert_eq!(info.answered_by, Some(eu.addr()));
    assert_eq!(info.state, CacheState::Fresh);
}

#[tokio::test]
async fn single_label_names_are_answered_locally_unless_a_rule_covers_them() {
    let default = FakeUpstream::start().await;
    let lan = FakeUpstream::start().await;
    lan.set("lan.", &["192.0.2.8"], 60);
    let forwarder = Forwarder::new(Config {
        rules: vec![rule("lan.", &[lan.addr()])],
        ..config(&[default.addr()])
    });

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let local = ask(&forwarder, "myhost.").await.expect("policy answer");
    assert_eq!(local.response_code, ResponseCode::NXDomain);
    assert_eq!(local.source, Source::Policy(Policy::DomainNeeded));
    assert!(local.answers.is_empty() && local.authorities.is_empty());
    assert_eq!(
        default.queries(),
        0,
        "single-label names are never forwarded"
    );
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.counter(names::POLICY_ANSWERS, &[("policy", "domain_needed")]),
        1
    );
    assert_eq!(
        forwarder.explain(&question("myhost."), false).policy,
        Some(Policy::DomainNeeded)
    );

    let routed = ask(&forwarder, "lan.").await.expect("rule wins");
    assert_eq!(addresses(&routed), ["192.0.2.8"]);

    // both policies off: forwarded (the fake answers NXDOMAIN for unknown names)
    let open = Forwarder::new(Config {
        domain_needed: false,
        bogus_priv: false,
        ..config(&[default.addr()])
    });
    let forwarded = ask(&open, "myhost.").await.expect("answer");
    assert_eq!(forwarded.source, Source::Upstream);
    let reverse = open
        .resolve(
            &Query::query(name_of("1.1.168.192.in-addr.arpa."), RecordType::PTR),
            false,
        )
        .await
        .expect("answer");
    assert_eq!(reverse.source, Source::Upstream);
    assert_eq!(default.queries(), 2);
}

#[tokio::test]
async fn rebind_protection_drops_private_addresses_for_public_names() {
    let upstream = FakeUpstream::start().await;
    upstream.set("mixed.example.", &["10.0.0.1", "192.0.2.5"], 60);
    upstream.set("internal.example.", &["192.168.1.1", "fd00::1"], 60);
    upstream.set("db.allowed.example.", &["10.1.1.1"], 60);
    upstream.set("db.corp.example.", &["10.2.2.2"], 60);
    let forwarder = Forwarder::new(Config {
        rebind_protection: true,
        rebind_allow: vec![name_of("Allowed.Example")],
        rules: vec![rule("corp.example.", &[upstream.addr()])],
        ..config(&[upstream.addr()])
    });

    let mixed = ask(&forwarder, "mixed.example.").await.expect("answer");
    assert_eq!(addresses(&mixed), ["192.0.2.5"], "only the public address");
    assert_eq!(mixed.source, Source::Upstream);

    for record_type in [RecordType::A, RecordType::AAAA] {
        let query = Query::query(name_of("internal.example."), record_type);
        for _ in 0..2 {
            let blocked = forwarder.resolve(&query, false).await.expect("answer");
            assert_eq!(blocked.response_code, ResponseCode::NoError);
            assert!(blocked.answers.is_empty(), "{record_type}: {blocked:?}");
            assert_eq!(blocked.source, Source::Policy(Policy::Rebind));
        }
    }
    assert_eq!(
        upstream.queries(),
        3,
        "the second of each was a (filtered) cache hit"
    );

    let allowed = ask(&forwarder, "db.allowed.example.")
        .await
        .expect("answer");
    assert_eq!(addresses(&allowed), ["10.1.1.1"]);
    let routed = ask(&forwarder, "db.corp.example.").await.expect("answer");
    assert_eq!(addresses(&routed), ["10.2.2.2"], "rule zones are internal");

    let off = Forwarder::new(config(&[upstream.addr()]));
    let unfiltered = ask(&off, "internal.example.").await.expect("answer");
    assert_eq!(addresses(&unfiltered), ["192.168.1.1"]);
}

// === health, selection, transport ===

#[tokio::test]
async fn a_failing_upstream_is_marked_down_skipped_probed_and_brought_back_up() {
    let flaky = FakeUpstream::start().await;
    flaky.set_silent(true);
    let good = FakeUpstream::start().await;
    for upstream in [&flaky, &good] {
        for index in 0..10 {
            upstream.set(&format!("n{index}.example."), &["192.0.2.1"], 60);
        }
    }
    let forwarder = Forwarder::new(Config {
        attempt_timeout: Duration::from_millis(100),
        max_fails: 2,
        probe_interval: Duration::from_millis(300),
        ..config(&[flaky.addr(), good.addr()])
    });
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    for index in 0..2 {
        ask(&forwarder, &format!("n{index}.example."))
            .await
            .expect("failover answer");
    }
    let down = stats_of(&forwarder, flaky.addr());
    assert!(!down.up, "{down:?}");
    assert_eq!((down.failures, down.consecutive_failures), (2, 2));
    let healthy = stats_of(&forwarder, good.addr());
    assert!(healthy.up);
    assert_eq!((healthy.failures, healthy.consecutive_failures), (0, 0));
    assert!(healthy.last_rtt.is_some());

    // down and not due for a probe: skipped
    ask(&forwarder, "n2.example.").await.expect("answer");
    assert_eq!(flaky.queries(), 2, "a down upstream is skipped");

    // due: exactly one query goes to it, however many clients ask
    tokio::time::sleep(Duration::from_millis(350)).await;
    for index in 3..6 {
        let answer = ask(&forwarder, &format!("n{index}.example."))
            .await
            .expect("answer");
        assert_eq!(answer.source, Source::Upstream);
    }
    assert_eq!(flaky.queries(), 3, "one probe per interval");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !stats_of(&forwarder, flaky.addr()).up,
        "the probe timed out"
    );

    // it recovers: the next probe brings it back, then it is asked first again
    flaky.set_silent(false);
    tokio::time::sleep(Duration::from_millis(350)).await;
    ask(&forwarder, "n6.example.").await.expect("answer");
    eventually("the probe to mark it up", || {
        stats_of(&forwarder, flaky.addr()).up
    })
    .await;
    let answered_before = good.queries();
    ask(&forwarder, "n7.example.").await.expect("answer");
    assert_eq!(good.queries(), answered_before, "first upstream used again");
    assert_eq!(stats_of(&forwarder, flaky.addr()).consecutive_failures, 0);

    let recorded = Recorded::take(&snapshotter);
    let flaky_label = flaky.addr().to_string();
    let good_label = good.addr().to_string();
    assert_eq!(
        recorded.counter(names::UPSTREAM_FAILURES, &[("upstream", &flaky_label)]),
        3
    );
    assert_eq!(
        recorded.counter(names::UPSTREAM_FAILURES, &[("upstream", &good_label)]),
        0
    );
    assert!(
        recorded.histogram_samples(
            names::UPSTREAM_DURATION_SECONDS,
            &[("upstream", &good_label)]
        ) > 0
    );
}

#[tokio::test]
async fn when_every_upstream_is_down_they_are_still_tried() {
    let only = FakeUpstream::start().await;
    only.set("www.example.", &["192.0.2.1"], 60);
    only.set_silent(true);
    let forwarder = Forwarder::new(Config {
        max_fails: 1,
        probe_interval: Duration::from_secs(60),
        ..config(&[only.addr()])
    });
    let error = ask(&forwarder, "www.example.").await.expect_err("silent");
    assert!(matches!(error, Error::AllFailed { .. }), "{error}");
    assert!(!stats_of(&forwarder, only.addr()).up);

    only.set_silent(false);
    let answer = ask(&forwarder, "www.example.")
        .await
        .expect("tried although down");
    assert_eq!(addresses(&answer), ["192.0.2.1"]);
    assert_eq!(only.queries(), 2);
    assert!(stats_of(&forwarder, only.addr()).up);
}

#[tokio::test]
async fn one_failing_upstream_does_not_fail_coalesced_waiters_or_mark_others_down() {
    let failing = FakeUpstream::start().await;
    failing.set_knobs(Knobs {
        servfail: true,
        delay: Duration::from_millis(100),
        ..Knobs::default()
    });
    let good = FakeUpstream::start().await;
    good.set("www.example.", &["192.0.2.4"], 60);
    let forwarder = Forwarder::new(Config {
        max_fails: 1,
        ..config(&[failing.addr(), good.addr()])
    });

    let query = question("www.example.");
    let results =
        futures::future::join_all((0..20).map(|_| forwarder.resolve(&query, false))).await;
    for result in results {
        assert_eq!(
            addresses(&result.expect("every waiter answered")),
            ["192.0.2.4"]
        );
    }
    assert_eq!((failing.queries(), good.queries()), (1, 1));
    let failing_stats = stats_of(&forwarder, failing.addr());
    let good_stats = stats_of(&forwarder, good.addr());
    assert_eq!(failing_stats.failures, 1);
    assert!(
        failing_stats.up,
        "SERVFAIL is an answer: reachable, not down"
    );
    assert_eq!((good_stats.failures, good_stats.up), (0, true));

    // a silent first upstream goes down; the second stays up
    failing.set_knobs(Knobs {
        drop: true,
        ..Knobs::default()
    });
    good.set("other.example.", &["192.0.2.5"], 60);
    ask(&forwarder, "other.example.").await.expect("answer");
    assert!(!stats_of(&forwarder, failing.addr()).up);
    assert!(stats_of(&forwarder, good.addr()).up);
}

#[tokio::test]
async fn race_takes_the_first_answer_and_cancels_the_rest() {
    let slow = FakeUpstream::start().await;
    slow.set("www.example.", &["192.0.2.1"], 60);
    slow.set_knobs(Knobs {
        delay: Duration::from_millis(300),
        ..Knobs::default()
    });
    let fast = FakeUpstream::start().await;
    fast.set("www.example.", &["192.0.2.2"], 60);
    let forwarder = Forwarder::new(Config {
        strategy: Strategy::Race,
        attempt_timeout: Duration::from_millis(500),
        ..config(&[slow.addr(), fast.addr()])
    });

    let answer = ask(&forwarder, "www.example.").await.expect("answer");
    assert_eq!(
        addresses(&answer),
        ["192.0.2.2"],
        "the faster upstream wins"
    );
    assert_eq!((slow.queries(), fast.queries()), (1, 1), "both were asked");
    let info = forwarder.explain(&question("www.example."), false);
    assert_eq!(info.answered_by, Some(fast.addr()));
    // the cancelled exchange is neither a failure nor a success
    let slow_stats = stats_of(&forwarder, slow.addr());
    assert_eq!((slow_stats.failures, slow_stats.last_rtt), (0, None));

    // sequential asks the first upstream only
    let sequential = Forwarder::new(Config {
        attempt_timeout: Duration::from_millis(500),
        ..config(&[slow.addr(), fast.addr()])
    });
    let answer = ask(&sequential, "www.example.").await.expect("answer");
    assert_eq!(addresses(&answer), ["192.0.2.1"]);
    assert_eq!(fast.queries(), 1);
}

#[tokio::test]
async fn tcp_only_sends_every_query_over_tcp() {
    let upstream = FakeUpstream::start().await;
    upstream.set("www.example.", &["192.0.2.6"], 60);
    let forwarder = Forwarder::new(Config {
        tcp_only: true,
        ..config(&[upstream.addr()])
    });
    let answer = ask(&forwarder, "www.example.").await.expect("answer");
    assert_eq!(addresses(&answer), ["192.0.2.6"]);
    assert_eq!((upstream.udp_queries(), upstream.tcp_queries()), (0, 1));
}

// === serve-stale ===

#[tokio::test]
async fn serves_stale_when_every_upstream_fails_and_refreshes_in_the_background() {
    let upstream = FakeUpstream::start().await;
    upstream.set("www.example.", &["192.0.2.1"], 60);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));
    ask(&forwarder, "www.example.").await.expect("warm");

    skip(Duration::from_secs(61)).await;
    upstream.set_silent(true);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let stale = ask(&forwarder, "www.example.").await.expect("stale answer");
    assert_eq!(stale.source, Source::Stale);
    assert_eq!(addresses(&stale), ["192.0.2.1"]);
    assert_eq!(stale.answers[0].ttl, 30, "RFC 8767 stale TTL");
    assert_eq!(upstream.queries(), 2);

    // within the recheck window: stale at once, no upstream query
    let again = ask(&forwarder, "www.example.").await.expect("stale answer");
    assert_eq!(again.source, Source::Stale);
    assert_eq!(upstream.queries(), 2);
    let info = forwarder.explain(&question("www.example."), false);
    assert_eq!(info.state, CacheState::Stale);
    assert!(info.retry_after_secs.is_some_and(|secs| secs <= 30));
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(recorded.counter(names::STALE_ANSWERS, &[]), 2);

    // after it, stale again while a background refresh picks up the new answer
    upstream.set_silent(false);
    upstream.set("www.example.", &["192.0.2.9"], 60);
    skip(Duration::from_secs(31)).await;
    let during_refresh = ask(&forwarder, "www.example.").await.expect("stale answer");
    assert_eq!(during_refresh.source, Source::Stale);
    eventually("the background refresh", || {
        forwarder.explain(&question("www.example."), false).state == CacheState::Fresh
    })
    .await;
    let fresh = ask(&forwarder, "www.example.").await.expect("fresh");
    assert_eq!(fresh.source, Source::Cache);
    assert_eq!(addresses(&fresh), ["192.0.2.9"]);
    assert_eq!(upstream.queries(), 3);
}

#[tokio::test]
async fn a_stale_nxdomain_does_not_shadow_the_last_positive_answer() {
    // The scenario: a name resolves, then briefly answers NXDOMAIN (an agent
    // restarting, a zone reload), then every upstream goes away. The client must get
    // the last positive answer, not a day of NXDOMAIN served from stale data.
    let upstream = FakeUpstream::start().await;
    answer_a(&upstream, "svc.example.", 60, &[1]);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));
    let first = ask(&forwarder, "svc.example.").await.expect("positive");
    assert_eq!(addresses(&first), ["192.0.2.1"]);

    // a fresh NXDOMAIN replaces the expired positive: that is correct
    skip(Duration::from_secs(61)).await;
    upstream.answer(
        "svc.example.",
        RecordType::A,
        negative(ResponseCode::NXDomain, Some((60, 60))),
    );
    let gone = ask(&forwarder, "svc.example.").await.expect("negative");
    assert_eq!(
        (gone.response_code, gone.source),
        (ResponseCode::NXDomain, Source::Upstream)
    );
    let cached = ask(&forwarder, "svc.example.").await.expect("negative");
    assert_eq!(
        (cached.response_code, cached.source),
        (ResponseCode::NXDomain, Source::Cache)
    );

    // the negative expires and the upstream dies: the last positive is served stale
    skip(Duration::from_secs(61)).await;
    upstream.set_silent(true);
    let stale = ask(&forwarder, "svc.example.").await.expect("stale");
    assert_eq!(stale.source, Source::Stale);
    assert_eq!(stale.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&stale), ["192.0.2.1"]);
    let info = forwarder.explain(&question("svc.example."), false);
    assert_eq!(info.response_code.as_deref(), Some("NXDomain"));
    assert_eq!(info.stale_response_code.as_deref(), Some("NoError"));

    // back up with a positive answer: the refresh replaces everything
    upstream.set_silent(false);
    answer_a(&upstream, "svc.example.", 60, &[2]);
    skip(Duration::from_secs(31)).await;
    ask(&forwarder, "svc.example.")
        .await
        .expect("stale while refreshing");
    eventually("the background refresh", || {
        forwarder.explain(&question("svc.example."), false).state == CacheState::Fresh
    })
    .await;
    let fresh = ask(&forwarder, "svc.example.").await.expect("fresh");
    assert_eq!(
        (fresh.source, addresses(&fresh)),
        (Source::Cache, vec!["192.0.2.2".to_owned()])
    );

    // a name that was only ever negative is served stale as it was
    upstream.answer(
        "never.example.",
        RecordType::A,
        negative(ResponseCode::NXDomain, Some((60, 60))),
    );
    ask(&forwarder, "never.example.").await.expect("negative");
    skip(Duration::from_secs(61)).await;
    upstream.set_silent(true);
    let stale_negative = ask(&forwarder, "never.example.")
        .await
        .expect("stale negative");
    assert_eq!(
        (stale_negative.response_code, stale_negative.source),
        (ResponseCode::NXDomain, Source::Stale)
    );
}

#[tokio::test]
async fn serve_stale_zero_disables_it() {
    let upstream = FakeUpstream::start().await;
    upstream.set("www.example.", &["192.0.2.1"], 60);
    let forwarder = Forwarder::new(Config {
        serve_stale: Duration::ZERO,
        ..config(&[upstream.addr()])
    });
    ask(&forwarder, "www.example.").await.expect("warm");
    skip(Duration::from_secs(61)).await;
    upstream.set_silent(true);
    let error = ask(&forwarder, "www.example.")
        .await
        .expect_err("nothing stale");
    assert!(matches!(error, Error::AllFailed { .. }), "{error}");
}

#[tokio::test]
async fn ttl_zero_answers_are_kept_for_serve_stale_only() {
    let upstream = FakeUpstream::start().await;
    upstream.set("zero.example.", &["192.0.2.3"], 0);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));
    for _ in 0..2 {
        let answer = ask(&forwarder, "zero.example.").await.expect("answer");
        assert_eq!(answer.source, Source::Upstream, "never answered from cache");
    }
    assert_eq!(upstream.queries(), 2);
    upstream.set_silent(true);
    let stale = ask(&forwarder, "zero.example.").await.expect("stale");
    assert_eq!(stale.source, Source::Stale);
    assert_eq!(addresses(&stale), ["192.0.2.3"]);
}

// === prefetch ===

#[tokio::test]
async fn hot_entry_is_prefetched_once_in_the_last_tenth_of_its_ttl() {
    let upstream = FakeUpstream::start().await;
    upstream.set("hot.example.", &["192.0.2.1"], 100);
    upstream.set("short.example.", &["192.0.2.1"], 5);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    for name in ["hot.example.", "short.example."] {
        ask(&forwarder, name).await.expect("warm");
    }

    skip(Duration::from_millis(4_600)).await;
    let short = ask(&forwarder, "short.example.").await.expect("hit");
    assert_eq!(short.source, Source::Cache);
    skip(Duration::from_secs(46)).await;
    let hit = ask(&forwarder, "hot.example.").await.expect("hit");
    assert_eq!(hit.source, Source::Cache);
    assert_eq!(
        upstream.queries(),
        2,
        "no prefetch before the last 10 %, none for TTL 5"
    );

    upstream.set("hot.example.", &["192.0.2.2"], 100);
    skip(Duration::from_secs(41)).await;
    for _ in 0..3 {
        let hit = ask(&forwarder, "hot.example.").await.expect("hit");
        assert_eq!(hit.source, Source::Cache);
        assert_eq!(addresses(&hit), ["192.0.2.1"], "served while prefetching");
    }
    eventually("the prefetch", || upstream.queries() == 3).await;
    eventually("the refreshed entry", || {
        forwarder
            .explain(&question("hot.example."), false)
            .remaining_ttl_secs
            .is_some_and(|secs| secs > 90)
    })
    .await;
    let refreshed = ask(&forwarder, "hot.example.").await.expect("hit");
    assert_eq!(refreshed.source, Source::Cache);
    assert_eq!(addresses(&refreshed), ["192.0.2.2"]);
    assert_eq!(upstream.queries(), 3, "one prefetch for three hits");
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(recorded.counter(names::PREFETCHES, &[]), 1);
}

// === reconfigure and explain ===

#[tokio::test]
async fn reconfigure_swaps_upstreams_and_keeps_the_cache_and_queries_in_flight() {
    let old = FakeUpstream::start().await;
    old.set("cached.example.", &["192.0.2.1"], 300);
    old.set("slow.example.", &["192.0.2.7"], 300);
    let new = FakeUpstream::start().await;
    new.set("fresh.example.", &["192.0.2.2"], 300);
    // Timeouts well above the upstream's delay: the slow query must outlive the
    // reconfiguration, not race its own timeout on a loaded machine.
    let roomy = |upstreams: &[SocketAddr]| {
        config_with(upstreams, Duration::from_secs(2), Duration::from_secs(4))
    };
    let forwarder = Forwarder::new(roomy(&[old.addr()]));
    let started_with = forwarder.config();
    ask(&forwarder, "cached.example.").await.expect("warm");

    old.set_knobs(Knobs {
        delay: Duration::from_millis(150),
        ..Knobs::default()
    });
    let in_flight = tokio::spawn({
        let forwarder = forwarder.clone();
        async move { ask(&forwarder, "slow.example.").await }
    });
    eventually("the slow query upstream", || old.queries() == 2).await;

    let ignored = forwarder.reconfigure(Config {
        cache_size: 5,
        max_in_flight: 7,
        strategy: Strategy::Race,
        ..roomy(&[new.addr()])
    });
    assert_eq!(ignored, [Field::CacheSize, Field::MaxInFlight]);
    let now = forwarder.config();
    assert_eq!(now.upstreams, [new.addr()]);
    assert_eq!(now.strategy, Strategy::Race);
    assert_eq!(now.cache_size, started_with.cache_size);
    assert_eq!(now.max_in_flight, started_with.max_in_flight);

    let slow = in_flight
        .await
        .expect("task")
        .expect("in-flight query finished");
    assert_eq!(addresses(&slow), ["192.0.2.7"]);
    let cached = ask(&forwarder, "cached.example.").await.expect("kept");
    assert_eq!(cached.source, Source::Cache);
    let fresh = ask(&forwarder, "fresh.example.")
        .await
        .expect("new upstream");
    assert_eq!(addresses(&fresh), ["192.0.2.2"]);
    assert_eq!((old.queries(), new.queries()), (2, 1));

    // health and counters of an upstream that stays are kept; removed ones vanish
    let ignored = forwarder.reconfigure(Config {
        rules: vec![rule("corp.example.", &[old.addr()])],
        ..config(&[new.addr()])
    });
    assert!(ignored.is_empty());
    let stats = forwarder.upstream_stats();
    assert_eq!(
        stats.iter().map(|s| s.addr).collect::<Vec<_>>(),
        [new.addr(), old.addr()]
    );
    assert_eq!(stats[0].queries, 1, "kept across reconfigure");
    assert_eq!(stats[1].queries, 0, "re-added: a new upstream");
}

#[tokio::test]
async fn explain_reports_cache_route_and_policy_as_json() {
    let upstream = FakeUpstream::start().await;
    upstream.set("www.example.", &["192.0.2.1"], 300);
    let forwarder = Forwarder::new(config(&[upstream.addr()]));

    let absent = forwarder.explain(&question("www.example."), false);
    assert_eq!(absent.state, CacheState::Absent);
    assert_eq!(absent.upstreams, [upstream.addr()]);
    assert_eq!(upstream.queries(), 0, "explain does no I/O");

    ask(&forwarder, "WWW.example.").await.expect("answer");
    skip(Duration::from_secs(100)).await;
    let info = forwarder.explain(&question("www.example."), false);
    let json = serde_json::to_value(&info).expect("serializable");
    assert_eq!(json["name"], "www.example.");
    assert_eq!(json["record_type"], "A");
    assert_eq!(json["state"], "fresh");
    assert_eq!(json["response_code"], "NoError");
    assert_eq!(json["answered_by"], upstream.addr().to_string());
    assert_eq!(json["ttl_secs"], 300);
    assert_eq!(json["age_secs"], 100);
    assert_eq!(json["remaining_ttl_secs"], 200);
    assert_eq!(json["policy"], serde_json::Value::Null);
    assert_eq!(json["rule"], serde_json::Value::Null);

    assert_eq!(
        forwarder.explain(&question("www.example."), true).state,
        CacheState::Absent,
        "DO=1 is another key"
    );
    let reverse = forwarder.explain(
        &Query::query(name_of("1.0.0.127.in-addr.arpa."), RecordType::PTR),
        false,
    );
    let json = serde_json::to_value(&reverse).expect("serializable");
    assert_eq!(json["policy"], "bogus_priv");

    // past TTL, within serve_stale: stale (kept for serve-stale)
    skip(Duration::from_secs(260)).await;
    assert_eq!(
        forwarder.explain(&question("www.example."), false).state,
        CacheState::Stale
    );
    // past TTL + serve_stale: gone
    skip(Duration::from_secs(86_400)).await;
    assert_eq!(
        forwarder.explain(&question("www.example."), false).state,
        CacheState::Absent
    );

    let stats = serde_json::to_value(forwarder.upstream_stats()).expect("serializable");
    assert_eq!(stats[0]["up"], true);
    assert_eq!(stats[0]["queries"], 1);
    assert!(stats[0]["last_rtt"].is_number());
}
