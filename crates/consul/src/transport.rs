//! How the client reaches the agent: TCP or a Unix socket, plain HTTP or
//! TLS, and the reqwest client built for it. With TLS, the certificate files
//! are watched (modification time, length, inode; looked at most every
//! [`TLS_CHECK_INTERVAL`], by the calls themselves, so an idle client costs
//! nothing) and a changed set rebuilds the client: rotation by Vault or
//! consul-template needs no restart, and the caches above never notice.
//! Calls in flight finish on the client they started with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::tls::{Stamp, TlsConfig};

/// How often the TLS files are looked at (by a call, or [`Transport::reload`]).
pub const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The connection settings and the current reqwest client.
pub(crate) struct Transport {
    /// Connect to this Unix socket instead of the URL's host and port.
    unix_socket: Option<PathBuf>,
    /// TLS (an `https://` address): its settings and the watch on its files.
    tls: Option<(TlsConfig, Mutex<FileWatch>)>,
    current: ArcSwap<reqwest::Client>,
}

/// What the TLS files looked like when the current client was built.
struct FileWatch {
    stamps: Vec<Stamp>,
    next_check: Instant,
    /// A rebuild failed and was logged; the next failure is not.
    failing: bool,
}

impl Transport {
    /// Builds the first client; an error is one sentence naming the setting.
    pub(crate) fn new(
        unix_socket: Option<PathBuf>,
        tls: Option<TlsConfig>,
    ) -> Result<Self, String> {
        let tls = tls.map(|config| {
            let watch = FileWatch {
                stamps: config.stamps(),
                next_check: Instant::now() + TLS_CHECK_INTERVAL,
                failing: false,
            };
            (config, Mutex::new(watch))
        });
        let client = build(unix_socket.as_ref(), tls.as_ref().map(|(config, _)| config))?;
        Ok(Self {
            unix_socket,
            tls,
            current: ArcSwap::from_pointee(client),
        })
    }

    /// The client for the next call, rebuilt first when the TLS files changed.
    pub(crate) fn client(&self) -> Arc<reqwest::Client> {
        if let Some((config, watch)) = &self.tls
            // Another call is looking: use what is there.
            && let Ok(mut watch) = watch.try_lock()
            && Instant::now() >= watch.next_check
        {
            // A failure is logged once by `check`; the previous client serves.
            let _rebuilt = self.check(config, &mut watch);
        }
        self.current.load_full()
    }

    /// Looks at the TLS files now (SIGHUP, `reload`): `Ok(true)` when they
    /// changed and the client was rebuilt, `Ok(false)` when unchanged (or no
    /// TLS), the reason when they changed but cannot be used (the previous
    /// client stays).
    pub(crate) fn reload(&self) -> Result<bool, String> {
        let Some((config, watch)) = &self.tls else {
            return Ok(false);
        };
        let mut watch = watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.check(config, &mut watch)
    }

    fn check(&self, config: &TlsConfig, watch: &mut FileWatch) -> Result<bool, String> {
        watch.next_check = Instant::now() + TLS_CHECK_INTERVAL;
        let stamps = config.stamps();
        if stamps == watch.stamps {
            return Ok(false);
        }
        match build(self.unix_socket.as_ref(), Some(config)) {
            Ok(client) => {
                self.current.store(Arc::new(client));
                watch.stamps = stamps;
                watch.failing = false;
                tracing::info!("Consul TLS files changed, new connections use them");
                Ok(true)
            }
            Err(error) => {
                // The stamps stay: a half-written file is tried again at the next check.
                if !watch.failing {
                    tracing::warn!(error = %error, "Consul TLS files changed but cannot be used, keeping the previous ones");
                    watch.failing = true;
                }
                Err(error)
            }
        }
    }
}

fn build(
    unix_socket: Option<&PathBuf>,
    tls: Option<&TlsConfig>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dnsfront/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60));
    if let Some(path) = unix_socket {
        builder = builder.unix_socket(path.clone());
    }
    // Plain HTTP gets a TLS config too, one that trusts nothing: reqwest
    // builds one for every client, and would otherwise look for a process-wide
    // crypto provider (redirects are off, so it is never used).
    let tls = match tls {
        Some(tls) => tls.client_config()?,
        None => crate::tls::unused_client_config()?,
    };
    builder = builder.tls_backend_preconfigured(tls);
    builder
        .build()
        .map_err(|error| format!("cannot build HTTP client: {error}"))
}
