//! The UDP fast path (wire answer cache) over real sockets: what is served from
//! it, what never is, and that the general path's behaviour is unchanged.

mod support;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use dnsfront_catalog::Freshness;
use dnsfront_dns::{Config, QueryLog, ServerOptions};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use test_support::{
    Ask, DebuggingRecorder, QUERY_TIMEOUT, Recorded, addresses, sorted_addresses, udp, udp_raw,
    udp_raw_wait,
};

use support::*;

const HITS: &str = "dns.fast_path_hits_total";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip literal")
}

/// A plain query for `name` (labels as given, case kept) with `id`.
fn raw_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        packet.push(u8::try_from(label.len()).expect("short label"));
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0]);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    packet
}

async fn stop(server: TestServer) {
    tokio::time::timeout(QUERY_TIMEOUT, server.handle.shutdown())
        .await
        .expect("bounded")
        .expect("clean stop");
}

fn hits(recorded: &Recorded) -> u64 {
    recorded.counter(HITS, &[])
}

async fn web_server(config: Config, options: ServerOptions, addresses: &[&str]) -> TestServer {
    let server = start(config, options, true).await;
    let instances = addresses
        .iter()
        .enumerate()
        .map(|(i, address)| instance(&format!("n{i}"), address, None, 80, &[]))
        .collect();
    server
        .catalog
        .set_instances("web", instances, Freshness::Fresh);
    server
}

#[tokio::test]
async fn repeated_query_is_served_from_the_fast_path_with_its_id_and_case() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = web_server(Config::default(), ServerOptions::default(), &["10.0.0.1"]).await;

    let first = udp_raw(server.addr, &raw_query(0x1111, "web.service.consul.", 1))
        .await
        .expect("first answer");
    let asked = raw_query(0xbeef, "WeB.SERVICE.consul.", 1);
    let second = udp_raw(server.addr, &asked).await.expect("second answer");

    assert_eq!(&second[..2], &[0xbe, 0xef], "the client's ID");
    assert_eq!(
        &second[12..12 + 20],
        &asked[12..12 + 20],
        "the question name exactly as asked"
    );
    assert_eq!(first.len(), second.len());
    assert_eq!(first[2..12], second[2..12], "same header apart from the ID");
    assert_eq!(
        first[32..36],
        second[32..36],
        "same question type and class"
    );
    let parsed = Message::from_vec(&second).expect("parse");
    assert_eq!(parsed.answers[0].name.to_ascii(), "WeB.SERVICE.consul.");
    assert_eq!(sorted_addresses(&parsed), vec![ip("10.0.0.1")]);
    assert_eq!(
        server.catalog.asked().len(),
        2,
        "one lookup to answer, one to check the cached copy"
    );

    // Fast-path hits reach the counters in batches; shutdown adds the rest.
    stop(server).await;
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(recorded.counter(HITS, &[]), 1);
    let request = [("proto", "udp"), ("type", "A"), ("zone", "consul")];
    let tags = [
        ("proto", "udp"),
        ("type", "A"),
        ("rcode", "NOERROR"),
        ("source", "fresh"),
        ("zone", "consul"),
    ];
    assert_eq!(recorded.counter("dns.requests_total", &request), 2);
    assert_eq!(
        recorded.counter("dns.responses_total", &tags),
        2,
        "both counted"
    );
    assert_eq!(
        recorded.histogram_samples("dns.request_duration_seconds", &request),
        1,
        "fast-path durations are sampled once per 64 hits"
    );
}

#[tokio::test]
async fn fast_path_answers_are_shuffled() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let all = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
    let server = web_server(Config::default(), ServerOptions::default(), &all).await;
    let expected: Vec<IpAddr> = all.iter().map(|a| ip(a)).collect();
    let mut orders = HashSet::new();
    for _ in 0..70 {
        let (reply, _) = udp(server.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
        assert_eq!(sorted_addresses(&reply), expected);
        orders.insert(addresses(&reply));
    }
    let before_stop = Recorded::take(&snapshotter);
    assert_eq!(hits(&before_stop), 64, "one full batch counted at once");
    assert_eq!(
        before_stop.histogram_samples(
            "dns.request_duration_seconds",
            &[("proto", "udp"), ("type", "A"), ("zone", "consul")],
        ),
        2,
        "the general path's sample and one per batch of fast-path hits"
    );
    stop(server).await;
    assert_eq!(
        hits(&Recorded::take(&snapshotter)),
        5,
        "the rest of the 69 fast-path answers, added at shutdown"
    );
    assert!(orders.len() > 5, "orders vary: {orders:?}");
}

