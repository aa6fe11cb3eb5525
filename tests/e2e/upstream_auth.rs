//! The forwarder against a real authoritative server (Debian's NSD, started
//! on loopback by test-support) serving `example.test.` and `other.test.`,
//! and side by side with dnsmasq on the same upstream (parity).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dnsfront::config::{RawConfig, RawForward};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{RData, RecordType};
use test_support::{
    Ask, BIG_RRSET_LEN, Dnsmasq, Nsd, SOA_MINIMUM, closed_port, dig, other_zone, sorted_addresses,
    tcp, test_zone, udp,
};

use crate::binary::{sigterm, spawn, write};
use crate::harness::{Harness, eventually, ip, serve, standard_sim};

/// dnsfront forwarding to `upstreams`, with short timeouts (300 ms per try,
/// 1 s in all) so that dead upstreams cost little; `tweak` adjusts `[forward]`.
async fn front(upstreams: &[SocketAddr], tweak: impl FnOnce(&mut RawForward)) -> Harness {
    let upstreams = upstreams.iter().map(ToString::to_string).collect();
    Harness::start_with(standard_sim(), |raw| {
        raw.forward.upstreams = upstreams;
        raw.forward.attempt_timeout = Duration::from_millis(300);
        raw.forward.deadline = Duration::from_secs(1);
        tweak(&mut raw.forward);
    })
    .await
}

/// The answer section as `name TYPE rdata` lines, sorted: order and TTLs ignored.
fn records(message: &Message) -> Vec<String> {
    let mut lines: Vec<String> = message
        .answers
        .iter()
        .map(|record| {
            format!(
                "{} {} {}",
                record.name.to_ascii().to_ascii_lowercase(),
                record.record_type(),
                record.data
            )
        })
        .collect();
    lines.sort();
    lines
}

/// The SOA records of the authority section, as (owner, TTL, MINIMUM).
fn authority_soas(message: &Message) -> Vec<(String, u32, u32)> {
    message
        .authorities
        .iter()
        .filter_map(|record| match &record.data {
            RData::SOA(soa) => Some((
                record.name.to_ascii().to_ascii_lowercase(),
                record.ttl,
                soa.minimum,
            )),
            _ => None,
        })
        .collect()
}

fn name(label: &str) -> String {
    format!("{label}.{}", test_support::ZONE)
}

/// An address that receives queries and never answers them (UDP bound but
/// never read, TCP listening but never accepting).
struct Blackhole {
    addr: SocketAddr,
    _udp: std::net::UdpSocket,
    _tcp: std::net::TcpListener,
}

impl Blackhole {
    fn new() -> Self {
        for _ in 0..50 {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
            let addr = udp.local_addr().expect("udp addr");
            if let Ok(tcp) = std::net::TcpListener::bind(addr) {
                return Self {
                    addr,
                    _udp: udp,
                    _tcp: tcp,
                };
            }
        }
        panic!("no port free for both UDP and TCP");
    }
}

#[tokio::test]
async fn answers_equal_the_authoritative_servers() {
    let nsd = Nsd::start(&test_zone()).await;
    let h = front(&[nsd.addr()], |_| {}).await;
    let apex = test_support::ZONE.to_owned();
    let questions = [
        (
            name("www"),
            RecordType::A,
            vec!["www.example.test. A 192.0.2.1"],
        ),
        (
            name("www"),
            RecordType::AAAA,
            vec!["www.example.test. AAAA 2001:db8::1"],
        ),
        (
            name("a"),
            RecordType::A,
            vec![
                "a.example.test. CNAME b.example.test.",
                "b.example.test. CNAME c.example.test.",
                "c.example.test. A 192.0.2.3",
            ],
        ),
        (
            apex,
            RecordType::MX,
            vec![
                "example.test. MX 10 mail.example.test.",
                "example.test. MX 20 mail2.example.test.",
            ],
        ),
        (name("txt"), RecordType::TXT, vec![]),
    ];
    for (qname, rtype, expected) in questions {
        let ask = Ask::new(&qname, rtype).edns(1232);
        let (direct, _) = udp(nsd.addr(), &ask).await;
        assert_eq!(direct.metadata.response_code, ResponseCode::NoError);
        if !expected.is_empty() {
            assert_eq!(
                records(&direct),
                expected,
                "nsd's own answer to {qname} {rtype}"
            );
        }
        // first from the upstream, then from the cache
        for round in ["upstream", "cache"] {
            let (via, _) = udp(h.dns, &ask).await;
            assert_eq!(
                via.metadata.response_code,
                ResponseCode::NoError,
                "{qname} {rtype} ({round})"
            );
            assert_eq!(
                records(&via),
                records(&direct),
                "{qname} {rtype} ({round}): dnsfront's answer differs from nsd's"
            );
        }
    }
    let (txt, _) = udp(h.dns, &Ask::new(&name("txt"), RecordType::TXT)).await;
    assert_eq!(txt.answers.len(), 2, "both TXT records: {txt:?}");
    h.stop().await;
}

