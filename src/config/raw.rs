//! The file as written ([`RawConfig`]: one table per section), how it is
//! read, and what the command line and the environment add to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    ConfigError, RawCatalog, RawConsul, RawDns, RawForward, RawHosts, RawLog, RawMetrics,
    RawPublish, RawSnapshot, RawState,
};

/// The file, as written. Every table rejects unknown keys.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[dns]`: listeners and answer shaping.
    pub dns: RawDns,
    /// `[consul]`: how to reach the local Consul agent.
    pub consul: RawConsul,
    /// `[catalog]`: the Consul-backed cache.
    pub catalog: RawCatalog,
    /// `[forward]`: upstreams for every other name.
    pub forward: RawForward,
    /// `[state]`: on-disk state.
    pub state: RawState,
    /// `[snapshot]`: following the KV hosts snapshot (outage fallback).
    pub snapshot: RawSnapshot,
    /// `[publish]`: writing the snapshot (`dnsfront publish`, server nodes).
    pub publish: RawPublish,
    /// `[hosts]`: local hosts files answered authoritatively.
    pub hosts: RawHosts,
    /// `[log]`: logging.
    pub log: RawLog,
    /// `[metrics]`: StatsD (DogStatsD) export and the optional Prometheus endpoint.
    pub metrics: RawMetrics,
}

/// A duration written as `"10s"` inside maps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HumanDuration(#[serde(with = "humantime_serde")] pub Duration);

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` (replaces `dns.listen`).
    pub listen: Vec<String>,
    /// `--consul`.
    pub consul: Option<String>,
    /// `--upstream` (replaces `forward.upstreams`).
    pub upstreams: Vec<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--domain`.
    pub domain: Option<String>,
}

impl RawConfig {
    /// Parses TOML text; `origin` names the file in errors.
    ///
    /// Errors give the key path, the position and toml's message, but never
    /// quote the offending line: it may hold the Consul token.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let describe = |error: &toml::de::Error| {
            let position = error.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" (line {line}, column {column})")
            });
            (
                error.message().trim().replace('\n', " "),
                position.unwrap_or_default(),
            )
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|error| {
            let (message, position) = describe(&error);
            ConfigError::Parse {
                path: origin.to_owned(),
                message: format!("{message}{position}"),
            }
        })?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let (mut message, position) = describe(error.inner());
            if path.contains("token") {
                // "invalid type: integer `1234`" would print the secret.
                message = "invalid value (not shown: it may be a secret)".to_owned();
            }
            ConfigError::Parse {
                path: origin.to_owned(),
                message: if path == "." || path.is_empty() {
                    format!("{message}{position}")
                } else {
                    format!("{path}: {message}{position}")
                },
            }
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Applies command-line overrides.
    pub fn apply(&mut self, overrides: &Overrides) {
        if !overrides.listen.is_empty() {
            self.dns.listen = overrides.listen.clone();
        }
        if let Some(consul) = &overrides.consul {
            self.consul.address = Some(consul.clone());
        }
        if !overrides.upstreams.is_empty() {
            self.forward.upstreams = overrides.upstreams.clone();
        }
        if let Some(dir) = &overrides.state_dir {
            self.state.dir = dir.clone();
        }
        if let Some(domain) = &overrides.domain {
            self.dns.domain = domain.clone();
        }
    }
}

/// The environment the config reads defaults from (injected for tests).
#[derive(Debug, Default, Clone)]
pub struct Env {
    /// `CONSUL_HTTP_ADDR`.
    pub consul_http_addr: Option<String>,
    /// `CONSUL_HTTP_TOKEN` (redacted in `Debug`).
    pub consul_http_token: Option<dnsfront_consul::Token>,
    /// `CONSUL_HTTP_TOKEN_FILE`; wins over `CONSUL_HTTP_TOKEN`, as in Consul's CLI.
    pub consul_http_token_file: Option<PathBuf>,
    /// `CONSUL_NAMESPACE` (Consul Enterprise).
    pub consul_namespace: Option<String>,
    /// `CONSUL_PARTITION` (Consul Enterprise).
    pub consul_partition: Option<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let non_empty = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Self {
            consul_http_addr: non_empty("CONSUL_HTTP_ADDR"),
            consul_http_token: non_empty("CONSUL_HTTP_TOKEN").map(dnsfront_consul::Token::new),
            consul_http_token_file: non_empty("CONSUL_HTTP_TOKEN_FILE").map(Into::into),
            consul_namespace: non_empty("CONSUL_NAMESPACE"),
            consul_partition: non_empty("CONSUL_PARTITION"),
        }
    }
}