#[tokio::test]
async fn ttl_zero_stale_and_multi_record_srv_answers_are_never_cached() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let config = Config {
        service_ttl_overrides: vec![("zero".to_owned(), Duration::ZERO)],
        ..Config::default()
    };
    let server = start(config, ServerOptions::default(), true).await;
    let one = || vec![instance("n1", "10.0.0.1", None, 80, &[])];
    server
        .catalog
        .set_instances("zero", one(), Freshness::Fresh);
    server.catalog.set_instances("old", one(), Freshness::Stale);
    server.catalog.set_instances(
        "two",
        vec![
            instance("n1", "10.0.0.1", None, 80, &[]),
            instance("n2", "10.0.0.2", None, 81, &[]),
        ],
        Freshness::Fresh,
    );
    for ask in [
        Ask::new("zero.service.consul.", RecordType::A),
        Ask::new("old.service.consul.", RecordType::A).edns(1232),
        Ask::new("old.service.consul.", RecordType::A),
        Ask::new("two.service.consul.", RecordType::SRV),
    ] {
        for _ in 0..3 {
            let (reply, _) = udp(server.addr, &ask).await;
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        }
    }
    assert_eq!(hits(&Recorded::take(&snapshotter)), 0);
    assert_eq!(server.catalog.asked().len(), 12, "every query routed");
}

#[tokio::test]
async fn catalog_changes_show_at_once_and_reload_clears() {
    let server = web_server(Config::default(), ServerOptions::default(), &["10.0.0.1"]).await;
    let ask = Ask::new("web.service.consul.", RecordType::A);
    for _ in 0..2 {
        let (reply, _) = udp(server.addr, &ask).await;
        assert_eq!(sorted_addresses(&reply), vec![ip("10.0.0.1")]);
    }
    // A cached Consul answer is re-checked against the catalog on every hit.
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.2", None, 80, &[])],
        Freshness::Fresh,
    );
    assert_eq!(
        sorted_addresses(&udp(server.addr, &ask).await.0),
        vec![ip("10.0.0.2")]
    );
    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.2", None, 80, &[])],
        Freshness::Stale,
    );
    let (reply, _) = udp(server.addr, &ask.clone().edns(1232)).await;
    assert!(has_stale_ede(&reply), "stale at once: {:?}", reply.edns);

    server.catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.3", None, 80, &[])],
        Freshness::Fresh,
    );
    udp(server.addr, &ask).await;
    server.router.reload(Config::default());
    assert_eq!(
        sorted_addresses(&udp(server.addr, &ask).await.0),
        vec![ip("10.0.0.3")]
    );
}

/// A forwarded answer is kept in the wire cache from its second query on (a
/// name asked once costs no memory), served with its TTL counted down, until
/// 90 % of that TTL has passed; then the forwarder is asked again.
#[tokio::test]
async fn forwarded_answers_count_their_ttl_down_and_expire_at_nine_tenths() {
    let server = start_default().await;
    let answer_with = |address: &str| {
        answer(
            ResponseCode::NoError,
            vec![hickory_proto::rr::Record::from_rdata(
                hickory_proto::rr::Name::from_ascii("www.example.org.").expect("name"),
                3,
                hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A(
                    address.parse().expect("ip"),
                )),
            )],
        )
    };
    server.upstream.set_answer(Some(answer_with("192.0.2.1")));
    let ask = Ask::new("www.example.org.", RecordType::A);
    let first = udp(server.addr, &ask).await.0;
    assert_eq!(sorted_addresses(&first), vec![ip("192.0.2.1")]);
    assert_eq!(first.answers[0].ttl, 3);
    udp(server.addr, &ask).await;
    assert_eq!(
        server.upstream.asked().len(),
        2,
        "first sight: the second query still takes the general path"
    );
    server.upstream.set_answer(Some(answer_with("192.0.2.2")));
    let cached = udp(server.addr, &ask).await.0;
    assert_eq!(
        sorted_addresses(&cached),
        vec![ip("192.0.2.1")],
        "served from the wire cache"
    );
    assert_eq!(cached.answers[0].ttl, 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let older = udp(server.addr, &ask).await.0;
    assert_eq!(sorted_addresses(&older), vec![ip("192.0.2.1")]);
    assert_eq!(
        older.answers[0].ttl, 2,
        "the TTL counts down in cached copies"
    );
    assert_eq!(server.upstream.asked().len(), 2);
    // 2.7 s (90 % of 3 s) after it was stored, the copy is gone.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        sorted_addresses(&udp(server.addr, &ask).await.0),
        vec![ip("192.0.2.2")]
    );
    assert_eq!(server.upstream.asked().len(), 3);
}

