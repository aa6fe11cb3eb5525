//! The one model of a service instance and a node, as every reader of Consul data in
//! dnsfront sees it (the catalog cache, the hosts snapshot, DNS answers), with Consul's DNS
//! rules written once: the health filter, the SRV weight, the address choice (with
//! Consul's tagged-address translation, `agent/translate_addr.go`), the tag match.
//!
//! The wire models ([`ServiceEntry`], [`NodeInfo`]) mirror Consul's JSON; these types hold
//! only what the DNS front serves, already interpreted. A new field (service meta, tagged
//! addresses) is added here and in [`ServiceInstance::from_entry`]; the hosts
//! snapshot keeps its own serialized shape, so its format changes only when that shape does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::model::{HealthCheck, HealthStatus, NodeInfo, ServiceEntry, Weights};

/// One instance of a service that Consul's DNS interface would serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInstance {
    /// Consul node name the instance runs on.
    pub node: String,
    /// Datacenter of the node, as Consul reports it.
    pub datacenter: String,
    /// The node's address, when it is an IP address.
    pub node_address: Option<IpAddr>,
    /// The service's own address (`Service.Address`), when set and an IP address.
    pub service_address: Option<IpAddr>,
    /// `Service.Port` (0 when Consul omitted it).
    pub port: u16,
    /// `Service.Tags`, as registered (compare with [`ServiceInstance::has_tag`]).
    pub tags: Vec<String>,
    /// SRV weight for the instance's current health (see [`InstanceStatus::weight`]).
    pub weight: u16,
    /// Aggregate health of the instance's checks.
    pub status: InstanceStatus,
    /// The hostname DNS answers with (a CNAME, or the SRV target) when the instance's
    /// address is a name rather than an IP: `Service.Address` when it is one, else the
    /// node's address when the instance has none of its own and the node's is one (AWS
    /// fleets register RDS and ELB endpoints this way). As registered, without a final dot.
    pub hostname: Option<String>,
    /// The node's metadata and tagged addresses and the service's tagged addresses;
    /// `None` when there are none (see [`InstanceDetails`]).
    pub details: Option<Arc<InstanceDetails>>,
}

/// What an instance carries besides its own address, out of line: one pointer in
/// [`ServiceInstance`], `None` when empty, so instances without any (every one the hosts
/// snapshot holds, whose decoded size is bounded) cost 8 bytes more, not 150.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceDetails {
    /// The node's metadata, `(key, value)` in key order (served as TXT records).
    pub node_meta: Vec<(String, String)>,
    /// The node's tagged addresses (see [`ServiceInstance::addresses`]).
    pub node_tagged: TaggedAddresses,
    /// The service's own tagged addresses (see [`ServiceInstance::addresses`]).
    pub service_tagged: TaggedAddresses,
}

/// Aggregate health of a served instance; critical instances are never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceStatus {
    /// Every check passes (or there are none).
    Passing,
    /// At least one check warns, none is critical.
    Warning,
}

/// A catalog node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name as registered (case preserved).
    pub name: String,
    /// Datacenter of the node.
    pub datacenter: String,
    /// The node's address, when it is an IP address.
    pub address: Option<IpAddr>,
    /// The node's address, when it is a hostname (answered with a CNAME), as registered.
    pub hostname: Option<String>,
    /// The node's metadata and tagged addresses; `None` when there are none (see
    /// [`NodeDetails`]).
    pub details: Option<Arc<NodeDetails>>,
}

/// What a node carries besides its address, out of line (as [`InstanceDetails`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDetails {
    /// The node's metadata, `(key, value)` in key order (served as TXT records).
    pub meta: Vec<(String, String)>,
    /// The node's tagged addresses (see [`Node::addresses`]).
    pub tagged: TaggedAddresses,
}

