//! In-memory catalog, KV and session state with a raft-style index per datacenter.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::RequestRecord;
use crate::fault::Fault;

/// Whole simulator state, guarded by one mutex that is never held across `.await`.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) default_dc: String,
    pub(crate) agent_node: String,
    pub(crate) agent_node_id: String,
    pub(crate) dcs: BTreeMap<String, Dc>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) requests: Vec<RequestRecord>,
    /// Known ACL tokens by secret; empty = ACLs off.
    pub(crate) acl_tokens: BTreeMap<String, crate::acl::AclToken>,
    /// Calls a token's policy refused or filtered: `METHOD PATH: why`.
    pub(crate) acl_denials: Vec<String>,
    pub(crate) jitter: bool,
    /// The agent's `use_streaming_backend` (Consul's default since 1.10: on).
    pub(crate) streaming: bool,
    /// Last `X-Consul-Index` returned per request path (for [`Fault::IndexBackwards`]).
    pub(crate) last_index: HashMap<String, u64>,
    /// When a `?cached` request key was first seen (for `X-Cache`/`Age`).
    pub(crate) cache_fill: HashMap<String, Instant>,
    /// Multiplier applied to session TTLs before invalidation (Consul: 2).
    pub(crate) session_ttl_multiplier: u32,
    /// What the agents passed on to the servers (the agent model).
    pub(crate) load: crate::load::ServerLoad,
}

impl State {
    pub(crate) fn new(datacenter: &str) -> Self {
        let mut dcs = BTreeMap::new();
        dcs.insert(datacenter.to_owned(), Dc::new(datacenter));
        Self {
            default_dc: datacenter.to_owned(),
            agent_node: "sim-agent".to_owned(),
            agent_node_id: node_id_for("sim-agent"),
            dcs,
            faults: Vec::new(),
            requests: Vec::new(),
            acl_tokens: BTreeMap::new(),
            acl_denials: Vec::new(),
            jitter: false,
            streaming: true,
            last_index: HashMap::new(),
            cache_fill: HashMap::new(),
            session_ttl_multiplier: 2,
            load: crate::load::ServerLoad::default(),
        }
    }

    pub(crate) fn no_leader(&self) -> bool {
        self.faults
            .iter()
            .any(|fault| matches!(fault, Fault::NoLeader))
    }

