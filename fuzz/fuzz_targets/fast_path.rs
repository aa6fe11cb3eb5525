//! The UDP fast path: `parse_query` on arbitrary packets, and the wire cache
//! storing an arbitrary response for a plain query and answering a copy.
//!
//! Input: byte 0 = flags (bit 0: forwarded, TTLs count down; bit 1: build the
//! response from the query's question plus raw record bytes), then a 2-byte
//! query length, the query, and the response (or, with bit 1, byte RCODE,
//! byte ANCOUNT and the raw records).
#![no_main]

use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::BinDecodable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((length, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let length = usize::from(u16::from_be_bytes(*length)).min(rest.len());
    let (query, tail) = rest.split_at(length);
    let counts_down = flags & 1 != 0;

    let response = if flags & 2 != 0 {
        // Header and question of the query, then the fuzzer's records.
        let Some(plain) = dnsfront_dns::fuzzing::fast_path(query, &[], false) else {
            return;
        };
        let [rcode, answers, records @ ..] = tail else {
            return;
        };
        let mut response = query[..12 + plain.name_len + 4].to_vec();
        response[2] |= 0x80;
        response[3] = rcode & 0x8f;
        response[6..8].copy_from_slice(&u16::from(*answers % 16).to_be_bytes());
        response[10..12].copy_from_slice(&[0, 0]);
        response.extend_from_slice(records);
        response
    } else {
        tail.to_vec()
    };

    let Some(run) = dnsfront_dns::fuzzing::fast_path(query, &response, counts_down) else {
        return;
    };

    // A query the fast path takes is one the general path decodes, with the same question.
    let message = Message::from_vec(query).expect("a plain query decodes");
    assert_eq!(message.queries.len(), 1);
    let question = &message.queries[0];
    let key_name = Name::from_bytes(&run.key[..run.name_len]).expect("key name decodes");
    assert_eq!(key_name, question.name);
    assert_eq!(
        key_name.to_ascii(),
        question.name.to_lowercase().to_ascii(),
        "the key is the lower-cased name"
    );
    let fixed = &run.key[run.name_len..run.name_len + 4];
    assert_eq!(
        u16::from_be_bytes([fixed[0], fixed[1]]),
        u16::from(question.query_type)
    );
    assert_eq!(
        u16::from_be_bytes([fixed[2], fixed[3]]),
        u16::from(question.query_class)
    );

    // Stored (and still fresh: no time passed) means answered.
    assert_eq!(run.stored, run.answer.is_some(), "stored iff answered");
    let Some(answer) = run.answer else {
        return;
    };
    assert!(answer.len() <= 512);
    assert_eq!(answer[..2], query[..2], "the client's ID");
    let name = 12..12 + run.name_len;
    assert_eq!(answer[name.clone()], query[name], "the client's name case");

    // A well-formed response to this question (as the general path gives)
    // yields a well-formed copy with the same records.
    let question = 12..12 + run.name_len + 4;
    let same_question = response
        .get(question.clone())
        .is_some_and(|asked| asked.eq_ignore_ascii_case(&query[question]));
    if let (true, Ok(original)) = (same_question, test_support::strict_parse(&response)) {
        let copy = test_support::strict_parse(&answer).expect("the copy parses strictly");
        assert_eq!(copy.metadata.response_code, original.metadata.response_code);
        let records = |message: &Message| {
            let mut lines: Vec<String> = message
                .answers
                .iter()
                .chain(&message.authorities)
                .chain(&message.additionals)
                .map(|record| record.to_string().to_ascii_lowercase())
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(
            records(&copy),
            records(&original),
            "same records, any order"
        );
    }
});
