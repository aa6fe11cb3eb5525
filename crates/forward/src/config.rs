//! Forwarder settings and their bounds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::rr::Name;

/// A default with the inclusive range a configured value must fall in.
///
/// `src/config` rejects values outside the range (it never clamps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefMinMax<T> {
    /// Value used when the operator sets nothing.
    pub default: T,
    /// Smallest accepted value.
    pub min: T,
    /// Largest accepted value.
    pub max: T,
}

impl<T: PartialOrd + Copy> DefMinMax<T> {
    /// Whether `value` lies within `[min, max]`.
    pub fn contains(&self, value: T) -> bool {
        self.min <= value && value <= self.max
    }
}

/// 2 s per try is CoreDNS's `read_timeout` and Consul's `recursor_timeout`; below
/// 50 ms even a LAN resolver with a cold cache fails spuriously.
pub const ATTEMPT_TIMEOUT: DefMinMax<Duration> = DefMinMax {
    default: Duration::from_millis(800),
    min: Duration::from_millis(50),
    max: Duration::from_secs(10),
};

/// The whole budget must stay below the stub resolver's own 5 s timeout (glibc
/// `options timeout:5`) so the client gets our SERVFAIL rather than silence.
pub const DEADLINE: DefMinMax<Duration> = DefMinMax {
    default: Duration::from_secs(2),
    min: Duration::from_millis(50),
    max: Duration::from_secs(30),
};

/// Entries; 10,000 is CoreDNS's success-cache default; 0 disables the cache.
/// [`CACHE_MAX_BYTES`] bounds the same cache by bytes; whichever is reached first.
pub const CACHE_SIZE: DefMinMax<u64> = DefMinMax {
    default: 10_000,
    min: 0,
    max: 10_000_000,
};

/// Bytes charged to the response cache: each entry's wire data, key and bookkeeping
/// (about 400 bytes for a typical answer, 64 KiB and more for the largest). 8 MiB holds
/// the [`CACHE_SIZE`] default of typical answers, or about 120 answers of 64 KiB, where
/// an entry count alone let 10,000 such answers take 640 MiB. At least 1 MiB, so that
/// each shard of the store holds a few of the largest answers.
pub const CACHE_MAX_BYTES: DefMinMax<u64> = DefMinMax {
    default: 8 << 20,
    min: 1 << 20,
    max: 4 << 30,
};

/// Bytes upstream answers may hold while in flight: TCP answers being read and answers
/// kept for the queries waiting on them (see `budget.rs`). 16 MiB holds 256 answers of
/// 64 KiB at once, or thousands of typical ones; at least one answer of the largest
/// size must fit.
pub const MAX_IN_FLIGHT_BYTES: DefMinMax<u64> = DefMinMax {
    default: 16 << 20,
    min: 128 << 10,
    max: 1 << 30,
};

/// Floor on positive TTLs; dnsmasq caps `--min-cache-ttl` at 3,600 s.
pub const MIN_TTL: DefMinMax<Duration> = DefMinMax {
    default: Duration::ZERO,
    min: Duration::ZERO,
    max: Duration::from_secs(3_600),
};

/// Ceiling on positive TTLs; 1 day is Unbound's `cache-max-ttl`; RFC 2181 §8 caps TTLs at 2^31 - 1 s.
pub const MAX_TTL: DefMinMax<Duration> = DefMinMax {
    default: Duration::from_secs(86_400),
    min: Duration::from_secs(1),
    max: Duration::from_secs(7 * 86_400),
};

/// Ceiling on negative TTLs; RFC 2308 §5 suggests 1–3 hours, Unbound defaults to 3,600 s.
pub const NEGATIVE_MAX_TTL: DefMinMax<Duration> = DefMinMax {
    default: Duration::from_secs(3_600),
    min: Duration::ZERO,
    max: Duration::from_secs(3 * 3_600),
};

/// EDNS payload; 1,232 is the DNS Flag Day 2020 value; RFC 6891 §6.2.5 says never below 512.
pub const UDP_PAYLOAD: DefMinMax<u16> = DefMinMax {
    default: 1_232,
    min: 512,
    max: 4_096,
};