/// The tagged addresses Consul's DNS reads, IP addresses only (hostnames are skipped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaggedAddresses {
    /// `lan_ipv4`: the IPv4 address A answers use in the instance's own datacenter.
    pub lan_ipv4: Option<Ipv4Addr>,
    /// `lan_ipv6`: the IPv6 address AAAA answers use in the instance's own datacenter.
    pub lan_ipv6: Option<Ipv6Addr>,
    /// `wan`: replaces the address in answers for another datacenter (`translate_wan_addrs`).
    pub wan: Option<IpAddr>,
    /// `wan_ipv4`: replaces `lan_ipv4` in answers for another datacenter.
    pub wan_ipv4: Option<Ipv4Addr>,
    /// `wan_ipv6`: replaces `lan_ipv6` in answers for another datacenter.
    pub wan_ipv6: Option<Ipv6Addr>,
    /// The port of a service's `wan` tagged address (not 0): replaces the service's
    /// port in SRV answers for another datacenter (Consul's `TranslateServicePort`).
    pub wan_port: Option<u16>,
}

/// The addresses one instance or node is answered with, after Consul's translation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Addresses {
    /// What A answers give (tagged `lan_ipv4`/`wan_ipv4`, else an IPv4 address).
    pub v4: Option<Ipv4Addr>,
    /// What AAAA answers give (tagged `lan_ipv6`/`wan_ipv6`, else an IPv6 address).
    pub v6: Option<Ipv6Addr>,
    /// The one address an SRV record points at: the (translated) address, else the
    /// IPv4, else the IPv6 one.
    pub primary: Option<IpAddr>,
    /// True when these are the node's own addresses, untranslated: an SRV record then
    /// names the node (`NODE.node.DC.domain`), whose lookups give the same addresses.
    pub at_node: bool,
}

// === impl ServiceInstance ===

impl ServiceInstance {
    /// The instance Consul's DNS interface would serve for one health entry, or `None` when
    /// its checks keep it out (see [`InstanceStatus::of_checks`] and
    /// [`InstanceStatus::is_served`]).
    pub fn from_entry(entry: &ServiceEntry, only_passing: bool) -> Option<Self> {
        let status = InstanceStatus::of_checks(&entry.checks)?;
        if !status.is_served(only_passing) {
            return None;
        }
        let (node_address, node_hostname) = split_address(&entry.node.address);
        let (service_address, service_hostname) = split_address(&entry.service.address);
        let hostname = if entry.service.address.is_empty() {
            node_hostname
        } else {
            service_hostname
        };
        Some(Self {
            node: entry.node.node.clone(),
            datacenter: entry.node.datacenter.clone(),
            node_address,
            service_address,
            port: entry.service.port,
            tags: entry.service.tags.clone(),
            weight: status.weight(entry.service.weights.as_ref()),
            status,
            hostname,
            details: InstanceDetails {
                node_meta: entry.node.meta.clone(),
                node_tagged: entry.node.tagged_addresses,
                service_tagged: entry.service.tagged_addresses,
            }
            .into_option(),
        })
    }

    /// The port SRV answers give (Consul's `TranslateServicePort`): with `wan` (an
    /// answer for another datacenter under `translate_wan_addrs`) the port of the
    /// service's `wan` tagged address when it has one, else `Service.Port`.
    pub fn srv_port(&self, wan: bool) -> u16 {
        let wan_port = self
            .details
            .as_deref()
            .and_then(|details| details.service_tagged.wan_port);
        match wan_port {
            Some(port) if wan => port,
            _ => self.port,
        }
    }

    /// The node's metadata, `(key, value)` in key order.
    pub fn node_meta(&self) -> &[(String, String)] {
        self.details
            .as_deref()
            .map_or(&[], |details| details.node_meta.as_slice())
    }

