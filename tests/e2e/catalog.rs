//! The Consul-backed cache: coalescing, refresh, stale-on-error, outages.

use std::net::IpAddr;
use std::time::Duration;

use consul_sim::{Fault, Registration};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, sorted_addresses, udp};

use crate::harness::{FAST_REFRESH, Harness, eventually, standard_sim};

const HEALTH_WEB: &str = "/v1/health/service/web";

fn fast(raw: &mut dnsfront::config::RawConfig) {
    raw.catalog.refresh_interval = FAST_REFRESH;
    raw.catalog.negative_cache_ttl = FAST_REFRESH;
    raw.catalog.backoff_min = Duration::from_millis(200);
    raw.catalog.backoff_max = Duration::from_secs(1);
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

#[tokio::test]
async fn concurrent_first_queries_share_one_consul_request() {
    let sim = standard_sim();
    // Slow Consul, so all 100 queries arrive while the first fetch is in flight.
    sim.inject(Fault::Delay {
        path_prefix: HEALTH_WEB.into(),
        delay: Duration::from_millis(300),
    });
    let h = Harness::start_with(sim, |_| {}).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let dns = h.dns;
        tasks.push(tokio::spawn(async move {
            udp(dns, &Ask::new("web.service.consul.", RecordType::A))
                .await
                .0
        }));
    }
    for task in tasks {
        let answer = task.await.expect("task");
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answer.answers.len(), 2);
    }
    assert_eq!(
        h.sim.request_count(HEALTH_WEB),
        1,
        "100 first queries → 1 Consul request"
    );
    h.stop().await;
}