/// In-flight bound; dnsmasq's fixed `dns-forward-max` is 150, Unbound allows 2,048 per thread.
pub const MAX_IN_FLIGHT: DefMinMax<usize> = DefMinMax {
    default: 1_024,
    min: 1,
    max: 65_536,
};

/// Consecutive failures (timeouts, socket errors) before an upstream is marked down;
/// 3 sits between CoreDNS's `max_fails 2` and a single lost packet being enough.
pub const MAX_FAILS: DefMinMax<u32> = DefMinMax {
    default: 3,
    min: 1,
    max: 100,
};

/// How often one real query is let through to a down upstream; dnsmasq re-tests every
/// 20 s, CoreDNS health-checks every 0.5 s while failing; 2 s keeps the cost of a dead
/// upstream at one attempt timeout every 2 s.
pub const PROBE_INTERVAL: DefMinMax<Duration> = DefMinMax {
    default: Duration::from_secs(2),
    min: Duration::from_millis(100),
    max: Duration::from_secs(300),
};

/// Max-stale window (RFC 8767 §5 suggests 1 to 3 days; dnsmasq and Unbound use 1 day); 0 disables serve-stale.
pub const SERVE_STALE: DefMinMax<Duration> = DefMinMax {
    default: Duration::from_secs(86_400),
    min: Duration::ZERO,
    max: Duration::from_secs(7 * 86_400),
};

/// TTL of stale answers, also how long after a failed refresh stale data is served
/// without asking upstream again (RFC 8767 §4 and §5 recommend 30 s for both).
pub const STALE_ANSWER_TTL: DefMinMax<Duration> = DefMinMax {
    default: Duration::from_secs(30),
    min: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// Entries whose TTL is below this are not prefetched: a refresh in the last 10 % of a
/// 5 s TTL would double the upstream load for a saving of half a second.
pub const PREFETCH_MIN_TTL: Duration = Duration::from_secs(10);

/// A hit in the last 1/`PREFETCH_FRACTION` of the TTL triggers a prefetch (10 %, as
/// Unbound's `prefetch` and CoreDNS's `prefetch ... 10%`).
pub const PREFETCH_FRACTION: u32 = 10;

/// Per-domain forwarding (dnsmasq `server=/example.com/10.0.0.1`, CoreDNS per-zone
/// `forward`): names at or under `zone` go to `upstreams` instead of the default list.
///
/// The longest matching zone wins; reverse zones (`10.in-addr.arpa.`) work the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRule {
    /// The zone; matched case-insensitively, made absolute by the forwarder.
    pub zone: Name,
    /// Upstreams for the zone (at least one), with the same failover as the default list.
    pub upstreams: Vec<SocketAddr>,
}

/// How the upstreams of one set are asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// One at a time in configured order (healthy first); the next one on failure.
    #[default]
    Sequential,
    /// All healthy upstreams at once; the first NOERROR/NXDOMAIN wins, the rest are
    /// cancelled (dnsmasq `--all-servers`).
    Race,
}

