//! Structure-aware: a valid envelope (magic, version, lengths, SHA-256,
//! gzip, optionally an Ed25519 signature) around arbitrary bytes as the JSON
//! payload, so the fuzzer reaches the document decoding behind the checks.
//! A sound envelope is refused only for its document; a decoded snapshot
//! reports the payload's checksum, is normalized, and survives
//! encode → decode unchanged.
//!
//! Input: byte 0 bit 0 = signed; the rest is the payload. The envelope layout
//! is the one pinned by crates/snapshot/tests/data (format version 1).
#![no_main]

use std::io::Write as _;
use std::sync::LazyLock;

use dnsfront_snapshot::{Error, SigningKey, VerifyingKey, decode, encode};
use ed25519_dalek::Signer as _;
use flate2::{Compression, write::GzEncoder};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[7; 32]));
static VERIFYING: LazyLock<VerifyingKey> = LazyLock::new(|| KEY.verifying_key());

fn envelope(payload: &[u8], signed: bool) -> Vec<u8> {
    let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
    gzip.write_all(payload).expect("in memory");
    let compressed = gzip.finish().expect("in memory");
    let checksum: [u8; 32] = Sha256::digest(payload).into();
    let mut out = b"DNSFSNAP".to_vec();
    out.push(1);
    out.push(u8::from(signed));
    out.extend_from_slice(
        &u32::try_from(compressed.len())
            .expect("small")
            .to_be_bytes(),
    );
    out.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    out.extend_from_slice(&checksum);
    if signed {
        let signature = KEY.sign(&out);
        out.extend_from_slice(&signature.to_bytes());
    }
    out.extend_from_slice(&compressed);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, payload)) = data.split_first() else {
        return;
    };
    let signed = flags & 1 != 0;
    let bytes = envelope(payload, signed);
    let key = signed.then_some(&*VERIFYING);
    let verified = match decode(&bytes, key) {
        Ok(verified) => verified,
        Err(error) => {
            // The envelope is sound, so only the document can be refused.
            assert!(
                !matches!(
                    error,
                    Error::BadMagic
                        | Error::UnsupportedVersion(_)
                        | Error::Truncated
                        | Error::Decompress(_)
                        | Error::TooLargeInflated { .. }
                        | Error::ChecksumMismatch
                        | Error::Unsigned
                        | Error::BadSignature
                ),
                "a sound envelope refused: {error}"
            );
            return;
        }
    };
    let checksum: [u8; 32] = Sha256::digest(payload).into();
    assert_eq!(verified.checksum, checksum);
    assert_eq!(verified.signed, signed);
    assert_eq!(verified.encoded_size, bytes.len());
    assert!(verified.snapshot.is_normalized(), "decode normalizes");
    if let Ok(encoded) = encode(&verified.snapshot, None) {
        let again = decode(&encoded, None).expect("our own envelope decodes");
        assert_eq!(
            again.snapshot, verified.snapshot,
            "encode → decode round trip"
        );
    }
});
