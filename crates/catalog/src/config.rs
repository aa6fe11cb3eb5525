use std::time::Duration;

/// How hot names are kept current.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefreshMode {
    /// Re-read every hot name every `refresh_interval` (±jitter), with plain
    /// `?stale` reads (never `?cached`): each read reaches a server, so an
    /// outage fails the refresh instead of being answered from the agent's view.
    Poll,
    /// The fleet-safe default: keep a blocking query (`?index=&wait=&cached`)
    /// open per hot name that holds data, which the agent serves from its
    /// streaming view (one server subscription per service per agent), so
    /// changes arrive within milliseconds and an unchanged name costs the
    /// servers nothing. Negatives and first fetches are plain reads.
    #[default]
    Watch,
}

impl RefreshMode {
    /// `poll` or `watch`, as in the config file and the metric tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::Watch => "watch",
        }
    }
}

/// Consul's cap on a blocking query's `wait` (`max_query_time`).
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(600);

/// Most `node_refresh_interval`: a node's address may change, and an hour is
/// already far longer than any TTL a node answer carries.
const MAX_NODE_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

/// Most `watch_min_interval`: beyond a minute a watched name would lag a poll.
const MAX_WATCH_MIN_INTERVAL: Duration = Duration::from_secs(60);

/// Least `max_bytes`: room for a service of a few hundred instances.
const MIN_MAX_BYTES: u64 = 64 << 10;
/// Most `max_bytes`: a bound, not a wish.
const MAX_MAX_BYTES: u64 = 16 << 30;

/// Catalog cache settings (validated by `src/config`; not serde).
#[derive(Debug, Clone)]
pub struct Config {
    /// Poll hot names, or watch them with blocking queries.
    pub refresh: RefreshMode,
    /// Watch mode: the `wait` of each blocking query, i.e. how long an unchanged
    /// name costs one read (Consul adds up to `wait/16`, caps at 10 minutes).
    pub watch_wait: Duration,
    /// Watch mode: minimum time between the starts of two requests of one
    /// watched name, so a burst of changes does not become a burst of reads.
    pub watch_min_interval: Duration,
    /// Watch mode: most names watched at once (each holds one HTTP connection to
    /// the agent, which allows 200 per client IP by default); hot names beyond
    /// this are polled.
    pub max_watches: usize,
    /// How often an entry that is being asked for is re-read from Consul.
    pub refresh_interval: Duration,
    /// How often a node name that no cached service's health data names is
    /// re-read (`/v1/catalog/node` is never streamed: each read is a server RPC).
    pub node_refresh_interval: Duration,
    /// Fraction of `refresh_interval` added or removed at random per refresh (0.0–0.5).
    pub refresh_jitter: f64,
    /// How long a first-ever query may wait for Consul before it gets SERVFAIL.
    pub first_fetch_timeout: Duration,
    /// How long "no such service/node" is remembered before Consul is asked again.
    pub negative_ttl: Duration,
    /// An entry nobody asked for during this long stops being refreshed.
    pub idle_timeout: Duration,
    /// How long past its last successful refresh an entry may still be served (stale).
    pub max_stale: Duration,
    /// Bound on the number of cached keys (services and nodes).
    pub max_entries: u64,
    /// Bound on the estimated bytes of the cached keys and their data (a
    /// service weighs about 250 bytes per instance).
    pub max_bytes: u64,
    /// Drop instances with a warning check too (Consul's `only_passing`).
    pub only_passing: bool,
    /// First backoff after Consul fails; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Ceiling of the backoff between attempts while Consul is failing.
    pub backoff_max: Duration,
    /// Most first fetches (and re-fetches of idle names) in flight to the agent
    /// at once; further never-seen names wait for a slot, within
    /// `first_fetch_timeout`. The agent allows 200 HTTP connections per client
    /// by default (`max_watches` holds some): a flood of random names must not
    /// provoke its 429s.
    pub max_concurrent_fetches: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            refresh: RefreshMode::Watch,
            watch_wait: Duration::from_secs(300),
            watch_min_interval: Duration::from_secs(1),
            max_watches: 100,
            refresh_interval: Duration::from_secs(10),
            node_refresh_interval: Duration::from_secs(60),
            refresh_jitter: 0.1,
            first_fetch_timeout: Duration::from_secs(2),
            negative_ttl: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            max_stale: Duration::from_secs(72 * 3600),
            max_entries: 10_000,
            max_bytes: 16 << 20,
            only_passing: false,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_concurrent_fetches: 64,
        }
    }
}

