//! The pointer: a tiny KV value next to the snapshot that names it (generation and the
//! SHA-256 of the value's bytes), so followers can block on a few dozen bytes instead of
//! the whole value, and fetch the value only when it is newer than what they hold.
//!
//! The document is text, three lines, each ending with `\n`, nothing else:
//!
//! ```text
//! dnsfront-snapshot-pointer 1
//! generation 42
//! sha256 0f1e…(64 lowercase hex digits)
//! ```
//!
//! It is parsed strictly: the version line first (another version is
//! [`PointerError::UnsupportedVersion`], so a later format is refused by name), then exactly
//! these fields in this order, a decimal generation without sign or leading zeros and at most
//! [`MAX_GENERATION`], lowercase hex, and at most [`MAX_POINTER_SIZE`] bytes in all.
//! The pointer is not signed: it only tells a follower *when* to fetch; the value it names
//! is verified as always (SHA-256 against the pointer, then format, checksum, signature and
//! generation rules), so a forged pointer can cause a fetch but never an apply.

use sha2::{Digest, Sha256};

use crate::follower::MAX_GENERATION;

/// The pointer key for a snapshot key: a sibling, `KEY.pointer` (`dnsfront/hosts.pointer`),
/// inside the `key_prefix "dnsfront/hosts"` of the documented ACL policies.
pub fn pointer_key_for(key: &str) -> String {
    format!("{key}.pointer")
}

/// The pointer format this build writes and reads.
pub const POINTER_VERSION: u32 = 1;
/// Largest pointer accepted: the longest valid document is 128 bytes.
pub const MAX_POINTER_SIZE: usize = 256;
/// First word of the first line.
const MAGIC: &str = "dnsfront-snapshot-pointer";

/// What a pointer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    /// Generation of the snapshot in the value key.
    pub generation: u64,
    /// SHA-256 of the value's bytes (the whole envelope, as stored in KV).
    pub sha256: [u8; 32],
}

/// Why a pointer was refused (counted as `snapshot.rejected_total{reason}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// Longer than [`MAX_POINTER_SIZE`].
    #[error("snapshot pointer is {size} bytes, more than the {MAX_POINTER_SIZE} allowed")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// A pointer format this build does not read.
    #[error(
        "snapshot pointer format version {0} is not supported (this build reads version {POINTER_VERSION})"
    )]
    UnsupportedVersion(String),
    /// Anything else that is not exactly the document above.
    #[error("malformed snapshot pointer: {0}")]
    Malformed(&'static str),
}

impl PointerError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PointerError::TooLarge { .. } => "pointer_too_large",
            PointerError::UnsupportedVersion(_) => "pointer_version",
            PointerError::Malformed(_) => "pointer_malformed",
        }
    }
}

impl Pointer {
    /// The pointer naming `value` (an encoded envelope) at `generation`.
    pub fn of(generation: u64, value: &[u8]) -> Self {
        Self {
            generation,
            sha256: sha256(value),
        }
    }

    /// Whether `value` is the one this pointer names.
    pub fn names(&self, value: &[u8]) -> bool {
        sha256(value) == self.sha256
    }

    /// The document to store.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{MAGIC} {POINTER_VERSION}\ngeneration {}\nsha256 {}\n",
            self.generation,
            hex::encode(self.sha256)
        )
        .into_bytes()
    }

    /// Parses a stored document strictly (see the module docs).
    pub fn decode(bytes: &[u8]) -> Result<Self, PointerError> {
        if bytes.len() > MAX_POINTER_SIZE {
            return Err(PointerError::TooLarge { size: bytes.len() });
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| PointerError::Malformed("not UTF-8 text"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or(PointerError::Malformed("does not end with a newline"))?;
        let mut lines = body.split('\n');
        let version = field(lines.next(), MAGIC)?;
        if version != POINTER_VERSION.to_string() {
            return Err(PointerError::UnsupportedVersion(
                version.chars().take(16).collect(),
            ));
        }
        let generation = parse_generation(field(lines.next(), "generation")?)?;
        let sha256 = parse_sha256(field(lines.next(), "sha256")?)?;
        if lines.next().is_some() {
            return Err(PointerError::Malformed("more than three lines"));
        }
        Ok(Self { generation, sha256 })
    }
}

/// SHA-256 of a value's bytes.
pub fn sha256(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

/// The text after `name ` on one line.
fn field<'a>(line: Option<&'a str>, name: &'static str) -> Result<&'a str, PointerError> {
    let line = line.ok_or(PointerError::Malformed("fewer than three lines"))?;
    let (found, value) = line
        .split_once(' ')
        .ok_or(PointerError::Malformed("a line is not `name value`"))?;
    if found != name {
        return Err(PointerError::Malformed(
            "unexpected field (expected dnsfront-snapshot-pointer, generation, sha256 in order)",
        ));
    }
    Ok(value)
}

fn parse_generation(text: &str) -> Result<u64, PointerError> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return Err(PointerError::Malformed(
            "generation is not a decimal number without leading zeros",
        ));
    }
    text.parse::<u64>()
        .ok()
        .filter(|generation| *generation <= MAX_GENERATION)
        .ok_or(PointerError::Malformed(
            "generation is above the maximum (2^53)",
        ))
}