#[tokio::test]
async fn edns_and_plain_queries_are_cached_apart() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = web_server(Config::default(), ServerOptions::default(), &["10.0.0.1"]).await;
    let plain = Ask::new("web.service.consul.", RecordType::A);
    let edns = plain.clone().edns(1232);
    for _ in 0..2 {
        let (reply, _) = udp(server.addr, &edns).await;
        assert_eq!(reply.edns.as_ref().expect("OPT").max_payload(), 1232);
        let (reply, _) = udp(server.addr, &plain).await;
        assert!(reply.edns.is_none(), "no OPT for a plain query");
    }
    assert_eq!(
        server.catalog.asked().len(),
        4,
        "one lookup per form, one check per cached copy"
    );
    stop(server).await;
    assert_eq!(hits(&Recorded::take(&snapshotter)), 2);
}

#[tokio::test]
async fn refused_clients_stay_refused_and_query_log_bypasses_the_cache() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let options = ServerOptions {
        allowed_networks: vec!["10.0.0.0/8".parse().expect("net")],
        ..ServerOptions::default()
    };
    let refused = web_server(Config::default(), options, &["10.0.0.1"]).await;
    for _ in 0..3 {
        let (reply, _) = udp(
            refused.addr,
            &Ask::new("web.service.consul.", RecordType::A),
        )
        .await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert!(reply.answers.is_empty());
    }
    assert!(refused.catalog.asked().is_empty());

    let config = Config {
        query_log: QueryLog {
            enabled: true,
            sample: 0.0,
        },
        ..Config::default()
    };
    let logged = web_server(config, ServerOptions::default(), &["10.0.0.1"]).await;
    for _ in 0..3 {
        udp(logged.addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    }
    assert_eq!(
        logged.catalog.asked().len(),
        3,
        "query log on: every query routed"
    );
    assert_eq!(hits(&Recorded::take(&snapshotter)), 0);
}

#[tokio::test]
async fn malformed_and_unusual_packets_get_formerr_or_silence() {
    let server = web_server(Config::default(), ServerOptions::default(), &["10.0.0.1"]).await;
    let short = Duration::from_millis(300);
    // Prime the cache so that look-alikes of a cached question are tried.
    let good = raw_query(7, "web.service.consul.", 1);
    udp_raw(server.addr, &good).await.expect("answer");

    let mut response = good.clone();
    response[2] |= 0x80;
    assert_eq!(
        udp_raw_wait(server.addr, &response, short).await,
        None,
        "QR=1"
    );
    assert_eq!(
        udp_raw_wait(server.addr, &good[..11], short).await,
        None,
        "short header"
    );

    let mut two = good.clone();
    two[5] = 2;
    let mut bad_label = good.clone();
    bad_label[12] = 0x43;
    let cut = good[..good.len() - 3].to_vec();
    let pointer_loop = vec![0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1];
    let mut answers = good.clone();
    answers[7] = 1;
    for (what, packet) in [
        ("qdcount 2", two),
        ("extended label type", bad_label),
        ("cut question", cut),
        ("pointer loop", pointer_loop),
        ("ancount 1 without records", answers),
    ] {
        if let Some(reply) = udp_raw_wait(server.addr, &packet, short).await {
            let reply = Message::from_vec(&reply).expect("parsable reply");
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::FormErr,
                "{what}"
            );
            assert!(reply.answers.is_empty(), "{what}");
        }
    }
    let reply = udp_raw(server.addr, &raw_query(8, "web.service.consul.", 1))
        .await
        .expect("still serving");
    let reply = Message::from_vec(&reply).expect("parse");
    assert_eq!(sorted_addresses(&reply), vec![ip("10.0.0.1")]);
}

#[tokio::test]
async fn shutdown_is_clean_after_fast_path_answers() {
    let server = web_server(Config::default(), ServerOptions::default(), &["10.0.0.1"]).await;
    let ask = Ask::new("web.service.consul.", RecordType::A);
    for _ in 0..3 {
        udp(server.addr, &ask).await;
    }
    let addr = server.addr;
    tokio::time::timeout(QUERY_TIMEOUT, server.handle.shutdown())
        .await
        .expect("bounded")
        .expect("clean stop");
    assert_eq!(
        udp_raw_wait(addr, &ask.to_bytes(), Duration::from_millis(300)).await,
        None
    );
}

