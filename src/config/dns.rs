//! `[dns]`: listeners, the client ACL and answer shaping (with `hosts.ttl`
//! and the query log of `[log]`, which the router applies too).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dnsfront_dns as dns;
use serde::{Deserialize, Serialize};

use super::{ConfigError, HumanDuration, RawConfig, check_duration_range, check_ttl, invalid};

/// Largest `dns.rate_limit` (queries a second per client network).
const MAX_RATE_LIMIT: u32 = 1_000_000;

/// Default DNS listen address: loopback only, never an open resolver.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:53";

/// `[dns]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    /// UDP+TCP listen addresses.
    pub listen: Vec<String>,
    /// The Consul domain (without trailing dot).
    pub domain: String,
    /// Client networks allowed to query; everyone else gets REFUSED.
    pub allowed_networks: Vec<String>,
    /// Acknowledges an `allowed_networks` that lets every address query.
    pub allow_open_resolver: bool,
    /// Idle TCP connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// TCP connections are closed this long after they opened.
    #[serde(with = "humantime_serde")]
    pub tcp_max_lifetime: Duration,
    /// Most TCP connections open at once.
    pub tcp_max_connections: usize,
    /// Most TCP connections open at once from one client address.
    pub tcp_max_connections_per_client: usize,
    /// Most queries of one TCP connection answered at once.
    pub tcp_max_pipelined: usize,
    /// UDP queries a second per client /24 or /56 (never loopback); 0 = off.
    pub rate_limit: u32,
    /// TTL of service answers.
    #[serde(with = "humantime_serde")]
    pub service_ttl: Duration,
    /// Per-service TTLs: exact name, `prefix*` or `*`.
    pub service_ttl_overrides: BTreeMap<String, HumanDuration>,
    /// TTL of node and `.addr` answers.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// TTL of negative answers (SOA minimum).
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// TTL cap of answers served from stale data.
    #[serde(with = "humantime_serde")]
    pub stale_ttl: Duration,
    /// Cap on A/AAAA records per answer (Consul's `a_record_limit`); 0 = no cap.
    pub max_answer_records: usize,
    /// Consul's `udp_answer_limit`: Answer records over UDP without EDNS, 0 to 8;
    /// 0 (our default; Consul's is 3) = as many as fit in 512 bytes.
    pub udp_answer_limit: usize,
    /// Node meta as TXT in Additional (Consul's `enable_additional_node_meta_txt`).
    pub enable_additional_node_meta_txt: bool,
    /// `wan` tagged addresses in answers for other datacenters (Consul's `translate_wan_addrs`).
    pub translate_wan_addrs: bool,
    /// Largest UDP answer for EDNS clients.
    pub max_udp_payload: u16,
    /// Consul's `alt_domain`: a second Consul domain answered like `domain`; empty = none.
    pub alt_domain: String,
    /// The local Consul agent's DNS interface (IP:PORT), asked for the Consul forms
    /// dnsfront does not answer itself; empty = off (those get SERVFAIL).
    pub agent_dns: String,
    /// How long to wait for the agent's DNS interface.
    #[serde(with = "humantime_serde")]
    pub agent_dns_timeout: Duration,
}

/// Consul's hard cap on `udp_answer_limit` (`maxUDPAnswerLimit`).
const MAX_UDP_ANSWER_LIMIT: usize = 8;

impl Default for RawDns {
    fn default() -> Self {
        let dns = dns::Config::default();
        let server = dns::ServerOptions::default();
        Self {
            listen: vec![DEFAULT_LISTEN.to_owned()],
            domain: "consul".to_owned(),
            allowed_networks: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            allow_open_resolver: false,
            tcp_idle_timeout: server.tcp_idle_timeout,
            tcp_max_lifetime: server.tcp_max_lifetime,
            tcp_max_connections: server.tcp_max_connections,
            tcp_max_connections_per_client: server.tcp_max_connections_per_client,
            tcp_max_pipelined: server.tcp_max_pipelined,
            rate_limit: server.rate_limit,
            service_ttl: dns.service_ttl,
            service_ttl_overrides: BTreeMap::new(),
            node_ttl: dns.node_ttl,
            negative_ttl: dns.negative_ttl,
            stale_ttl: dns.stale_ttl,
            max_answer_records: 0,
            udp_answer_limit: 0,
            enable_additional_node_meta_txt: dns.node_meta_txt,
            translate_wan_addrs: dns.translate_wan_addrs,
            max_udp_payload: dns.max_udp_payload,
            alt_domain: String::new(),
            agent_dns: dns
                .agent_dns
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
            agent_dns_timeout: dns.agent_dns_timeout,
        }
    }
}

