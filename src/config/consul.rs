//! `[consul]`: how to reach the local Consul agent.

use std::path::PathBuf;
use std::time::Duration;

use dnsfront_consul as consul;
use serde::{Deserialize, Serialize};

use super::{ConfigError, Env, RawConfig, invalid};

/// Default Consul agent address when `CONSUL_HTTP_ADDR` is unset.
pub const DEFAULT_CONSUL: &str = "http://127.0.0.1:8500";

/// Largest `consul.max_concurrent_requests` accepted: an agent whose
/// `limits.http_max_conns_per_client` was raised may allow more than its default 200,
/// but no resolver needs thousands of connections to its local agent.
const MAX_CONCURRENT_REQUESTS_LIMIT: usize = 1024;

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
    /// Most HTTP requests open to the agent at once (watches included).
    pub max_concurrent_requests: usize,
    /// Read with `?stale` (any server answers; survives leader elections).
    pub stale: bool,
    /// Read health with `?cached` (the agent's cache).
    pub cached: bool,
    /// Consul Enterprise namespace (`?ns=` on every request); default `$CONSUL_NAMESPACE`.
    pub namespace: Option<String>,
    /// Consul Enterprise admin partition (`?partition=`); default `$CONSUL_PARTITION`.
    pub partition: Option<String>,
    /// CA certificates (PEM) that sign the agent's HTTPS certificate;
    /// default `$CONSUL_CACERT`, else the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Directory of CA certificates (PEM); default `$CONSUL_CAPATH`.
    pub ca_path: Option<PathBuf>,
    /// Client certificate for mutual TLS; default `$CONSUL_CLIENT_CERT`.
    pub cert_file: Option<PathBuf>,
    /// Its private key; default `$CONSUL_CLIENT_KEY`.
    pub key_file: Option<PathBuf>,
    /// Name the agent's certificate is checked against instead of the
    /// address's host; default `$CONSUL_TLS_SERVER_NAME`.
    pub tls_server_name: Option<String>,
    /// Verify the agent's certificate; default `$CONSUL_HTTP_SSL_VERIFY`, else true.
    pub tls_verify: Option<bool>,
}

/// The `consul` CLI's TLS environment variables (empty ones count as unset).
#[derive(Debug, Default, Clone)]
pub struct TlsEnv {
    /// `CONSUL_HTTP_SSL`: `true` turns an `http://` (or scheme-less) address into `https://`.
    pub http_ssl: Option<String>,
    /// `CONSUL_HTTP_SSL_VERIFY`.
    pub http_ssl_verify: Option<String>,
    /// `CONSUL_CACERT`.
    pub ca_cert: Option<PathBuf>,
    /// `CONSUL_CAPATH`.
    pub ca_path: Option<PathBuf>,
    /// `CONSUL_CLIENT_CERT`.
    pub client_cert: Option<PathBuf>,
    /// `CONSUL_CLIENT_KEY`.
    pub client_key: Option<PathBuf>,
    /// `CONSUL_TLS_SERVER_NAME`.
    pub tls_server_name: Option<String>,
}

impl TlsEnv {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let text = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let path = |name| text(name).map(PathBuf::from);
        Self {
            http_ssl: text("CONSUL_HTTP_SSL"),
            http_ssl_verify: text("CONSUL_HTTP_SSL_VERIFY"),
            ca_cert: path("CONSUL_CACERT"),
            ca_path: path("CONSUL_CAPATH"),
            client_cert: path("CONSUL_CLIENT_CERT"),
            client_key: path("CONSUL_CLIENT_KEY"),
            tls_server_name: text("CONSUL_TLS_SERVER_NAME"),
        }
    }
}

/// A boolean as Go's `strconv.ParseBool` reads it (the `consul` CLI's rule).
fn parse_bool(variable: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(invalid(variable, format!("{value:?} is not a boolean"))),
    }
}