/// Forwarder settings (validated by `src/config`; not serde).
#[derive(Debug, Clone)]
pub struct Config {
    /// Upstream resolvers, tried in order (failover).
    pub upstreams: Vec<SocketAddr>,
    /// How long one attempt against one upstream may take.
    pub attempt_timeout: Duration,
    /// Overall budget for one client query; SERVFAIL after it.
    pub deadline: Duration,
    /// Bound on cached responses (entries); 0 disables the cache.
    pub cache_size: u64,
    /// Bound on the bytes the cached responses take (wire data, keys, bookkeeping).
    pub cache_max_bytes: u64,
    /// Floor on cached positive TTLs; answer records below it are raised to it.
    ///
    /// With the default of 0, answers whose smallest TTL is 0 (Consul's default for
    /// every record) are passed through and **never answered from the cache**, as
    /// dnsmasq and Unbound do; with `serve_stale` on they are still stored, only to be
    /// served stale when every upstream fails (dnsmasq's `--use-stale-cache` does the
    /// same). Set it above 0 to cache them for that long (CoreDNS and Knot use 5 s);
    /// clients then see the raised TTL too. It does not apply to negative answers.
    pub min_ttl: Duration,
    /// Ceiling on cached TTLs; record TTLs handed out are capped to it as well.
    pub max_ttl: Duration,
    /// Ceiling on negative-cache TTLs (RFC 2308).
    pub negative_max_ttl: Duration,
    /// EDNS UDP payload size advertised upstream.
    pub udp_payload: u16,
    /// Bound on concurrent upstream queries; beyond it queries fail fast.
    pub max_in_flight: usize,
    /// Bound on the bytes upstream answers hold while in flight; an answer that does
    /// not fit is dropped at once.
    pub max_in_flight_bytes: u64,
    /// Per-domain upstreams; the longest matching zone wins over `upstreams`.
    pub rules: Vec<DomainRule>,
    /// Sequential failover (default) or a race between all healthy upstreams.
    pub strategy: Strategy,
    /// Ask upstreams over TCP only (dnsmasq/resolv.conf `use-vc`, CoreDNS `force_tcp`).
    pub tcp_only: bool,
    /// Consecutive failures that mark an upstream down.
    pub max_fails: u32,
    /// How often a down upstream gets one probe query.
    pub probe_interval: Duration,
    /// Never forward single-label names (`myhost.`): answer NXDOMAIN locally.
    ///
    /// dnsmasq's `--domain-needed` does the same ("Do NOT forward queries with no domain
    /// part"), answering NXDOMAIN unless a `server=/label/` rule names it; here too a
    /// per-domain rule covering the name wins over this setting.
    pub domain_needed: bool,
    /// Never forward reverse lookups for private ranges (RFC 1918, 100.64/10,
    /// 169.254/16, 127/8, fc00::/7, fe80::/10, ::1): answer NXDOMAIN locally, as
    /// dnsmasq's `--bogus-priv`. A per-domain rule covering the reverse zone wins.
    pub bogus_priv: bool,
    /// Drop private and loopback A/AAAA records from answers for public names
    /// (dnsmasq `--stop-dns-rebind`). Names under `rebind_allow` or covered by a
    /// per-domain rule are exempt.
    pub rebind_protection: bool,
    /// Domains whose answers may hold private addresses (dnsmasq `--rebind-domain-ok`).
    pub rebind_allow: Vec<Name>,
    /// How long past its TTL a cached response may still be served when every upstream
    /// fails (RFC 8767 max-stale); 0 disables serve-stale.
    pub serve_stale: Duration,
    /// TTL of stale answers, and how long after a failed refresh stale data is served
    /// straight away before the next background refresh.
    pub stale_answer_ttl: Duration,
    /// Refresh an entry in the background when it is hit in the last 10 % of its TTL
    /// (TTLs of at least 10 s only).
    pub prefetch: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            attempt_timeout: ATTEMPT_TIMEOUT.default,
            deadline: DEADLINE.default,
            cache_size: CACHE_SIZE.default,
            cache_max_bytes: CACHE_MAX_BYTES.default,
            min_ttl: MIN_TTL.default,
            max_ttl: MAX_TTL.default,
            negative_max_ttl: NEGATIVE_MAX_TTL.default,
            udp_payload: UDP_PAYLOAD.default,
            max_in_flight: MAX_IN_FLIGHT.default,
            max_in_flight_bytes: MAX_IN_FLIGHT_BYTES.default,
            rules: Vec::new(),
            strategy: Strategy::Sequential,
            tcp_only: false,
            max_fails: MAX_FAILS.default,
            probe_interval: PROBE_INTERVAL.default,
            domain_needed: true,
            bogus_priv: true,
            rebind_protection: false,
            rebind_allow: Vec::new(),
            serve_stale: SERVE_STALE.default,
            stale_answer_ttl: STALE_ANSWER_TTL.default,
            prefetch: true,
        }
    }
}

