//! The client's error type and its classification.

use std::sync::Arc;

/// A shareable transport-level error cause.
pub type BoxError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a Consul call can fail with; messages name the endpoint, never the token.
///
/// `Clone` so that one failure can be handed to several coalesced waiters.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The agent could not be reached (connection refused or reset, DNS failure, broken body).
    #[error("consul unreachable calling {endpoint}")]
    Unreachable {
        /// API path of the call, without query string.
        endpoint: String,
        /// Underlying transport error.
        #[source]
        source: BoxError,
    },
    /// The TLS handshake with the agent failed (untrusted, expired or
    /// misnamed certificate, client certificate refused); `reason` says
    /// which and what to check.
    #[error("TLS with the consul agent failed calling {endpoint}: {reason}")]
    Tls {
        /// API path of the call, without query string.
        endpoint: String,
        /// The cause and what to check, e.g. "the agent's certificate has expired: ...".
        reason: String,
    },
    /// The call did not complete within its deadline.
    #[error("consul call to {endpoint} timed out")]
    Timeout {
        /// API path of the call, without query string.
        endpoint: String,
    },
    /// Consul answered 500 "No cluster leader".
    #[error("consul has no cluster leader (calling {endpoint})")]
    NoLeader {
        /// API path of the call, without query string.
        endpoint: String,
    },
    /// Consul answered 500 "No path to datacenter".
    #[error("consul has no path to datacenter {datacenter:?}")]
    UnknownDatacenter {
        /// The requested datacenter (empty when the agent's own datacenter was used).
        datacenter: String,
    },
    /// Consul answered 429 (agent RPC limiter or server request limits).
    #[error("consul rate-limited the call to {endpoint}")]
    RateLimited {
        /// API path of the call, without query string.
        endpoint: String,
    },
    /// Consul answered 403: unknown token or missing ACL permission.
    #[error("consul denied the call to {endpoint}: {message}")]
    Forbidden {
        /// API path of the call, without query string.
        endpoint: String,
        /// Consul's reason, trimmed.
        message: String,
    },
    /// Consul answered with another non-success status.
    #[error("consul answered {status} to {endpoint}: {message}")]
    Status {
        /// API path of the call, without query string.
        endpoint: String,
        /// HTTP status code.
        status: u16,
        /// Response body, trimmed to about 200 characters.
        message: String,
    },
    /// The response body was not the JSON we expected.
    #[error("malformed response from consul for {endpoint}")]
    Decode {
        /// API path of the call, without query string.
        endpoint: String,
        /// The JSON error.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The client configuration was rejected by [`crate::Client::new`].
    #[error("invalid consul client config: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the setting.
        reason: String,
    },
}

impl Error {
    /// Whether trying again later can succeed: transport errors, timeouts, 5xx, 429, no leader.
    ///
    /// 4xx (including 403), decode errors, an unknown datacenter and config errors are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Tls { .. }
            | Error::Timeout { .. }
            | Error::NoLeader { .. }
            | Error::RateLimited { .. } => true,
            Error::Status { status, .. } => *status >= 500,
            Error::UnknownDatacenter { .. }
            | Error::Forbidden { .. }
            | Error::Decode { .. }
            | Error::InvalidConfig { .. } => false,
        }
    }

    /// Whether Consul refused the ACL token itself (403 `ACL not found`: the
    /// token expired, was revoked, or never existed in that datacenter), rather
    /// than one call it does not allow (403 `Permission denied`).
    pub fn token_rejected(&self) -> bool {
        let Error::Forbidden { message, .. } = self else {
            return false;
        };
        let message = message.to_ascii_lowercase();
        ["acl not found", "token not found", "token expired"]
            .iter()
            .any(|sign| message.contains(sign))
    }

    /// A bounded tag for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unreachable { .. } => "unreachable",
            Error::Tls { .. } => "tls",
            Error::Timeout { .. } => "timeout",
            Error::NoLeader { .. } => "no_leader",
            Error::UnknownDatacenter { .. } => "unknown_dc",
            Error::RateLimited { .. } => "rate_limited",
            Error::Forbidden { .. } => "forbidden",
            Error::Status { .. } => "status",
            Error::Decode { .. } => "decode",
            Error::InvalidConfig { .. } => "config",
        }
    }
}

/// Maximum characters of a response body kept in an error message.
const MAX_MESSAGE_CHARS: usize = 200;

