//! [`Settings`]: the validated configuration, one plain `Config` per crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use dnsfront_catalog as catalog;
use dnsfront_consul as consul;
use dnsfront_dns as dns;
use dnsfront_forward as forward;

use super::{
    ConfigError, Env, FollowSettings, HostsSettings, LogFormat, MetricsSettings, PublishSettings,
    RawConfig,
};

/// Validated settings, one plain `Config` per crate.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Addresses to bind (UDP and TCP each).
    pub listen: Vec<SocketAddr>,
    /// Server options (client ACL, TCP limits).
    pub server: dns::ServerOptions,
    /// Answer shaping.
    pub dns: dns::Config,
    /// Consul client.
    pub consul: consul::Config,
    /// Catalog cache.
    pub catalog: catalog::Config,
    /// Forwarder; `upstreams` may be empty (then non-Consul names get SERVFAIL).
    pub forward: forward::Config,
    /// Where the upstreams came from, for the startup log.
    pub upstream_origin: String,
    /// State directory (the snapshot file lives here).
    pub state_dir: PathBuf,
    /// Snapshot following; None when `snapshot.follow = false`.
    pub follow: Option<FollowSettings>,
    /// Local hosts files.
    pub hosts: HostsSettings,
    /// Log filter and format.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Metrics export.
    pub metrics: MetricsSettings,
    /// Accepted settings that put something at risk (a token sent in clear,
    /// an acknowledged open resolver): one sentence each, naming the key.
    /// Logged once at start and listed by `dnsfront check`.
    pub warnings: Vec<String>,
}

impl RawConfig {
    /// Validates every key and builds the per-crate configs.
    pub fn validate(&self, env: &Env) -> Result<Settings, ConfigError> {
        let listen = self.listen()?;
        let allowed_networks = self.allowed_networks()?;
        let dns = self.dns_config()?;
        let hosts = self.hosts_settings()?;
        let consul = self.consul_config(env)?;
        let catalog = self.catalog_config()?;
        if catalog.max_watches >= consul.max_concurrent_requests {
            // Each watch holds a request slot for as long as it blocks: with every
            // slot taken, first fetches (never-seen names) would get none.
            return Err(super::invalid(
                "consul.max_concurrent_requests",
                format!(
                    "must be above catalog.max_watches ({}), so that watches leave slots \
                     for first fetches, got {}",
                    catalog.max_watches, consul.max_concurrent_requests
                ),
            ));
        }
        let (forward, upstream_origin) = self.forward_config(&listen)?;
        let mut warnings = Vec::new();
        warnings.extend(self.open_resolver_warning(&allowed_networks));
        warnings.extend(self.token_warnings(&consul));
        let metrics = self.metrics.validate(&env.datadog)?;
        warnings.extend(metrics.wildcard_warning());
        Ok(Settings {
            listen,
            server: self.server_options(allowed_networks, forward.max_in_flight)?,
            dns,
            consul,
            catalog,
            forward,
            upstream_origin,
            state_dir: self.state.dir.clone(),
            follow: self.snapshot.validate()?,
            hosts,
            log_level: self.log.level.clone(),
            log_format: self.log.format,
            metrics,
            warnings,
        })
    }

    /// Validates what `dnsfront publish` needs: Consul and `[publish]`.
    pub fn validate_publish(
        &self,
        env: &Env,
    ) -> Result<(consul::Config, PublishSettings, catalog::Config), ConfigError> {
        Ok((
            self.consul_config(env)?,
            self.publish.validate(&self.snapshot)?,
            self.catalog_config()?,
        ))
    }
}
