//! Every key of the configuration file, declared once: its path, how a
//! running server takes a new value, and where the value lives in
//! [`Settings`]. The reload diff, the live/restart split and the
//! `restart_required` list are read from [`KEYS`]; tests hold the serde
//! structs, `config/dnsfront.toml` and the README to it.
//!
//! Defaults live in each table's `Default` (most taken from the crate's own
//! `Config::default()` or `DefMinMax` consts); bounds are checked where the
//! table is validated, each once.

use std::fmt::Debug;

use super::Settings;

/// How a running server takes a changed value (see `src/reload.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Answer settings: `Router::reload` applies them at once.
    Router,
    /// `Forwarder::reconfigure` swaps them, keeping the cache and upstream health.
    Forwarder,
    /// The hosts files are re-read from the new list.
    HostsFiles,
    /// The log filter is swapped.
    LogLevel,
    /// Read at start only: a change keeps the running value and is named in
    /// `restart_required`.
    Restart,
    /// Read by `dnsfront publish` only; the server never uses it.
    PublishOnly,
}

impl Reload {
    /// Whether a running server applies a change.
    pub fn is_live(self) -> bool {
        !matches!(self, Self::Restart | Self::PublishOnly)
    }
}

/// One key of the file.
#[derive(Clone, Copy)]
pub struct Key {
    /// The path as the file spells it, e.g. `catalog.refresh_interval`.
    pub path: &'static str,
    /// How a running server takes a change.
    pub reload: Reload,
    /// The key's value in validated settings, compared by the reload diff
    /// (never printed: `consul.token` is in it).
    value: fn(&Settings) -> String,
}

impl Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("path", &self.path)
            .field("reload", &self.reload)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether the key's value differs between `old` and `new`.
    pub fn changed(&self, old: &Settings, new: &Settings) -> bool {
        (self.value)(old) != (self.value)(new)
    }
}

const fn key(path: &'static str, reload: Reload, value: fn(&Settings) -> String) -> Key {
    Key {
        path,
        reload,
        value,
    }
}

fn show<T: Debug>(value: T) -> String {
    format!("{value:?}")
}

/// Not kept in [`Settings`] as such: never differs between two of them.
/// (`forward.resolv_file` in `forward.upstreams`; `[publish]` is read by
/// `dnsfront publish` only.)
fn not_in_settings(_: &Settings) -> String {
    String::new()
}

use Reload::{Forwarder, HostsFiles, LogLevel, PublishOnly, Restart, Router};