impl Config {
    /// Rejects settings that would make the cache misbehave; names the key.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let invalid = |key, reason: String| Err(crate::Error::InvalidConfig { key, reason });
        if self.refresh_interval < Duration::from_millis(100) {
            return invalid("refresh_interval", "must be at least 100ms".into());
        }
        if !(0.0..=0.5).contains(&self.refresh_jitter) {
            return invalid(
                "refresh_jitter",
                format!("must be between 0.0 and 0.5, got {}", self.refresh_jitter),
            );
        }
        if self.first_fetch_timeout.is_zero() {
            return invalid("first_fetch_timeout", "must be greater than 0".into());
        }
        if self.negative_ttl.is_zero() {
            return invalid(
                "negative_ttl",
                "must be greater than 0 (0 would send every typo to Consul)".into(),
            );
        }
        if self.idle_timeout < self.refresh_interval * 2 {
            return invalid(
                "idle_timeout",
                "must be at least twice refresh_interval (names in use would stop being refreshed)"
                    .into(),
            );
        }
        if self.node_refresh_interval < Duration::from_millis(100)
            || self.node_refresh_interval > MAX_NODE_REFRESH_INTERVAL
        {
            return invalid(
                "node_refresh_interval",
                format!(
                    "must be between 100ms and 1h, got {:?}",
                    self.node_refresh_interval
                ),
            );
        }
        if self.max_stale < self.refresh_interval {
            return invalid("max_stale", "must be at least refresh_interval".into());
        }
        if self.max_concurrent_fetches == 0 {
            return invalid("max_concurrent_fetches", "must be at least 1".into());
        }
        if self.max_entries == 0 {
            return invalid("max_entries", "must be at least 1".into());
        }
        if self.max_bytes < MIN_MAX_BYTES || self.max_bytes > MAX_MAX_BYTES {
            return invalid(
                "max_bytes",
                format!(
                    "must be between {MIN_MAX_BYTES} (64 KiB) and {MAX_MAX_BYTES} (16 GiB), got {}",
                    self.max_bytes
                ),
            );
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return invalid(
                "backoff_max",
                "backoff_min must be > 0 and backoff_max >= backoff_min".into(),
            );
        }
        if self.refresh == RefreshMode::Watch {
            self.validate_watch()?;
        }
        Ok(())
    }

    /// The watch settings; only checked in watch mode (poll mode ignores them).
    fn validate_watch(&self) -> Result<(), crate::Error> {
        let invalid = |key, reason: String| Err(crate::Error::InvalidConfig { key, reason });
        if self.watch_wait < Duration::from_millis(100) || self.watch_wait > MAX_WATCH_WAIT {
            return invalid(
                "watch_wait",
                format!(
                    "must be between 100ms and 10m (Consul's max_query_time), got {:?}",
                    self.watch_wait
                ),
            );
        }
        if self.watch_min_interval < Duration::from_millis(10)
            || self.watch_min_interval > MAX_WATCH_MIN_INTERVAL
        {
            return invalid(
                "watch_min_interval",
                "must be between 10ms (a watch must never busy-loop) and 1m".into(),
            );
        }
        if self.max_watches == 0 {
            return invalid(
                "max_watches",
                "must be at least 1 (use refresh = \"poll\" to watch nothing)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_watch() {
        let config = Config::default();
        assert_eq!(config.refresh, RefreshMode::Watch);
        assert!(config.validate().is_ok());
        let poll = Config {
            refresh: RefreshMode::Poll,
            ..Config::default()
        };
        assert!(poll.validate().is_ok());
        // A fast refresh_interval stays valid with the default watch settings.
        let fast = Config {
            refresh_interval: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(1),
            ..Config::default()
        };
        assert!(fast.validate().is_ok());
    }

    #[test]
    fn watch_settings_are_checked_in_watch_mode_only() {
        let key_of = |config: Config| match config.validate() {
            Err(crate::Error::InvalidConfig { key, .. }) => Some(key),
            Ok(()) => None,
        };
        let watch = |edit: fn(&mut Config)| {
            let mut config = Config {
                refresh: RefreshMode::Watch,
                ..Config::default()
            };
            edit(&mut config);
            config
        };
        assert_eq!(
            key_of(watch(|c| c.watch_wait = Duration::from_secs(601))),
            Some("watch_wait")
        );
        assert_eq!(
            key_of(watch(|c| c.watch_wait = Duration::from_millis(10))),
            Some("watch_wait")
        );
        assert_eq!(
            key_of(watch(|c| c.watch_min_interval = Duration::ZERO)),
            Some("watch_min_interval")
        );
        assert_eq!(
            key_of(watch(|c| c.watch_min_interval = Duration::from_secs(61))),
            Some("watch_min_interval")
        );
        assert_eq!(key_of(watch(|c| c.max_watches = 0)), Some("max_watches"));
        assert_eq!(
            key_of(watch(
                |c| c.node_refresh_interval = Duration::from_millis(10)
            )),
            Some("node_refresh_interval")
        );
        let poll = Config {
            refresh: RefreshMode::Poll,
            max_watches: 0,
            watch_wait: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(key_of(poll), None, "poll mode ignores watch settings");
    }
}