#[tokio::test]
async fn several_reuseport_sockets_share_one_port() {
    let catalog = FakeCatalog::default();
    catalog.set_instances(
        "web",
        vec![instance("n1", "10.0.0.1", None, 80, &[])],
        Freshness::Fresh,
    );
    let router = dnsfront_dns::Router::with_backends(
        Config::default(),
        catalog.clone(),
        None::<FakeUpstream>,
    );
    let listeners =
        dnsfront_dns::Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
    let addr = listeners.local_addrs()[0];
    let udp_options = dnsfront_dns::UdpOptions {
        sockets: 4,
        max_in_flight: 16,
    };
    let handle = dnsfront_dns::serve_with(router, listeners, ServerOptions::default(), udp_options)
        .expect("serve");
    assert_eq!(handle.local_addrs(), &[addr]);
    // Many client sockets (so the kernel spreads them over the 4 sockets).
    for _ in 0..20 {
        let (reply, _) = udp(addr, &Ask::new("web.service.consul.", RecordType::A)).await;
        assert_eq!(sorted_addresses(&reply), vec![ip("10.0.0.1")]);
    }
    let reply = test_support::tcp(addr, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(sorted_addresses(&reply), vec![ip("10.0.0.1")]);
    tokio::time::timeout(QUERY_TIMEOUT, handle.shutdown())
        .await
        .expect("bounded")
        .expect("clean stop");
    let probe = std::net::UdpSocket::bind(addr).expect("port free after shutdown");
    drop(probe);
}

/// Datagrams arriving together are read and answered in batches (recvmmsg /
/// sendmmsg): every client still gets exactly its own answers, IDs and name
/// case intact, fast-path hits and general-path misses mixed in one batch.
#[tokio::test]
async fn bursts_from_many_clients_get_each_their_own_answers() {
    let server = web_server(Config::default(), ServerOptions::default(), &["10.0.0.1"]).await;
    udp_raw(server.addr, &raw_query(1, "web.service.consul.", 1))
        .await
        .expect("warm-up answer");
    let mut clients = Vec::new();
    for client in 0..8u16 {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind client");
        let mut sent = Vec::new();
        for n in 0..20u16 {
            let id = client * 100 + n;
            // Every fourth query misses the fast path (an unknown service).
            let name = if n % 4 == 3 {
                format!("nope{id}.service.consul.")
            } else if n % 2 == 0 {
                "WEB.service.consul.".to_owned()
            } else {
                "web.Service.consul.".to_owned()
            };
            socket
                .send_to(&raw_query(id, &name, 1), server.addr)
                .await
                .expect("send");
            sent.push((id, name));
        }
        clients.push((socket, sent));
    }
    for (socket, sent) in clients {
        let mut buffer = [0u8; 512];
        let mut answered = HashSet::new();
        while answered.len() < sent.len() {
            let (len, _) = tokio::time::timeout(QUERY_TIMEOUT, socket.recv_from(&mut buffer))
                .await
                .expect("every query answered in time")
                .expect("recv");
            let reply = Message::from_vec(&buffer[..len]).expect("a valid reply");
            let id = reply.metadata.id;
            let (_, name) = sent
                .iter()
                .find(|(sent_id, _)| *sent_id == id)
                .expect("an ID this client sent");
            assert_eq!(reply.queries[0].name().to_string(), *name, "the case asked");
            if name.starts_with("nope") {
                assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
            } else {
                assert_eq!(addresses(&reply), vec![ip("10.0.0.1")], "{name}");
            }
            assert!(answered.insert(id), "one answer per query");
        }
    }
    stop(server).await;
}

/// A hostname address is answered with a CNAME (or as the SRV target) and the
/// upstream's records, which change without the catalog changing: such an
/// answer is never kept by the fast path, so the next query sees the
/// upstream's new record at once.
#[tokio::test]
async fn hostname_answers_are_never_served_from_the_fast_path() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = start(Config::default(), ServerOptions::default(), true).await;
    let mut rds = instance("n1", "10.0.0.1", None, 5432, &[]);
    rds.node_address = None;
    rds.hostname = Some("db.rds.example.com".to_owned());
    server
        .catalog
        .set_instances("rds", vec![rds], Freshness::Fresh);
    let host = test_support::name_of("db.rds.example.com.");
    let upstream_says = |last: u8| {
        let record = hickory_proto::rr::Record::from_rdata(
            host.clone(),
            300,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, last)),
        );
        server
            .upstream
            .set_answer(Some(answer(ResponseCode::NoError, vec![record])));
    };
    let ask = Ask::new("rds.service.consul.", RecordType::A);
    for last in [11, 11, 12, 13] {
        upstream_says(last);
        let (reply, _) = udp(server.addr, &ask).await;
        assert_eq!(reply.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(addresses(&reply), vec![ip(&format!("192.0.2.{last}"))]);
    }
    // One SRV with the hostname's record in Additional: a single answer
    // record, which the wire cache would otherwise take.
    let ask = Ask::new("rds.service.consul.", RecordType::SRV);
    for last in [21, 21, 22, 23] {
        upstream_says(last);
        let (reply, _) = udp(server.addr, &ask).await;
        assert_eq!(reply.answers.len(), 1);
        let glue: Vec<String> = reply
            .additionals
            .iter()
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(glue, vec![format!("192.0.2.{last}")]);
    }
    assert_eq!(server.upstream.asked().len(), 8, "resolved for every query");
    assert!(
        server
            .upstream
            .asked()
            .iter()
            .all(|(query, _)| query.name() == &host && query.query_type() == RecordType::A)
    );
    stop(server).await;
    assert_eq!(hits(&Recorded::take(&snapshotter)), 0);
}
