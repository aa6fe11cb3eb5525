//! Memory has a budget, by bytes (issue 13 §4), through the real binary: a
//! flood of large forwarded answers from a zone someone controls leaves the
//! resolver's memory within its cache budget, and a name in steady use stays
//! cached.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use test_support::{Ask, FakeUpstream, Knobs, name_of, positive, udp};

use crate::binary::{Server, Setup};

/// Large answers asked for; together about 38 MiB of wire data.
const FLOOD: usize = 600;
/// The forwarder's cache budget in this test.
const CACHE_MAX_BYTES: u64 = 1 << 20;

/// 240 TXT records of 252 bytes: an answer of about 63 KiB.
fn large_answer(name: &str) -> Vec<Record> {
    (0..240)
        .map(|n| {
            let text = format!("{n:03}{}", "x".repeat(248));
            Record::from_rdata(name_of(name), 3_600, RData::TXT(TXT::new(vec![text])))
        })
        .collect()
}

async fn ask_hot(server: &Server) {
    let (answer, _) = udp(server.dns, &Ask::new("hot.example.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        test_support::addresses(&answer),
        ["192.0.2.80".parse::<std::net::IpAddr>().expect("ip")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_answers_stays_within_the_cache_budget_and_a_hot_name_keeps_hitting() {
    let setup = Setup::start().await;
    let upstream = FakeUpstream::start().await;
    // Over UDP the fake answers with TC: dnsfront fetches every large answer over TCP.
    upstream.set_knobs(Knobs {
        truncate_udp: true,
        ..Knobs::default()
    });
    upstream.set("hot.example", &["192.0.2.80"], 3_600);
    for n in 0..FLOOD {
        let name = format!("big{n}.example.");
        upstream.answer(&name, RecordType::TXT, positive(large_answer(&name)));
    }
    setup.write_config(&format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nupstreams = [\"{}\"]\nattempt_timeout = \"3s\"\ndeadline = \"6s\"\ncache_max_bytes = {CACHE_MAX_BYTES}\n",
        upstream.addr()
    ));
    let server = Server::start(&setup.config).await;
    let pid = server.child.id().expect("pid");
    ask_hot(&server).await;
    // Warm up the allocator with a few large answers before measuring.
    for n in 0..20 {
        let ask = Ask::new(&format!("big{n}.example."), RecordType::TXT);
        udp(server.dns, &ask).await;
    }
    let before = test_support::rss_bytes(pid);
    for n in 20..FLOOD {
        // The client gets a truncated answer (TC); dnsfront caches the whole one.
        let ask = Ask::new(&format!("big{n}.example."), RecordType::TXT);
        let (answer, _) = udp(server.dns, &ask).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "big{n}"
        );
        if n % 10 == 0 {
            ask_hot(&server).await;
        }
    }
    let grown = test_support::rss_bytes(pid).saturating_sub(before);
    // Kept whole, the answers would take 36 MiB more; bounded, the cache holds
    // 1 MiB, and the rest is the allocator's working set for one answer in flight.
    assert!(
        grown < 16 << 20,
        "RSS grew by {} MiB over {FLOOD} large answers",
        grown >> 20
    );

    // The upstream goes silent: the hot name is still answered, from the cache.
    upstream.set_knobs(Knobs {
        drop: true,
        ..Knobs::default()
    });
    let asked = upstream.queries();
    tokio::time::timeout(Duration::from_secs(2), ask_hot(&server))
        .await
        .expect("the hot name is answered at once, from the cache");
    assert_eq!(
        upstream.queries(),
        asked,
        "the hot name did not go upstream"
    );
    server.stop().await;
    setup.stop().await;
}
