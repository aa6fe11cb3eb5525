//! Answer settings for the DNS front (plain struct; validated by `src/config`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::Name;

/// How the DNS front answers the Consul domain.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Consul domain, a lower-case FQDN such as `consul.`.
    pub domain: Name,
    /// Consul's `alt_domain`: a second domain (lower-case FQDN) answered exactly like
    /// `domain`, with owner names and SRV targets in the domain the question used.
    pub alt_domain: Option<Name>,
    /// The local Consul agent's DNS interface, asked for every Consul form dnsfront does
    /// not answer from its own data (prepared queries, peers, `.connect`, `.ingress`,
    /// `.virtual`, sameness groups); `None`: those get SERVFAIL.
    pub agent_dns: Option<SocketAddr>,
    /// How long to wait for the agent's DNS interface before answering SERVFAIL.
    pub agent_dns_timeout: Duration,
    /// TTL of service answers (A/AAAA/SRV and the SRV Additional records); 0 is allowed.
    pub service_ttl: Duration,
    /// Per-service TTLs, Consul's `service_ttl` idea: an exact name, a `prefix*`, or `*`.
    /// An exact match wins, then the longest prefix, then `*`, then `service_ttl`.
    pub service_ttl_overrides: Vec<(String, Duration)>,
    /// TTL of node and `.addr` answers.
    pub node_ttl: Duration,
    /// SOA MINIMUM and SOA record TTL, i.e. how long clients cache negative answers.
    pub negative_ttl: Duration,
    /// Ceiling on every TTL of an answer built from stale catalog data.
    pub stale_ttl: Duration,
    /// Consul's `a_record_limit`: at most this many A/AAAA/ANY answers (after shuffling).
    pub max_answer_records: Option<usize>,
    /// Consul's `udp_answer_limit`: at most this many Answer records over UDP to a
    /// client without EDNS (or advertising 512 bytes), with the Additional records
    /// they need; `None` (our default; Consul's is 3): as many as fit in 512 bytes.
    pub udp_answer_limit: Option<usize>,
    /// Consul's `enable_additional_node_meta_txt`: node metadata as TXT records in the
    /// Additional section of node A/AAAA answers and beside each SRV target's
    /// addresses (TXT and ANY node lookups answer it whatever this says).
    pub node_meta_txt: bool,
    /// Consul's `translate_wan_addrs`: answers for another datacenter use its nodes'
    /// and services' `wan` tagged addresses where they have them.
    pub translate_wan_addrs: bool,
    /// Largest UDP response we send to EDNS clients (and advertise in our OPT).
    pub max_udp_payload: u16,
    /// TTL of answers from the local hosts files (dnsmasq's `local-ttl`, default 0:
    /// an edited hosts file takes effect at once, as with dnsmasq).
    pub local_ttl: Duration,
    /// The optional per-query log (dnsmasq's `log-queries`).
    pub query_log: QueryLog,
}

/// The per-query log: one `info!` line per sampled query at target
/// `dnsfront::query` (fields `client`, `protocol`, `name`, `qtype`, `rcode`,
/// `zone`, `source`, `answers`, `duration_us`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryLog {
    /// Off by default; when off the query path pays one branch and nothing else.
    pub enabled: bool,
    /// Fraction of queries logged, 0.0 to 1.0 (values outside are clamped; NaN is 0).
    pub sample: f64,
}

impl Default for QueryLog {
    fn default() -> Self {
        Self {
            enabled: false,
            sample: 1.0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            domain: Name::from_ascii("consul.").expect("a valid literal domain"),
            alt_domain: None,
            agent_dns: Some(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                DEFAULT_AGENT_DNS_PORT,
            ))),
            agent_dns_timeout: Duration::from_secs(2),
            service_ttl: Duration::from_secs(5),
            service_ttl_overrides: Vec::new(),
            node_ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(5),
            stale_ttl: Duration::from_secs(5),
            max_answer_records: None,
            udp_answer_limit: None,
            node_meta_txt: true,
            translate_wan_addrs: false,
            max_udp_payload: 1232,
            local_ttl: Duration::ZERO,
            query_log: QueryLog::default(),
        }
    }
}

/// The port of a Consul agent's DNS interface (Consul's `ports.dns`).
const DEFAULT_AGENT_DNS_PORT: u16 = 8600;

/// A DNS TTL in seconds from a duration (saturating).
pub(crate) fn ttl_secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// Resolved TTL rules, built once from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct ServiceTtls {
    default: u32,
    exact: Vec<(String, u32)>,
    /// Prefix rules, longest first; `*` is the empty prefix.
    prefixes: Vec<(String, u32)>,
}

impl ServiceTtls {
    pub(crate) fn new(default: Duration, overrides: &[(String, Duration)]) -> Self {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for (pattern, ttl) in overrides {
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_suffix('*') {
                Some(prefix) => prefixes.push((prefix.to_owned(), ttl_secs(*ttl))),
                None => exact.push((pattern, ttl_secs(*ttl))),
            }
        }
        prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self {
            default: ttl_secs(default),
            exact,
            prefixes,
        }
    }

    /// TTL for a (lower-case) service name.
    pub(crate) fn for_service(&self, service: &str) -> u32 {
        if let Some((_, ttl)) = self.exact.iter().find(|(name, _)| name == service) {
            return *ttl;
        }
        if let Some((_, ttl)) = self
            .prefixes
            .iter()
            .find(|(prefix, _)| service.starts_with(prefix.as_str()))
        {
            return *ttl;
        }
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_override_matching() {
        let secs = Duration::from_secs;
        let ttls = ServiceTtls::new(
            secs(5),
            &[
                ("*".to_owned(), secs(7)),
                ("web*".to_owned(), secs(10)),
                ("web-api*".to_owned(), secs(20)),
                ("web-api-v2".to_owned(), secs(30)),
                ("DB".to_owned(), secs(40)),
            ],
        );
        assert_eq!(
            ttls.for_service("web-api-v2"),
            30,
            "exact wins over prefixes"
        );
        assert_eq!(ttls.for_service("web-api-v3"), 20, "longest prefix wins");
        assert_eq!(ttls.for_service("web-ui"), 10);
        assert_eq!(
            ttls.for_service("web"),
            10,
            "a prefix matches the bare prefix too"
        );
        assert_eq!(ttls.for_service("db"), 40, "patterns are lower-cased");
        assert_eq!(ttls.for_service("cache"), 7, "`*` is the fallback");

        let no_wildcard = ServiceTtls::new(secs(5), &[("web".to_owned(), secs(0))]);
        assert_eq!(no_wildcard.for_service("web"), 0, "0 is a valid override");
        assert_eq!(
            no_wildcard.for_service("webx"),
            5,
            "exact names are not prefixes"
        );
    }

    #[test]
    fn ttl_secs_saturates() {
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