impl RawConfig {
    /// `dns.listen`.
    pub(super) fn listen(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        let listen = self
            .dns
            .listen
            .iter()
            .map(|addr| {
                addr.parse::<SocketAddr>().map_err(|_| {
                    invalid("dns.listen", format!("{addr:?} is not an IP:PORT address"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            return Err(invalid("dns.listen", "at least one address is needed"));
        }
        Ok(listen)
    }

    /// `dns.allowed_networks`.
    pub(super) fn allowed_networks(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        let allowed_networks = self
            .dns
            .allowed_networks
            .iter()
            .map(|net| {
                net.parse::<ipnet::IpNet>()
                    .or_else(|_| net.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "dns.allowed_networks",
                            format!("{net:?} is not a network like 10.0.0.0/8"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if allowed_networks.is_empty() {
            return Err(invalid(
                "dns.allowed_networks",
                "empty: no client could query",
            ));
        }
        if let Some((everyone, family)) = open_to_everyone(&allowed_networks)
            && !self.dns.allow_open_resolver
        {
            return Err(invalid(
                "dns.allowed_networks",
                format!(
                    "covers {everyone}, every {family} address: anyone who can reach a listen \
                     address could use this node as an open resolver (DNS amplification, \
                     cache snooping); list the client networks instead, or set \
                     dns.allow_open_resolver = true to acknowledge it"
                ),
            ));
        }
        Ok(allowed_networks)
    }

    /// The TCP limits of `[dns]` (checked once here) and the client ACL.
    pub(super) fn server_options(
        &self,
        allowed_networks: Vec<ipnet::IpNet>,
        forward_max_in_flight: usize,
    ) -> Result<dns::ServerOptions, ConfigError> {
        check_duration_range(
            "dns.tcp_idle_timeout",
            self.dns.tcp_idle_timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        check_duration_range(
            "dns.tcp_max_lifetime",
            self.dns.tcp_max_lifetime,
            self.dns.tcp_idle_timeout,
            Duration::from_secs(24 * 3600),
        )?;
        let counts = [
            (
                "dns.tcp_max_connections",
                self.dns.tcp_max_connections,
                1_000_000,
            ),
            (
                "dns.tcp_max_connections_per_client",
                self.dns.tcp_max_connections_per_client,
                1_000_000,
            ),
            ("dns.tcp_max_pipelined", self.dns.tcp_max_pipelined, 1024),
        ];
        if self.dns.rate_limit > MAX_RATE_LIMIT {
            return Err(invalid(
                "dns.rate_limit",
                format!(
                    "must be at most {MAX_RATE_LIMIT} (0 = off), got {}",
                    self.dns.rate_limit
                ),
            ));
        }
        for (key, value, max) in counts {
            if !(1..=max).contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be between 1 and {max}, got {value}"),
                ));
            }
        }
        Ok(dns::ServerOptions {
            tcp_idle_timeout: self.dns.tcp_idle_timeout,
            tcp_max_lifetime: self.dns.tcp_max_lifetime,
            tcp_max_connections: self.dns.tcp_max_connections,
            tcp_max_connections_per_client: self.dns.tcp_max_connections_per_client,
            tcp_max_pipelined: self.dns.tcp_max_pipelined,
            // One socket per upstream query in flight at most, and room for
            // Consul connections, UDP sockets and files.
            reserved_fds: forward_max_in_flight.saturating_add(256),
            allowed_networks,
            rate_limit: self.dns.rate_limit,
        })
    }

    /// The warning of an acknowledged open resolver (`dns.allow_open_resolver`).
    pub(super) fn open_resolver_warning(
        &self,
        allowed_networks: &[ipnet::IpNet],
    ) -> Option<String> {
        open_to_everyone(allowed_networks).map(|(everyone, family)| {
            format!(
                "dns.allowed_networks covers {everyone} (every {family} address): an open \
                 resolver, acknowledged by dns.allow_open_resolver"
            )
        })
    }

    /// The answer settings: `[dns]` (but its listener keys), `hosts.ttl` and
    /// the query log of `[log]`.
    pub(super) fn dns_config(&self) -> Result<dns::Config, ConfigError> {
        let domain = self.dns.domain.trim_end_matches('.').to_ascii_lowercase();
        let domain_name = hickory_server::proto::rr::Name::from_ascii(format!("{domain}."))
            .ok()
            .filter(|_| !domain.is_empty())
            .ok_or_else(|| {
                invalid(
                    "dns.domain",
                    format!("{:?} is not a domain name", self.dns.domain),
                )
            })?;

        let mut service_ttl_overrides = Vec::new();
        for (pattern, ttl) in &self.dns.service_ttl_overrides {
            check_ttl(&format!("dns.service_ttl_overrides.{pattern}"), ttl.0)?;
            service_ttl_overrides.push((pattern.to_ascii_lowercase(), ttl.0));
        }
        check_ttl("dns.service_ttl", self.dns.service_ttl)?;
        check_ttl("dns.node_ttl", self.dns.node_ttl)?;
        check_ttl("dns.negative_ttl", self.dns.negative_ttl)?;
        check_ttl("dns.stale_ttl", self.dns.stale_ttl)?;
        if !(512..=4096).contains(&self.dns.max_udp_payload) {
            return Err(invalid(
                "dns.max_udp_payload",
                format!(
                    "must be between 512 and 4096, got {}",
                    self.dns.max_udp_payload
                ),
            ));
        }
        if self.dns.udp_answer_limit > MAX_UDP_ANSWER_LIMIT {
            return Err(invalid(
                "dns.udp_answer_limit",
                format!(
                    "must be 0 (as many as fit) to {MAX_UDP_ANSWER_LIMIT} (Consul's maximum), got {}",
                    self.dns.udp_answer_limit
                ),
            ));
        }
        let alt_domain = self.alt_domain(&domain_name)?;
        let agent_dns = self.agent_dns()?;
        check_duration_range(
            "dns.agent_dns_timeout",
            self.dns.agent_dns_timeout,
            Duration::from_millis(100),
            Duration::from_secs(30),
        )?;
        let dns_config = dns::Config {
            domain: domain_name,
            alt_domain,
            agent_dns,
            agent_dns_timeout: self.dns.agent_dns_timeout,
            service_ttl: self.dns.service_ttl,
            service_ttl_overrides,
            node_ttl: self.dns.node_ttl,
            negative_ttl: self.dns.negative_ttl,
            stale_ttl: self.dns.stale_ttl,
            max_answer_records: (self.dns.max_answer_records > 0)
                .then_some(self.dns.max_answer_records),
            udp_answer_limit: (self.dns.udp_answer_limit > 0).then_some(self.dns.udp_answer_limit),
            node_meta_txt: self.dns.enable_additional_node_meta_txt,
            translate_wan_addrs: self.dns.translate_wan_addrs,
            max_udp_payload: self.dns.max_udp_payload,
            local_ttl: self.hosts.ttl,
            query_log: dns::QueryLog {
                enabled: self.log.queries,
                sample: self.log.query_sample,
            },
        };
        check_ttl("hosts.ttl", self.hosts.ttl)?;
        if !(0.0..=1.0).contains(&self.log.query_sample) {
            return Err(invalid(
                "log.query_sample",
                format!(
                    "must be a fraction between 0.0 and 1.0, got {}",
                    self.log.query_sample
                ),
            ));
        }
        Ok(dns_config)
    }
}

impl RawConfig {
    /// `dns.alt_domain`: a domain other than `dns.domain` whose first label is not one
    /// of Consul's keywords (Consul's own rule: it would shadow the main domain's names).
    fn alt_domain(
        &self,
        domain: &hickory_server::proto::rr::Name,
    ) -> Result<Option<hickory_server::proto::rr::Name>, ConfigError> {
        let alt = self
            .dns
            .alt_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if alt.is_empty() {
            return Ok(None);
        }
        let bad = |why: &str| invalid("dns.alt_domain", format!("{:?} {why}", self.dns.alt_domain));
        let name = hickory_server::proto::rr::Name::from_ascii(format!("{alt}."))
            .map_err(|_| bad("is not a domain name"))?;
        if name == *domain {
            return Err(bad("is dns.domain itself"));
        }
        let first = alt.split('.').next().unwrap_or_default();
        if ["service", "connect", "node", "query", "addr"].contains(&first) {
            return Err(bad(
                "starts with a Consul keyword (service, connect, node, query, addr)",
            ));
        }
        Ok(Some(name))
    }

    /// `dns.agent_dns`: IP:PORT, a bare IP (port 8600), or empty (off).
    fn agent_dns(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let text = self.dns.agent_dns.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse::<SocketAddr>()
            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 8600)))
            .map(Some)
            .map_err(|_| {
                invalid(
                    "dns.agent_dns",
                    format!("{text:?} is not an IP:PORT address (or empty, to turn it off)"),
                )
            })
    }
}

/// The whole address space of a family, if `networks` together cover it,
/// with the family's name.
///
/// Networks are aggregated first, so `0.0.0.0/1` plus `128.0.0.0/1` counts
/// as everyone too. `::ffff:0:0/96` is every IPv4 client as an IPv6 socket
/// sees it. Whether a listen address is public does not matter: the listen
/// list changes with a flag (`--listen`) or an edit that leaves this key
/// alone, and a loopback-only resolver never needs more than the loopback
/// networks.
fn open_to_everyone(networks: &[ipnet::IpNet]) -> Option<(ipnet::IpNet, &'static str)> {
    let aggregated = ipnet::IpNet::aggregate(&networks.to_vec());
    [
        ("0.0.0.0/0", "IPv4"),
        ("::/0", "IPv6"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6"),
    ]
    .into_iter()
    .filter_map(|(net, family)| Some((net.parse::<ipnet::IpNet>().ok()?, family)))
    .find(|(everyone, _)| aggregated.iter().any(|net| net.contains(everyone)))
}

#[cfg(test)]
mod tests {
    use super::super::{Env, RawConfig};

    fn validate(text: &str) -> Result<super::super::Settings, String> {
        let mut raw = RawConfig::parse(text, "test.toml").map_err(|e| e.to_string())?;
        raw.forward.resolv_file = "/nonexistent/dnsfront-test-resolv.conf".into();
        raw.validate(&Env::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn alt_domain_and_agent_dns_are_parsed_and_checked() {
        let settings = validate("[dns]\nalt_domain = \"Example.Internal.\"\nagent_dns = \"10.0.0.5\"\nagent_dns_timeout = \"500ms\"\n")
            .expect("valid");
        assert_eq!(
            settings.dns.alt_domain.map(|name| name.to_ascii()),
            Some("example.internal.".to_owned())
        );
        assert_eq!(
            settings.dns.agent_dns,
            Some("10.0.0.5:8600".parse().expect("literal"))
        );
        assert_eq!(
            settings.dns.agent_dns_timeout,
            std::time::Duration::from_millis(500)
        );
        let off = validate("[dns]\nagent_dns = \"\"\n").expect("valid");
        assert_eq!(off.dns.agent_dns, None);
        let default = validate("").expect("valid");
        assert_eq!(
            default.dns.agent_dns,
            Some("127.0.0.1:8600".parse().expect("literal"))
        );
        assert_eq!(default.dns.alt_domain, None);
        for (text, key) in [
            ("alt_domain = \"consul\"", "dns.alt_domain"),
            ("alt_domain = \"service.example\"", "dns.alt_domain"),
            ("alt_domain = \"a..b\"", "dns.alt_domain"),
            ("agent_dns = \"localhost:8600\"", "dns.agent_dns"),
            ("agent_dns_timeout = \"1ms\"", "dns.agent_dns_timeout"),
        ] {
            let error = validate(&format!("[dns]\n{text}\n"))
                .map(|_| ())
                .expect_err(text);
            assert!(error.starts_with(&format!("{key}: ")), "{text}: {error}");
        }
    }

    #[test]
    fn an_acl_open_to_every_address_is_refused_unless_acknowledged() {
        for networks in [
            r#"["0.0.0.0/0"]"#,
            r#"["127.0.0.0/8", "::/0"]"#,
            r#"["0.0.0.0/1", "128.0.0.0/1"]"#,
            r#"["::ffff:0:0/96"]"#,
            r#"["10.0.0.0/8", "0.0.0.0/0", "::1"]"#,
        ] {
            let text = format!("[dns]\nallowed_networks = {networks}\n");
            let error = validate(&text).map(|_| ()).expect_err(networks);
            assert!(
                error.starts_with("dns.allowed_networks: covers ")
                    && error.contains("open resolver")
                    && error.contains("dns.allow_open_resolver = true"),
                "{networks}: {error}"
            );
            let acknowledged = validate(&format!("{text}allow_open_resolver = true\n"))
                .unwrap_or_else(|error| panic!("{networks}: {error}"));
            assert_eq!(acknowledged.warnings.len(), 1, "{networks}");
            assert!(
                acknowledged.warnings[0].contains("acknowledged by dns.allow_open_resolver"),
                "{:?}",
                acknowledged.warnings
            );
        }
        for networks in [
            r#"["127.0.0.0/8", "::1/128"]"#,
            r#"["0.0.0.0/1"]"#,
            r#"["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]"#,
            r#"["::ffff:10.0.0.0/104"]"#,
        ] {
            let settings = validate(&format!("[dns]\nallowed_networks = {networks}\n"))
                .unwrap_or_else(|error| panic!("{networks}: {error}"));
            assert!(settings.warnings.is_empty(), "{networks}");
        }
    }
}