impl Default for RawConsul {
    fn default() -> Self {
        let consul = consul::Config::default();
        Self {
            address: None,
            token: None,
            token_file: None,
            request_timeout: consul.request_timeout,
            max_concurrent_requests: consul.max_concurrent_requests,
            stale: consul.stale,
            cached: consul.cached,
            namespace: None,
            partition: None,
            ca_file: None,
            ca_path: None,
            cert_file: None,
            key_file: None,
            tls_server_name: None,
            tls_verify: None,
        }
    }
}

impl RawConfig {
    /// `[consul]`, with `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN` and
    /// `CONSUL_HTTP_TOKEN_FILE` from `env`. A token file is read here, so a
    /// missing or empty one is refused at start naming its key; the client
    /// reads it again whenever it changes.
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
        let (address, tls) = self.consul_tls(address, &env.consul_tls)?;
        let token_file = match (&self.consul.token, &self.consul.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "consul.token",
                    "set either token or token_file, not both",
                ));
            }
            (Some(_), None) => None,
            (None, Some(path)) => Some(("consul.token_file", path)),
            (None, None) => env
                .consul_http_token_file
                .as_ref()
                .map(|path| ("CONSUL_HTTP_TOKEN_FILE", path)),
        };
        let token = match token_file {
            Some((key, path)) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    invalid(key, format!("reading {}: {error}", path.display()))
                })?;
                let token = consul::Token::new(text.trim().to_owned());
                if token.expose().is_empty() {
                    return Err(invalid(key, format!("{} holds no token", path.display())));
                }
                Some(token)
            }
            None => self
                .consul
                .token
                .clone()
                .or_else(|| env.consul_http_token.clone())
                .filter(|token| !token.expose().is_empty()),
        };
        let token_file = token_file.map(|(_, path)| path.clone());
        if self.consul.request_timeout < Duration::from_millis(100)
            || self.consul.request_timeout > Duration::from_secs(60)
        {
            return Err(invalid(
                "consul.request_timeout",
                "must be between 100ms and 60s",
            ));
        }
        if !(1..=MAX_CONCURRENT_REQUESTS_LIMIT).contains(&self.consul.max_concurrent_requests) {
            return Err(invalid(
                "consul.max_concurrent_requests",
                format!(
                    "must be between 1 and {MAX_CONCURRENT_REQUESTS_LIMIT}, and below the \
                     agent's limits.http_max_conns_per_client (200 by default), got {}",
                    self.consul.max_concurrent_requests
                ),
            ));
        }
        let namespace = scope_name(
            "consul.namespace",
            self.consul
                .namespace
                .as_ref()
                .or(env.consul_namespace.as_ref()),
        )?;
        let partition = scope_name(
            "consul.partition",
            self.consul
                .partition
                .as_ref()
                .or(env.consul_partition.as_ref()),
        )?;
        Ok(consul::Config {
            address,
            token,
            token_file,
            request_timeout: self.consul.request_timeout,
            max_concurrent_requests: self.consul.max_concurrent_requests,
            stale: self.consul.stale,
            cached: self.consul.cached,
            namespace,
            partition,
            tls,
        })
    }

    /// The address's scheme after `CONSUL_HTTP_SSL`, and the TLS settings:
    /// each key, else its `consul` CLI variable, else the default.
    fn consul_tls(
        &self,
        address: String,
        env: &TlsEnv,
    ) -> Result<(String, consul::TlsConfig), ConfigError> {
        let http_ssl = match &env.http_ssl {
            Some(value) => parse_bool("CONSUL_HTTP_SSL", value)?,
            None => false,
        };
        let address = match address.strip_prefix("http://") {
            // As the consul CLI: never back to http when TLS was asked for.
            Some(rest) if http_ssl => format!("https://{rest}"),
            _ => address,
        };
        if !(address.starts_with("http://")
            || address.starts_with("https://")
            || address.starts_with("unix:///"))
        {
            return Err(invalid(
                "consul.address",
                format!(
                    "{address:?}: expected http://HOST:PORT, https://HOST:PORT or \
                     unix:///PATH/TO/SOCKET"
                ),
            ));
        }
        if http_ssl && address.starts_with("unix://") {
            return Err(invalid(
                "consul.address",
                "TLS over a Unix socket (CONSUL_HTTP_SSL=true with unix://) is not supported; \
                 the socket's file permissions guard it",
            ));
        }
        let verify = match (self.consul.tls_verify, &env.http_ssl_verify) {
            (Some(verify), _) => verify,
            (None, Some(value)) => parse_bool("CONSUL_HTTP_SSL_VERIFY", value)?,
            (None, None) => true,
        };
        let tls = consul::TlsConfig {
            ca_file: self.consul.ca_file.clone().or_else(|| env.ca_cert.clone()),
            ca_path: self.consul.ca_path.clone().or_else(|| env.ca_path.clone()),
            cert_file: self
                .consul
                .cert_file
                .clone()
                .or_else(|| env.client_cert.clone()),
            key_file: self
                .consul
                .key_file
                .clone()
                .or_else(|| env.client_key.clone()),
            server_name: self
                .consul
                .tls_server_name
                .clone()
                .or_else(|| env.tls_server_name.clone()),
            verify,
        };
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            let missing = if tls.cert_file.is_none() {
                "consul.cert_file"
            } else {
                "consul.key_file"
            };
            return Err(invalid(
                missing,
                "a client certificate needs both cert_file and key_file \
                 (CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY)",
            ));
        }
        Ok((address, tls))
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
        if consul.address.starts_with("https://") && !consul.tls.verify {
            warnings.push(
                "consul.tls_verify is false (or CONSUL_HTTP_SSL_VERIFY=false): anyone on the \
                 path can pose as the agent, forge answers and read the ACL token; trust the \
                 agent's CA with consul.ca_file instead"
                    .to_owned(),
            );
        }
        if let Some(path) = &consul.token_file
            && let Some(mode) = world_readable_mode(path)
        {
            let key = if self.consul.token_file.is_some() {
                "consul.token_file"
            } else {
                "CONSUL_HTTP_TOKEN_FILE"
            };
            warnings.push(format!(
                "{key} {} is readable by every user (mode {mode:04o}): \
                 chmod 0600 it, or pass it with LoadCredential=",
                path.display()
            ));
        }
        warnings
    }
}

