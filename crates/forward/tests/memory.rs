//! The response cache is bounded by bytes (issue 13 §4): large answers from a
//! fake upstream count by their size, the charged size stays under
//! `cache_max_bytes`, and a name in steady use keeps hitting.

mod common;

use std::time::Duration;

use common::{addresses, answer_a, ask, config_with};
use dnsfront_forward::{Config, Forwarder, Source, metrics as names};
use hickory_proto::op::Query;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use test_support::{DebuggingRecorder, FakeUpstream, Knobs, Recorded, name_of, positive};

/// TXT records adding up to about 60 KiB of wire data for `name`.
fn large_answer(name: &str) -> Vec<Record> {
    (0..240)
        .map(|n| {
            let text = format!("{n:03}{}", "x".repeat(248));
            Record::from_rdata(name_of(name), 300, RData::TXT(TXT::new(vec![text])))
        })
        .collect()
}

#[tokio::test]
async fn large_answers_count_by_their_size_and_a_hot_name_keeps_hitting() {
    const MAX_BYTES: u64 = 2 << 20;
    let upstream = FakeUpstream::start().await;
    // Over UDP the fake answers with TC: every large answer comes over TCP.
    upstream.set_knobs(Knobs {
        truncate_udp: true,
        ..Knobs::default()
    });
    answer_a(&upstream, "hot.example.", 300, &[1]);
    let forwarder = Forwarder::new(Config {
        cache_max_bytes: MAX_BYTES,
        ..config_with(
            &[upstream.addr()],
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
    });
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let hot = ask(&forwarder, "hot.example.").await.expect("hot answer");
    assert_eq!(hot.source, Source::Upstream);
    let mut hot_hits = 0;
    for n in 0..100 {
        let name = format!("big{n}.example.");
        upstream.answer(&name, RecordType::TXT, positive(large_answer(&name)));
        let answer = forwarder
            .resolve(&Query::query(name_of(&name), RecordType::TXT), false)
            .await
            .expect("large answer");
        assert_eq!(answer.answers.len(), 240, "{name}");
        assert!(
            forwarder.cached_bytes() <= MAX_BYTES,
            "after {name}: {} bytes charged",
            forwarder.cached_bytes()
        );
        // The name in steady use, asked between the large ones.
        let hot = ask(&forwarder, "hot.example.").await.expect("hot answer");
        assert_eq!(addresses(&hot), ["192.0.2.1"]);
        if hot.source == Source::Cache {
            hot_hits += 1;
        }
    }
    // 100 answers of 60 KiB are 6 MiB: most did not stay, and the cache is
    // full by bytes, not by its 10,000 entries.
    let charged = forwarder.cached_bytes();
    assert!(
        charged > MAX_BYTES / 2 && charged <= MAX_BYTES,
        "{charged} bytes"
    );
    assert!(
        forwarder.cached_entries() < 40,
        "{} entries",
        forwarder.cached_entries()
    );
    assert_eq!(hot_hits, 100, "the hot name was evicted by the flood");
    let recorded = Recorded::take(&snapshotter);
    let gauge = recorded
        .gauge(names::CACHE_BYTES, &[])
        .expect("forward.cache_bytes set");
    assert!(
        gauge > 0.0 && gauge <= MAX_BYTES as f64,
        "forward.cache_bytes = {gauge}"
    );
    assert!(recorded.counter(names::CACHE_EVICTIONS, &[]) > 50);
}

#[tokio::test]
async fn typical_answers_are_bounded_by_the_entry_count_within_the_default_bytes() {
    let upstream = FakeUpstream::start().await;
    let forwarder = Forwarder::new(Config {
        cache_size: 200,
        ..config_with(
            &[upstream.addr()],
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
    });
    for n in 0..400 {
        let name = format!("n{n}.example.");
        answer_a(&upstream, &name, 300, &[1, 2]);
        ask(&forwarder, &name).await.expect("answer");
    }
    let entries = forwarder.cached_entries();
    assert!((100..=200).contains(&entries), "{entries} entries");
    assert!(
        forwarder.cached_bytes() <= Config::default().cache_max_bytes,
        "{}",
        forwarder.cached_bytes()
    );
}
