//! Abuse over real sockets: refused clients are answered in the UDP thread
//! without taking general-path slots, and ANY for forwarded names gets the
//! RFC 8482 answer without reaching an upstream.

mod support;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dnsfront_catalog::{Freshness, Lookup, Node, ServiceInstance};
use dnsfront_dns::{CatalogView, Config, Listeners, Router, ServerOptions, UdpOptions, serve_with};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use ipnet::IpNet;
use metrics_util::debugging::Snapshotter;
use support::{FakeUpstream, instance, start_default};
use test_support::{Ask, DebuggingRecorder, Recorded, tcp, udp};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

/// The UDP threads are not tokio tasks: their metrics need the global recorder.
fn global_metrics() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        snapshotter
    })
}

/// A catalog whose lookups wait at a gate until it opens.
#[derive(Clone)]
struct Gated {
    gate: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl CatalogView for Gated {
    async fn service(&self, _: &str, _: Option<&str>) -> Lookup<Arc<[ServiceInstance]>> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.acquire().await.expect("gate"));
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        Lookup::Found(
            vec![instance("n1", "10.0.0.1", None, 80, &[])].into(),
            Freshness::Fresh,
        )
    }

    async fn node(&self, _: &str, _: Option<&str>) -> Lookup<Arc<Node>> {
        Lookup::NotFound(Freshness::Fresh)
    }
}

fn web() -> Ask {
    Ask::new("web.service.consul.", RecordType::A)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_flood_is_answered_inline_and_takes_no_general_path_slot() {
    let metrics = global_metrics();
    let catalog = Gated {
        gate: Arc::new(Semaphore::new(0)),
        waiting: Arc::default(),
    };
    let router = Router::with_backends(Config::default(), catalog.clone(), None::<FakeUpstream>);
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
    let addr = listeners.local_addrs()[0];
    let options = ServerOptions {
        allowed_networks: vec![IpNet::new(IpAddr::from([127, 0, 0, 1]), 32).expect("prefix")],
        ..ServerOptions::default()
    };
    // One general-path slot, held below by an allowed client's query.
    let udp_options = UdpOptions {
        sockets: 2,
        max_in_flight: 1,
    };
    let _server = serve_with(router, listeners, options, udp_options).expect("serve");
    let allowed = tokio::spawn(async move { udp(addr, &web()).await });
    while catalog.waiting.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 127.0.0.2 is outside the allowed networks (Linux answers all of 127/8).
    let refused = UdpSocket::bind("127.0.0.2:0").await.expect("bind");
    let query = web().to_bytes();
    let mut buf = [0u8; 512];
    for round in 0u16..10 {
        for n in 0u16..20 {
            let mut datagram = query.clone();
            datagram[..2].copy_from_slice(&(round * 20 + n).to_be_bytes());
            refused.send_to(&datagram, addr).await.expect("send");
        }
        for _ in 0..20 {
            let (len, _) =
                tokio::time::timeout(Duration::from_secs(2), refused.recv_from(&mut buf))
                    .await
                    .expect("every refused query is answered, slot or no slot")
                    .expect("recv");
            let reply = Message::from_vec(&buf[..len]).expect("a well-formed reply");
            assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
            assert!(reply.metadata.recursion_desired);
            assert!(reply.answers.is_empty());
            assert_eq!(reply.queries.len(), 1, "the question is echoed");
            assert_eq!(reply.queries[0].name().to_ascii(), "web.service.consul.");
            assert_eq!(reply.queries[0].query_type(), RecordType::A);
            assert!(len <= query.len(), "never larger than the query");
        }
    }
    assert_eq!(
        Recorded::take(metrics).counter("dns.udp_overload_drops_total", &[]),
        0,
        "no refused datagram competed for the slot"
    );

    // A header-only request is refused with no question.
    let mut bare = query[..12].to_vec();
    bare[5] = 0;
    refused.send_to(&bare, addr).await.expect("send");
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), refused.recv_from(&mut buf))
        .await
        .expect("answered")
        .expect("recv");
    assert_eq!(len, 12);
    assert_eq!(buf[3] & 0x0f, 5, "REFUSED");

    catalog.gate.add_permits(100);
    let (answer, _) = allowed.await.expect("task");
    assert_eq!(
        answer.answers.len(),
        1,
        "the allowed client still gets its answer"
    );
}

#[tokio::test]
async fn any_for_a_forwarded_name_gets_the_rfc8482_answer_without_the_upstream() {
    let server = start_default().await;
    let ask = Ask::new("Example.ORG.", RecordType::ANY);
    let (over_udp, _) = udp(server.addr, &ask).await;
    let over_tcp = tcp(server.addr, &ask).await;
    for reply in [over_udp, over_tcp] {
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1);
        let record = &reply.answers[0];
        assert_eq!(record.name.to_ascii(), "Example.ORG.", "the asked case");
        let RData::HINFO(hinfo) = &record.data else {
            panic!("HINFO expected: {record:?}");
        };
        assert_eq!(&*hinfo.cpu, b"RFC8482");
        assert!(hinfo.os.is_empty());
    }
    assert!(
        server.upstream.asked().is_empty(),
        "ANY never reaches an upstream"
    );
    // Other types are still forwarded.
    let _ = udp(server.addr, &Ask::new("example.org.", RecordType::TXT)).await;
    assert_eq!(server.upstream.asked().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_never_applies_to_loopback_clients() {
    let metrics = global_metrics();
    let router = Router::with_backends(
        Config::default(),
        support::FakeCatalog::default(),
        None::<FakeUpstream>,
    );
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
    let addr = listeners.local_addrs()[0];
    let options = ServerOptions {
        rate_limit: 1,
        ..ServerOptions::default()
    };
    let _server = serve_with(router, listeners, options, UdpOptions::default()).expect("serve");
    for _ in 0..30 {
        let (reply, _) = udp(addr, &Ask::new("nothing.service.consul.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(
        Recorded::take(metrics).counter("dns.rate_limited_total", &[]),
        0
    );
}
