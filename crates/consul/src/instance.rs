//! The one model of a service instance and a node, as every reader of Consul data in
//! dnsfront sees it (the catalog cache, the hosts snapshot, DNS answers), with Consul's DNS
//! rules written once: the health filter, the SRV weight, the address choice, the tag match.
//!
//! The wire models ([`ServiceEntry`], [`NodeInfo`]) mirror Consul's JSON; these types hold
//! only what the DNS front serves, already interpreted. A new field (service meta, tagged
//! addresses) is added here and in [`ServiceInstance::from_entry`]; the hosts
//! snapshot keeps its own serialized shape, so its format changes only when that shape does.

use std::net::IpAddr;

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
        })
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
