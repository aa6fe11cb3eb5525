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
    /// ACL token; prefer `token_file` or `CONSUL_HTTP_TOKEN`.
    #[serde(skip_serializing)]
    pub token: Option<String>,
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
                Some(text.trim().to_owned())
            }
            (None, None) => env.consul_http_token.clone(),
        }
        .filter(|token| !token.is_empty())
        .map(consul::Token::new);
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
