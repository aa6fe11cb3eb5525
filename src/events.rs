//! DogStatsD events (`_e{…}` datagrams) for the snapshot's published, applied and rejected
//! events, sent to the StatsD agent beside the metrics so they show in Datadog's event
//! stream, as kvexpress's did. `metrics-exporter-statsd` sends metrics only, hence this
//! small sender: one connected UDP socket (bound like the metrics socket, see
//! [`crate::telemetry`]), a non-blocking send per event, dropped and counted
//! (`events.dropped_total`) when the socket would block or the agent is unreachable.

use std::net::{ToSocketAddrs as _, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use anyhow::Context as _;
use dnsfront_snapshot::events::{Event, EventSink, Events};

use crate::config::{ConfigError, MetricsSettings, StatsdTarget};
use crate::telemetry::{EVENTS_DROPPED, statsd_socket};

/// Longest event text sent: the DogStatsD agent reads datagrams into 8 KiB buffers.
const MAX_TEXT_BYTES: usize = 4000;

/// The event sink `settings` asks for: `None` unless `metrics.events` is on and a StatsD
/// agent is configured (UDP, or the agent's Unix datagram socket). Fails naming
/// `metrics.statsd_address` when it does not resolve.
pub fn sink(settings: &MetricsSettings) -> anyhow::Result<Events> {
    let Some(target) = settings.statsd_address.as_ref().filter(|_| settings.events) else {
        return Ok(None);
    };
    let socket = match target {
        StatsdTarget::Udp(address) => {
            let target = address
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| ConfigError::Invalid {
                    key: "metrics.statsd_address".to_owned(),
                    reason: format!("{address:?} does not resolve to an address"),
                })?;
            let socket = statsd_socket(target)
                .with_context(|| format!("metrics.events: opening a UDP socket to {target}"))?;
            socket
                .set_nonblocking(true)
                .context("DogStatsD event socket")?;
            EventSocket::Udp(socket)
        }
        StatsdTarget::Unix(path) => {
            // Unbound and connected: it can only send to the agent's socket.
            let socket = UnixDatagram::unbound().context("DogStatsD event socket")?;
            socket.connect(path).with_context(|| {
                format!(
                    "metrics.events: connecting to the agent's socket {}",
                    path.display()
                )
            })?;
            socket
                .set_nonblocking(true)
                .context("DogStatsD event socket")?;
            EventSocket::Unix(socket)
        }
    };
    let tags = settings
        .tags
        .iter()
        .chain(&settings.statsd_tags)
        .map(|(key, value)| format!("{key}:{value}"))
        .collect();
    Ok(Some(Arc::new(DogStatsdEvents { socket, tags })))
}

/// Where events go: the same agent as the metrics.
#[derive(Debug)]
enum EventSocket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

/// Sends events as DogStatsD datagrams over a connected socket.
#[derive(Debug)]
pub struct DogStatsdEvents {
    socket: EventSocket,
    /// `metrics.tags` and the unified service tags, added to every event.
    tags: Vec<String>,
}

impl EventSink for DogStatsdEvents {
    fn send(&self, event: Event) {
        let datagram = datagram(&event, &self.tags);
        let sent = match &self.socket {
            EventSocket::Udp(socket) => socket.send(datagram.as_bytes()),
            EventSocket::Unix(socket) => socket.send(datagram.as_bytes()),
        };
        if sent.is_err() {
            metrics::counter!(EVENTS_DROPPED).increment(1);
        }
    }
}

/// `_e{TITLE_LEN,TEXT_LEN}:TITLE|TEXT|t:ALERT|#TAGS`, lengths in bytes after escaping.
pub fn datagram(event: &Event, extra_tags: &[String]) -> String {
    let title = escape(&event.title, MAX_TEXT_BYTES);
    let text = escape(&event.text, MAX_TEXT_BYTES);
    let tags: Vec<String> = event
        .tags
        .iter()
        .chain(extra_tags)
        .map(|tag| tag_safe(tag))
        .collect();
    let mut datagram = format!(
        "_e{{{},{}}}:{title}|{text}|t:{}",
        title.len(),
        text.len(),
        event.alert.as_str()
    );
    if !tags.is_empty() {
        datagram.push_str("|#");
        datagram.push_str(&tags.join(","));
    }
    datagram
}

/// Newlines written as `\n` (DogStatsD's escape), cut to `limit` bytes on a char boundary.
fn escape(text: &str, limit: usize) -> String {
    let mut escaped = text.replace("\r\n", "\\n").replace('\n', "\\n");
    if escaped.len() > limit {
        let mut end = limit;
        while !escaped.is_char_boundary(end) {
            end -= 1;
        }
        escaped.truncate(end);
    }
    escaped
}

/// A tag without the characters that separate tags or fields.
fn tag_safe(tag: &str) -> String {
    tag.chars()
        .map(|c| {
            if c == ',' || c == '|' || c == '#' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use dnsfront_snapshot::events::AlertType;

    use super::*;

    #[test]
    fn datagram_has_the_dogstatsd_event_shape() {
        let event = Event {
            title: "dnsfront snapshot applied".to_owned(),
            text: "generation 7\napplied é".to_owned(),
            alert: AlertType::Info,
            tags: vec!["snapshot_event:applied".to_owned(), "bad tag,x".to_owned()],
        };
        let datagram = datagram(&event, &["env:prod".to_owned()]);
        let text = "generation 7\\napplied é";
        assert_eq!(
            datagram,
            format!(
                "_e{{25,{}}}:dnsfront snapshot applied|{text}|t:info|#snapshot_event:applied,bad_tag_x,env:prod",
                text.len()
            )
        );
    }

    #[test]
    fn long_texts_are_cut_on_a_char_boundary() {
        let text = "é".repeat(MAX_TEXT_BYTES);
        let escaped = escape(&text, MAX_TEXT_BYTES);
        assert!(escaped.len() <= MAX_TEXT_BYTES);
        assert!(escaped.chars().all(|c| c == 'é'));
    }
}
