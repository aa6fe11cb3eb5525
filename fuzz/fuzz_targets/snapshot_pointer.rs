//! The snapshot pointer (`KEY.pointer`, issue 14 §3): any bytes a KV value can hold.
//! Decoding never panics; a pointer that decodes is canonical — it encodes back to the
//! very bytes it came from, so two spellings can never name the same generation — and
//! what it encodes decodes to itself.
#![no_main]

use dnsfront_snapshot::pointer::{MAX_POINTER_SIZE, Pointer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pointer) = Pointer::decode(data) else {
        return;
    };
    let encoded = pointer.encode();
    assert!(encoded.len() <= MAX_POINTER_SIZE);
    assert_eq!(encoded, data, "a decoded pointer is canonical");
    assert_eq!(Pointer::decode(&encoded), Ok(pointer));
});
