//! Options and request bodies for KV writes and sessions (the lock / leader-election calls).

use std::time::Duration;

use serde::{Serialize, Serializer};

/// Per-call options for [`crate::Client::kv_put`]; `cas`, `acquire` and `release` are mutually
/// exclusive (Consul answers 400 when more than one is set).
#[derive(Debug, Default, Clone)]
pub struct KvPutOptions {
    /// Check-and-set (`?cas=`): 0 creates only if absent; otherwise the key's `ModifyIndex` must match.
    pub cas: Option<u64>,
    /// Opaque flags stored with the value (`?flags=`).
    pub flags: Option<u64>,
    /// Acquire the key's lock with this session ID (`?acquire=`).
    pub acquire: Option<String>,
    /// Release the key's lock held by this session ID (`?release=`).
    pub release: Option<String>,
}

/// What happens to keys locked by a session when it is invalidated.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// Locks are released (`Session` cleared); the keys stay.
    #[default]
    Release,
    /// The locked keys are deleted.
    Delete,
}

/// Body of `PUT /v1/session/create`; the session belongs to the agent's node with its
/// default `serfHealth` check.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionRequest {
    /// Human-readable name shown in `/v1/session/list`.
    pub name: String,
    /// Session TTL (Consul accepts 10s..24h; zero means no TTL); sent as a Go duration (`"15s"`).
    #[serde(rename = "TTL", serialize_with = "go_duration")]
    pub ttl: Duration,
    /// What happens to held locks when the session is invalidated.
    pub behavior: SessionBehavior,
    /// How long a lock released by invalidation cannot be re-acquired (0..60s); sent as `"15s"`.
    #[serde(serialize_with = "go_duration")]
    pub lock_delay: Duration,
}

/// Serializes a duration as a Go duration string (`"15s"`, `"1500ms"`, `"0s"`).
fn go_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_go_duration(*duration))
}

/// Formats a duration exactly, in the coarsest of s / ms / us / ns that loses nothing.
pub(crate) fn format_go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_strings() {
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        assert_eq!(format_go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_go_duration(Duration::from_micros(7)), "7us");
        assert_eq!(
            format_go_duration(Duration::from_nanos(1_000_000_001)),
            "1000000001ns"
        );
    }

    #[test]
    fn session_request_uses_consul_field_names() {
        let request = SessionRequest {
            name: "dnsfront-publisher".to_owned(),
            ttl: Duration::from_secs(15),
            behavior: SessionBehavior::Delete,
            lock_delay: Duration::ZERO,
        };
        let json = serde_json::to_value(&request).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "Name": "dnsfront-publisher",
                "TTL": "15s",
                "Behavior": "delete",
                "LockDelay": "0s"
            })
        );
        assert_eq!(
            serde_json::to_value(SessionBehavior::default()).expect("serializes"),
            "release"
        );
    }
}
