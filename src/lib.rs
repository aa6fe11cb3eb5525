//! dnsfront: the application. `main.rs` is a thin shell around [`App`], and the
//! end-to-end tests drive the same [`App`] in-process.
//!
//! Phases: parse (CLI + file → [`config::Settings`]) → build (bind sockets, no
//! traffic yet) → run (serve until the shutdown token fires).

pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod demo;
pub mod events;
pub mod reload;
pub mod systemd;
pub mod telemetry;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use dnsfront_catalog as catalog;
use dnsfront_consul as consul;
use dnsfront_dns as dns;
use dnsfront_forward as forward;
use dnsfront_hosts::LocalHosts;
use dnsfront_snapshot as snapshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Settings;

/// How long in-flight queries may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A built resolver: sockets bound, caches ready, nothing served yet.
pub struct App {
    settings: Settings,
    listeners: dns::Listeners,
    /// The Consul client every part shares; a reload re-reads its token file and TLS files.
    consul: consul::Client,
    catalog: catalog::Cache,
    hosts: snapshot::Hosts,
    /// `/etc/hosts` and the other `hosts.files`, answered before forwarding.
    local_hosts: LocalHosts,
    follower: Option<snapshot::follower::Follower>,
    /// Always built, even without upstreams (then it answers SERVFAIL), so
    /// that a reload can give it upstreams.
    forwarder: forward::Forwarder,
    router: dns::Router,
    /// Re-read on SIGHUP and on `reload`, and what it gave at start; None =
    /// no live reload.
    reload_source: Option<(reload::ConfigSource, reload::Loaded)>,
    /// The bound control socket; None = no control channel.
    control_socket: Option<control::ControlSocket>,
}