    pub(crate) fn last_contact(&self) -> u64 {
        self.faults
            .iter()
            .filter_map(|fault| match fault {
                Fault::LastContact { millis } => Some(*millis),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The agent's own datacenter (always present: created with the state, never removed).
    pub(crate) fn agent_dc(&self) -> Option<&Dc> {
        self.dcs.get(&self.default_dc)
    }

    pub(crate) fn agent_dc_mut(&mut self) -> &mut Dc {
        let name = self.default_dc.clone();
        self.dc_mut(&name)
    }

    /// The store of a namespace in a partition of `dc` (Consul Enterprise keeps catalog,
    /// KV and sessions apart per namespace and partition), created empty when unknown.
    pub(crate) fn scope_mut(&mut self, dc: &str, partition: &str, namespace: &str) -> &mut Dc {
        self.dcs
            .entry(scope_name(dc, partition, namespace))
            .or_insert_with(|| Dc::new(dc))
    }

    /// Whether any namespace or partition besides the defaults exists (the simulator
    /// then plays Consul Enterprise; otherwise Community Edition, which refuses `ns`
    /// and `partition`).
    pub(crate) fn is_enterprise(&self) -> bool {
        self.dcs.keys().any(|name| name.contains('/'))
    }

    /// A datacenter, created empty when unknown.
    pub(crate) fn dc_mut(&mut self, name: &str) -> &mut Dc {
        self.dcs
            .entry(name.to_owned())
            .or_insert_with(|| Dc::new(name))
    }
}

// === records ===

/// A catalog node.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) meta: BTreeMap<String, String>,
    /// Tagged addresses set explicitly (over the ones the agent fills in).
    pub(crate) tagged: BTreeMap<String, String>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

impl Node {
    /// Tagged addresses as a Consul agent fills them in (`lan`, `wan`, and the per-family
    /// variants), with the explicitly set ones over them (a dual-stack node's `lan_ipv6`,
    /// a `wan` address reached from other datacenters).
    pub(crate) fn tagged_addresses(&self) -> BTreeMap<String, String> {
        let mut tagged = self.agent_tagged_addresses();
        tagged.extend(self.tagged.clone());
        tagged
    }

    fn agent_tagged_addresses(&self) -> BTreeMap<String, String> {
        let mut tagged = BTreeMap::new();
        tagged.insert("lan".to_owned(), self.address.clone());
        tagged.insert("wan".to_owned(), self.address.clone());
        match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => {
                tagged.insert("lan_ipv4".to_owned(), self.address.clone());
                tagged.insert("wan_ipv4".to_owned(), self.address.clone());
            }
            Ok(IpAddr::V6(_)) => {
                tagged.insert("lan_ipv6".to_owned(), self.address.clone());
                tagged.insert("wan_ipv6".to_owned(), self.address.clone());
            }
            Err(_) => {}
        }
        tagged
    }
}

/// A registered service instance on a node.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) node: String,
    pub(crate) id: String,
    pub(crate) service: String,
    pub(crate) tags: Vec<String>,
    pub(crate) address: String,
    /// Tagged addresses set explicitly (over the ones the agent fills in).
    pub(crate) tagged: BTreeMap<String, String>,
    /// Ports of tagged addresses that differ from the service's port.
    pub(crate) tagged_ports: BTreeMap<String, u16>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) port: u16,
    pub(crate) weights: Option<(u32, u32)>,
    pub(crate) enable_tag_override: bool,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// A health check (node-level when `service_id` is empty).
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) node: String,
    pub(crate) check_id: String,
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) notes: String,
    pub(crate) output: String,
    pub(crate) service_id: String,
    pub(crate) service_name: String,
    pub(crate) check_type: String,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

impl Check {
    /// A check as an agent registers it: Consul's default name (and output for a passing
    /// `serfHealth`), no notes, no type. `service` is the (instance ID, service name) of a
    /// service check, `None` for a node check.
    pub(crate) fn new(
        node: &str,
        check_id: &str,
        status: &str,
        service: Option<(&str, &str)>,
    ) -> Self {
        let (service_id, service_name) = service.unwrap_or(("", ""));
        let name = if check_id == "serfHealth" {
            "Serf Health Status".to_owned()
        } else if service.is_some() {
            format!("Service '{service_name}' check")
        } else {
            check_id.to_owned()
        };
        let output = if check_id == "serfHealth" && status == "passing" {
            "Agent alive and reachable"
        } else {
            ""
        };
        Self {
            node: node.to_owned(),
            check_id: check_id.to_owned(),
            name,
            status: status.to_owned(),
            notes: String::new(),
            output: output.to_owned(),
            service_id: service_id.to_owned(),
            service_name: service_name.to_owned(),
            check_type: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// A KV entry.
#[derive(Debug, Clone)]
pub(crate) struct KvEntry {
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) flags: u64,
    pub(crate) lock_index: u64,
    pub(crate) session: Option<String>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// What happens to held keys when a session is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behavior {
    Release,
    Delete,
}

impl Behavior {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Delete => "delete",
        }
    }
}

/// A session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) node: String,
    pub(crate) lock_delay: Duration,
    pub(crate) behavior: Behavior,
    pub(crate) ttl: Option<Duration>,
    pub(crate) node_checks: Vec<String>,
    /// When the TTL (times the multiplier) runs out; `None` without a TTL.
    pub(crate) expires_at: Option<Instant>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

// === impl Dc ===

/// One datacenter's replicated state.
#[derive(Debug)]
pub(crate) struct Dc {
    pub(crate) name: String,
    pub(crate) raft_index: u64,
    pub(crate) nodes: BTreeMap<String, Node>,
    /// Keyed by (node, service id).
    pub(crate) services: BTreeMap<(String, String), Service>,
    /// Keyed by (node, check id).
    pub(crate) checks: BTreeMap<(String, String), Check>,
    pub(crate) kv: BTreeMap<String, KvEntry>,
    pub(crate) tombstones: BTreeMap<String, u64>,
    pub(crate) sessions: BTreeMap<String, Session>,
    pub(crate) lock_delays: HashMap<String, Instant>,
    pub(crate) nodes_index: u64,
    pub(crate) services_index: u64,
    pub(crate) checks_index: u64,
    pub(crate) kvs_index: u64,
    pub(crate) sessions_index: u64,
    /// Consul's `service.<name>` index entries.
    pub(crate) service_index: HashMap<String, u64>,
}