#[tokio::test]
async fn cached_names_do_not_wait_on_consul_and_are_refreshed_in_background() {
    let h = Harness::start_with(standard_sim(), fast).await;
    let ask = Ask::new("web.service.consul.", RecordType::A);
    udp(h.dns, &ask).await;
    // Keep asking for a while: answers come from the cache, and Consul sees about
    // one read per refresh interval, not one per query.
    let started = tokio::time::Instant::now();
    let mut queries = 0;
    while started.elapsed() < FAST_REFRESH * 5 {
        let (answer, _) = udp(h.dns, &ask).await;
        assert_eq!(answer.answers.len(), 2);
        queries += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reads = h.sim.request_count(HEALTH_WEB);
    assert!(queries > 50, "sanity: {queries} queries");
    // One read per refresh interval (5 here, plus the first), never one per query;
    // a loaded 2-core CI machine may delay a refresh tick, hence the slack.
    assert!(
        (2..=9).contains(&reads),
        "{reads} Consul reads for {queries} queries over 5 refresh intervals"
    );
    // Every read is a stale read (spreads load over servers, survives elections).
    for request in h.sim.requests().iter().filter(|r| r.path == HEALTH_WEB) {
        assert!(
            request.query.contains("stale"),
            "read without ?stale: {request:?}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn registration_changes_show_up_within_one_refresh_interval() {
    let h = Harness::start_with(standard_sim(), fast).await;
    let ask = Ask::new("web.service.consul.", RecordType::A);
    let (answer, _) = udp(h.dns, &ask).await;
    assert_eq!(
        sorted_addresses(&answer),
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
    // One refresh interval, plus slack for a loaded 2-core CI machine.
    let within = FAST_REFRESH + Duration::from_millis(500);

    // A new instance appears.
    h.sim.register(
        Registration::new("web")
            .id("web-9")
            .node("node-9", "10.0.0.9")
            .port(80)
            .check("service:web-9", "passing"),
    );
    let dns = h.dns;
    assert!(
        eventually(within, || async {
            sorted_addresses(&udp(dns, &ask).await.0).contains(&ip("10.0.0.9"))
        })
        .await,
        "registered instance not answered within one refresh interval"
    );

    // It goes critical: gone.
    h.sim.set_check("node-9", "service:web-9", "critical");
    assert!(
        eventually(within, || async {
            !sorted_addresses(&udp(dns, &ask).await.0).contains(&ip("10.0.0.9"))
        })
        .await,
        "critical instance still answered after one refresh interval"
    );

    // Deregistered: stays gone; the warning one recovers to passing and stays.
    h.sim.deregister("node-1", "web-1");
    assert!(
        eventually(within, || async {
            sorted_addresses(&udp(dns, &ask).await.0) == vec![ip("10.0.0.2")]
        })
        .await,
        "deregistered instance still answered"
    );
    h.stop().await;
}

#[tokio::test]
async fn unknown_services_are_cached_negatively() {
    let h = Harness::start_with(standard_sim(), |raw| {
        raw.catalog.negative_cache_ttl = Duration::from_secs(30);
    })
    .await;
    for _ in 0..20 {
        let (answer, _) = udp(h.dns, &Ask::new("typo.service.consul.", RecordType::A)).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(h.sim.request_count("/v1/health/service/typo"), 1);
    h.stop().await;
}

#[tokio::test]
async fn consul_down_keeps_cached_names_answering_and_unknown_names_servfail() {
    let h = Harness::start_with(standard_sim(), fast).await;
    let ask = Ask::new("web.service.consul.", RecordType::A);
    udp(h.dns, &ask).await;
    h.consul.set_down(true);
    // Past the fresh window the data is stale but still served, with EDE 3.
    tokio::time::sleep(FAST_REFRESH * 3).await;
    let (answer, _) = udp(h.dns, &ask.clone().edns(1232)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        sorted_addresses(&answer),
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
    let edns = answer.edns.as_ref().expect("OPT in answer");
    let ede = edns
        .options()
        .as_ref()
        .iter()
        .find(|(code, _)| u16::from(*code) == 15);
    assert!(
        ede.is_some(),
        "stale answer must carry Extended DNS Error 3: {edns:?}"
    );

    // Never seen and Consul unreachable: SERVFAIL, never NXDOMAIN.
    let (answer, _) = udp(h.dns, &Ask::new("other.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);

    // Consul returns: fresh answers again, without EDE.
    h.consul.set_down(false);
    let dns = h.dns;
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (answer, _) = udp(
                dns,
                &Ask::new("web.service.consul.", RecordType::A).edns(1232),
            )
            .await;
            answer.edns.as_ref().is_some_and(|edns| {
                !edns
                    .options()
                    .as_ref()
                    .iter()
                    .any(|(code, _)| u16::from(*code) == 15)
            })
        })
        .await,
        "answers did not become fresh after Consul came back"
    );
    h.stop().await;
}

#[tokio::test]
async fn consul_errors_keep_last_good_data_and_back_off() {
    let h = Harness::start_with(standard_sim(), fast).await;
    let ask = Ask::new("web.service.consul.", RecordType::A);
    udp(h.dns, &ask).await;
    for fault in [
        Fault::Status {
            path_prefix: HEALTH_WEB.into(),
            status: 500,
            body: "No cluster leader".into(),
            count: None,
        },
        Fault::Status {
            path_prefix: HEALTH_WEB.into(),
            status: 429,
            body: "rate limit exceeded, try again later or against a different server".into(),
            count: None,
        },
        Fault::Garbage {
            path_prefix: HEALTH_WEB.into(),
        },
    ] {
        h.sim.clear_faults();
        h.sim.inject(fault);
        h.sim.reset_requests();
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let (answer, _) = udp(h.dns, &ask).await;
            assert_eq!(
                sorted_addresses(&answer),
                vec![ip("10.0.0.1"), ip("10.0.0.2")]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Without backoff a 400 ms refresh would be ~8 reads; with it, fewer,
        // and never one per query (~100 queries were sent).
        let reads = h.sim.request_count(HEALTH_WEB);
        assert!(reads <= 8, "{reads} Consul reads in 3 s while failing");
    }
    h.stop().await;
}

#[tokio::test]
async fn first_query_to_a_hanging_consul_gets_servfail_quickly() {
    let sim = standard_sim();
    sim.inject(Fault::Hang {
        path_prefix: HEALTH_WEB.into(),
    });
    let h = Harness::start_with(sim, |raw| {
        raw.catalog.first_fetch_timeout = Duration::from_millis(500);
    })
    .await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    h.stop().await;
}

#[tokio::test]
async fn acl_token_is_sent_and_a_bad_one_gives_servfail() {
    let sim = standard_sim();
    sim.set_acl_tokens(&["good-token"]);
    let h = Harness::start_with(sim, |raw| raw.consul.token = Some("good-token".into())).await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.answers.len(), 2);
    h.stop().await;

    let sim = standard_sim();
    sim.set_acl_tokens(&["good-token"]);
    let h = Harness::start_with(sim, |raw| raw.consul.token = Some("bad-token".into())).await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::ServFail,
        "403 is not NXDOMAIN"
    );
    h.stop().await;
}

#[tokio::test]
async fn names_nobody_asks_for_stop_costing_consul_anything() {
    let h = Harness::start_with(standard_sim(), |raw| {
        fast(raw);
        raw.catalog.idle_timeout = Duration::from_millis(800);
    })
    .await;
    let ask = Ask::new("web.service.consul.", RecordType::A);
    udp(h.dns, &ask).await;
    // Idle for well past idle_timeout: refreshes stop.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    h.sim.reset_requests();
    tokio::time::sleep(FAST_REFRESH * 4).await;
    assert_eq!(
        h.sim.request_count(HEALTH_WEB),
        0,
        "an idle name was still refreshed"
    );

    // Asked again: its data is of unknown age, so it is re-read before answering,
    // and a change made while it was idle shows at once. (Its watch resumes at
    // once too: a blocking read on the index just read, not a second read.)
    h.sim.deregister("node-1", "web-1");
    let (answer, _) = udp(h.dns, &ask.clone().edns(1232)).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("10.0.0.2")]);
    let reads: Vec<_> = h
        .sim
        .requests()
        .into_iter()
        .filter(|record| record.path == HEALTH_WEB)
        .collect();
    let plain = reads
        .iter()
        .filter(|record| !record.query.split('&').any(|p| p.starts_with("index=")))
        .count();
    assert_eq!(plain, 1, "one re-read before answering: {reads:?}");
    assert!(
        reads.len() <= 2,
        "at most the watch's blocking read besides: {reads:?}"
    );
    h.stop().await;
}
