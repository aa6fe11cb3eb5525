//! Bad input never crashes the server or blocks other clients.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use test_support::{Ask, udp, udp_raw_wait};
use tokio::io::AsyncWriteExt;

use crate::harness::Harness;

async fn still_answers(h: &Harness) {
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 2);
}

#[tokio::test]
async fn malformed_datagrams_do_not_break_the_server() {
    let h = Harness::start().await;
    let valid = Ask::new("web.service.consul.", RecordType::A).to_bytes();
    let mut random = vec![0u8; 300];
    for (i, byte) in random.iter_mut().enumerate() {
        *byte = (i * 7919 % 251) as u8;
    }
    // QDCOUNT = 2 with one question present.
    let mut two_questions = valid.clone();
    two_questions[5] = 2;
    // A name that is a compression pointer to itself (offset 12).
    let mut pointer_loop = valid[..12].to_vec();
    pointer_loop.extend_from_slice(&[0xC0, 0x0C, 0x00, 0x01, 0x00, 0x01]);
    // A response (QR=1) must not be answered (reflection loops).
    let mut response_bit = valid.clone();
    response_bit[2] |= 0x80;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated header", valid[..5].to_vec()),
        ("header only, claims a question", valid[..12].to_vec()),
        ("random bytes", random),
        ("qdcount 2", two_questions),
        ("compression loop", pointer_loop),
        ("truncated question", valid[..valid.len() - 3].to_vec()),
        ("response bit set", response_bit),
        ("oversized", vec![0xAB; 4000]),
    ];
    for (what, payload) in cases {
        if let Some(reply) = udp_raw_wait(h.dns, &payload, Duration::from_millis(300)).await {
            // If the server answers at all, it is a well-formed error, never a crash.
            assert!(reply.len() >= 12, "{what}: reply shorter than a header");
            let rcode = reply[3] & 0x0F;
            assert!(
                rcode != 0 || what == "response bit set",
                "{what}: answered NOERROR to garbage"
            );
        }
        still_answers(&h).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn stalled_tcp_client_does_not_block_others_and_is_closed_when_idle() {
    let h = Harness::start_with(crate::harness::standard_sim(), |raw| {
        raw.dns.tcp_idle_timeout = Duration::from_millis(500);
    })
    .await;
    // Connects, sends half a length prefix, then stalls.
    let mut stalled = tokio::net::TcpStream::connect(h.dns)
        .await
        .expect("connect");
    stalled.write_all(&[0x00]).await.expect("write");
    // Others are served meanwhile, over UDP and TCP.
    still_answers(&h).await;
    let answer = test_support::tcp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.answers.len(), 2);
    // The stalled connection is closed by the server after the idle timeout.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stalled, &mut buf),
    )
    .await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("stalled TCP connection was not closed: {other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn clients_outside_allowed_networks_are_refused() {
    let h = Harness::start_with(crate::harness::standard_sim(), |raw| {
        raw.dns.allowed_networks = vec!["192.0.2.0/24".into()];
    })
    .await;
    let (answer, _) = udp(h.dns, &Ask::new("web.service.consul.", RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    h.stop().await;
}

/// An upstream answer with an OPT record in its Answer section (RFC 6891
/// allows one only in the Additional section) is a failed upstream: SERVFAIL,
/// never passed on, and the server keeps answering. (fuzz/fast_path found that
/// the wire cache, given such a response, took the A and the shorter OPT for
/// two equal-sized answers and indexed past its buffer; the forwarder never
/// hands it one, as this shows, and the cache now refuses it as well:
/// `fast.rs` `inspect_refuses_an_opt_outside_the_additional_section`.)
#[tokio::test]
async fn an_opt_record_in_an_upstream_answer_is_a_servfail() {
    use hickory_proto::rr::rdata::opt::OPT;
    use hickory_proto::rr::{Name, RData, Record};
    use test_support::{FakeUpstream, a_records, positive};

    let upstream = FakeUpstream::start().await;
    let mut answers = a_records("odd.example.", 300, &[7]);
    answers.push(Record::from_rdata(
        Name::root(),
        0,
        RData::OPT(OPT::default()),
    ));
    upstream.answer("odd.example.", RecordType::A, positive(answers));
    let up = upstream.addr().to_string();
    let h = Harness::start_with(crate::harness::standard_sim(), |raw| {
        raw.forward.upstreams = vec![up];
    })
    .await;
    // Asked a few times: a first sight, a second (what the wire cache would
    // store), and more (what it would answer).
    for _ in 0..4 {
        let (reply, _) = udp(h.dns, &Ask::new("odd.example.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(reply.answers.is_empty(), "nothing passed on: {reply:?}");
    }
    assert!(upstream.queries() >= 1, "the upstream was asked");
    still_answers(&h).await;
    h.stop().await;
}
