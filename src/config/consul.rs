//! `[consul]`: how to reach the local Consul agent.

use std::path::PathBuf;
use std::time::Duration;

use dnsfront_consul as consul;
use serde::{Deserialize, Serialize};

use super::{ConfigError, Env, RawConfig, invalid};

/// Default Consul agent address when `CONSUL_HTTP_ADDR` is unset.
pub const DEFAULT_CONSUL: &str = "http://127.0.0.1:8500";

/// `[consul]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConsul {
    /// Agent HTTP address; default `$CONSUL_HTTP_ADDR` or http://127.0.0.1:8500.
    pub address: Option<String>,
    /// ACL token; prefer `token_file` or `CONSUL_HTTP_TOKEN`. Redacted in
    /// `Debug`, never serialized (`print-config` leaves it out).
    #[serde(skip_serializing)]
    pub token: Option<consul::Token>,
    /// File holding the ACL token.
    pub token_file: Option<PathBuf>,
    /// Deadline of one HTTP call.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Read with `?stale` (any server answers; survives leader elections).
    pub stale: bool,
    /// Read health with `?cached` (the agent's cache).
    pub cached: bool,
}

impl Default for RawConsul {
    fn default() -> Self {
        let consul = consul::Config::default();
        Self {
            address: None,
            token: None,
            token_file: None,
            request_timeout: consul.request_timeout,
            stale: consul.stale,
            cached: consul.cached,
        }
    }
}

impl RawConfig {
    /// `[consul]`, with `CONSUL_HTTP_ADDR` and `CONSUL_HTTP_TOKEN` from `env`.
    pub(super) fn consul_config(&self, env: &Env) -> Result<consul::Config, ConfigError> {
        let address = self
            .consul
            .address
            .clone()
            .or_else(|| env.consul_http_addr.clone())
            .unwrap_or_else(|| DEFAULT_CONSUL.to_owned());
        // CONSUL_HTTP_ADDR may be "host:port" without a scheme, as the consul CLI allows.
        let address = if address.contains("://") {
            address
        } else {
            format!("http://{address}")
        };
        if !address.starts_with("http://") {
            return Err(invalid(
                "consul.address",
                format!(
                    "{address:?}: only http:// is supported (run dnsfront beside the local agent)"
                ),
            ));
        }
        let token = match (&self.consul.token, &self.consul.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "consul.token",
                    "set either token or token_file, not both",
                ));
            }
            (Some(token), None) => Some(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    invalid(
                        "consul.token_file",
                        format!("reading {}: {error}", path.display()),
                    )
                })?;
                Some(consul::Token::new(text.trim().to_owned()))
            }
            (None, None) => env.consul_http_token.clone(),
        }
        .filter(|token| !token.expose().is_empty());
        if self.consul.request_timeout < Duration::from_millis(100)
            || self.consul.request_timeout > Duration::from_secs(60)
        {
            return Err(invalid(
                "consul.request_timeout",
                "must be between 100ms and 60s",
            ));
        }
        Ok(consul::Config {
            address,
            token,
            request_timeout: self.consul.request_timeout,
            stale: self.consul.stale,
            cached: self.consul.cached,
        })
    }
}

impl RawConfig {
    /// Where the ACL token of `consul` (built by `consul_config`) can be read
    /// by others: sent in clear over the network, or kept in a file every
    /// user can read. One sentence each, naming the key; logged once at start
    /// (`serve`, `publish`) and listed by `dnsfront check`. Never the token.
    pub fn token_warnings(&self, consul: &consul::Config) -> Vec<String> {
        let mut warnings = Vec::new();
        if consul.token_sent_in_clear() {
            warnings.push(format!(
                "consul.address {} is plain http:// beyond the loopback: the ACL token \
                 crosses the network in clear text; run dnsfront beside the local agent \
                 (http://127.0.0.1:8500)",
                consul.address
            ));
        }
        if let Some(path) = &self.consul.token_file
            && consul.token.is_some()
            && let Some(mode) = world_readable_mode(path)
        {
            warnings.push(format!(
                "consul.token_file {} is readable by every user (mode {mode:04o}): \
                 chmod 0600 it, or pass it with LoadCredential=",
                path.display()
            ));
        }
        warnings
    }
}

/// The permission bits of `path` when others may read it (`o+r`).
fn world_readable_mode(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::super::{Env, RawConfig};

    const SECRET: &str = "b1gs3cr3t-token-4c7e";

    fn assert_redacted(what: &str, debug: &str) {
        assert!(!debug.contains(SECRET), "{what} leaks the token: {debug}");
    }

    #[test]
    fn debug_of_every_struct_holding_the_token_is_redacted() {
        let raw = RawConfig::parse(
            &format!("[consul]\ntoken = \"{SECRET}\"\naddress = \"http://10.0.0.5:8500\"\n"),
            "test.toml",
        )
        .expect("parses");
        let env = Env {
            consul_http_addr: None,
            consul_http_token: Some(SECRET.into()),
            ..Env::default()
        };
        let settings = raw.validate(&env).expect("valid");
        assert_eq!(
            settings.consul.token.as_ref().map(|t| t.expose()),
            Some(SECRET)
        );
        let client = dnsfront_consul::Client::new(settings.consul.clone()).expect("client");
        for (what, debug) in [
            ("RawConfig", format!("{raw:?}")),
            ("RawConfig (pretty)", format!("{raw:#?}")),
            ("RawConsul", format!("{:?}", raw.consul)),
            ("Env", format!("{env:?}")),
            ("Settings", format!("{settings:#?}")),
            ("consul::Config", format!("{:?}", settings.consul)),
            ("consul::Client", format!("{client:?}")),
            ("print-config", toml::to_string(&raw).expect("serializes")),
            ("warnings", settings.warnings.join("\n")),
        ] {
            assert_redacted(what, &debug);
        }
        assert!(format!("{raw:?}").contains("<redacted>"));
    }

    #[test]
    fn a_token_sent_in_clear_or_kept_world_readable_is_warned_about() {
        let parse = |text: &str| {
            RawConfig::parse(text, "test.toml")
                .expect("parses")
                .validate(&Env::default())
                .expect("valid")
        };
        let remote = parse("[consul]\ntoken = \"t\"\naddress = \"http://10.0.0.5:8500\"\n");
        assert_eq!(remote.warnings.len(), 1, "{:?}", remote.warnings);
        assert!(
            remote.warnings[0].starts_with("consul.address http://10.0.0.5:8500 is plain http://"),
            "{:?}",
            remote.warnings
        );
        // Loopback, or no token: nothing to warn about.
        assert!(parse("[consul]\ntoken = \"t\"\n").warnings.is_empty());
        assert!(
            parse("[consul]\naddress = \"http://10.0.0.5:8500\"\n")
                .warnings
                .is_empty()
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "file-token\n").expect("write");
        let text = format!("[consul]\ntoken_file = {:?}\n", path.display().to_string());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let open = parse(&text);
        assert_eq!(
            open.warnings,
            [format!(
                "consul.token_file {} is readable by every user (mode 0644): chmod 0600 it, \
                 or pass it with LoadCredential=",
                path.display()
            )]
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(parse(&text).warnings.is_empty());
    }
}
