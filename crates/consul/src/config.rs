//! Client configuration and the redacted ACL token type.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Default per-call deadline for non-blocking requests.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Default cap on the HTTP requests one client has open to the agent at once
/// ([`Config::max_concurrent_requests`]). The agent accepts 200 connections per
/// client IP (`limits.http_max_conns_per_client`), shared by every local process on
/// that IP (consul-template, Vault agent, the applications' own reads); 150 leaves
/// 50 of them to the others, and still fits the catalog's 100 watches
/// (`catalog.max_watches`) plus the snapshot follower's watch and dozens of first
/// fetches.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 150;

/// Default Consul agent address.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// Settings for [`crate::Client`]; validated by [`crate::Client::new`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Base URL of the Consul agent: `http://127.0.0.1:8500`,
    /// `https://127.0.0.1:8501` (with [`Config::tls`]) or a Unix socket,
    /// `unix:///run/consul/http.sock`.
    pub address: String,
    /// ACL token sent as `X-Consul-Token`; `None` uses the agent's default token.
    pub token: Option<Token>,
    /// File holding the ACL token, read by [`crate::Client::new`] and again
    /// whenever it changes (rotation without a restart); wins over `token`, as
    /// `CONSUL_HTTP_TOKEN_FILE` wins over `CONSUL_HTTP_TOKEN` in Consul's CLI.
    pub token_file: Option<PathBuf>,
    /// Deadline for one HTTP call. A blocking query gets `wait + wait/16 +
    /// max(request_timeout, 10 s)`: Consul adds up to `wait/16` of jitter, and the agent
    /// retries a failed RPC for up to `rpc_hold_timeout` (7 s) before it answers.
    pub request_timeout: Duration,
    /// Most HTTP requests open to the agent at once, blocking watches and first
    /// fetches alike; further requests wait for a slot before they connect. Keep it
    /// below the agent's `limits.http_max_conns_per_client` (200, shared by every
    /// local process), so the resolver never provokes the agent's 429s.
    pub max_concurrent_requests: usize,
    /// Add `?stale` to catalog, health and KV reads so any server can answer.
    pub stale: bool,
    /// Add `?cached` to health reads so the agent answers from its cache.
    pub cached: bool,
    /// Consul Enterprise namespace sent as `?ns=` with every request (`None`: the
    /// token's default; Community Edition refuses any value).
    pub namespace: Option<String>,
    /// Consul Enterprise admin partition sent as `?partition=` with every request.
    pub partition: Option<String>,
    /// CA, client certificate and name checks of an `https://` address.
    pub tls: crate::TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS.to_owned(),
            token: None,
            token_file: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            stale: true,
            cached: false,
            namespace: None,
            partition: None,
            tls: crate::TlsConfig::default(),
        }
    }
}

impl Config {
    /// Whether the ACL token would cross the network in clear text: a token
    /// is set and the agent's address is plain `http://` to a host other than
    /// the loopback (`localhost`, 127.0.0.0/8, `::1`). Anyone on the path
    /// could read it from the `X-Consul-Token` header.
    pub fn token_sent_in_clear(&self) -> bool {
        if self.token.is_none() && self.token_file.is_none() {
            return false;
        }
        let Ok(url) = reqwest::Url::parse(self.address.trim()) else {
            // Not a URL: `Client::new` refuses it; nothing is sent.
            return false;
        };
        if url.scheme() != "http" {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        // IPv6 hosts come in brackets: `[::1]`.
        match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) => !ip.is_loopback(),
            Err(_) => !host.eq_ignore_ascii_case("localhost"),
        }
    }
}

/// A Consul ACL token whose `Debug` and `Display` never print the secret.
///
/// The only holder of the secret from the config file (or
/// `CONSUL_HTTP_TOKEN`) to the request header: it deserializes from a TOML
/// string, and never serializes.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl<'de> serde::Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

impl Token {
    /// Wraps a secret token.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// Returns the secret; only for putting it in the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Token {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl From<&str> for Token {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_print_the_token() {
        let secret = "b1gs3cr3t-4c7e-9a8b-token";
        let config = Config {
            token: Some(Token::new(secret.to_owned())),
            ..Config::default()
        };
        let debug = format!("{config:?}");
        let pretty = format!("{config:#?}");
        let display = format!("{}", Token::new(secret.to_owned()));
        for text in [&debug, &pretty, &display] {
            assert!(!text.contains(secret), "token leaked: {text}");
        }
        assert!(debug.contains("<redacted>"), "{debug}");
        assert_eq!(config.token.as_ref().map(Token::expose), Some(secret));
    }

    #[test]
    fn a_token_is_sent_in_clear_only_over_plain_http_beyond_the_loopback() {
        let with = |address: &str, token: bool| Config {
            address: address.to_owned(),
            token: token.then(|| Token::new("s3cret".to_owned())),
            ..Config::default()
        };
        for address in [
            "http://10.0.0.5:8500",
            "http://consul.example:8500",
            "http://[fd00::5]:8500",
        ] {
            assert!(with(address, true).token_sent_in_clear(), "{address}");
            assert!(!with(address, false).token_sent_in_clear(), "{address}");
        }
        for address in [
            "http://127.0.0.1:8500",
            "http://127.1.2.3:8500",
            "http://[::1]:8500",
            "http://localhost:8500",
            "http://LOCALHOST:8500",
            "https://10.0.0.5:8501",
        ] {
            assert!(!with(address, true).token_sent_in_clear(), "{address}");
        }
    }

    #[test]
    fn tokens_deserialize_from_strings_and_stay_redacted() {
        #[derive(Debug, serde::Deserialize)]
        struct Holder {
            #[allow(dead_code)]
            token: Token,
        }
        let holder: Holder =
            serde_json::from_str(r#"{"token":"b1gs3cr3t"}"#).expect("deserializes");
        assert_eq!(holder.token.expose(), "b1gs3cr3t");
        assert!(!format!("{holder:?}").contains("b1gs3cr3t"));
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let config = Config::default();
        assert_eq!(config.address, "http://127.0.0.1:8500");
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(config.max_concurrent_requests, 150);
        assert!(config.stale);
        assert!(!config.cached);
        assert!(config.token.is_none());
    }
}