/// A setting of [`Config`], as [`InvalidConfig`] and
/// [`Forwarder::reconfigure`](crate::Forwarder::reconfigure) name it. The
/// crate does not know the configuration file: `src/config` maps each field
/// to the key path the operator wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// [`Config::upstreams`].
    Upstreams,
    /// [`Config::attempt_timeout`].
    AttemptTimeout,
    /// [`Config::deadline`].
    Deadline,
    /// [`Config::cache_size`].
    CacheSize,
    /// [`Config::cache_max_bytes`].
    CacheMaxBytes,
    /// [`Config::min_ttl`].
    MinTtl,
    /// [`Config::max_ttl`].
    MaxTtl,
    /// [`Config::negative_max_ttl`].
    NegativeMaxTtl,
    /// [`Config::udp_payload`].
    UdpPayload,
    /// [`Config::max_in_flight`].
    MaxInFlight,
    /// [`Config::max_in_flight_bytes`].
    MaxInFlightBytes,
    /// [`Config::max_fails`].
    MaxFails,
    /// [`Config::probe_interval`].
    ProbeInterval,
    /// [`Config::serve_stale`].
    ServeStale,
    /// [`Config::stale_answer_ttl`].
    StaleAnswerTtl,
    /// The zone of rule `n` of [`Config::rules`].
    RuleZone(usize),
    /// The upstreams of rule `n` of [`Config::rules`].
    RuleUpstreams(usize),
    /// Entry `n` of [`Config::rebind_allow`].
    RebindAllow(usize),
}

/// Why [`Config::validate`] rejected a setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    /// A value outside its [`DefMinMax`] bounds (each in `Debug` form).
    #[error("{field:?}: must be between {min} and {max}, got {value}")]
    OutOfRange {
        /// The setting.
        field: Field,
        /// Smallest accepted value.
        min: String,
        /// Largest accepted value.
        max: String,
        /// The value given.
        value: String,
    },
    /// `min_ttl` above `max_ttl`.
    #[error("min_ttl {min_ttl:?} exceeds max_ttl {max_ttl:?}")]
    MinTtlAboveMaxTtl {
        /// The floor given.
        min_ttl: Duration,
        /// The ceiling given.
        max_ttl: Duration,
    },
    /// `deadline` below `attempt_timeout`: not even one attempt would fit.
    #[error("deadline {deadline:?} is below attempt_timeout {attempt_timeout:?}")]
    DeadlineBelowAttemptTimeout {
        /// The deadline given.
        deadline: Duration,
        /// The attempt timeout given.
        attempt_timeout: Duration,
    },
    /// An upstream with port 0 or an unspecified address.
    #[error("{field:?}: entry {index} is not a usable address: {upstream}")]
    UnusableUpstream {
        /// [`Field::Upstreams`] or [`Field::RuleUpstreams`].
        field: Field,
        /// Its position in the list.
        index: usize,
        /// The address.
        upstream: SocketAddr,
    },
    /// A rule for the root zone (the default upstreams are that).
    #[error("rule {rule}: the zone is the root")]
    RootZone {
        /// The rule's position.
        rule: usize,
    },
    /// A zone that an earlier rule already has.
    #[error("rule {rule}: {zone} appears in an earlier rule")]
    DuplicateZone {
        /// The rule's position.
        rule: usize,
        /// The zone, normalized.
        zone: Name,
    },
    /// A rule without upstreams.
    #[error("rule {rule}: no upstreams")]
    RuleWithoutUpstreams {
        /// The rule's position.
        rule: usize,
    },
    /// The root in `rebind_allow` (that would switch rebind protection off).
    #[error("rebind_allow entry {index} is the root")]
    RootRebindAllow {
        /// The entry's position.
        index: usize,
    },
}

