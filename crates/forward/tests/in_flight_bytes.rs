//! Answers in flight are bounded by bytes (`max_in_flight_bytes`, issue 13 §4): an
//! upstream that sends large TCP answers slowly holds at most the budget, every answer
//! beyond it is dropped at once (not queued), and small answers keep flowing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dnsfront_forward::{Config, Error, Forwarder, metrics as names};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use test_support::{DebuggingRecorder, Recorded, name_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

/// The budget in this test: four of the large answers fit, a fifth does not.
const BUDGET: u64 = 256 << 10;
/// Records in a large answer: about 61 KiB on the wire.
const LARGE_RECORDS: usize = 228;
/// Large names asked for at once.
const LARGE_QUERIES: usize = 12;

/// An upstream whose large answers (`big*` names) come over TCP only, slowly: the
/// length prefix and a few bytes at once, the rest when the test releases them.
struct SlowUpstream {
    addr: SocketAddr,
    /// TCP answers whose first bytes were sent.
    started: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

fn reply_to(query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.clone());
    reply
}

fn large_reply(query: &Message) -> Vec<u8> {
    let mut reply = reply_to(query);
    let name = query.queries[0].name().clone();
    reply.answers = (0..LARGE_RECORDS)
        .map(|n| {
            let text = format!("{n:03}{}", "x".repeat(247));
            Record::from_rdata(name.clone(), 300, RData::TXT(TXT::new(vec![text])))
        })
        .collect();
    let bytes = reply.to_vec().expect("encode");
    let length = u64::try_from(bytes.len()).expect("length");
    assert!(
        4 * length <= BUDGET && 5 * length > BUDGET,
        "{length} bytes: four must fit the budget, five not"
    );
    bytes
}

impl SlowUpstream {
    async fn start() -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = udp.local_addr().expect("addr");
        let tcp = TcpListener::bind(addr).await.expect("bind tcp");
        let started = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        tokio::spawn(async move {
            let mut buffer = vec![0_u8; 4_096];
            while let Ok((length, peer)) = udp.recv_from(&mut buffer).await {
                let Ok(query) = Message::from_vec(&buffer[..length]) else {
                    continue;
                };
                let mut reply = reply_to(&query);
                let name = query.queries[0].name().clone();
                if name.to_ascii().starts_with("big") {
                    reply.metadata.truncation = true;
                } else {
                    reply.answers = vec![Record::from_rdata(
                        name,
                        300,
                        RData::A(A::new(192, 0, 2, 7)),
                    )];
                }
                let bytes = reply.to_vec().expect("encode");
                let _ = udp.send_to(&bytes, peer).await;
            }
        });
        let counter = Arc::clone(&started);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let counter = Arc::clone(&counter);
                let mut released = released.clone();
                tokio::spawn(async move {
                    let Ok(length) = stream.read_u16().await else {
                        return;
                    };
                    let mut query = vec![0_u8; usize::from(length)];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let query = Message::from_vec(&query).expect("query");
                    let reply = large_reply(&query);
                    let mut framed = u16::try_from(reply.len())
                        .expect("fits a frame")
                        .to_be_bytes()
                        .to_vec();
                    framed.extend_from_slice(&reply);
                    let (now, later) = framed.split_at(100);
                    if stream.write_all(now).await.is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|released| *released).await;
                    let _ = stream.write_all(later).await;
                });
            }
        });
        Self {
            addr,
            started,
            release,
        }
    }
}

async fn resolve(
    forwarder: &Forwarder,
    name: &str,
    record_type: RecordType,
) -> Result<usize, Error> {
    forwarder
        .resolve(&Query::query(name_of(name), record_type), false)
        .await
        .map(|answer| answer.answers.len())
}

#[tokio::test]
async fn large_answers_beyond_the_byte_budget_are_dropped_at_once_and_small_ones_flow() {
    let upstream = SlowUpstream::start().await;
    let forwarder = Forwarder::new(Config {
        upstreams: vec![upstream.addr],
        attempt_timeout: Duration::from_secs(30),
        deadline: Duration::from_secs(30),
        max_in_flight_bytes: BUDGET,
        ..Config::default()
    });
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let mut large: FuturesUnordered<_> = (0..LARGE_QUERIES)
        .map(|n| {
            let forwarder = forwarder.clone();
            async move {
                (
                    n,
                    resolve(&forwarder, &format!("big{n}.example."), RecordType::TXT).await,
                )
            }
        })
        .collect();
    // Every large answer has started to arrive; only four fit the budget, so the
    // others must come back now, while the four are still being read.
    let mut dropped = Vec::new();
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while dropped.len() < LARGE_QUERIES - 4 {
            let (n, result) = large.next().await.expect("a large query");
            dropped.push((n, result));
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{} large answers came back before the upstream finished sending; {} must have been dropped for bytes",
        dropped.len(),
        LARGE_QUERIES - 4
    );
    for (n, result) in &dropped {
        assert!(
            matches!(result, Err(Error::Overloaded)),
            "big{n}: {result:?}"
        );
    }
    assert_eq!(upstream.started.load(Ordering::SeqCst), LARGE_QUERIES);

    // Small answers keep flowing while the budget is full.
    for n in 0..20 {
        let answers = resolve(&forwarder, &format!("small{n}.example."), RecordType::A)
            .await
            .expect("a small answer");
        assert_eq!(answers, 1);
    }

    // The four that fit complete in full once the upstream sends the rest.
    upstream.release.send(true).expect("release");
    let mut completed = 0;
    while let Some((n, result)) = large.next().await {
        assert_eq!(
            result.expect("a large answer within the budget"),
            LARGE_RECORDS,
            "big{n}"
        );
        completed += 1;
    }
    assert_eq!(completed, 4);

    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.counter(names::OVER_BUDGET, &[]),
        (LARGE_QUERIES - 4) as u64
    );
    // Everything given back once the answers reached their queries.
    assert_eq!(recorded.gauge(names::IN_FLIGHT_BYTES, &[]), Some(0.0));
}
