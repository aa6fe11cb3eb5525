//! The crate's one error type.

use std::path::PathBuf;

/// Errors encoding, decoding, verifying, storing or loading a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The value does not start with the `DNSFSNAP` magic.
    #[error("not a dnsfront snapshot (bad magic)")]
    BadMagic,
    /// The envelope's format version is not one this build reads.
    #[error("unsupported snapshot format version {0} (this build reads version {current})", current = crate::codec::FORMAT_VERSION)]
    UnsupportedVersion(u8),
    /// The value ends before the envelope says it should.
    #[error("snapshot is truncated")]
    Truncated,
    /// The envelope is structurally wrong (unknown flags, trailing bytes, length mismatch).
    #[error("malformed snapshot: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// Compressing the payload failed.
    #[error("compressing the snapshot payload failed")]
    Compress(#[source] std::io::Error),
    /// The payload is not a valid gzip stream.
    #[error("snapshot payload does not decompress")]
    Decompress(#[source] std::io::Error),
    /// The payload would inflate beyond the declared size or the hard cap (zip-bomb guard).
    #[error("snapshot payload inflates beyond {limit} bytes")]
    TooLargeInflated {
        /// The size it was not allowed to exceed.
        limit: usize,
    },
    /// The document breaks one of the shape limits ([`crate::codec::LIMITS`]).
    #[error("snapshot document has {what} beyond the limit of {limit}")]
    Shape {
        /// What is counted.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The generation is out of the range followers accept (see
    /// [`crate::follower::MAX_GENERATION`]).
    #[error("snapshot generation {generation} is out of range: {reason}")]
    Generation {
        /// The generation found.
        generation: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The SHA-256 of the inflated payload differs from the one in the envelope.
    #[error("snapshot checksum mismatch")]
    ChecksumMismatch,
    /// A public key is configured but the snapshot carries no signature.
    #[error("snapshot is unsigned but a public key is configured")]
    Unsigned,
    /// No public key is configured and unsigned snapshots are not allowed, so nothing can
    /// be trusted (counted as `unsigned`).
    #[error(
        "snapshot cannot be trusted: no public key is configured and unsigned snapshots \
         are not allowed (snapshot.allow_unsigned = false)"
    )]
    Untrusted,
    /// The signature does not verify against the configured public key.
    #[error("snapshot signature does not verify against the configured public key")]
    BadSignature,
    /// The payload is not the expected JSON document.
    #[error("snapshot payload is not a valid snapshot document")]
    Json(#[source] serde_json::Error),
    /// The encoded snapshot does not fit in one Consul KV value.
    #[error(
        "encoded snapshot is {encoded} bytes, over the {limit}-byte Consul value limit \
         ({services} services, {instances} instances, {nodes} nodes)"
    )]
    TooLarge {
        /// Encoded size in bytes.
        encoded: usize,
        /// The limit it exceeds ([`crate::codec::MAX_VALUE_SIZE`]).
        limit: usize,
        /// Number of services in the snapshot.
        services: usize,
        /// Number of service instances in the snapshot.
        instances: usize,
        /// Number of nodes in the snapshot.
        nodes: usize,
    },
    /// Reading or writing a file failed.
    #[error("i/o error on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key file is not a valid base64 Ed25519 key.
    #[error("invalid key file {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why it is rejected.
        reason: String,
    },
}

impl Error {
    /// A short, bounded label for metrics (`snapshot.rejected_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadMagic => "bad_magic",
            Error::UnsupportedVersion(_) => "unsupported_version",
            Error::Truncated => "truncated",
            Error::Malformed { .. } => "malformed",
            Error::Compress(_) => "compress",
            Error::Decompress(_) => "decompress",
            Error::TooLargeInflated { .. } => "too_large_inflated",
            Error::Shape { .. } => "shape",
            Error::Generation { .. } => "generation",
            Error::ChecksumMismatch => "checksum",
            Error::Unsigned | Error::Untrusted => "unsigned",
            Error::BadSignature => "bad_signature",
            Error::Json(_) => "json",
            Error::TooLarge { .. } => "too_large",
            Error::Io { .. } => "io",
            Error::Key { .. } => "key",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
