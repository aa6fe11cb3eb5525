//! Wire models for the Consul responses we read.
//!
//! Field names follow Consul's PascalCase JSON. Every field tolerates being missing or `null`
//! and unknown fields are ignored, so newer or older agents still decode.
//!
//! Only fields something reads are decoded: the rest (service `Meta`, a check's `Output`
//! and `Notes`, …) are skipped by the parser without being copied into strings, so an
//! instance with megabytes of check output costs nothing past its bytes on the wire (whose
//! size the client caps). Node `Meta` (served as TXT) and the tagged addresses DNS uses
//! are decoded leniently: an odd shape there reads as absent, never fails the read.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::instance::TaggedAddresses;

/// Deserializes `null` as the type's default value.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// One healthy-or-not instance from `/v1/health/service/:service`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    /// The node the instance runs on.
    #[serde(default, deserialize_with = "nullable")]
    pub node: NodeInfo,
    /// The service instance.
    #[serde(default, deserialize_with = "nullable")]
    pub service: AgentService,
    /// Node-level checks and this instance's service checks.
    #[serde(default, deserialize_with = "nullable")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// True when Consul's DNS interface serves this instance: the rule is
    /// [`InstanceStatus::of_checks`](crate::InstanceStatus::of_checks) and
    /// [`InstanceStatus::is_served`](crate::InstanceStatus::is_served).
    pub fn passes_dns_health(&self, only_passing: bool) -> bool {
        crate::InstanceStatus::of_checks(&self.checks)
            .is_some_and(|status| status.is_served(only_passing))
    }
}

/// A catalog node (as in health entries and `/v1/catalog/nodes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeInfo {
    /// Node UUID.
    #[serde(default, rename = "ID", deserialize_with = "nullable")]
    pub id: String,
    /// Node name.
    #[serde(default, deserialize_with = "nullable")]
    pub node: String,
    /// Node address (IP or hostname).
    #[serde(default, deserialize_with = "nullable")]
    pub address: String,
    /// Datacenter of the node.
    #[serde(default, deserialize_with = "nullable")]
    pub datacenter: String,
    /// The tagged addresses DNS reads (`lan_ipv4`, `lan_ipv6`, `wan`, `wan_ipv4`,
    /// `wan_ipv6`), IP addresses only; other keys and odd shapes are skipped.
    #[serde(default, deserialize_with = "tagged_addresses")]
    pub tagged_addresses: TaggedAddresses,
    /// Node metadata as `(key, value)` pairs in key order (entries whose value is not a
    /// string are skipped; any other shape reads as none).
    #[serde(default, deserialize_with = "string_map")]
    pub meta: Vec<(String, String)>,
}

/// A registered service instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    /// Instance ID, unique per node.
    #[serde(default, rename = "ID", deserialize_with = "nullable")]
    pub id: String,
    /// Service name.
    #[serde(default, deserialize_with = "nullable")]
    pub service: String,
    /// Tags.
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<String>,
    /// Service address; empty means "use the node address".
    #[serde(default, deserialize_with = "nullable")]
    pub address: String,
    /// Service port; Consul omits it when 0.
    #[serde(default, deserialize_with = "nullable")]
    pub port: u16,
    /// SRV weights; `None` means Consul's default 1/1.
    #[serde(default)]
    pub weights: Option<Weights>,
    /// The service's tagged addresses DNS reads (`{"Address", "Port"}` objects; the port
    /// is not used), IP addresses only.
    #[serde(default, deserialize_with = "tagged_addresses")]
    pub tagged_addresses: TaggedAddresses,
}

/// SRV weights of a service instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight while all checks pass.
    #[serde(default, deserialize_with = "nullable")]
    pub passing: u16,
    /// Weight while some check warns.
    #[serde(default, deserialize_with = "nullable")]
    pub warning: u16,
}

/// A health check attached to a node or service instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// Node the check runs on.
    #[serde(default, deserialize_with = "nullable")]
    pub node: String,
    /// Check ID (e.g. `serfHealth`, `service:web-1`).
    #[serde(default, rename = "CheckID", deserialize_with = "nullable")]
    pub check_id: String,
    /// Human-readable check name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Current status.
    #[serde(default)]
    pub status: HealthStatus,
    /// Service instance ID; empty for node-level checks.
    #[serde(default, rename = "ServiceID", deserialize_with = "nullable")]
    pub service_id: String,
    /// Service name; empty for node-level checks.
    #[serde(default, deserialize_with = "nullable")]
    pub service_name: String,
}

