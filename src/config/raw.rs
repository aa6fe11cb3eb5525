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

    /// Reads and parses a file, then merges the drop-ins of the `conf.d`
    /// directory beside it (`/etc/dnsfront/conf.d/*.toml` for
    /// `/etc/dnsfront/dnsfront.toml`), in lexical order of their names: a
    /// later file's table is merged key by key into the earlier ones, and
    /// any other value (a number, a string, an array such as
    /// `forward.upstreams` or `forward.rules`) replaces the earlier one.
    /// Each file is first parsed on its own, so an error names the file, the
    /// key and the line. No `conf.d`: the file alone.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let text = read(path)?;
        let origin = path.display().to_string();
        let main = Self::parse(&text, &origin)?;
        let drop_ins = drop_in_files(path)?;
        if drop_ins.is_empty() {
            return Ok(main);
        }
        let table = |text: &str, origin: &str| {
            text.parse::<toml::Table>()
                .map_err(|error| ConfigError::Parse {
                    path: origin.to_owned(),
                    message: error.message().trim().replace('\n', " "),
                })
        };
        let mut merged = table(&text, &origin)?;
        let mut origins = vec![origin];
        for file in drop_ins {
            let text = read(&file)?;
            let origin = file.display().to_string();
            Self::parse(&text, &origin)?;
            merge(&mut merged, table(&text, &origin)?);
            origins.push(origin);
        }
        toml::Value::Table(merged)
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Parse {
                path: origins.join(" + "),
                message: error.message().trim().replace('\n', " "),
            })
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

/// The directory of drop-ins merged after a config file: `conf.d` beside it.
pub(super) const DROP_IN_DIR: &str = "conf.d";

/// The `*.toml` files of the `conf.d` directory beside `config`, sorted by
/// name (dot files skipped). No directory: none.
pub(super) fn drop_in_files(config: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = config
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(DROP_IN_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name.ends_with(".toml") && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Merges `over` into `base`: tables key by key, everything else replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
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
    /// `CONSUL_HTTP_SSL`, `CONSUL_CACERT` and the other TLS variables.
    pub consul_tls: super::TlsEnv,
    /// The `DD_*` variables Datadog's DogStatsD clients read.
    pub datadog: DatadogEnv,
}

/// The environment Datadog's own DogStatsD clients read (datadog-go,
/// datadogpy): where the agent is, and the unified service tags.
#[derive(Debug, Default, Clone)]
pub struct DatadogEnv {
    /// `DD_DOGSTATSD_URL`: `udp://HOST:PORT` or `unix:///path/to/dsd.socket`.
    pub dogstatsd_url: Option<String>,
    /// `DD_AGENT_HOST`.
    pub agent_host: Option<String>,
    /// `DD_DOGSTATSD_PORT`.
    pub dogstatsd_port: Option<String>,
    /// `DD_ENV`.
    pub env: Option<String>,
    /// `DD_SERVICE`.
    pub service: Option<String>,
    /// `DD_VERSION`.
    pub version: Option<String>,
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
            datadog: DatadogEnv {
                dogstatsd_url: non_empty("DD_DOGSTATSD_URL"),
                agent_host: non_empty("DD_AGENT_HOST"),
                dogstatsd_port: non_empty("DD_DOGSTATSD_PORT"),
                env: non_empty("DD_ENV"),
                service: non_empty("DD_SERVICE"),
                version: non_empty("DD_VERSION"),
            },
            consul_tls: super::TlsEnv::from_process(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn conf_d_files_are_merged_after_the_main_file_in_lexical_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("dnsfront.toml");
        write(
            &main,
            "[dns]\nlisten = [\"127.0.0.1:53\"]\ndomain = \"consul\"\n\n[forward]\nupstreams = [\"192.0.2.1\"]\n",
        );
        // Without conf.d: the file alone.
        let alone = RawConfig::load(&main).expect("load");
        assert_eq!(alone.forward.upstreams, vec!["192.0.2.1"]);

        let conf_d = dir.path().join(DROP_IN_DIR);
        std::fs::create_dir(&conf_d).expect("mkdir");
        // Read in name order: 20 after 10 wins; a table is merged key by key
        // (dns.listen stays), an array is replaced whole.
        write(
            &conf_d.join("20-site.toml"),
            "[dns]\ndomain = \"site\"\n\n[forward]\nupstreams = [\"192.0.2.3\"]\n",
        );
        write(
            &conf_d.join("10-fleet.toml"),
            "[dns]\ndomain = \"fleet\"\nservice_ttl = \"7s\"\n\n[forward]\nupstreams = [\"192.0.2.2\", \"192.0.2.4\"]\n",
        );
        // Not drop-ins: another extension, a dot file.
        write(&conf_d.join("30-notes.txt"), "[dns]\ndomain = \"txt\"\n");
        write(
            &conf_d.join(".40-hidden.toml"),
            "[dns]\ndomain = \"hidden\"\n",
        );
        let merged = RawConfig::load(&main).expect("load");
        assert_eq!(merged.dns.domain, "site");
        assert_eq!(merged.dns.listen, vec!["127.0.0.1:53"]);
        assert_eq!(merged.forward.upstreams, vec!["192.0.2.3"]);
        let settings = merged
            .validate(&Env::default())
            .expect("a valid merged config");
        assert_eq!(settings.dns.service_ttl, Duration::from_secs(7));

        // A bad drop-in: the error names that file and the key.
        write(
            &conf_d.join("15-bad.toml"),
            "[dns]\nservice_ttl = \"forever\"\n",
        );
        let error = RawConfig::load(&main)
            .expect_err("a bad drop-in")
            .to_string();
        assert!(error.contains("15-bad.toml"), "{error}");
        assert!(error.contains("dns.service_ttl"), "{error}");
        write(&conf_d.join("15-bad.toml"), "[dns]\nno_such_key = 1\n");
        let error = RawConfig::load(&main)
            .expect_err("an unknown key")
            .to_string();
        assert!(
            error.contains("15-bad.toml") && error.contains("no_such_key"),
            "{error}"
        );
    }
}