/// Every key, in file order (`consul.token` last: the reload log has always
/// named it after the others).
pub const KEYS: &[Key] = &[
    key("dns.listen", Restart, |s| show(&s.listen)),
    key("dns.domain", Router, |s| show(&s.dns.domain)),
    key("dns.allowed_networks", Restart, |s| {
        show(&s.server.allowed_networks)
    }),
    // An acknowledgement checked by validation; what it lets through is
    // compared as dns.allowed_networks.
    key("dns.allow_open_resolver", Restart, not_in_settings),
    key("dns.tcp_idle_timeout", Restart, |s| {
        show(s.server.tcp_idle_timeout)
    }),
    key("dns.tcp_max_lifetime", Restart, |s| {
        show(s.server.tcp_max_lifetime)
    }),
    key("dns.tcp_max_connections", Restart, |s| {
        show(s.server.tcp_max_connections)
    }),
    key("dns.tcp_max_connections_per_client", Restart, |s| {
        show(s.server.tcp_max_connections_per_client)
    }),
    key("dns.tcp_max_pipelined", Restart, |s| {
        show(s.server.tcp_max_pipelined)
    }),
    key("dns.rate_limit", Restart, |s| show(s.server.rate_limit)),
    key("dns.service_ttl", Router, |s| show(s.dns.service_ttl)),
    key("dns.service_ttl_overrides", Router, |s| {
        show(&s.dns.service_ttl_overrides)
    }),
    key("dns.node_ttl", Router, |s| show(s.dns.node_ttl)),
    key("dns.negative_ttl", Router, |s| show(s.dns.negative_ttl)),
    key("dns.stale_ttl", Router, |s| show(s.dns.stale_ttl)),
    key("dns.max_answer_records", Router, |s| {
        show(s.dns.max_answer_records)
    }),
    key("dns.udp_answer_limit", Router, |s| {
        show(s.dns.udp_answer_limit)
    }),
    key("dns.enable_additional_node_meta_txt", Router, |s| {
        show(s.dns.node_meta_txt)
    }),
    key("dns.translate_wan_addrs", Router, |s| {
        show(s.dns.translate_wan_addrs)
    }),
    key("dns.max_udp_payload", Router, |s| {
        show(s.dns.max_udp_payload)
    }),
    key("dns.alt_domain", Router, |s| show(&s.dns.alt_domain)),
    key("dns.agent_dns", Router, |s| show(s.dns.agent_dns)),
    key("dns.agent_dns_timeout", Router, |s| {
        show(s.dns.agent_dns_timeout)
    }),
    key("consul.address", Restart, |s| s.consul.address.clone()),
    // The path; the file's content is re-read live by the Consul client.
    key("consul.token_file", Restart, |s| show(&s.consul.token_file)),
    key("consul.request_timeout", Restart, |s| {
        show(s.consul.request_timeout)
    }),
    key("consul.max_concurrent_requests", Restart, |s| {
        show(s.consul.max_concurrent_requests)
    }),
    key("consul.stale", Restart, |s| show(s.consul.stale)),
    key("consul.cached", Restart, |s| show(s.consul.cached)),
    key("consul.namespace", Restart, |s| show(&s.consul.namespace)),
    key("consul.partition", Restart, |s| show(&s.consul.partition)),
    // The paths; the files' contents are re-read when they change (rotation).
    key("consul.ca_file", Restart, |s| show(&s.consul.tls.ca_file)),
    key("consul.ca_path", Restart, |s| show(&s.consul.tls.ca_path)),
    key("consul.cert_file", Restart, |s| {
        show(&s.consul.tls.cert_file)
    }),
    key("consul.key_file", Restart, |s| show(&s.consul.tls.key_file)),
    key("consul.tls_server_name", Restart, |s| {
        show(&s.consul.tls.server_name)
    }),
    key("consul.tls_verify", Restart, |s| show(s.consul.tls.verify)),
    key("catalog.refresh_interval", Restart, |s| {
        show(s.catalog.refresh_interval)
    }),
    key("catalog.node_refresh_interval", Restart, |s| {
        show(s.catalog.node_refresh_interval)
    }),
    key("catalog.refresh_jitter", Restart, |s| {
        show(s.catalog.refresh_jitter)
    }),
    key("catalog.first_fetch_timeout", Restart, |s| {
        show(s.catalog.first_fetch_timeout)
    }),
    key("catalog.negative_cache_ttl", Restart, |s| {
        show(s.catalog.negative_ttl)
    }),
    key("catalog.idle_timeout", Restart, |s| {
        show(s.catalog.idle_timeout)
    }),
    key("catalog.max_stale", Restart, |s| show(s.catalog.max_stale)),
    key("catalog.max_entries", Restart, |s| {
        show(s.catalog.max_entries)
    }),
    key("catalog.max_bytes", Restart, |s| show(s.catalog.max_bytes)),
    key("catalog.only_passing", Restart, |s| {
        show(s.catalog.only_passing)
    }),
    key("catalog.backoff_min", Restart, |s| {
        show(s.catalog.backoff_min)
    }),
    key("catalog.backoff_max", Restart, |s| {
        show(s.catalog.backoff_max)
    }),
    key("catalog.refresh", Restart, |s| show(s.catalog.refresh)),
    key("catalog.watch_wait", Restart, |s| {
        show(s.catalog.watch_wait)
    }),
    key("catalog.watch_min_interval", Restart, |s| {
        show(s.catalog.watch_min_interval)
    }),
    key("catalog.max_watches", Restart, |s| {
        show(s.catalog.max_watches)
    }),
    key("catalog.max_concurrent_fetches", Restart, |s| {
        show(s.catalog.max_concurrent_fetches)
    }),
    key("forward.upstreams", Forwarder, |s| {
        show(&s.forward.upstreams)
    }),
    // What it names is read into forward.upstreams, which the diff compares.
    key("forward.resolv_file", Forwarder, not_in_settings),
    key("forward.attempt_timeout", Forwarder, |s| {
        show(s.forward.attempt_timeout)
    }),
    key("forward.deadline", Forwarder, |s| show(s.forward.deadline)),
    key("forward.cache_size", Restart, |s| {
        show(s.forward.cache_size)
    }),
    key("forward.cache_max_bytes", Restart, |s| {
        show(s.forward.cache_max_bytes)
    }),
    key("forward.min_ttl", Forwarder, |s| show(s.forward.min_ttl)),
    key("forward.max_ttl", Forwarder, |s| show(s.forward.max_ttl)),
    key("forward.negative_max_ttl", Forwarder, |s| {
        show(s.forward.negative_max_ttl)
    }),
    key("forward.max_in_flight", Restart, |s| {
        show(s.forward.max_in_flight)
    }),
    key("forward.max_in_flight_bytes", Restart, |s| {
        show(s.forward.max_in_flight_bytes)
    }),
    key("forward.rules", Forwarder, |s| show(&s.forward.rules)),
    key("forward.strategy", Forwarder, |s| show(s.forward.strategy)),
    key("forward.tcp_only", Forwarder, |s| show(s.forward.tcp_only)),
    key("forward.max_fails", Forwarder, |s| {
        show(s.forward.max_fails)
    }),
    key("forward.probe_interval", Forwarder, |s| {
        show(s.forward.probe_interval)
    }),
    key("forward.domain_needed", Forwarder, |s| {
        show(s.forward.domain_needed)
    }),
    key("forward.bogus_priv", Forwarder, |s| {
        show(s.forward.bogus_priv)
    }),
    key("forward.rebind_protection", Forwarder, |s| {
        show(s.forward.rebind_protection)
    }),
    key("forward.rebind_allow", Forwarder, |s| {
        show(&s.forward.rebind_allow)
    }),
    key("forward.serve_stale", Forwarder, |s| {
        show(s.forward.serve_stale)
    }),
    key("forward.stale_answer_ttl", Forwarder, |s| {
        show(s.forward.stale_answer_ttl)
    }),
    key("forward.prefetch", Forwarder, |s| show(s.forward.prefetch)),
    key("state.dir", Restart, |s| show(&s.state_dir)),
    key("snapshot.follow", Restart, |s| show(s.follow.is_some())),
    key("snapshot.key", Restart, |s| {
        show(s.follow.as_ref().map(|f| &f.key))
    }),
    key("snapshot.stop_key", Restart, |s| {
        show(s.follow.as_ref().map(|f| &f.stop_key))
    }),
    key("snapshot.public_key_file", Restart, |s| {
        show(s.follow.as_ref().map(|f| &f.verifying_key))
    }),
    key("snapshot.allow_unsigned", Restart, |s| {
        show(s.follow.as_ref().map(|f| f.allow_unsigned))
    }),
    key("snapshot.wait", Restart, |s| {
        show(s.follow.as_ref().map(|f| f.wait))
    }),
    key("snapshot.fetch_spread", Restart, |s| {
        show(s.follow.as_ref().map(|f| f.fetch_spread))
    }),
    key("snapshot.hosts_file", Restart, |s| {
        show(
            s.follow
                .as_ref()
                .map(|f| f.hosts_file.as_ref().map(|h| &h.0)),
        )
    }),
    key("snapshot.hosts_file_mode", Restart, |s| {
        show(
            s.follow
                .as_ref()
                .map(|f| f.hosts_file.as_ref().map(|h| h.1.mode)),
        )
    }),
    key("snapshot.hosts_file_owner", Restart, |s| {
        show(
            s.follow
                .as_ref()
                .map(|f| f.hosts_file.as_ref().map(|h| h.1.owner)),
        )
    }),
    key("snapshot.hosts_file_group", Restart, |s| {
        show(
            s.follow
                .as_ref()
                .map(|f| f.hosts_file.as_ref().map(|h| h.1.group)),
        )
    }),
    key("snapshot.after_delivery_command", Restart, |s| {
        show(
            s.follow
                .as_ref()
                .map(|f| f.after_delivery.as_ref().map(|c| &c.argv)),
        )
    }),
    key("snapshot.after_delivery_timeout", Restart, |s| {
        show(
            s.follow
                .as_ref()
                .map(|f| f.after_delivery.as_ref().map(|c| c.timeout)),
        )
    }),
    key("publish.signing_key_file", PublishOnly, not_in_settings),
    key("publish.identity", PublishOnly, not_in_settings),
    key("publish.min_interval", PublishOnly, not_in_settings),
    key("publish.session_ttl", PublishOnly, not_in_settings),
    key("publish.lock_delay", PublishOnly, not_in_settings),
    key("publish.min_services", PublishOnly, not_in_settings),
    key("publish.max_drop_fraction", PublishOnly, not_in_settings),
    key("hosts.files", HostsFiles, |s| show(&s.hosts.files)),
    key("hosts.ttl", Router, |s| show(s.dns.local_ttl)),
    key("hosts.watch_interval", Restart, |s| {
        show(s.hosts.watch_interval)
    }),
    key("log.level", LogLevel, |s| s.log_level.clone()),
    key("log.format", Restart, |s| show(s.log_format)),
    key("log.queries", Router, |s| show(s.dns.query_log.enabled)),
    key("log.query_sample", Router, |s| show(s.dns.query_log.sample)),
    key("metrics.statsd", Restart, |s| {
        show(s.metrics.statsd_address.is_some())
    }),
    key("metrics.statsd_address", Restart, |s| {
        show(&s.metrics.statsd_address)
    }),
    key("metrics.prefix", Restart, |s| s.metrics.prefix.clone()),
    key("metrics.events", Restart, |s| show(s.metrics.events)),
    key("metrics.tags", Restart, |s| show(&s.metrics.tags)),
    key("metrics.prometheus_listen", Restart, |s| {
        show(s.metrics.prometheus_listen)
    }),
    // Only checked (a wildcard prometheus_listen is refused without it).
    key(
        "metrics.prometheus_allow_wildcard",
        Restart,
        not_in_settings,
    ),
    // Compared, never printed: the secret itself (Debug would say <redacted>).
    // A token from a file is not compared: the client follows the file.
    key("consul.token", Restart, |s| {
        s.consul
            .token
            .as_ref()
            .filter(|_| s.consul.token_file.is_none())
            .map(|token| token.expose().to_owned())
            .unwrap_or_default()
    }),
];

/// The keys whose values differ between `old` and `new`, in [`KEYS`] order.
pub fn diff(old: &Settings, new: &Settings) -> Vec<&'static Key> {
    KEYS.iter().filter(|key| key.changed(old, new)).collect()
}