    /// The addresses DNS answers with (Consul's `TranslateServiceAddress`, then
    /// `TranslateAddress` for the node): the service's own (its address and tagged
    /// `lan_ipv4`/`lan_ipv6`) when it has any, else the node's. With `wan` (an answer for
    /// another datacenter under `translate_wan_addrs`) the `wan*` tagged addresses
    /// replace them where present.
    ///
    /// A hostname instance has none: it is answered with a CNAME (see [`Self::hostname`]).
    pub fn addresses(&self, wan: bool) -> Addresses {
        if self.hostname.is_some() {
            return Addresses::default();
        }
        let details = self.details.as_deref();
        let service = details
            .map_or(&NO_TAGS, |details| &details.service_tagged)
            .translate(self.service_address, wan);
        if service.primary.is_some() {
            return service;
        }
        let mut node = details
            .map_or(&NO_TAGS, |details| &details.node_tagged)
            .translate(self.node_address, wan);
        node.at_node = node.primary.is_some() && node.primary == self.node_address;
        node
    }

    /// The IP address DNS answers use: the service address when set, else the node's;
    /// `None` when the address that applies is a hostname (see [`Self::hostname`]).
    pub fn address(&self) -> Option<IpAddr> {
        if self.hostname.is_some() {
            return None;
        }
        self.service_address.or(self.node_address)
    }

    /// True when the instance is reached at its node's IP address (no service address of
    /// its own), so its node's name resolves to it.
    pub fn uses_node_address(&self) -> bool {
        self.service_address.is_none() && self.hostname.is_none()
    }

    /// True when the instance carries `tag` (case-insensitive, as Consul compares).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }
}

// === impl InstanceStatus ===

impl InstanceStatus {
    /// Consul's DNS health rule (`CheckServiceNodes.Filter` in agent/structs) over an
    /// instance's node and service checks: `None` (not served) when any check is critical
    /// (maintenance is a critical check; unknown states count as failing); `Warning` when
    /// any warns; else `Passing` (no checks = healthy).
    pub fn of_checks(checks: &[HealthCheck]) -> Option<Self> {
        let mut status = Self::Passing;
        for check in checks {
            match check.status {
                HealthStatus::Passing => {}
                HealthStatus::Warning => status = Self::Warning,
                _ => return None,
            }
        }
        Some(status)
    }

    /// True when DNS serves an instance in this state: always when passing; when warning,
    /// unless `only_passing` is set.
    pub fn is_served(self, only_passing: bool) -> bool {
        match self {
            Self::Passing => true,
            Self::Warning => !only_passing,
        }
    }

    /// The SRV weight of an instance in this state: `Weights.Passing` or `Weights.Warning`,
    /// and 1 when the service has no weights (Consul's default).
    pub fn weight(self, weights: Option<&Weights>) -> u16 {
        match (weights, self) {
            (None, _) => 1,
            (Some(weights), Self::Passing) => weights.passing,
            (Some(weights), Self::Warning) => weights.warning,
        }
    }

    /// Consul's spelling of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
        }
    }
}

// === impl Node ===

impl Node {
    /// The node of a catalog or health answer.
    pub fn from_info(info: &NodeInfo) -> Self {
        let (address, hostname) = split_address(&info.address);
        Self {
            name: info.node.clone(),
            datacenter: info.datacenter.clone(),
            address,
            hostname,
            details: NodeDetails {
                meta: info.meta.clone(),
                tagged: info.tagged_addresses,
            }
            .into_option(),
        }
    }

    /// The node's metadata, `(key, value)` in key order.
    pub fn meta(&self) -> &[(String, String)] {
        self.details
            .as_deref()
            .map_or(&[], |details| details.meta.as_slice())
    }

    /// The addresses node lookups answer with: the node's address and tagged
    /// `lan_ipv4`/`lan_ipv6`, or with `wan` the `wan*` tagged ones where present (see
    /// [`ServiceInstance::addresses`]).
    pub fn addresses(&self, wan: bool) -> Addresses {
        let tagged = self
            .details
            .as_deref()
            .map_or(&NO_TAGS, |details| &details.tagged);
        let mut addresses = tagged.translate(self.address, wan);
        addresses.at_node = addresses.primary.is_some() && addresses.primary == self.address;
        addresses
    }
}