/// A namespace or partition name as Consul Enterprise accepts it: 1 to 64 letters,
/// digits and dashes, starting and ending with a letter or digit. Empty = unset.
fn scope_name(key: &str, name: Option<&String>) -> Result<Option<String>, ConfigError> {
    let Some(name) = name.filter(|name| !name.is_empty()) else {
        return Ok(None);
    };
    let edges_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let chars_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if name.len() > 64 || !edges_ok || !chars_ok {
        return Err(invalid(
            key,
            format!(
                "{name:?}: 1 to 64 letters, digits and dashes, not starting or ending with a dash"
            ),
        ));
    }
    Ok(Some(name.clone()))
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
            consul_http_token_file: None,
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

    #[test]
    fn consul_http_token_file_wins_over_consul_http_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let env = Env {
            consul_http_addr: None,
            consul_http_token: Some("from-env".into()),
            consul_http_token_file: Some(path.clone()),
            ..Env::default()
        };
        let settings = RawConfig::default().validate(&env).expect("valid");
        assert_eq!(settings.consul.token_file.as_deref(), Some(path.as_path()));
        assert_eq!(
            settings.consul.token.as_ref().map(|t| t.expose()),
            Some("from-file")
        );
        assert_eq!(
            settings.warnings,
            [format!(
                "CONSUL_HTTP_TOKEN_FILE {} is readable by every user (mode 0644): chmod 0600 it, \
                 or pass it with LoadCredential=",
                path.display()
            )]
        );
        // A token in the file keys wins over both variables.
        let raw =
            RawConfig::parse("[consul]\ntoken = \"from-config\"\n", "test.toml").expect("parses");
        let settings = raw.validate(&env).expect("valid");
        assert!(settings.consul.token_file.is_none());
        assert_eq!(
            settings.consul.token.as_ref().map(|t| t.expose()),
            Some("from-config")
        );
        // An empty file is refused, naming where it came from.
        std::fs::write(&path, "\n").expect("write");
        let error = RawConfig::default()
            .validate(&env)
            .expect_err("empty token file")
            .to_string();
        assert!(
            error.contains("CONSUL_HTTP_TOKEN_FILE") && error.contains("holds no token"),
            "{error}"
        );
    }

    #[test]
    fn namespace_and_partition_come_from_the_file_or_the_environment_and_are_checked() {
        let env = Env {
            consul_namespace: Some("from-env".into()),
            consul_partition: Some("part-1".into()),
            ..Env::default()
        };
        let settings = RawConfig::default().validate(&env).expect("valid");
        assert_eq!(settings.consul.namespace.as_deref(), Some("from-env"));
        assert_eq!(settings.consul.partition.as_deref(), Some("part-1"));
        let raw =
            RawConfig::parse("[consul]\nnamespace = \"team-a\"\n", "test.toml").expect("parses");
        let settings = raw.validate(&env).expect("valid");
        assert_eq!(settings.consul.namespace.as_deref(), Some("team-a"));
        for bad in ["-team", "team a", "team/a", &"x".repeat(65)] {
            let raw = RawConfig::parse(&format!("[consul]\npartition = {bad:?}\n"), "test.toml")
                .expect("parses");
            let error = raw.validate(&Env::default()).expect_err(bad).to_string();
            assert!(error.contains("consul.partition"), "{error}");
        }
    }

    #[test]
    fn tls_keys_default_to_the_consul_cli_variables() {
        use std::path::PathBuf;

        use super::TlsEnv;

        let env = Env {
            consul_http_addr: Some("10.0.0.5:8501".to_owned()),
            consul_tls: TlsEnv {
                http_ssl: Some("true".to_owned()),
                http_ssl_verify: Some("false".to_owned()),
                ca_cert: Some("/env/ca.pem".into()),
                ca_path: Some("/env/ca.d".into()),
                client_cert: Some("/env/cert.pem".into()),
                client_key: Some("/env/key.pem".into()),
                tls_server_name: Some("server.dc1.consul".to_owned()),
            },
            ..Env::default()
        };
        let from_env = RawConfig::default().validate(&env).expect("valid");
        assert_eq!(from_env.consul.address, "https://10.0.0.5:8501");
        let tls = &from_env.consul.tls;
        assert_eq!(tls.ca_file, Some(PathBuf::from("/env/ca.pem")));
        assert_eq!(tls.ca_path, Some(PathBuf::from("/env/ca.d")));
        assert_eq!(tls.cert_file, Some(PathBuf::from("/env/cert.pem")));
        assert_eq!(tls.key_file, Some(PathBuf::from("/env/key.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("server.dc1.consul"));
        assert!(!tls.verify);

        // The file's keys win over the variables, as consul.address does.
        let raw = RawConfig::parse(
            "[consul]\naddress = \"https://127.0.0.1:8501\"\nca_file = \"/etc/ca.pem\"\n\
             cert_file = \"/etc/c.pem\"\nkey_file = \"/etc/k.pem\"\n\
             tls_server_name = \"localhost\"\ntls_verify = true\n",
            "test.toml",
        )
        .expect("parses");
        let from_file = raw.validate(&env).expect("valid");
        let tls = &from_file.consul.tls;
        assert_eq!(from_file.consul.address, "https://127.0.0.1:8501");
        assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(tls.ca_path, Some(PathBuf::from("/env/ca.d")));
        assert_eq!(tls.cert_file, Some(PathBuf::from("/etc/c.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("localhost"));
        assert!(tls.verify);

        // Nothing set: verified against the system's roots; http stays http.
        let plain = RawConfig::default()
            .validate(&Env::default())
            .expect("valid");
        assert_eq!(plain.consul.tls, dnsfront_consul::TlsConfig::default());
        assert!(plain.consul.tls.verify);
        assert_eq!(plain.consul.address, "http://127.0.0.1:8500");
    }

    #[test]
    fn unix_socket_addresses_are_accepted_and_bad_tls_settings_name_the_key() {
        let unverified = RawConfig::parse(
            "[consul]\naddress = \"https://127.0.0.1:8501\"\ntls_verify = false\n",
            "test.toml",
        )
        .expect("parses")
        .validate(&Env::default())
        .expect("valid");
        assert!(
            unverified.warnings.len() == 1
                && unverified.warnings[0].starts_with("consul.tls_verify is false"),
            "{:?}",
            unverified.warnings
        );
        let parse = |text: &str, env: &Env| {
            RawConfig::parse(text, "test.toml")
                .expect("parses")
                .validate(env)
                .map_err(|error| error.to_string())
        };
        let unix = parse(
            "[consul]\naddress = \"unix:///run/consul/http.sock\"\n",
            &Env::default(),
        )
        .expect("a socket address");
        assert_eq!(unix.consul.address, "unix:///run/consul/http.sock");
        let env_unix = Env {
            consul_http_addr: Some("unix:///run/consul/http.sock".to_owned()),
            ..Env::default()
        };
        assert_eq!(
            parse("", &env_unix).expect("from the env").consul.address,
            "unix:///run/consul/http.sock"
        );

        for (text, env, key) in [
            (
                "[consul]\naddress = \"unix://relative.sock\"\n",
                Env::default(),
                "consul.address",
            ),
            (
                "[consul]\ncert_file = \"/c.pem\"\n",
                Env::default(),
                "consul.key_file",
            ),
            (
                "",
                Env {
                    consul_tls: super::TlsEnv {
                        http_ssl_verify: Some("maybe".to_owned()),
                        ..super::TlsEnv::default()
                    },
                    ..Env::default()
                },
                "CONSUL_HTTP_SSL_VERIFY",
            ),
            (
                "",
                Env {
                    consul_http_addr: Some("unix:///run/consul/http.sock".to_owned()),
                    consul_tls: super::TlsEnv {
                        http_ssl: Some("1".to_owned()),
                        ..super::TlsEnv::default()
                    },
                    ..Env::default()
                },
                "consul.address",
            ),
        ] {
            let error = parse(text, &env).expect_err(text);
            assert!(error.starts_with(key), "{key}: {error}");
        }
    }

    #[test]
    fn max_concurrent_requests_is_bounded_and_above_the_watches() {
        let validate = |text: &str| {
            RawConfig::parse(text, "test.toml")
                .expect("parses")
                .validate(&Env::default())
                .map_err(|error| error.to_string())
        };
        let default = validate("").expect("valid");
        assert_eq!(default.consul.max_concurrent_requests, 150);
        assert!(default.catalog.max_watches < default.consul.max_concurrent_requests);
        let set = validate("[consul]\nmax_concurrent_requests = 40\n[catalog]\nmax_watches = 39\n")
            .expect("valid");
        assert_eq!(set.consul.max_concurrent_requests, 40);
        for (text, reason) in [
            (
                "[consul]\nmax_concurrent_requests = 0\n",
                "between 1 and 1024",
            ),
            (
                "[consul]\nmax_concurrent_requests = 5000\n",
                "between 1 and 1024",
            ),
            (
                "[consul]\nmax_concurrent_requests = 100\n[catalog]\nmax_watches = 100\n",
                "above catalog.max_watches (100)",
            ),
        ] {
            let error = validate(text).expect_err(text);
            assert!(
                error.starts_with("consul.max_concurrent_requests") && error.contains(reason),
                "{text}: {error}"
            );
        }
    }
}