impl InvalidConfig {
    /// The setting that is wrong.
    pub fn field(&self) -> Field {
        match self {
            Self::OutOfRange { field, .. } | Self::UnusableUpstream { field, .. } => *field,
            Self::MinTtlAboveMaxTtl { .. } => Field::MinTtl,
            Self::DeadlineBelowAttemptTimeout { .. } => Field::Deadline,
            Self::RootZone { rule } | Self::DuplicateZone { rule, .. } => Field::RuleZone(*rule),
            Self::RuleWithoutUpstreams { rule } => Field::RuleUpstreams(*rule),
            Self::RootRebindAllow { index } => Field::RebindAllow(*index),
        }
    }
}

impl Config {
    /// Checks every field against its bounds and the cross-field rules.
    ///
    /// An empty upstream list is accepted here (a node may forward nothing, or
    /// only through rules); such a forwarder answers names no rule covers with
    /// [`Error::NoUpstreams`](crate::Error::NoUpstreams).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        fn check<T: PartialOrd + Copy + std::fmt::Debug>(
            field: Field,
            bounds: DefMinMax<T>,
            value: T,
        ) -> Result<(), InvalidConfig> {
            if bounds.contains(value) {
                return Ok(());
            }
            Err(InvalidConfig::OutOfRange {
                field,
                min: format!("{:?}", bounds.min),
                max: format!("{:?}", bounds.max),
                value: format!("{value:?}"),
            })
        }
        fn check_upstreams(field: Field, upstreams: &[SocketAddr]) -> Result<(), InvalidConfig> {
            for (index, upstream) in upstreams.iter().enumerate() {
                if upstream.port() == 0 || upstream.ip().is_unspecified() {
                    return Err(InvalidConfig::UnusableUpstream {
                        field,
                        index,
                        upstream: *upstream,
                    });
                }
            }
            Ok(())
        }
        check(Field::AttemptTimeout, ATTEMPT_TIMEOUT, self.attempt_timeout)?;
        check(Field::Deadline, DEADLINE, self.deadline)?;
        check(Field::CacheSize, CACHE_SIZE, self.cache_size)?;
        check(Field::CacheMaxBytes, CACHE_MAX_BYTES, self.cache_max_bytes)?;
        check(Field::MinTtl, MIN_TTL, self.min_ttl)?;
        check(Field::MaxTtl, MAX_TTL, self.max_ttl)?;
        check(
            Field::NegativeMaxTtl,
            NEGATIVE_MAX_TTL,
            self.negative_max_ttl,
        )?;
        check(Field::UdpPayload, UDP_PAYLOAD, self.udp_payload)?;
        check(Field::MaxInFlight, MAX_IN_FLIGHT, self.max_in_flight)?;
        check(
            Field::MaxInFlightBytes,
            MAX_IN_FLIGHT_BYTES,
            self.max_in_flight_bytes,
        )?;
        check(Field::MaxFails, MAX_FAILS, self.max_fails)?;
        check(Field::ProbeInterval, PROBE_INTERVAL, self.probe_interval)?;
        check(Field::ServeStale, SERVE_STALE, self.serve_stale)?;
        check(
            Field::StaleAnswerTtl,
            STALE_ANSWER_TTL,
            self.stale_answer_ttl,
        )?;
        if self.min_ttl > self.max_ttl {
            return Err(InvalidConfig::MinTtlAboveMaxTtl {
                min_ttl: self.min_ttl,
                max_ttl: self.max_ttl,
            });
        }
        if self.deadline < self.attempt_timeout {
            return Err(InvalidConfig::DeadlineBelowAttemptTimeout {
                deadline: self.deadline,
                attempt_timeout: self.attempt_timeout,
            });
        }
        check_upstreams(Field::Upstreams, &self.upstreams)?;
        let mut zones = HashSet::new();
        for (rule, domain_rule) in self.rules.iter().enumerate() {
            let zone = normalize(&domain_rule.zone);
            if zone.is_root() {
                return Err(InvalidConfig::RootZone { rule });
            }
            if !zones.insert(zone.clone()) {
                return Err(InvalidConfig::DuplicateZone { rule, zone });
            }
            if domain_rule.upstreams.is_empty() {
                return Err(InvalidConfig::RuleWithoutUpstreams { rule });
            }
            check_upstreams(Field::RuleUpstreams(rule), &domain_rule.upstreams)?;
        }
        if let Some(index) = self.rebind_allow.iter().position(Name::is_root) {
            return Err(InvalidConfig::RootRebindAllow { index });
        }
        Ok(())
    }
}