// === impl InstanceDetails, NodeDetails ===

impl InstanceDetails {
    /// `None` when there is nothing to carry.
    fn into_option(self) -> Option<Arc<Self>> {
        (self != Self::default()).then(|| Arc::new(self))
    }
}

impl NodeDetails {
    /// `None` when there is nothing to carry.
    fn into_option(self) -> Option<Arc<Self>> {
        (self != Self::default()).then(|| Arc::new(self))
    }
}

// === impl TaggedAddresses ===

/// No tagged addresses.
const NO_TAGS: TaggedAddresses = TaggedAddresses {
    lan_ipv4: None,
    lan_ipv6: None,
    wan: None,
    wan_ipv4: None,
    wan_ipv6: None,
    wan_port: None,
};

impl TaggedAddresses {
    /// The `TaggedAddresses` keys read from Consul.
    pub const KEYS: [&'static str; 5] = ["lan_ipv4", "lan_ipv6", "wan", "wan_ipv4", "wan_ipv6"];

    /// Sets the address tagged `key` (one of [`TaggedAddresses::KEYS`]); an address of
    /// the wrong family for the key, or another key, is ignored.
    pub fn set(&mut self, key: &str, ip: IpAddr) {
        match (key, ip) {
            ("lan_ipv4", IpAddr::V4(v4)) => self.lan_ipv4 = Some(v4),
            ("lan_ipv6", IpAddr::V6(v6)) => self.lan_ipv6 = Some(v6),
            ("wan", ip) => self.wan = Some(ip),
            ("wan_ipv4", IpAddr::V4(v4)) => self.wan_ipv4 = Some(v4),
            ("wan_ipv6", IpAddr::V6(v6)) => self.wan_ipv6 = Some(v6),
            _ => {}
        }
    }

    /// True when no tagged address is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Consul's `TranslateAddress` over `address` and these tags: with `wan`, each
    /// `wan*` address replaces its LAN counterpart where present; each family falls
    /// back to the address when it is of that family.
    fn translate(&self, address: Option<IpAddr>, wan: bool) -> Addresses {
        let (mut default, mut v4, mut v6) = (address, self.lan_ipv4, self.lan_ipv6);
        if wan {
            default = self.wan.or(default);
            v4 = self.wan_ipv4.or(v4);
            v6 = self.wan_ipv6.or(v6);
        }
        let v4 = v4.or(match default {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        });
        let v6 = v6.or(match default {
            Some(IpAddr::V6(ip)) => Some(ip),
            _ => None,
        });
        Addresses {
            v4,
            v6,
            primary: default.or(v4.map(IpAddr::V4)).or(v6.map(IpAddr::V6)),
            at_node: false,
        }
    }
}

/// A Consul address is an IP address or a hostname (Consul accepts both, and DNS answers
/// a hostname with a CNAME); empty is neither.
fn split_address(address: &str) -> (Option<IpAddr>, Option<String>) {
    if address.is_empty() {
        return (None, None);
    }
    match address.parse() {
        Ok(ip) => (Some(ip), None),
        Err(_) => (None, Some(address.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: HealthStatus) -> HealthCheck {
        HealthCheck {
            status,
            ..HealthCheck::default()
        }
    }

    fn entry(checks: Vec<HealthCheck>) -> ServiceEntry {
        let mut entry = ServiceEntry::default();
        entry.node.node = "n1".into();
        entry.node.datacenter = "dc1".into();
        entry.node.address = "10.0.0.1".into();
        entry.service.port = 80;
        entry.service.tags = vec!["Primary".into(), "v2".into()];
        entry.checks = checks;
        entry
    }

    #[test]
    fn instance_weight_follows_health() {
        let mut entry = entry(Vec::new());
        entry.service.address = "web.example".into();
        entry.service.weights = Some(Weights {
            passing: 10,
            warning: 2,
        });
        let passing = ServiceInstance::from_entry(&entry, false).expect("served");
        assert_eq!(passing.weight, 10);
        assert_eq!(passing.status, InstanceStatus::Passing);
        assert_eq!(
            passing.service_address, None,
            "hostnames are not IP addresses"
        );
        assert_eq!(passing.hostname.as_deref(), Some("web.example"));
        assert_eq!(passing.address(), None, "the service's hostname wins");
        entry.checks.push(check(HealthStatus::Warning));
        let warning = ServiceInstance::from_entry(&entry, false).expect("served");
        assert_eq!(warning.weight, 2);
        assert_eq!(warning.status, InstanceStatus::Warning);
    }

    #[test]
    fn weight_is_one_without_weights_whatever_the_health() {
        assert_eq!(InstanceStatus::Passing.weight(None), 1);
        assert_eq!(InstanceStatus::Warning.weight(None), 1);
        let weights = Weights {
            passing: 0,
            warning: 7,
        };
        assert_eq!(InstanceStatus::Passing.weight(Some(&weights)), 0);
        assert_eq!(InstanceStatus::Warning.weight(Some(&weights)), 7);
    }

    #[test]
    fn health_rule_drops_critical_and_unknown_and_warning_when_only_passing() {
        let served = |checks: Vec<HealthCheck>, only_passing| {
            ServiceInstance::from_entry(&entry(checks), only_passing).map(|i| i.status)
        };
        assert_eq!(served(Vec::new(), true), Some(InstanceStatus::Passing));
        assert_eq!(
            served(vec![check(HealthStatus::Passing)], true),
            Some(InstanceStatus::Passing)
        );
        let warning = vec![check(HealthStatus::Passing), check(HealthStatus::Warning)];
        assert_eq!(
            served(warning.clone(), false),
            Some(InstanceStatus::Warning)
        );
        assert_eq!(served(warning, true), None);
        for failing in [
            HealthStatus::Critical,
            HealthStatus::Maintenance,
            HealthStatus::Unknown("degraded".into()),
            HealthStatus::Unknown(String::new()),
        ] {
            assert_eq!(
                served(vec![check(HealthStatus::Warning), check(failing)], false),
                None
            );
        }
        assert!(InstanceStatus::Warning.is_served(false));
        assert!(!InstanceStatus::Warning.is_served(true));
        assert!(InstanceStatus::Passing.is_served(true));
    }

    #[test]
    fn address_prefers_the_service_address() {
        let mut entry = entry(Vec::new());
        let mut instance = ServiceInstance::from_entry(&entry, false).expect("served");
        assert_eq!(instance.address(), Some(IpAddr::from([10, 0, 0, 1])));
        assert!(instance.uses_node_address());
        entry.service.address = "fd00::9".into();
        instance = ServiceInstance::from_entry(&entry, false).expect("served");
        assert_eq!(instance.address(), "fd00::9".parse().ok());
        assert!(!instance.uses_node_address());
        entry.service.address = String::new();
        entry.node.address = "node.example".into();
        instance = ServiceInstance::from_entry(&entry, false).expect("served");
        assert_eq!(instance.address(), None, "no IP address at all");
        assert_eq!(instance.hostname.as_deref(), Some("node.example"));
        assert!(
            !instance.uses_node_address(),
            "the SRV target is the hostname"
        );
        entry.service.address = "10.9.0.1".into();
        instance = ServiceInstance::from_entry(&entry, false).expect("served");
        assert_eq!(instance.address(), "10.9.0.1".parse().ok());
        assert_eq!(
            instance.hostname, None,
            "an own IP address hides the node's hostname"
        );
        entry.node.address = "10.0.0.1".into();
        entry.service.address = "db.example.com".into();
        instance = ServiceInstance::from_entry(&entry, false).expect("served");
        assert_eq!(
            instance.address(),
            None,
            "the service's hostname, not the node's IP"
        );
        assert_eq!(instance.hostname.as_deref(), Some("db.example.com"));
    }

    #[test]
    fn tagged_addresses_fill_in_families_and_wan_replaces_them_across_datacenters() {
        let mut entry = entry(Vec::new());
        entry.node.tagged_addresses.lan_ipv6 = "fd00::1".parse().ok();
        entry.node.tagged_addresses.wan = "203.0.113.1".parse().ok();
        entry.node.tagged_addresses.wan_ipv6 = "2001:db8::1".parse().ok();
        let instance = ServiceInstance::from_entry(&entry, false).expect("served");
        let lan = instance.addresses(false);
        assert_eq!(lan.v4, "10.0.0.1".parse().ok());
        assert_eq!(lan.v6, "fd00::1".parse().ok(), "lan_ipv6 fills in AAAA");
        assert_eq!(lan.primary, "10.0.0.1".parse().ok());
        assert!(lan.at_node);
        let wan = instance.addresses(true);
        assert_eq!(wan.v4, "203.0.113.1".parse().ok());
        assert_eq!(wan.v6, "2001:db8::1".parse().ok());
        assert!(!wan.at_node, "a translated address is not the node's own");

        // The service's own tagged addresses win over the node's.
        entry.service.tagged_addresses.lan_ipv6 = "fd00::99".parse().ok();
        let instance = ServiceInstance::from_entry(&entry, false).expect("served");
        let own = instance.addresses(false);
        assert_eq!((own.v4, own.v6), (None, "fd00::99".parse().ok()));
        assert_eq!(own.primary, "fd00::99".parse().ok());
        assert!(!own.at_node);

        let node = Node::from_info(&entry.node);
        assert_eq!(node.addresses(false).v6, "fd00::1".parse().ok());
        assert_eq!(node.addresses(true).v4, "203.0.113.1".parse().ok());
    }

    #[test]
    fn entry_fields_are_carried_over() {
        let instance = ServiceInstance::from_entry(&entry(Vec::new()), false).expect("served");
        assert_eq!(
            instance,
            ServiceInstance {
                node: "n1".into(),
                datacenter: "dc1".into(),
                node_address: Some(IpAddr::from([10, 0, 0, 1])),
                service_address: None,
                port: 80,
                tags: vec!["Primary".into(), "v2".into()],
                weight: 1,
                status: InstanceStatus::Passing,
                hostname: None,
                details: None,
            }
        );
    }

    #[test]
    fn tag_match_is_case_insensitive_and_exact() {
        let instance = ServiceInstance::from_entry(&entry(Vec::new()), false).expect("served");
        assert!(instance.has_tag("primary"));
        assert!(instance.has_tag("PRIMARY"));
        assert!(instance.has_tag("v2"));
        assert!(!instance.has_tag("prim"));
        assert!(!instance.has_tag(""));
    }

    #[test]
    fn node_from_info_keeps_the_name_and_parses_the_address() {
        let mut info = NodeInfo {
            node: "Node-A".into(),
            datacenter: "dc1".into(),
            address: "10.0.0.7".into(),
            ..NodeInfo::default()
        };
        assert_eq!(
            Node::from_info(&info),
            Node {
                name: "Node-A".into(),
                datacenter: "dc1".into(),
                address: Some(IpAddr::from([10, 0, 0, 7])),
                hostname: None,
                details: None,
            }
        );
        info.address = "node-a.example".into();
        assert_eq!(Node::from_info(&info).address, None);
        assert_eq!(
            Node::from_info(&info).hostname.as_deref(),
            Some("node-a.example")
        );
        info.address = String::new();
        assert_eq!(Node::from_info(&info).address, None);
    }
}