fn parse_sha256(text: &str) -> Result<[u8; 32], PointerError> {
    let lowercase_hex = text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lowercase_hex {
        return Err(PointerError::Malformed(
            "sha256 is not 64 lowercase hex digits",
        ));
    }
    let mut sha256 = [0; 32];
    hex::decode_to_slice(text, &mut sha256)
        .map_err(|_| PointerError::Malformed("sha256 is not 64 lowercase hex digits"))?;
    Ok(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Pointer {
        Pointer::of(42, b"envelope bytes")
    }

    #[test]
    fn round_trips_and_names_its_value() {
        let pointer = good();
        let encoded = pointer.encode();
        assert!(encoded.len() <= 128);
        assert_eq!(Pointer::decode(&encoded), Ok(pointer));
        assert!(pointer.names(b"envelope bytes"));
        assert!(!pointer.names(b"other bytes"));
        let text = String::from_utf8(encoded).expect("text");
        assert!(text.starts_with("dnsfront-snapshot-pointer 1\ngeneration 42\nsha256 "));
        let longest = Pointer {
            generation: MAX_GENERATION,
            sha256: [0xff; 32],
        };
        assert_eq!(longest.encode().len(), 128);
    }

    #[test]
    fn refuses_anything_but_the_exact_document() {
        let sha = hex::encode([0xabu8; 32]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "pointer_malformed"),
            (
                format!("dnsfront-snapshot-pointer 1\ngeneration 42\nsha256 {sha}"),
                "pointer_malformed",
            ),
            (
                format!("dnsfront-snapshot-pointer 2\ngeneration 42\nsha256 {sha}\n"),
                "pointer_version",
            ),
            (
                format!("dnsfront-snapshot-pointer 1\ngeneration 042\nsha256 {sha}\n"),
                "pointer_malformed",
            ),
            (
                format!("dnsfront-snapshot-pointer 1\ngeneration +42\nsha256 {sha}\n"),
                "pointer_malformed",
            ),
            (
                format!(
                    "dnsfront-snapshot-pointer 1\ngeneration {}\nsha256 {sha}\n",
                    MAX_GENERATION + 1
                ),
                "pointer_malformed",
            ),
            (
                format!(
                    "dnsfront-snapshot-pointer 1\ngeneration 99999999999999999999999\nsha256 {sha}\n"
                ),
                "pointer_malformed",
            ),
            (
                format!(
                    "dnsfront-snapshot-pointer 1\ngeneration 42\nsha256 {}\n",
                    sha.to_uppercase()
                ),
                "pointer_malformed",
            ),
            (
                "dnsfront-snapshot-pointer 1\ngeneration 42\nsha256 abc\n".to_owned(),
                "pointer_malformed",
            ),
            (
                format!("dnsfront-snapshot-pointer 1\nsha256 {sha}\ngeneration 42\n"),
                "pointer_malformed",
            ),
            (
                format!("dnsfront-snapshot-pointer 1\ngeneration 42\nsha256 {sha}\nextra 1\n"),
                "pointer_malformed",
            ),
            (
                format!("dnsfront-snapshot-pointer 1\r\ngeneration 42\nsha256 {sha}\n"),
                "pointer_version",
            ),
            (
                format!("dnsfront-snapshot-pointer 1\ngeneration  42\nsha256 {sha}\n"),
                "pointer_malformed",
            ),
            ("x".repeat(MAX_POINTER_SIZE + 1), "pointer_too_large"),
        ];
        for (text, reason) in cases {
            let error = Pointer::decode(text.as_bytes()).expect_err(&text);
            assert_eq!(error.reason(), reason, "{text:?}: {error}");
            assert!(!error.to_string().is_empty());
        }
        assert_eq!(
            Pointer::decode(&[0xff, 0xfe, b'\n']).map_err(|e| e.reason()),
            Err("pointer_malformed")
        );
    }

    #[test]
    fn pointer_key_is_a_sibling_under_the_key_prefix() {
        assert_eq!(pointer_key_for("dnsfront/hosts"), "dnsfront/hosts.pointer");
    }
}