impl Dc {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            // Raft index 1 is never a write's index (raft's own entries come first); starting
            // here keeps "forced to 1" for empty tables distinct from the first real write.
            raft_index: 1,
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            kv: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            sessions: BTreeMap::new(),
            lock_delays: HashMap::new(),
            nodes_index: 0,
            services_index: 0,
            checks_index: 0,
            kvs_index: 0,
            sessions_index: 0,
            service_index: HashMap::new(),
        }
    }

    /// A snapshot restore: the state store comes back from an older snapshot, so every table,
    /// record and `service.<name>` index is lower (here: halved, order kept) while the raft
    /// log goes on (the next write still gets a higher index than any before).
    pub(crate) fn restore_lower_indexes(&mut self) {
        let lower = |index: &mut u64| *index = (*index / 2).max(1);
        for node in self.nodes.values_mut() {
            lower(&mut node.create_index);
            lower(&mut node.modify_index);
        }
        for service in self.services.values_mut() {
            lower(&mut service.create_index);
            lower(&mut service.modify_index);
        }
        for check in self.checks.values_mut() {
            lower(&mut check.create_index);
            lower(&mut check.modify_index);
        }
        for entry in self.kv.values_mut() {
            lower(&mut entry.create_index);
            lower(&mut entry.modify_index);
        }
        for session in self.sessions.values_mut() {
            lower(&mut session.create_index);
            lower(&mut session.modify_index);
        }
        for index in [
            &mut self.nodes_index,
            &mut self.services_index,
            &mut self.checks_index,
            &mut self.kvs_index,
            &mut self.sessions_index,
        ] {
            if *index > 0 {
                lower(index);
            }
        }
        self.service_index.values_mut().for_each(lower);
        self.tombstones.values_mut().for_each(lower);
    }

    /// Allocates the next raft index.
    pub(crate) fn next_index(&mut self) -> u64 {
        self.raft_index += 1;
        self.raft_index
    }

    fn touch_service_name(&mut self, service_name: &str, index: u64) {
        self.service_index.insert(service_name.to_owned(), index);
        self.services_index = index;
    }

    /// Bumps the `service.<name>` index of every service on a node (node or node-check change).
    fn touch_services_on_node(&mut self, node: &str, index: u64) {
        let names: Vec<String> = self
            .services
            .values()
            .filter(|service| service.node == node)
            .map(|service| service.service.clone())
            .collect();
        for name in names {
            self.service_index.insert(name, index);
        }
    }

    /// Index of health/catalog queries for one service name.
    pub(crate) fn service_query_index(&self, service_name: &str) -> u64 {
        let exists = self
            .services
            .values()
            .any(|service| service.service == service_name);
        match self.service_index.get(service_name) {
            Some(index) if exists => *index,
            _ => self
                .nodes_index
                .max(self.services_index)
                .max(self.checks_index),
        }
    }

    /// Inserts or updates a node; returns true when something changed.
    pub(crate) fn upsert_node(
        &mut self,
        name: &str,
        address: Option<&str>,
        meta: Option<&BTreeMap<String, String>>,
        id: Option<&str>,
        index: u64,
    ) -> bool {
        match self.nodes.get_mut(name) {
            Some(node) => {
                let mut changed = false;
                if let Some(address) = address
                    && node.address != address
                {
                    node.address = address.to_owned();
                    changed = true;
                }
                if let Some(meta) = meta
                    && &node.meta != meta
                {
                    node.meta = meta.clone();
                    changed = true;
                }
                if let Some(id) = id
                    && node.id != id
                {
                    node.id = id.to_owned();
                    changed = true;
                }
                if changed {
                    node.modify_index = index;
                    self.nodes_index = index;
                    self.touch_services_on_node(name, index);
                }
                changed
            }
            None => {
                self.nodes.insert(
                    name.to_owned(),
                    Node {
                        id: id.map_or_else(|| node_id_for(name), str::to_owned),
                        name: name.to_owned(),
                        address: address.unwrap_or("127.0.0.1").to_owned(),
                        meta: meta.cloned().unwrap_or_default(),
                        tagged: BTreeMap::new(),
                        create_index: index,
                        modify_index: index,
                    },
                );
                self.nodes_index = index;
                true
            }
        }
    }

    /// Sets a node's explicit tagged addresses (merged over the agent's); bumps the
    /// indexes of the node and its services when they change.
    pub(crate) fn set_node_tagged(
        &mut self,
        name: &str,
        tagged: &BTreeMap<String, String>,
        index: u64,
    ) -> bool {
        let Some(node) = self.nodes.get_mut(name) else {
            return false;
        };
        if &node.tagged == tagged {
            return false;
        }
        node.tagged = tagged.clone();
        node.modify_index = index;
        self.nodes_index = index;
        self.touch_services_on_node(name, index);
        true
    }

    /// Inserts or replaces a service instance.
    pub(crate) fn upsert_service(&mut self, mut service: Service, index: u64) {
        let key = (service.node.clone(), service.id.clone());
        if let Some(old) = self.services.get(&key) {
            service.create_index = old.create_index;
            if old.service != service.service {
                let old_name = old.service.clone();
                self.touch_service_name(&old_name, index);
            }
        } else {
            service.create_index = index;
        }
        service.modify_index = index;
        let name = service.service.clone();
        self.services.insert(key, service);
        self.touch_service_name(&name, index);
    }

    /// Inserts or updates a check; keeps the indexes when nothing changed.
    pub(crate) fn upsert_check(&mut self, mut check: Check, index: u64) {
        let key = (check.node.clone(), check.check_id.clone());
        if let Some(old) = self.checks.get(&key) {
            check.create_index = old.create_index;
            let unchanged = old.status == check.status
                && old.name == check.name
                && old.output == check.output
                && old.service_id == check.service_id
                && old.check_type == check.check_type
                && old.notes == check.notes;
            check.modify_index = if unchanged { old.modify_index } else { index };
            if unchanged {
                self.checks.insert(key, check);
                return;
            }
        } else {
            check.create_index = index;
            check.modify_index = index;
        }
        self.checks_index = index;
        if check.service_id.is_empty() {
            let node = check.node.clone();
            self.touch_services_on_node(&node, index);
        } else {
            let name = check.service_name.clone();
            self.service_index.insert(name, index);
        }
        self.checks.insert(key, check);
    }

    /// Removes a service instance and its checks; returns true when it existed.
    pub(crate) fn remove_service(&mut self, node: &str, service_id: &str) -> bool {
        let key = (node.to_owned(), service_id.to_owned());
        let Some(service) = self.services.get(&key).cloned() else {
            return false;
        };
        let index = self.next_index();
        self.services.remove(&key);
        let before = self.checks.len();
        self.checks.retain(|(check_node, _), check| {
            !(check_node == node && check.service_id == service_id)
        });
        if self.checks.len() != before {
            self.checks_index = index;
        }
        self.touch_service_name(&service.service, index);
        true
    }

    /// Sets a check's status; returns the check's node when it changed.
    pub(crate) fn set_check_status(&mut self, node: &str, check_id: &str, status: &str) -> bool {
        let key = (node.to_owned(), check_id.to_owned());
        let Some(check) = self.checks.get(&key) else {
            return false;
        };
        if check.status == status {
            return false;
        }
        let mut check = check.clone();
        check.status = status.to_owned();
        let index = self.next_index();
        self.upsert_check(check, index);
        true
    }

    /// Highest index of the KV table (entries and tombstones).
    pub(crate) fn kv_table_index(&self) -> u64 {
        self.kvs_index
    }

    /// Index for a KV list under `prefix` as Consul computes it.
    pub(crate) fn kv_prefix_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.kvs_index;
        }
        let entries = under_prefix(&self.kv, prefix)
            .map(|(_, entry)| entry.modify_index)
            .max()
            .unwrap_or(0);
        let graves = under_prefix(&self.tombstones, prefix)
            .map(|(_, index)| *index)
            .max()
            .unwrap_or(0);
        let index = entries.max(graves);
        if index == 0 { self.kvs_index } else { index }
    }

    /// A plain KV set: keeps `LockIndex` and `Session`, replaces value and flags.
    pub(crate) fn kv_set(&mut self, key: &str, value: Bytes, flags: u64, index: u64) {
        match self.kv.get_mut(key) {
            Some(entry) => {
                entry.value = value;
                entry.flags = flags;
                entry.modify_index = index;
            }
            None => {
                self.kv.insert(
                    key.to_owned(),
                    KvEntry {
                        key: key.to_owned(),
                        value,
                        flags,
                        lock_index: 0,
                        session: None,
                        create_index: index,
                        modify_index: index,
                    },
                );
            }
        }
        self.tombstones.remove(key);
        self.kvs_index = index;
    }

    /// Deletes one key, leaving a tombstone.
    pub(crate) fn kv_delete_key(&mut self, key: &str, index: u64) -> bool {
        if self.kv.remove(key).is_some() {
            self.tombstones.insert(key.to_owned(), index);
            self.kvs_index = index;
            true
        } else {
            false
        }
    }

    /// Invalidates a session: releases or deletes its keys and applies lock-delay.
    pub(crate) fn invalidate_session(&mut self, session_id: &str, now: Instant) -> bool {
        let Some(session) = self.sessions.remove(session_id) else {
            return false;
        };
        let index = self.next_index();
        self.sessions_index = index;
        let held: Vec<String> = self
            .kv
            .values()
            .filter(|entry| entry.session.as_deref() == Some(session_id))
            .map(|entry| entry.key.clone())
            .collect();
        for key in held {
            if !session.lock_delay.is_zero() {
                self.lock_delays
                    .insert(key.clone(), now + session.lock_delay);
            }
            match session.behavior {
                Behavior::Release => {
                    if let Some(entry) = self.kv.get_mut(&key) {
                        entry.session = None;
                        entry.modify_index = index;
                        self.kvs_index = index;
                    }
                }
                Behavior::Delete => {
                    self.kv_delete_key(&key, index);
                }
            }
        }
        true
    }
}