/// A check status; unknown strings are kept rather than failing the decode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// `passing`.
    Passing,
    /// `warning`.
    Warning,
    /// `critical`.
    Critical,
    /// `maintenance`.
    Maintenance,
    /// Any other value as sent (empty when missing or null).
    Unknown(String),
}

impl HealthStatus {
    /// Parses Consul's status string (case-insensitive).
    pub fn parse(status: &str) -> Self {
        match status.to_ascii_lowercase().as_str() {
            "passing" => HealthStatus::Passing,
            "warning" => HealthStatus::Warning,
            "critical" => HealthStatus::Critical,
            "maintenance" => HealthStatus::Maintenance,
            _ => HealthStatus::Unknown(status.to_owned()),
        }
    }

    /// Consul's spelling of the status.
    pub fn as_str(&self) -> &str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
            HealthStatus::Maintenance => "maintenance",
            HealthStatus::Unknown(other) => other,
        }
    }
}

impl Default for HealthStatus {
    fn default() -> Self {
        HealthStatus::Unknown(String::new())
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HealthStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let status: Option<String> = Option::deserialize(deserializer)?;
        Ok(HealthStatus::parse(status.as_deref().unwrap_or_default()))
    }
}

/// `/v1/catalog/node/:node`: a node and its services keyed by instance ID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNode {
    /// The node.
    #[serde(default, deserialize_with = "nullable")]
    pub node: NodeInfo,
    /// Its services, keyed by instance ID.
    #[serde(default, deserialize_with = "nullable")]
    pub services: BTreeMap<String, AgentService>,
}

/// One KV entry with its value base64-decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    /// Full key.
    #[serde(default, deserialize_with = "nullable")]
    pub key: String,
    /// Opaque flags set by the writer.
    #[serde(default, deserialize_with = "nullable")]
    pub flags: u64,
    /// Value bytes; `None` for an empty value.
    #[serde(default, deserialize_with = "base64_value")]
    pub value: Option<Vec<u8>>,
    /// Session holding the lock, if any.
    #[serde(default)]
    pub session: Option<String>,
    /// Times the lock was acquired.
    #[serde(default, deserialize_with = "nullable")]
    pub lock_index: u64,
    /// Raft index that created the key.
    #[serde(default, deserialize_with = "nullable")]
    pub create_index: u64,
    /// Raft index of the last change.
    #[serde(default, deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// Decodes Consul's base64 `Value` (null ⇒ `None`).
fn base64_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
    let encoded: Option<String> = Option::deserialize(deserializer)?;
    encoded
        .map(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(de::Error::custom)
        })
        .transpose()
}

