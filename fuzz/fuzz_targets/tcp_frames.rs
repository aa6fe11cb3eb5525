//! TCP framing: the frame reader of `crates/dns/src/tcp.rs` on an arbitrary
//! byte stream, delivered in arbitrary pieces with reads dropped half-way.
//!
//! Input: byte 0 = length N of the read schedule (one byte per read: at most
//! that many bytes, 0 = nothing yet and the read is dropped), then N schedule
//! bytes, then the stream.
#![no_main]

use dnsfront_dns::fuzzing::{Frames, FramesEnd, TCP_QUERY_LENGTHS, tcp_frames};
use libfuzzer_sys::fuzz_target;

/// An independent reading of RFC 1035 §4.2.2 framing with our length limits.
fn expected(mut stream: &[u8]) -> Frames {
    let mut messages = Vec::new();
    loop {
        let end = match stream {
            [] => FramesEnd::Closed,
            [_] => FramesEnd::Truncated,
            [high, low, rest @ ..] => {
                let length = usize::from(u16::from_be_bytes([*high, *low]));
                if !TCP_QUERY_LENGTHS.contains(&length) {
                    FramesEnd::Refused
                } else if rest.len() < length {
                    FramesEnd::Truncated
                } else {
                    messages.push(rest[..length].to_vec());
                    stream = &rest[length..];
                    continue;
                }
            }
        };
        return Frames { messages, end };
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&schedule_len, rest)) = data.split_first() else {
        return;
    };
    let (schedule, stream) = rest.split_at(usize::from(schedule_len).min(rest.len()));
    let read = tcp_frames(stream, schedule);
    // However the bytes arrive and however often a read is dropped, the
    // messages and the ending are those of the whole stream at once.
    assert_eq!(read, expected(stream));
    assert_eq!(tcp_frames(stream, &[]), read, "in one piece");
});