/// Trims a response body to a short single-line message, removing `secret` if present.
pub(crate) fn trim_message(body: &[u8], secret: Option<&str>) -> String {
    let text = String::from_utf8_lossy(body);
    let mut text = text.trim().replace(['\r', '\n'], " ");
    if let Some(secret) = secret.filter(|secret| !secret.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    if text.chars().count() > MAX_MESSAGE_CHARS {
        let mut short: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        short.push('…');
        short
    } else {
        text
    }
}

/// Maps a non-success HTTP status and body to an [`Error`].
pub(crate) fn classify_status(
    endpoint: &str,
    datacenter: Option<&str>,
    status: u16,
    body: &[u8],
    secret: Option<&str>,
) -> Error {
    let message = trim_message(body, secret);
    let endpoint = endpoint.to_owned();
    match status {
        429 => Error::RateLimited { endpoint },
        403 => Error::Forbidden { endpoint, message },
        500 if message.contains("No cluster leader") => Error::NoLeader { endpoint },
        500 if message.contains("No path to datacenter") => Error::UnknownDatacenter {
            datacenter: datacenter.unwrap_or_default().to_owned(),
        },
        _ => Error::Status {
            endpoint,
            status,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "/v1/health/service/web";

    #[test]
    fn no_cluster_leader_is_retryable_no_leader() {
        let error = classify_status(EP, None, 500, b"No cluster leader", None);
        assert!(matches!(&error, Error::NoLeader { endpoint } if endpoint == EP));
        assert!(error.is_retryable());
        assert_eq!(error.kind(), "no_leader");
    }

    #[test]
    fn no_path_to_datacenter_is_final_unknown_dc() {
        let error = classify_status(
            EP,
            Some("mars-1"),
            500,
            b"rpc error: No path to datacenter",
            None,
        );
        assert!(
            matches!(&error, Error::UnknownDatacenter { datacenter } if datacenter == "mars-1")
        );
        assert!(!error.is_retryable());
        assert_eq!(error.kind(), "unknown_dc");
    }

    #[test]
    fn too_many_requests_is_retryable_rate_limited() {
        let error = classify_status(EP, None, 429, b"RPC rate limit exceeded", None);
        assert!(matches!(error, Error::RateLimited { .. }));
        assert!(error.is_retryable());
        assert_eq!(error.kind(), "rate_limited");
    }

    #[test]
    fn forbidden_is_final_and_keeps_the_message() {
        let error = classify_status(EP, None, 403, b"ACL not found\n", None);
        assert!(matches!(&error, Error::Forbidden { message, .. } if message == "ACL not found"));
        assert!(!error.is_retryable());
        assert_eq!(error.kind(), "forbidden");
    }

    #[test]
    fn other_5xx_are_retryable_and_4xx_are_not() {
        let unavailable = classify_status(EP, None, 503, b"try again later", None);
        assert!(matches!(unavailable, Error::Status { status: 503, .. }));
        assert!(unavailable.is_retryable());
        let other_500 = classify_status(EP, None, 500, b"No known Consul servers", None);
        assert!(matches!(other_500, Error::Status { status: 500, .. }));
        assert!(other_500.is_retryable());
        let bad_request = classify_status(EP, None, 400, b"Invalid wait time", None);
        assert!(matches!(bad_request, Error::Status { status: 400, .. }));
        assert!(!bad_request.is_retryable());
        assert_eq!(bad_request.kind(), "status");
    }

    #[test]
    fn transport_and_decode_errors_are_classified() {
        let refused: BoxError =
            Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let unreachable = Error::Unreachable {
            endpoint: EP.to_owned(),
            source: refused,
        };
        assert!(unreachable.is_retryable());
        assert_eq!(unreachable.kind(), "unreachable");
        let timeout = Error::Timeout {
            endpoint: EP.to_owned(),
        };
        assert!(timeout.is_retryable());
        assert_eq!(timeout.kind(), "timeout");
        let json_error = serde_json::from_str::<u32>("{").expect_err("invalid json");
        let decode = Error::Decode {
            endpoint: EP.to_owned(),
            source: Arc::new(json_error),
        };
        assert!(!decode.is_retryable());
        assert_eq!(decode.kind(), "decode");
        assert!(decode.to_string().contains(EP));
    }

    #[test]
    fn long_bodies_are_trimmed_and_secrets_removed() {
        let body = format!("token s3cret denied {}", "x".repeat(1000));
        let message = trim_message(body.as_bytes(), Some("s3cret"));
        assert!(!message.contains("s3cret"));
        assert!(message.starts_with("token <redacted> denied"));
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        // Multi-byte characters are never split.
        let wide = "é".repeat(500);
        assert_eq!(
            trim_message(wide.as_bytes(), None).chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
    }
}
