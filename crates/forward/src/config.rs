//! Forwarder settings and their bounds.

use std::net::SocketAddr;
use std::time::Duration;

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

/// Entries, not bytes; 10,000 is CoreDNS's success-cache default; 0 disables the cache.
pub const CACHE_SIZE: DefMinMax<u64> = DefMinMax {
    default: 10_000,
    min: 0,
    max: 10_000_000,
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
    /// Floor on cached positive TTLs; answer records below it are raised to it.
    ///
    /// With the default of 0, answers whose smallest TTL is 0 (Consul's default for
    /// every record) are passed through but **not cached**, as dnsmasq and Unbound do.
    /// Set it above 0 to cache them for that long (CoreDNS and Knot use 5 s); clients
    /// then see the raised TTL too. It does not apply to negative answers.
    pub min_ttl: Duration,
    /// Ceiling on cached TTLs; record TTLs handed out are capped to it as well.
    pub max_ttl: Duration,
    /// Ceiling on negative-cache TTLs (RFC 2308).
    pub negative_max_ttl: Duration,
    /// EDNS UDP payload size advertised upstream.
    pub udp_payload: u16,
    /// Bound on concurrent upstream queries; beyond it queries fail fast.
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            attempt_timeout: ATTEMPT_TIMEOUT.default,
            deadline: DEADLINE.default,
            cache_size: CACHE_SIZE.default,
            min_ttl: MIN_TTL.default,
            max_ttl: MAX_TTL.default,
            negative_max_ttl: NEGATIVE_MAX_TTL.default,
            udp_payload: UDP_PAYLOAD.default,
            max_in_flight: MAX_IN_FLIGHT.default,
        }
    }
}

impl Config {
    /// Checks every field against its bounds and the cross-field rules.
    ///
    /// Errors name the field (`forward.<field>: ...`), so `src/config` can show them as is.
    /// An empty upstream list is accepted here (a node may forward nothing); such a
    /// forwarder answers every query with [`Error::NoUpstreams`](crate::Error::NoUpstreams).
    pub fn validate(&self) -> Result<(), crate::Error> {
        fn check<T: PartialOrd + Copy + std::fmt::Debug>(
            key: &'static str,
            bounds: DefMinMax<T>,
            value: T,
        ) -> Result<(), crate::Error> {
            if bounds.contains(value) {
                Ok(())
            } else {
                Err(crate::Error::InvalidConfig {
                    key,
                    reason: format!(
                        "must be between {:?} and {:?}, got {:?}",
                        bounds.min, bounds.max, value
                    ),
                })
            }
        }
        check(
            "forward.attempt_timeout",
            ATTEMPT_TIMEOUT,
            self.attempt_timeout,
        )?;
        check("forward.deadline", DEADLINE, self.deadline)?;
        check("forward.cache_size", CACHE_SIZE, self.cache_size)?;
        check("forward.min_ttl", MIN_TTL, self.min_ttl)?;
        check("forward.max_ttl", MAX_TTL, self.max_ttl)?;
        check(
            "forward.negative_max_ttl",
            NEGATIVE_MAX_TTL,
            self.negative_max_ttl,
        )?;
        check("forward.udp_payload", UDP_PAYLOAD, self.udp_payload)?;
        check("forward.max_in_flight", MAX_IN_FLIGHT, self.max_in_flight)?;
        if self.min_ttl > self.max_ttl {
            return Err(crate::Error::InvalidConfig {
                key: "forward.min_ttl",
                reason: format!(
                    "must not exceed forward.max_ttl ({:?}), got {:?}",
                    self.max_ttl, self.min_ttl
                ),
            });
        }
        if self.deadline < self.attempt_timeout {
            return Err(crate::Error::InvalidConfig {
                key: "forward.deadline",
                reason: format!(
                    "must be at least forward.attempt_timeout ({:?}), got {:?}",
                    self.attempt_timeout, self.deadline
                ),
            });
        }
        for (index, upstream) in self.upstreams.iter().enumerate() {
            if upstream.port() == 0 || upstream.ip().is_unspecified() {
                return Err(crate::Error::InvalidConfig {
                    key: "forward.upstreams",
                    reason: format!("entry {index} is not a usable address: {upstream}"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let error = bad_payload.validate().expect_err("payload below 512");
        assert!(error.to_string().contains("forward.udp_payload"), "{error}");

        let inverted = Config {
            min_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(60),
            ..Config::default()
        };
        let error = inverted.validate().expect_err("min above max");
        assert!(error.to_string().contains("forward.min_ttl"), "{error}");

        let short_deadline = Config {
            deadline: Duration::from_millis(100),
            attempt_timeout: Duration::from_millis(500),
            ..Config::default()
        };
        assert!(short_deadline.validate().is_err());

        let zero_port = Config {
            upstreams: vec!["127.0.0.1:0".parse().expect("literal")],
            ..Config::default()
        };
        assert!(zero_port.validate().is_err());
    }
}
