//! Events about snapshots (published, applied, rejected) for an event stream such as
//! Datadog's, beside deploys: kvexpress sent one per upload and per delivery.
//!
//! This crate only says what happened; [`EventSink`] is implemented where the transport is
//! known (`src/events.rs` in the binary: DogStatsD `_e{…}` datagrams). A sink must never
//! block: events are sent from the follower and publisher loops.

use std::fmt::Debug;
use std::sync::Arc;

/// How an event shows in the stream (DogStatsD's alert types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertType {
    /// Something went as expected (published, applied).
    Info,
    /// Something was held back on purpose (the kill switch).
    Warning,
    /// Something was refused (a snapshot failed verification).
    Error,
}

impl AlertType {
    /// DogStatsD's name of the alert type (`t:info`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// One event: a title, a text and tags (`name:value`, bounded values only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Short title, e.g. `dnsfront snapshot applied`.
    pub title: String,
    /// What happened, with the generation and the SHA-256.
    pub text: String,
    /// Info, warning or error.
    pub alert: AlertType,
    /// `name:value` tags, e.g. `snapshot_event:applied`.
    pub tags: Vec<String>,
}

/// Where events go. Implementations send without blocking and drop on error.
pub trait EventSink: Debug + Send + Sync {
    /// Sends one event (best effort).
    fn send(&self, event: Event);
}

/// An optional, shared sink: `None` sends nothing.
pub type Events = Option<Arc<dyn EventSink>>;

/// Sends `event` to `events` when there is a sink.
pub(crate) fn emit(events: &Events, event: impl FnOnce() -> Event) {
    if let Some(sink) = events {
        sink.send(event());
    }
}

/// The tags every snapshot event carries: what happened and the key.
pub(crate) fn tags(what: &str, key: &str) -> Vec<String> {
    vec![
        format!("snapshot_event:{what}"),
        format!("snapshot_key:{key}"),
    ]
}

/// The first 12 hex digits of a SHA-256, as the events and `dnsfront check` show it.
pub fn short_sha(checksum: &[u8; 32]) -> String {
    hex::encode(&checksum[..6])
}