impl App {
    /// Builds every part and binds the listen sockets.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_sockets(settings, None)
    }

    /// [`App::build`], serving the sockets the service manager passed
    /// (socket activation; see [`systemd::take_listen_fds`]) instead of
    /// binding, when there are any. They must match `dns.listen` exactly.
    pub fn build_with_sockets(
        settings: Settings,
        inherited: Option<dns::Inherited>,
    ) -> anyhow::Result<Self> {
        for warning in &settings.warnings {
            warn!(warning = %warning, "Risky configuration");
        }
        let client = consul::Client::new(settings.consul.clone()).context("consul")?;
        // The snapshot on disk comes first, so a resolver started during a
        // Consul outage answers from it at once.
        let hosts = snapshot::Hosts::new();
        let events = events::sink(&settings.metrics)?;
        let follower = settings.follow.as_ref().map(|follow| {
            let follower = snapshot::follower::Follower::new(
                follow.follower_config(
                    settings.state_dir.clone(),
                    &settings.dns.domain.to_string(),
                    events.clone(),
                ),
                client.clone(),
                hosts.clone(),
            );
            match follower.load_from_disk() {
                Ok(Some(generation)) => info!(generation, state_dir = %settings.state_dir.display(), "Hosts snapshot loaded from the state dir"),
                Ok(None) => info!(state_dir = %settings.state_dir.display(), "No hosts snapshot in the state dir yet"),
                Err(error) => warn!(error = %error, state_dir = %settings.state_dir.display(), "Hosts snapshot in the state dir is unusable; waiting for one from Consul"),
            }
            follower
        });
        let catalog =
            catalog::Cache::new(settings.catalog.clone(), client.clone()).context("catalog")?;
        if settings.forward.upstreams.is_empty() {
            warn!(
                origin = %settings.upstream_origin,
                "No upstream resolvers: names outside the Consul domain will get SERVFAIL"
            );
        }
        let forwarder = forward::Forwarder::new(settings.forward.clone());
        // A missing file is only a warning (it is read once it appears); an
        // unreadable or oversized one stops the start, naming the file.
        let local_hosts = LocalHosts::load(settings.hosts.files.clone()).context("hosts.files")?;
        let listeners = match inherited {
            // A socket unit and a config that disagree: restarting cannot
            // help (exit 64, as for a bad config).
            Some(inherited) => {
                dns::Listeners::adopt(&settings.listen, inherited).map_err(|error| {
                    config::ConfigError::Invalid {
                        key: "dns.listen".to_owned(),
                        reason: error.to_string(),
                    }
                })?
            }
            None => dns::Listeners::bind(&settings.listen)?,
        };
        let view = catalog::View::new(catalog.clone(), hosts.clone());
        let router = dns::Router::new(settings.dns.clone(), view, Some(forwarder.clone()))
            .with_local_hosts(local_hosts.clone());
        Ok(Self {
            settings,
            listeners,
            consul: client,
            catalog,
            hosts,
            local_hosts,
            follower,
            forwarder,
            router,
            reload_source: None,
            control_socket: None,
        })
    }

    /// Enables live reload (SIGHUP, the control channel's `reload`, and the
    /// resolv file poll) from where `loaded` came from.
    /// `loaded` must be what the app's settings came from.
    pub fn with_reload(mut self, source: reload::ConfigSource, loaded: reload::Loaded) -> Self {
        self.reload_source = Some((source, loaded));
        self
    }

    /// Binds the control socket at `path` now (it is served by [`App::run`];
    /// see [`control`]). Failing to bind is logged, never fatal: diagnostics
    /// must not keep the resolver from serving.
    pub fn with_control_socket(mut self, path: &std::path::Path) -> Self {
        match control::ControlSocket::bind(path) {
            Ok(socket) => self.control_socket = Some(socket),
            Err(error) => warn!(
                error = %format!("{error:#}"),
                "Control socket not available: explain, check and reload over it will not work"
            ),
        }
        self
    }

    /// The forwarder (for diagnostics and tests).
    pub fn forwarder(&self) -> &forward::Forwarder {
        &self.forwarder
    }

    /// The bound DNS addresses (UDP and TCP share each one).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs()
    }

    /// The catalog cache (for diagnostics and tests).
    pub fn catalog(&self) -> &catalog::Cache {
        &self.catalog
    }

    /// The local hosts files (for diagnostics and tests).
    pub fn local_hosts(&self) -> &LocalHosts {
        &self.local_hosts
    }

    /// The hosts snapshot currently in memory (for diagnostics and tests).
    pub fn hosts(&self) -> &snapshot::Hosts {
        &self.hosts
    }

    /// The one machine-readable line a script can wait for: the bound addresses.
    pub fn listening_line(&self) -> String {
        let addrs: Vec<String> = self.local_addrs().iter().map(ToString::to_string).collect();
        serde_json::json!({ "event": "listening", "dns": addrs, "protocols": ["udp", "tcp"] })
            .to_string()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets
    /// in-flight queries finish (bounded by a grace period).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.spawn_stats_on_sigusr1(shutdown.child_token())?;
        let addrs = self.local_addrs();
        let started = tokio::time::Instant::now();
        let config_file = self
            .reload_source
            .as_ref()
            .and_then(|(source, _)| source.file.clone());
        let reload = match self.reload_source.take() {
            Some((source, loaded)) => reload::spawn(
                source,
                loaded,
                reload::Live {
                    forwarder: self.forwarder.clone(),
                    router: self.router.clone(),
                    local_hosts: self.local_hosts.clone(),
                    consul: self.consul.clone(),
                },
                shutdown.child_token(),
            )?,
            None => reload::ReloadHandle::default(),
        };
        let control = self.control_socket.take().and_then(|socket| {
            let context = control::Context {
                catalog: self.catalog.clone(),
                hosts: self.hosts.clone(),
                forwarder: self.forwarder.clone(),
                router: self.router.clone(),
                listen: addrs.clone(),
                reload,
                config_file,
                started,
            };
            match control::ControlServer::new(socket, context) {
                Ok(server) => Some(tokio::spawn(server.run(shutdown.child_token()))),
                Err(error) => {
                    warn!(error = %format!("{error:#}"), "Control socket not available");
                    None
                }
            }
        });
        let mut server = dns::serve(self.router, self.listeners, self.settings.server.clone())?;
        let refresher = tokio::spawn(self.catalog.clone().run(shutdown.child_token()));
        let hosts_watch = tokio::spawn(
            self.local_hosts
                .clone()
                .watch(self.settings.hosts.watch_interval, shutdown.child_token()),
        );
        let follower = self
            .follower
            .map(|follower| tokio::spawn(follower.run(shutdown.child_token())));
        systemd::ready(&format!(
            "serving on {}",
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        systemd::spawn_watchdog(&addrs, shutdown.child_token());
        info!(
            listen = ?addrs,
            consul = %self.settings.consul.address,
            upstreams = ?self.settings.forward.upstreams,
            upstream_origin = %self.settings.upstream_origin,
            domain = %self.settings.dns.domain,
            "dnsfront serving"
        );
        // A DNS server that stops on its own (a listener failed) ends the
        // process with an error, so systemd restarts it, instead of leaving
        // clients routed to a dead socket while /health stays green.
        let failed = tokio::select! {
            () = shutdown.cancelled() => None,
            stopped = server.stopped() => Some(stopped),
        };
        systemd::stopping();
        // Whatever ended the serving, every other task stops now.
        shutdown.cancel();
        if failed.is_none() {
            info!("Shutting down: no new queries, finishing in-flight ones");
            if tokio::time::timeout(SHUTDOWN_GRACE, server.shutdown())
                .await
                .is_err()
            {
                warn!(grace = ?SHUTDOWN_GRACE, "In-flight queries did not finish in time; exiting anyway");
            }
        }
        refresher.abort();
        hosts_watch.abort();
        if let Some(follower) = follower {
            follower.abort();
        }
        if let Some(control) = control {
            // It removes its socket file as it stops.
            let _ = tokio::time::timeout(Duration::from_secs(1), control).await;
        }
        match failed {
            None => Ok(()),
            Some(stopped) => {
                let error = match stopped {
                    Ok(()) => anyhow::anyhow!("the DNS server stopped on its own"),
                    Err(error) => anyhow::Error::from(error),
                };
                Err(error.context("DNS server stopped unexpectedly"))
            }
        }
    }
}

impl App {
    /// SIGUSR1 writes cache, Consul and snapshot statistics to the log (a
    /// dnsmasq habit operators and their scripts rely on).
    fn spawn_stats_on_sigusr1(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
        let catalog = self.catalog.clone();
        let hosts = self.hosts.clone();
        let forwarder = self.forwarder.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = usr1.recv() => if received.is_none() { return },
                }
                let snapshot = hosts.current();
                info!(
                    catalog_entries = catalog.entry_count(),
                    consul_unavailable = catalog.consul_unavailable(),
                    forward_cache_entries = forwarder.cached_entries(),
                    forward_cache_bytes = forwarder.cached_bytes(),
                    upstreams = ?forwarder.config().upstreams,
                    snapshot_generation = snapshot.as_ref().map(|s| s.generation),
                    snapshot_services = snapshot.as_ref().map(|s| s.services.len()),
                    "Statistics (SIGUSR1)"
                );
            }
        });
        Ok(())
    }
}

/// Cancels the returned token on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!(signal = "SIGTERM", "Signal received"),
            _ = interrupt.recv() => info!(signal = "SIGINT", "Signal received"),
        }
        cancel.cancel();
    });
    Ok(token)
}
