//! Client configuration and the redacted ACL token type.

use std::fmt;
use std::time::Duration;

/// Default per-call deadline for non-blocking requests.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Default Consul agent address.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// Settings for [`crate::Client`]; validated by [`crate::Client::new`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Base URL of the Consul agent, e.g. `http://127.0.0.1:8500` (plain HTTP only).
    pub address: String,
    /// ACL token sent as `X-Consul-Token`; `None` uses the agent's default token.
    pub token: Option<Token>,
    /// Deadline for one HTTP call; blocking queries add `wait + wait/16` on top.
    pub request_timeout: Duration,
    /// Add `?stale` to catalog, health and KV reads so any server can answer.
    pub stale: bool,
    /// Add `?cached` to health reads so the agent answers from its cache.
    pub cached: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS.to_owned(),
            token: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            stale: true,
            cached: false,
        }
    }
}

/// A Consul ACL token whose `Debug` and `Display` never print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

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
    fn defaults_match_the_documented_values() {
        let config = Config::default();
        assert_eq!(config.address, "http://127.0.0.1:8500");
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert!(config.stale);
        assert!(!config.cached);
        assert!(config.token.is_none());
    }
}
