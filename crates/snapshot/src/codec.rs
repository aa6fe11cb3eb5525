//! The envelope stored in the one KV key: deterministic, compressed, checksummed, optionally signed.
//!
//! Layout (all integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `DNSFSNAP` |
//! | 8 | 1 | format version ([`FORMAT_VERSION`]) |
//! | 9 | 1 | flags (bit 0: signed; other bits must be 0) |
//! | 10 | 4 | compressed payload length |
//! | 14 | 4 | inflated payload length |
//! | 18 | 32 | SHA-256 of the inflated payload |
//! | 50 | 64 | Ed25519 signature over bytes `0..50` (only when signed) |
//! | 50 or 114 | n | payload: gzip of the canonical JSON of the normalized [`Snapshot`] |
//!
//! The signature covers the header and the checksum, and the checksum covers the payload, so
//! a valid signature vouches for every byte that matters. Decoding checks the signature
//! before inflating anything.

use std::io::{Read, Write};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use flate2::{Compression, GzBuilder, read::GzDecoder};
use sha2::{Digest, Sha256};

pub use crate::wire::Limits;
use crate::wire::SnapshotWire;
use crate::{Error, Snapshot};

/// Largest value Consul accepts (`kv_max_value_size` default, 512 KiB).
pub const MAX_VALUE_SIZE: usize = 524_288;
/// The envelope format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// The first eight bytes of every envelope.
pub const MAGIC: &[u8; 8] = b"DNSFSNAP";
/// Hard cap on the inflated payload (zip-bomb guard): nothing inflates beyond this.
///
/// 32 times [`MAX_VALUE_SIZE`] (16 MiB): real catalogs compress about 10:1 (a 2,000-node,
/// 500-service catalog is 480 KB of JSON in a 46 KB envelope) to about 17:1 for the densest
/// ones that still fit, so 32:1 leaves room for more repetitive catalogs, while a hostile
/// envelope (gzip reaches about 1,000:1) cannot make a follower inflate more than this.
pub const MAX_INFLATED_SIZE: usize = 32 * MAX_VALUE_SIZE;

/// The bounds on a decoded snapshot, checked while decoding ([`decode`]) and before
/// encoding ([`encode`]). Each is above what fits in [`MAX_VALUE_SIZE`] for a real
/// catalog (the densest measured, 40,000 instances, is 478 KB encoded), so only hostile
/// or broken documents reach them. With [`MAX_INFLATED_SIZE`] they bound the memory of the
/// decoded snapshot (the README's memory model has the figure).
pub const LIMITS: Limits = Limits {
    services: 16_384,
    instances_per_service: 16_384,
    instances: 65_536,
    tags_per_instance: 64,
    tags: 131_072,
    nodes: 32_768,
    string_len: 256,
    datacenter_len: 64,
};

/// Flag bit: a 64-byte Ed25519 signature follows the checksum.
const FLAG_SIGNED: u8 = 0b0000_0001;
const HEADER_LEN: usize = 18;
const CHECKSUM_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;
/// Fixed gzip level (and zero mtime, unknown OS) so encoding is deterministic.
const GZIP_LEVEL: u32 = 9;
/// Initial buffer for inflating; the buffer grows only as real data arrives.
const INFLATE_INITIAL_CAPACITY: usize = 1024 * 1024;

/// A decoded envelope whose checksum (and signature, when a key was given) verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The snapshot, normalized.
    pub snapshot: Snapshot,
    /// SHA-256 of the inflated canonical payload.
    pub checksum: [u8; 32],
    /// The envelope carries a signature. It was verified when `decode` got a key; without a
    /// key it is reported but not checked.
    pub signed: bool,
    /// Size of the envelope in bytes.
    pub encoded_size: usize,
}

