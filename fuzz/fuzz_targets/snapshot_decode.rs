//! The snapshot envelope from arbitrary bytes, through `dnsfront_snapshot`'s
//! public `decode` (with and without a verifying key): never panics, and a
//! snapshot that decodes is normalized and survives encode → decode unchanged.
#![no_main]

use std::sync::LazyLock;

use dnsfront_snapshot::{SigningKey, VerifyingKey, decode, encode};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[7; 32]));
static VERIFYING: LazyLock<VerifyingKey> = LazyLock::new(|| KEY.verifying_key());

fuzz_target!(|data: &[u8]| {
    let with_key = decode(data, Some(&VERIFYING));
    let Ok(verified) = decode(data, None) else {
        assert!(with_key.is_err(), "a key only adds checks");
        return;
    };
    if let Ok(keyed) = with_key {
        assert_eq!(keyed, verified);
        assert!(keyed.signed);
    }
    assert_eq!(verified.encoded_size, data.len());
    assert!(verified.snapshot.is_normalized(), "decode normalizes");
    for key in [None, Some(&*KEY)] {
        let Ok(encoded) = encode(&verified.snapshot, key) else {
            continue; // too large once re-encoded
        };
        let again = decode(&encoded, key.map(|_| &*VERIFYING)).expect("our own envelope decodes");
        assert_eq!(
            again.snapshot, verified.snapshot,
            "encode → decode round trip"
        );
        assert_eq!(again.signed, key.is_some());
    }
});