/// Visitor methods for scalars that read as the value's default (lenient decoding).
macro_rules! forward_scalars_to_default {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

/// Decodes a `TaggedAddresses` map leniently: node maps hold strings, service maps
/// `{"Address", "Port"}` objects (keys compared case-insensitively); values that are not
/// IP addresses, unknown keys and any other shape are skipped.
fn tagged_addresses<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<TaggedAddresses, D::Error> {
    struct MapVisitor;
    impl<'de> Visitor<'de> for MapVisitor {
        type Value = TaggedAddresses;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a map of tagged addresses")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut tagged = TaggedAddresses::default();
            while let Some(key) = map.next_key::<Lenient<String>>()? {
                let Lenient(Some(key)) = key else {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                };
                if !TaggedAddresses::KEYS.contains(&key.as_str()) {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                let TaggedValue { address, port } = map.next_value()?;
                if let Some(ip) = address.and_then(|text| text.parse().ok()) {
                    tagged.set(&key, ip);
                }
                // Consul's `TranslateServicePort`: the `wan` port, when not 0.
                if key == "wan" {
                    tagged.wan_port = port.filter(|port| *port != 0);
                }
            }
            Ok(tagged)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(TaggedAddresses::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(TaggedAddresses::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(TaggedAddresses::default())
        }
        forward_scalars_to_default!();
    }
    deserializer.deserialize_any(MapVisitor)
}

/// Decodes a string-to-string map leniently into `(key, value)` pairs in key order:
/// entries whose value is not a string are skipped, any other shape is empty.
fn string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(String, String)>, D::Error> {
    struct MapVisitor;
    impl<'de> Visitor<'de> for MapVisitor {
        type Value = Vec<(String, String)>;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a map of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = BTreeMap::new();
            while let Some(Lenient(key)) = map.next_key::<Lenient<String>>()? {
                let Lenient(value) = map.next_value::<Lenient<String>>()?;
                if let (Some(key), Some(value)) = (key, value) {
                    pairs.insert(key, value);
                }
            }
            Ok(pairs.into_iter().collect())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Vec::new())
        }
        forward_scalars_to_default!();
    }
    deserializer.deserialize_any(MapVisitor)
}

/// A value of one JSON kind, or `None` for any other JSON value (skipped without copying).
struct Lenient<T>(Option<T>);

/// What [`Lenient`] accepts: each reader gives `None` for the JSON kinds it does not take.
trait LenientValue: Sized {
    /// What the value is, for serde's messages.
    const EXPECTING: &'static str;
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
}

impl LenientValue for String {
    const EXPECTING: &'static str = "a string";
    fn from_str(value: &str) -> Option<Self> {
        Some(value.to_owned())
    }
}

impl LenientValue for u16 {
    const EXPECTING: &'static str = "a port number";
    fn from_u64(value: u64) -> Option<Self> {
        u16::try_from(value).ok()
    }
    fn from_i64(value: i64) -> Option<Self> {
        u16::try_from(value).ok()
    }
}

impl<'de, T: LenientValue> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: LenientValue> Visitor<'de> for LenientVisitor<T> {
            type Value = Option<T>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(T::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(T::from_str(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(T::from_u64(value))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(T::from_i64(value))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        deserializer
            .deserialize_any(LenientVisitor(std::marker::PhantomData))
            .map(Lenient)
    }
}

/// One tagged address: a string (node) or an object with `Address` and `Port`
/// (service, any key case); `None` for anything else.
#[derive(Default)]
struct TaggedValue {
    address: Option<String>,
    port: Option<u16>,
}

impl<'de> Deserialize<'de> for TaggedValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = TaggedValue;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an address or an {Address, Port} object")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(TaggedValue {
                    address: Some(value.to_owned()),
                    port: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut value = TaggedValue::default();
                while let Some(Lenient(key)) = map.next_key::<Lenient<String>>()? {
                    match key {
                        Some(key) if key.eq_ignore_ascii_case("address") => {
                            let Lenient(address) = map.next_value::<Lenient<String>>()?;
                            value.address = value.address.or(address);
                        }
                        Some(key) if key.eq_ignore_ascii_case("port") => {
                            let Lenient(port) = map.next_value::<Lenient<u16>>()?;
                            value.port = value.port.or(port);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(value)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TaggedValue::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(TaggedValue::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(TaggedValue::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TaggedValue::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(TaggedValue::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(TaggedValue::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(TaggedValue::default())
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// What `/v1/agent/self` tells us about the local agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentSelf {
    /// The agent's datacenter.
    pub datacenter: String,
    /// The agent's node name.
    pub node_name: String,
    /// Consul version, e.g. `1.16.4`.
    pub version: String,
    /// Whether the agent is a server.
    pub server: bool,
}

/// Wire shape of `/v1/agent/self` (only `Config` is read).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AgentSelfWire {
    #[serde(default, deserialize_with = "nullable")]
    config: AgentConfigWire,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentConfigWire {
    #[serde(default, deserialize_with = "nullable")]
    datacenter: String,
    #[serde(default, deserialize_with = "nullable")]
    node_name: String,
    #[serde(default, deserialize_with = "nullable")]
    version: String,
    #[serde(default, deserialize_with = "nullable")]
    server: bool,
}

impl From<AgentSelfWire> for AgentSelf {
    fn from(wire: AgentSelfWire) -> Self {
        AgentSelf {
            datacenter: wire.config.datacenter,
            node_name: wire.config.node_name,
            version: wire.config.version,
            server: wire.config.server,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_realistic_health_sample() {
        let json = include_str!("../tests/data/health_service_api.json");
        let entries: Vec<ServiceEntry> = serde_json::from_str(json).expect("sample decodes");
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(entry.node.id, "5c1e5b9e-52a8-4d7c-a3ab-0f9a3d4b2e61");
        assert_eq!(entry.node.node, "web-7");
        assert_eq!(entry.node.address, "10.20.3.17");
        assert_eq!(entry.node.datacenter, "us-east-1");
        assert_eq!(entry.service.id, "api-8080");
        assert_eq!(entry.service.service, "api");
        assert_eq!(entry.service.tags, ["primary", "v2"]);
        assert_eq!(entry.service.address, "");
        assert_eq!(entry.service.port, 8080);
        assert_eq!(
            entry.service.weights,
            Some(Weights {
                passing: 10,
                warning: 1
            })
        );
        assert_eq!(entry.checks.len(), 2);
        let serf = &entry.checks[0];
        assert_eq!(serf.check_id, "serfHealth");
        assert_eq!(serf.status, HealthStatus::Passing);
        assert_eq!(serf.service_id, "");
        let service_check = &entry.checks[1];
        assert_eq!(service_check.node, "web-7");
        assert_eq!(service_check.check_id, "service:api-8080");
        assert_eq!(service_check.name, "Service 'api' check");
        assert_eq!(service_check.status, HealthStatus::Warning);
        assert_eq!(service_check.service_id, "api-8080");
        assert_eq!(service_check.service_name, "api");
    }

    #[test]
    fn tolerates_missing_null_and_unknown_fields() {
        let json = r#"[{
            "Node": {"Node": "n1", "Address": "10.0.0.1", "TaggedAddresses": null, "Meta": null,
                     "SomethingNew": {"x": 1}},
            "Service": {"ID": "web-1", "Service": "web", "Tags": null, "Weights": null,
                        "Meta": null, "TaggedAddresses": {"lan_ipv4": {"address": "10.0.0.9", "port": 81},
                                                          "wan": {"Address": "1.2.3.4", "Port": 80}}},
            "Checks": [{"CheckID": "c", "Status": "degraded-new-status"}, {"CheckID": "d", "Status": null}]
        }, {"Node": null, "Service": null, "Checks": null}]"#;
        let entries: Vec<ServiceEntry> = serde_json::from_str(json).expect("decodes");
        let entry = &entries[0];
        assert_eq!(entry.service.port, 0, "absent Port means 0");
        assert_eq!(entry.service.weights, None);
        assert!(entry.service.tags.is_empty());
        assert_eq!(
            entry.checks[0].status,
            HealthStatus::Unknown("degraded-new-status".to_owned())
        );
        assert_eq!(entry.checks[1].status, HealthStatus::Unknown(String::new()));
        assert_eq!(entries[1], ServiceEntry::default());
    }

    #[test]
    fn unused_parts_are_skipped_whatever_their_shape() {
        // Meta, TaggedAddresses and check Output are not decoded: odd shapes there
        // (which a newer Consul or a buggy registration may send) cannot fail the
        // read, and big ones are never copied into strings.
        let output = "x".repeat(1 << 20);
        let json = format!(
            r#"[{{"Node": {{"Node": "n1", "Address": "10.0.0.1", "Meta": [1, 2],
                 "TaggedAddresses": {{"lan": {{"odd": true}}}}}},
               "Service": {{"ID": "web-1", "Service": "web", "Port": 80,
                 "Meta": {{"k": {{"nested": [null]}}}}, "TaggedAddresses": 7}},
               "Checks": [{{"CheckID": "c", "Status": "passing", "Output": "{output}",
                 "Notes": {{"weird": 1}}}}]}}]"#
        );
        let entries: Vec<ServiceEntry> = serde_json::from_str(&json).expect("decodes");
        assert_eq!(entries[0].node.address, "10.0.0.1");
        assert_eq!(entries[0].service.port, 80);
        assert_eq!(entries[0].checks[0].status, HealthStatus::Passing);
    }

    #[test]
    fn node_meta_and_tagged_addresses_are_read_leniently() {
        let json = include_str!("../tests/data/health_service_api.json");
        let entries: Vec<ServiceEntry> = serde_json::from_str(json).expect("sample decodes");
        let node = &entries[0].node;
        assert_eq!(
            node.meta,
            [
                ("consul-network-segment".to_owned(), String::new()),
                ("consul-version".to_owned(), "1.16.4".to_owned()),
                ("role".to_owned(), "frontend".to_owned()),
            ]
        );
        assert_eq!(node.tagged_addresses.lan_ipv4, "10.20.3.17".parse().ok());
        assert_eq!(node.tagged_addresses.wan, "10.20.3.17".parse().ok());
        assert_eq!(node.tagged_addresses.lan_ipv6, None);

        let json = r#"[{"Node": {"Node": "n1", "Meta": {"a": "1", "b": 2, "c": null, "d": {"x": 1}},
                "TaggedAddresses": {"lan_ipv6": "fd00::1", "lan_ipv4": "fd00::2", "wan": "host.example",
                                    "wan_ipv4": ["1.2.3.4"], "other": "9.9.9.9"}},
            "Service": {"TaggedAddresses": {"lan_ipv4": {"address": "10.0.0.9", "port": 81},
                                            "wan": {"Port": 80, "Address": "1.2.3.4"},
                                            "wan_ipv6": {"Address": 7}}}}]"#;
        let entries: Vec<ServiceEntry> = serde_json::from_str(json).expect("decodes");
        let entry = &entries[0];
        assert_eq!(entry.node.meta, [("a".to_owned(), "1".to_owned())]);
        let node = entry.node.tagged_addresses;
        assert_eq!(node.lan_ipv6, "fd00::1".parse().ok());
        assert_eq!(node.lan_ipv4, None, "wrong family");
        assert_eq!(node.wan, None, "hostnames are not addresses");
        assert_eq!(node.wan_ipv4, None, "odd shape");
        let service = entry.service.tagged_addresses;
        assert_eq!(service.lan_ipv4, "10.0.0.9".parse().ok());
        assert_eq!(service.wan, "1.2.3.4".parse().ok());
        assert_eq!(service.wan_ipv6, None);
        assert_eq!(service.wan_port, Some(80), "the wan port, any key case");
        assert_eq!(node.wan_port, None, "node tags have no port");

        let json = r#"[{"Service": {"TaggedAddresses": {"wan": {"Address": "1.2.3.4", "Port": 0},
                                                        "lan_ipv4": {"Address": "10.0.0.9", "Port": 81}}}},
                       {"Service": {"TaggedAddresses": {"wan": {"Address": "1.2.3.4", "Port": 70000}}}},
                       {"Service": {"TaggedAddresses": {"wan": {"Address": "1.2.3.4", "Port": "80"}}}}]"#;
        let entries: Vec<ServiceEntry> = serde_json::from_str(json).expect("decodes");
        for entry in &entries {
            assert_eq!(
                entry.service.tagged_addresses.wan_port, None,
                "0, out of range, or not a number: no wan port"
            );
        }
    }

    #[test]
    fn status_parsing_is_case_insensitive() {
        assert_eq!(HealthStatus::parse("Critical"), HealthStatus::Critical);
        assert_eq!(
            HealthStatus::parse("maintenance"),
            HealthStatus::Maintenance
        );
        assert_eq!(HealthStatus::Warning.to_string(), "warning");
    }

    #[test]
    fn kv_value_is_base64_decoded() {
        let json = r#"[{"LockIndex": 3, "Key": "resolver/hosts/data", "Flags": 1,
            "Value": "aG9zdHMgc25hcHNob3Q=", "Session": "4d1e1c2a-0b0f-6e2b-9a84-3c7d0f2b5a11",
            "CreateIndex": 41020, "ModifyIndex": 1920777}]"#;
        let pairs: Vec<KvPair> = serde_json::from_str(json).expect("decodes");
        let pair = &pairs[0];
        assert_eq!(pair.key, "resolver/hosts/data");
        assert_eq!(pair.flags, 1);
        assert_eq!(pair.value.as_deref(), Some(&b"hosts snapshot"[..]));
        assert_eq!(
            pair.session.as_deref(),
            Some("4d1e1c2a-0b0f-6e2b-9a84-3c7d0f2b5a11")
        );
        assert_eq!(
            (pair.lock_index, pair.create_index, pair.modify_index),
            (3, 41020, 1920777)
        );

        let empty: Vec<KvPair> =
            serde_json::from_str(r#"[{"Key": "k", "Value": null}]"#).expect("decodes");
        assert_eq!(empty[0].value, None);
        assert_eq!(empty[0].session, None);
        assert!(serde_json::from_str::<Vec<KvPair>>(r#"[{"Key": "k", "Value": "!!"}]"#).is_err());
    }

    #[test]
    fn agent_self_reads_the_config_block() {
        let json = r#"{"Config": {"Datacenter": "dc1", "NodeName": "node-a", "NodeID": "x",
            "Server": true, "Revision": "abc", "Version": "1.16.4"}, "DebugConfig": {}, "Member": {}}"#;
        let wire: AgentSelfWire = serde_json::from_str(json).expect("decodes");
        assert_eq!(
            AgentSelf::from(wire),
            AgentSelf {
                datacenter: "dc1".to_owned(),
                node_name: "node-a".to_owned(),
                version: "1.16.4".to_owned(),
                server: true
            }
        );
    }

    #[test]
    fn catalog_node_decodes_and_null_is_none() {
        let json = r#"{"Node": {"Node": "n1", "Address": "10.0.0.1"},
            "Services": {"web-1": {"ID": "web-1", "Service": "web", "Port": 80}}}"#;
        let node: Option<CatalogNode> = serde_json::from_str(json).expect("decodes");
        let node = node.expect("present");
        assert_eq!(node.node.address, "10.0.0.1");
        assert_eq!(node.services.get("web-1").map(|s| s.port), Some(80));
        let missing: Option<CatalogNode> = serde_json::from_str("null").expect("decodes");
        assert_eq!(missing, None);
    }
}