#[tokio::test]
async fn cached_ttls_count_down() {
    let nsd = Nsd::start(&test_zone()).await;
    let h = front(&[nsd.addr()], |_| {}).await;
    let ask = Ask::new(&name("www"), RecordType::A);
    let (first, _) = udp(h.dns, &ask).await;
    let first_ttl = first.answers.first().expect("an A record").ttl;
    assert!(first_ttl <= 300, "TTL above the zone's 300: {first_ttl}");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (second, _) = udp(h.dns, &ask).await;
    assert_eq!(sorted_addresses(&second), vec![ip("192.0.2.1")]);
    let second_ttl = second.answers[0].ttl;
    assert!(
        second_ttl < first_ttl && first_ttl - second_ttl >= 1 && first_ttl - second_ttl <= 3,
        "after ~2 s in the cache the TTL must have counted down: {first_ttl} then {second_ttl}"
    );
    h.stop().await;
}

#[tokio::test]
async fn negative_answers_are_cached_with_their_soa_after_the_upstream_stops() {
    let mut nsd = Nsd::start(&test_zone()).await;
    let h = front(&[nsd.addr()], |_| {}).await;
    let nxdomain = Ask::new(&name("nosuch"), RecordType::A);
    let nodata = Ask::new(&name("www"), RecordType::MX);
    let (warm, _) = udp(h.dns, &nxdomain).await;
    assert_eq!(warm.metadata.response_code, ResponseCode::NXDomain);
    let (warm, _) = udp(h.dns, &nodata).await;
    assert_eq!(warm.metadata.response_code, ResponseCode::NoError);
    assert!(warm.answers.is_empty());

    nsd.stop().await;
    // The upstream really is gone: a name never asked gets SERVFAIL.
    let (gone, _) = udp(h.dns, &Ask::new(&name("never-asked"), RecordType::A)).await;
    assert_eq!(gone.metadata.response_code, ResponseCode::ServFail);

    for (ask, rcode) in [
        (&nxdomain, ResponseCode::NXDomain),
        (&nodata, ResponseCode::NoError),
    ] {
        let (answer, _) = udp(h.dns, ask).await;
        assert_eq!(
            answer.metadata.response_code, rcode,
            "{ask:?} from the cache"
        );
        assert!(answer.answers.is_empty(), "{ask:?}: {answer:?}");
        let soas = authority_soas(&answer);
        assert_eq!(soas.len(), 1, "{ask:?}: one SOA in Authority: {answer:?}");
        let (owner, ttl, minimum) = &soas[0];
        assert_eq!(owner, test_support::ZONE);
        assert_eq!(*minimum, SOA_MINIMUM);
        assert!(
            *ttl <= SOA_MINIMUM,
            "negative TTL bounded by the SOA minimum: {ttl}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn large_answers_set_tc_over_udp_and_come_whole_over_tcp() {
    let nsd = Nsd::start(&test_zone()).await;
    let h = front(&[nsd.addr()], |_| {}).await;
    let all: Vec<IpAddr> = (1..=BIG_RRSET_LEN)
        .map(|last| ip(&format!("198.51.100.{last}")))
        .collect();
    let ask = Ask::new(&name("big"), RecordType::A);

    let (plain, size) = udp(h.dns, &ask).await;
    assert!(
        plain.metadata.truncation,
        "no EDNS: TC must be set ({size} bytes)"
    );
    assert!(size <= 512, "UDP answer without EDNS is {size} bytes");
    assert!(plain.answers.len() < all.len());

    let whole = tcp(h.dns, &ask).await;
    assert!(!whole.metadata.truncation);
    assert_eq!(sorted_addresses(&whole), all, "TCP carries every record");

    let (with_edns, size) = udp(h.dns, &ask.clone().edns(1232)).await;
    assert!(!with_edns.metadata.truncation, "{size} bytes fit 1232");
    assert_eq!(sorted_addresses(&with_edns), all);
    h.stop().await;
}

#[tokio::test]
async fn failover_when_the_first_upstream_is_closed_or_silent() {
    let nsd = Nsd::start(&test_zone()).await;
    let silent = Blackhole::new();
    for first in [closed_port().await, silent.addr] {
        let h = front(&[first, nsd.addr()], |raw| {
            raw.deadline = Duration::from_secs(2);
        })
        .await;
        let started = Instant::now();
        let (answer, _) = udp(h.dns, &Ask::new(&name("www"), RecordType::A)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "first upstream {first}"
        );
        assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.1")]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the second upstream answered within the deadline"
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn servfail_within_the_deadline_when_every_upstream_is_dead() {
    let silent = Blackhole::new();
    let deadline = Duration::from_millis(800);
    let h = front(&[silent.addr, closed_port().await], |raw| {
        raw.deadline = deadline;
    })
    .await;
    let started = Instant::now();
    let (answer, _) = udp(h.dns, &Ask::new(&name("www"), RecordType::A)).await;
    let elapsed = started.elapsed();
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(
        elapsed < deadline + Duration::from_millis(700),
        "SERVFAIL after {elapsed:?}, deadline {deadline:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn queries_beyond_the_in_flight_bound_get_servfail_at_once() {
    let silent = Blackhole::new();
    let bound = 2;
    let sent = 12;
    let deadline = Duration::from_millis(1_500);
    let h = front(&[silent.addr], |raw| {
        raw.max_in_flight = bound;
        raw.attempt_timeout = deadline;
        raw.deadline = deadline;
    })
    .await;
    let dns = h.dns;
    let queries: Vec<_> = (0..sent)
        .map(|n| {
            tokio::spawn(async move {
                let started = Instant::now();
                // distinct names: no coalescing
                let (answer, _) = udp(dns, &Ask::new(&name(&format!("n{n}")), RecordType::A)).await;
                (answer.metadata.response_code, started.elapsed())
            })
        })
        .collect();
    let mut quick = 0;
    let mut held = 0;
    for query in queries {
        let (rcode, elapsed) = query.await.expect("query task");
        assert_eq!(rcode, ResponseCode::ServFail);
        if elapsed < Duration::from_millis(1_000) {
            quick += 1;
        } else {
            held += 1;
        }
    }
    assert_eq!(
        held, bound,
        "exactly max_in_flight queries wait on the silent upstream"
    );
    assert_eq!(quick, sent - bound, "the excess is refused at once");
    h.stop().await;
}

#[tokio::test]
async fn ttl_zero_answers_pass_through_and_are_not_cached() {
    let mut nsd = Nsd::start(&test_zone()).await;
    // serve-stale off: with it on, a TTL-0 answer may still be served stale
    let h = front(&[nsd.addr()], |raw| raw.serve_stale = Duration::ZERO).await;
    let ask = Ask::new(&name("zero"), RecordType::A);
    let (answer, _) = udp(h.dns, &ask).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.10")]);
    assert_eq!(answer.answers[0].ttl, 0);
    nsd.stop().await;
    let (answer, _) = udp(h.dns, &ask).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::ServFail,
        "a TTL-0 answer must not be cached with min_ttl = 0"
    );
    h.stop().await;
}

#[tokio::test]
async fn ttl_zero_answers_are_cached_for_min_ttl() {
    let mut nsd = Nsd::start(&test_zone()).await;
    let h = front(&[nsd.addr()], |raw| raw.min_ttl = Duration::from_secs(5)).await;
    let ask = Ask::new(&name("zero"), RecordType::A);
    let (answer, _) = udp(h.dns, &ask).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.10")]);
    nsd.stop().await;
    let (answer, _) = udp(h.dns, &ask).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.10")]);
    let ttl = answer.answers[0].ttl;
    assert!((1..=5).contains(&ttl), "TTL raised to min_ttl: {ttl}");
    h.stop().await;
}

#[tokio::test]
async fn serve_stale_when_every_upstream_is_down() {
    let mut nsd = Nsd::start(&test_zone()).await;
    // stale answers carry TTL 2 s, and the upstream is asked again after 2 s
    // (RFC 8767 recommends 30 s for both; shortened to keep the test quick)
    let h = front(&[nsd.addr()], |raw| {
        raw.stale_answer_ttl = Duration::from_secs(2);
    })
    .await;
    let ask = Ask::new(&name("brief"), RecordType::A).edns(1232);
    let (fresh, _) = udp(h.dns, &ask).await;
    assert_eq!(sorted_addresses(&fresh), vec![ip("192.0.2.77")]);
    nsd.stop().await;
    // the record's TTL is 1 s: let it expire
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (stale, _) = udp(h.dns, &ask).await;
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&stale), vec![ip("192.0.2.77")]);
    assert!(
        stale.answers.iter().all(|record| record.ttl == 2),
        "stale answers carry a short TTL: {stale:?}"
    );
    let edns = stale.edns.as_ref().expect("OPT in a stale answer");
    let stale_ede = edns.options().as_ref().iter().any(|(_, option)| {
        matches!(option, EdnsOption::Unknown(15, data) if data.get(..2) == Some(&[0, 3]))
    });
    assert!(
        stale_ede,
        "stale answers carry EDE 3 (Stale Answer): {edns:?}"
    );

    // The upstream returns: fresh answers again (TTL 1 s, no EDE).
    nsd.restart().await;
    let dns = h.dns;
    let fresh_again = eventually(Duration::from_secs(5), || {
        let ask = ask.clone();
        async move {
            let (answer, _) = udp(dns, &ask).await;
            let no_ede = answer
                .edns
                .as_ref()
                .is_none_or(|edns| edns.options().as_ref().is_empty());
            answer.answers.len() == 1 && answer.answers[0].ttl <= 1 && no_ede
        }
    })
    .await;
    assert!(fresh_again, "fresh answers once the upstream is back");
    h.stop().await;
}

#[tokio::test]
async fn per_domain_rules_send_each_zone_to_its_own_upstream() {
    let main = Nsd::start(&test_zone()).await;
    let other = Nsd::start(&other_zone()).await;
    // dnsmasq's server=/other.test/ADDR; the default upstream serves only example.test.
    let text = format!(
        "[forward]\nupstreams = [\"{}\"]\n\n[[forward.rules]]\nzone = \"other.test\"\nupstreams = [\"{}\"]\n",
        main.addr(),
        other.addr()
    );
    let parsed = RawConfig::parse(&text, "per-domain test config")
        .unwrap_or_else(|error| panic!("forward.rules not accepted: {error}"));
    let h = Harness::start_with(standard_sim(), |raw| raw.forward = parsed.forward).await;
    let (answer, _) = udp(h.dns, &Ask::new("www.other.test.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.201")]);
    let (answer, _) = udp(h.dns, &Ask::new(&name("www"), RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.1")]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_resolv_file_switches_upstreams_while_running() {
    // resolv.conf lines cannot name a port: both servers listen on port 53 of
    // their own loopback address, which takes root (or CAP_NET_BIND_SERVICE).
    let net = 100 + rand::random::<u8>() % 100;
    let host = rand::random::<u8>().max(1);
    let first_addr: SocketAddr = format!("127.{net}.{host}.1:53").parse().expect("addr");
    let second_addr: SocketAddr = format!("127.{net}.{host}.2:53").parse().expect("addr");
    let first = Nsd::start_at(first_addr, &[&test_zone()]).await;
    let second = Nsd::start_at(second_addr, &[&other_zone()]).await;
    let sim = standard_sim();
    let consul = serve(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    let config = dir.path().join("dnsfront.toml");
    write(&resolv, &format!("nameserver {}\n", first.addr().ip()));
    write(
        &config,
        &format!(
            "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[consul]\naddress = \"{}\"\n\n[state]\ndir = \"{}\"\n\n\
             [metrics]\nstatsd = false\n\n[forward]\nresolv_file = \"{}\"\n\
             attempt_timeout = \"300ms\"\ndeadline = \"1s\"\n",
            consul.url(),
            dir.path().join("state").display(),
            resolv.display()
        ),
    );
    let config = config.display().to_string();
    let mut running = spawn(&["serve", "--config", &config]).await;
    let dns = running.dns[0];
    let (answer, _) = udp(dns, &Ask::new(&name("www"), RecordType::A)).await;
    assert_eq!(sorted_addresses(&answer), vec![ip("192.0.2.1")]);

    // rewritten as editors do: a new file renamed over the old one
    write(
        &resolv,
        &format!("# rewritten\nnameserver {}\n", second.addr().ip()),
    );
    let switched = eventually(Duration::from_secs(8), || async move {
        let (answer, _) = udp(dns, &Ask::new("www.other.test.", RecordType::A)).await;
        sorted_addresses(&answer) == vec![ip("192.0.2.201")]
    })
    .await;
    assert!(switched, "the upstream named by the rewritten file is used");
    sigterm(&running.child);
    let _ = tokio::time::timeout(Duration::from_secs(10), running.child.wait()).await;
    consul.shutdown().await;
}

/// Status and answer lines (`name class type rdata`, TTL dropped, sorted) of
/// `dig` output.
fn parse_dig(output: &str) -> (String, Vec<String>) {
    let status = output
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig output:\n{output}"))
        .to_owned();
    let mut answers: Vec<String> = output
        .lines()
        .skip_while(|line| !line.starts_with(";; ANSWER SECTION:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let mut kept = vec![fields[0].to_ascii_lowercase()];
            kept.extend(fields[2..].iter().map(|field| (*field).to_owned()));
            kept.join(" ")
        })
        .collect();
    answers.sort();
    (status, answers)
}

async fn dig_at(server: SocketAddr, qname: &str, rtype: &str) -> (String, Vec<String>) {
    let args: Vec<String> = vec![
        format!("@{}", server.ip()),
        "-p".into(),
        server.port().to_string(),
        "+time=2".into(),
        "+tries=1".into(),
        qname.into(),
        rtype.into(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dig(&args)
    })
    .await
    .expect("dig task");
    parse_dig(&output)
}

#[tokio::test]
async fn same_answers_as_dnsmasq_on_the_same_upstream() {
    let nsd = Nsd::start(&test_zone()).await;
    let dnsmasq = Dnsmasq::start(nsd.addr()).await;
    let h = front(&[nsd.addr()], |_| {}).await;
    let apex = test_support::ZONE;
    let questions = [
        (name("www"), "A", "NOERROR", true),
        (name("www"), "AAAA", "NOERROR", true),
        (name("a"), "A", "NOERROR", true),
        (apex.to_owned(), "MX", "NOERROR", true),
        (name("txt"), "TXT", "NOERROR", true),
        (name("big"), "A", "NOERROR", true),
        (name("zero"), "A", "NOERROR", true),
        (name("nosuch"), "A", "NXDOMAIN", false),
        (name("www"), "MX", "NOERROR", false),
    ];
    for (qname, rtype, status, has_answers) in questions {
        // the second round comes from both caches
        for round in ["first", "cached"] {
            let ours = dig_at(h.dns, &qname, rtype).await;
            let theirs = dig_at(dnsmasq.addr(), &qname, rtype).await;
            assert_eq!(
                ours,
                theirs,
                "{qname} {rtype} ({round}): dnsfront differs from dnsmasq\n{}",
                dnsmasq.log()
            );
            assert_eq!(ours.0, status, "{qname} {rtype} ({round})");
            assert_eq!(
                !ours.1.is_empty(),
                has_answers,
                "{qname} {rtype} ({round}): {ours:?}"
            );
        }
    }
    h.stop().await;
}