/// The entries of a key-sorted map whose keys start with `prefix`, in key order.
pub(crate) fn under_prefix<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> {
    map.range(prefix.to_owned()..)
        .take_while(move |(key, _)| key.starts_with(prefix))
}

// === ids ===

/// A stable UUID-shaped node ID derived from the node name (FNV-1a).
/// The key of a namespace's store in [`State::dcs`]: the datacenter's name for the
/// default partition and namespace, `DC/PARTITION/NAMESPACE` otherwise.
pub(crate) fn scope_name(dc: &str, partition: &str, namespace: &str) -> String {
    if partition == "default" && namespace == "default" {
        dc.to_owned()
    } else {
        format!("{dc}/{partition}/{namespace}")
    }
}

pub(crate) fn node_id_for(name: &str) -> String {
    let mut first: u64 = 0xcbf2_9ce4_8422_2325;
    let mut second: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in name.bytes() {
        first ^= u64::from(byte);
        first = first.wrapping_mul(0x0000_0100_0000_01b3);
        second ^= u64::from(byte).rotate_left(3);
        second = second.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format_uuid((u128::from(first) << 64) | u128::from(second))
}

/// A random v4 UUID.
pub(crate) fn random_uuid() -> String {
    let mut value: u128 = rand::random();
    value &= !(0xF_u128 << 76);
    value |= 0x4_u128 << 76;
    value &= !(0x3_u128 << 62);
    value |= 0x2_u128 << 62;
    format_uuid(value)
}

fn format_uuid(value: u128) -> String {
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_well_formed() {
        let id = random_uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(node_id_for("a"), node_id_for("a"));
        assert_ne!(node_id_for("a"), node_id_for("b"));
    }
}
