//! Ed25519 key files: one line of base64 holding the 32-byte seed (private) or public key.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::Error;

/// Length in bytes of a seed and of a public key.
const KEY_LEN: usize = 32;

fn read_key_bytes(path: &Path) -> Result<[u8; KEY_LEN], Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::io(path, source))?;
    let key_error = |reason: String| Error::Key {
        path: path.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(key_error("file is empty".to_owned()));
    }
    let bytes = STANDARD
        .decode(trimmed)
        .map_err(|error| key_error(format!("not base64: {error}")))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| key_error(format!("expected {KEY_LEN} bytes, got {}", bytes.len())))
}

/// Loads a private key (base64 of the 32-byte Ed25519 seed) for the publisher.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, Error> {
    read_key_bytes(path).map(|seed| SigningKey::from_bytes(&seed))
}

/// Loads a public key (base64 of the 32-byte Ed25519 public key) for followers.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, Error> {
    let bytes = read_key_bytes(path)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| Error::Key {
        path: path.to_owned(),
        reason: "not a valid Ed25519 public key".to_owned(),
    })
}

/// The base64 form of a public key, as [`load_verifying_key`] reads it.
pub fn verifying_key_to_base64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Generates a new key pair from the OS-seeded CSPRNG: (private seed, public key), both base64.
pub fn generate_keypair() -> (String, String) {
    let seed: [u8; KEY_LEN] = rand::random();
    let signing_key = SigningKey::from_bytes(&seed);
    (
        STANDARD.encode(seed),
        verifying_key_to_base64(&signing_key.verifying_key()),
    )
}