/// Encodes a snapshot into the envelope, signing it when a key is given.
///
/// Deterministic: the same snapshot content and key give the same bytes (the snapshot is
/// normalized first, gzip runs at a fixed level with a zero timestamp, and Ed25519
/// signatures are deterministic). Fails with [`Error::TooLarge`] when the envelope exceeds
/// [`MAX_VALUE_SIZE`]: the snapshot is never split over several keys.
pub fn encode(snapshot: &Snapshot, signing_key: Option<&SigningKey>) -> Result<Vec<u8>, Error> {
    let normalized = snapshot.normalized();
    if let Some(violation) = LIMITS.violation(&normalized) {
        return Err(Error::Shape {
            what: violation.what,
            limit: violation.limit,
        });
    }
    let payload = serde_json::to_vec(&*normalized).map_err(Error::Json)?;
    if payload.len() > MAX_INFLATED_SIZE {
        return Err(Error::TooLargeInflated {
            limit: MAX_INFLATED_SIZE,
        });
    }
    let checksum: [u8; 32] = Sha256::digest(&payload).into();

    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    encoder.write_all(&payload).map_err(Error::Compress)?;
    let compressed = encoder.finish().map_err(Error::Compress)?;

    let too_large = |encoded: usize| Error::TooLarge {
        encoded,
        limit: MAX_VALUE_SIZE,
        services: normalized.services.len(),
        instances: normalized.instance_count(),
        nodes: normalized.nodes.len(),
    };
    let signature_len = if signing_key.is_some() {
        SIGNATURE_LEN
    } else {
        0
    };
    let total = HEADER_LEN + CHECKSUM_LEN + signature_len + compressed.len();
    let compressed_len = u32::try_from(compressed.len()).map_err(|_| too_large(total))?;
    let inflated_len = u32::try_from(payload.len()).map_err(|_| too_large(total))?;
    if total > MAX_VALUE_SIZE {
        return Err(too_large(total));
    }

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(if signing_key.is_some() {
        FLAG_SIGNED
    } else {
        0
    });
    out.extend_from_slice(&compressed_len.to_be_bytes());
    out.extend_from_slice(&inflated_len.to_be_bytes());
    out.extend_from_slice(&checksum);
    if let Some(key) = signing_key {
        let signature: Signature = key.sign(&out);
        out.extend_from_slice(&signature.to_bytes());
    }
    out.extend_from_slice(&compressed);
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, Error> {
    bytes
        .get(at..at + 4)
        .and_then(|slice| <[u8; 4]>::try_from(slice).ok())
        .map(u32::from_be_bytes)
        .ok_or(Error::Truncated)
}

/// Decodes and verifies an envelope.
///
/// Checks, in order: magic, format version (a newer version is a clear
/// [`Error::UnsupportedVersion`]), flags and lengths (never panics on short input), the
/// signature when `verifying_key` is given (an unsigned envelope is then
/// [`Error::Unsigned`]), the declared and actual inflated size against
/// [`MAX_INFLATED_SIZE`], the SHA-256 checksum, and finally the JSON document, read under
/// [`LIMITS`] (a document past them is [`Error::Shape`], refused before it is built).
///
/// CPU-bound for large snapshots (inflate, hash, parse): async callers run it with
/// `spawn_blocking`.
pub fn decode(bytes: &[u8], verifying_key: Option<&VerifyingKey>) -> Result<Verified, Error> {
    if bytes.len() > MAX_VALUE_SIZE {
        return Err(Error::Malformed {
            reason: "larger than the consul value limit",
        });
    }
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            Error::Truncated
        } else {
            Error::BadMagic
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = *bytes.get(8).ok_or(Error::Truncated)?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let flags = *bytes.get(9).ok_or(Error::Truncated)?;
    if flags & !FLAG_SIGNED != 0 {
        return Err(Error::Malformed {
            reason: "unknown flag bits set",
        });
    }
    let signed = flags & FLAG_SIGNED != 0;
    let compressed_len = read_u32(bytes, 10)? as usize;
    let inflated_len = read_u32(bytes, 14)? as usize;
    let signature_len = if signed { SIGNATURE_LEN } else { 0 };
    let payload_start = HEADER_LEN + CHECKSUM_LEN + signature_len;
    let expected_len = payload_start
        .checked_add(compressed_len)
        .ok_or(Error::Truncated)?;
    if bytes.len() < expected_len {
        return Err(Error::Truncated);
    }
    if bytes.len() > expected_len {
        return Err(Error::Malformed {
            reason: "trailing bytes after the payload",
        });
    }
    let signed_part = &bytes[..HEADER_LEN + CHECKSUM_LEN];
    let checksum: [u8; 32] = bytes[HEADER_LEN..HEADER_LEN + CHECKSUM_LEN]
        .try_into()
        .map_err(|_| Error::Truncated)?;

    if let Some(key) = verifying_key {
        if !signed {
            return Err(Error::Unsigned);
        }
        let signature = Signature::from_slice(&bytes[HEADER_LEN + CHECKSUM_LEN..payload_start])
            .map_err(|_| Error::BadSignature)?;
        key.verify_strict(signed_part, &signature)
            .map_err(|_| Error::BadSignature)?;
    }

    if inflated_len > MAX_INFLATED_SIZE {
        return Err(Error::TooLargeInflated {
            limit: MAX_INFLATED_SIZE,
        });
    }
    let payload = inflate(&bytes[payload_start..], inflated_len)?;
    let actual: [u8; 32] = Sha256::digest(&payload).into();
    if actual != checksum {
        return Err(Error::ChecksumMismatch);
    }
    let wire =
        SnapshotWire::decode(&payload, LIMITS).map_err(|(error, violation)| match violation {
            Some(violation) => Error::Shape {
                what: violation.what,
                limit: violation.limit,
            },
            None => Error::Json(error),
        })?;
    drop(payload);
    let mut snapshot = Snapshot::from(wire);
    snapshot.normalize();
    Ok(Verified {
        snapshot,
        checksum,
        signed,
        encoded_size: bytes.len(),
    })
}

/// Inflates at most `declared + 1` bytes, so a lying header cannot make us inflate a bomb.
fn inflate(compressed: &[u8], declared: usize) -> Result<Vec<u8>, Error> {
    let mut payload = Vec::with_capacity(declared.min(INFLATE_INITIAL_CAPACITY));
    GzDecoder::new(compressed)
        .take(declared as u64 + 1)
        .read_to_end(&mut payload)
        .map_err(Error::Decompress)?;
    if payload.len() > declared {
        return Err(Error::TooLargeInflated { limit: declared });
    }
    if payload.len() < declared {
        return Err(Error::Malformed {
            reason: "payload inflates to fewer bytes than declared",
        });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_as_documented() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let encoded = encode(&Snapshot::default(), Some(&key)).expect("encodes");
        assert_eq!(&encoded[..8], MAGIC);
        assert_eq!(encoded[8], FORMAT_VERSION);
        assert_eq!(encoded[9], FLAG_SIGNED);
        let compressed_len = read_u32(&encoded, 10).expect("length") as usize;
        assert_eq!(
            encoded.len(),
            HEADER_LEN + CHECKSUM_LEN + SIGNATURE_LEN + compressed_len
        );
        // gzip member starts right after the signature, with a zero mtime.
        let payload = &encoded[HEADER_LEN + CHECKSUM_LEN + SIGNATURE_LEN..];
        assert_eq!(&payload[..2], &[0x1f, 0x8b]);
        assert_eq!(&payload[4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn unknown_flag_bits_are_rejected() {
        let mut encoded = encode(&Snapshot::default(), None).expect("encodes");
        encoded[9] = 0b10;
        assert!(matches!(
            decode(&encoded, None),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut encoded = encode(&Snapshot::default(), None).expect("encodes");
        encoded.push(0);
        assert!(matches!(
            decode(&encoded, None),
            Err(Error::Malformed { .. })
        ));
    }
}