/// Lower-case, absolute form of a configured zone or domain.
pub(crate) fn normalize(name: &Name) -> Name {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: &Config) -> Option<Field> {
        config.validate().err().map(|error| error.field())
    }

    #[test]
    fn default_config_is_valid() {
        Config::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn rejects_out_of_range_and_inconsistent_values() {
        let bad_payload = Config {
            udp_payload: 100,
            ..Config::default()
        };
        assert_eq!(
            bad_payload.validate(),
            Err(InvalidConfig::OutOfRange {
                field: Field::UdpPayload,
                min: "512".to_owned(),
                max: "4096".to_owned(),
                value: "100".to_owned(),
            })
        );

        let inverted = Config {
            min_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(60),
            ..Config::default()
        };
        assert_eq!(field_of(&inverted), Some(Field::MinTtl));

        let short_deadline = Config {
            deadline: Duration::from_millis(100),
            attempt_timeout: Duration::from_millis(500),
            ..Config::default()
        };
        assert_eq!(field_of(&short_deadline), Some(Field::Deadline));

        let zero_port = Config {
            upstreams: vec!["127.0.0.1:0".parse().expect("literal")],
            ..Config::default()
        };
        assert_eq!(field_of(&zero_port), Some(Field::Upstreams));
    }

    fn rule(zone: &str, upstreams: &[&str]) -> DomainRule {
        DomainRule {
            zone: zone.parse().expect("zone literal"),
            upstreams: upstreams
                .iter()
                .map(|addr| addr.parse().expect("addr literal"))
                .collect(),
        }
    }

    #[test]
    fn rule_errors_name_the_rule() {
        let config = Config {
            rules: vec![
                rule("example.com.", &["10.0.0.1:53"]),
                rule("10.in-addr.arpa", &["10.0.0.2:53"]),
                rule("Example.COM", &["10.0.0.3:53"]),
            ],
            ..Config::default()
        };
        assert_eq!(
            config.validate(),
            Err(InvalidConfig::DuplicateZone {
                rule: 2,
                zone: "example.com.".parse().expect("literal"),
            })
        );

        let empty = Config {
            rules: vec![rule("corp.example.", &[])],
            ..Config::default()
        };
        assert_eq!(field_of(&empty), Some(Field::RuleUpstreams(0)));

        let unusable = Config {
            rules: vec![
                rule("a.example.", &["10.0.0.1:53"]),
                rule("b.example.", &["10.0.0.1:0"]),
            ],
            ..Config::default()
        };
        assert_eq!(field_of(&unusable), Some(Field::RuleUpstreams(1)));

        let root = Config {
            rules: vec![rule(".", &["10.0.0.1:53"])],
            ..Config::default()
        };
        assert_eq!(field_of(&root), Some(Field::RuleZone(0)));
    }

    #[test]
    fn new_numeric_settings_are_bounded() {
        let cases = [
            (
                Config {
                    max_fails: 0,
                    ..Config::default()
                },
                Field::MaxFails,
            ),
            (
                Config {
                    probe_interval: Duration::from_millis(10),
                    ..Config::default()
                },
                Field::ProbeInterval,
            ),
            (
                Config {
                    serve_stale: Duration::from_secs(30 * 86_400),
                    ..Config::default()
                },
                Field::ServeStale,
            ),
            (
                Config {
                    stale_answer_ttl: Duration::ZERO,
                    ..Config::default()
                },
                Field::StaleAnswerTtl,
            ),
        ];
        for (config, field) in cases {
            assert_eq!(field_of(&config), Some(field));
        }
        let disabled = Config {
            serve_stale: Duration::ZERO,
            ..Config::default()
        };
        disabled.validate().expect("serve_stale 0 disables it");
    }
}
