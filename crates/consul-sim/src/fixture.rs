//! The JSON fixture format loaded by [`crate::Sim::load_fixture`] and `consul-sim --fixture`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::state::{Check, Service, State};

/// Why a fixture could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The JSON did not parse or did not match the format.
    #[error("invalid fixture json")]
    Json(#[from] serde_json::Error),
    /// A service or check names a node that the fixture does not define.
    #[error("{what} refers to unknown node {node}")]
    UnknownNode {
        /// What referred to the node.
        what: String,
        /// The missing node name.
        node: String,
    },
    /// A check status other than passing, warning or critical.
    #[error("check {check_id} has invalid status {status}")]
    InvalidStatus {
        /// The check ID.
        check_id: String,
        /// The rejected status.
        status: String,
    },
}

/// A fixture document; a missing `Option` field is `None` (no `#[serde(default)]` needed).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fixture {
    pub(crate) datacenter: Option<String>,
    #[serde(default)]
    pub(crate) nodes: Vec<FixtureNode>,
    #[serde(default)]
    pub(crate) services: Vec<FixtureService>,
    #[serde(default)]
    pub(crate) node_checks: Vec<FixtureCheck>,
    #[serde(default)]
    pub(crate) kv: Vec<FixtureKv>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FixtureNode {
    pub(crate) node: String,
    pub(crate) address: String,
    pub(crate) datacenter: Option<String>,
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) meta: BTreeMap<String, String>,
    /// Tagged addresses over the ones the agent fills in (`lan_ipv6`, `wan`, …).
    #[serde(default)]
    pub(crate) tagged_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FixtureService {
    pub(crate) node: String,
    pub(crate) id: Option<String>,
    pub(crate) service: String,
    #[serde(default)]
    pub(crate) address: String,
    /// Tagged addresses over the ones the agent fills in (the port is the service's).
    #[serde(default)]
    pub(crate) tagged_addresses: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) port: u16,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) meta: BTreeMap<String, String>,
    #[serde(default = "default_weights")]
    pub(crate) weights: Option<FixtureWeights>,
    #[serde(default)]
    pub(crate) enable_tag_override: bool,
    #[serde(default)]
    pub(crate) checks: Vec<FixtureCheck>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct FixtureWeights {
    pub(crate) passing: u32,
    pub(crate) warning: u32,
}

fn default_weights() -> Option<FixtureWeights> {
    Some(FixtureWeights {
        passing: 1,
        warning: 1,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FixtureCheck {
    pub(crate) node: Option<String>,
    pub(crate) id: String,
    pub(crate) status: String,
    pub(crate) name: Option<String>,
    pub(crate) output: Option<String>,
    pub(crate) notes: Option<String>,
    #[serde(rename = "type")]
    pub(crate) check_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FixtureKv {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: String,
    #[serde(default)]
    pub(crate) flags: u64,
}

impl Fixture {
    /// Validates the whole fixture, then applies it: nodes, node checks, services with their
    /// checks, KV, each write at its own raft index. A fixture with an error changes nothing.
    pub(crate) fn apply(&self, state: &mut State) -> Result<(), FixtureError> {
        let default_dc = self
            .datacenter
            .clone()
            .unwrap_or_else(|| state.default_dc.clone());
        let node_dcs = self.node_datacenters(&default_dc);
        self.validate(&node_dcs)?;
        self.apply_nodes(state, &node_dcs);
        self.apply_node_checks(state, &node_dcs);
        self.apply_services(state, &node_dcs);
        self.apply_kv(state, &default_dc);
        Ok(())
    }

    /// Node name → the datacenter it lives in.
    fn node_datacenters(&self, default_dc: &str) -> BTreeMap<String, String> {
        self.nodes
            .iter()
            .map(|node| {
                let dc_name = node.datacenter.as_deref().unwrap_or(default_dc);
                (node.node.clone(), dc_name.to_owned())
            })
            .collect()
    }

    /// Every service and check names a node of the fixture, and every status is valid.
    fn validate(&self, node_dcs: &BTreeMap<String, String>) -> Result<(), FixtureError> {
        let known = |what: String, node: &str| {
            if node_dcs.contains_key(node) {
                Ok(())
            } else {
                Err(FixtureError::UnknownNode {
                    what,
                    node: node.to_owned(),
                })
            }
        };
        for service in &self.services {
            let id = service.id.as_deref().unwrap_or(&service.service);
            known(format!("service {id}"), &service.node)?;
            for check in &service.checks {
                check.validate_status()?;
            }
        }
        for check in &self.node_checks {
            known(
                format!("check {}", check.id),
                check.node.as_deref().unwrap_or_default(),
            )?;
            check.validate_status()?;
        }
        Ok(())
    }

    fn apply_nodes(&self, state: &mut State, node_dcs: &BTreeMap<String, String>) {
        for node in &self.nodes {
            let dc = state.dc_mut(&node_dcs[&node.node]);
            let index = dc.next_index();
            dc.upsert_node(
                &node.node,
                Some(&node.address),
                Some(&node.meta),
                node.id.as_deref(),
                index,
            );
            if !node.tagged_addresses.is_empty() {
                dc.set_node_tagged(&node.node, &node.tagged_addresses, index);
            }
        }
    }

    fn apply_node_checks(&self, state: &mut State, node_dcs: &BTreeMap<String, String>) {
        for check in &self.node_checks {
            let node = check.node.as_deref().unwrap_or_default();
            let dc = state.dc_mut(&node_dcs[node]);
            let index = dc.next_index();
            dc.upsert_check(check.to_check(node, None), index);
        }
    }

    /// Each service and its checks share one raft index, as one agent registration does.
    fn apply_services(&self, state: &mut State, node_dcs: &BTreeMap<String, String>) {
        for service in &self.services {
            let dc = state.dc_mut(&node_dcs[&service.node]);
            let index = dc.next_index();
            let record = service.to_service();
            let owner = (record.id.clone(), record.service.clone());
            dc.upsert_service(record, index);
            for check in &service.checks {
                let check = check.to_check(&service.node, Some((&owner.0, &owner.1)));
                dc.upsert_check(check, index);
            }
        }
    }

    /// KV entries go to the fixture's datacenter, each written like a plain `PUT` (a held
    /// lock stays held, as with [`crate::Sim::kv_put`]).
    fn apply_kv(&self, state: &mut State, default_dc: &str) {
        let dc = state.dc_mut(default_dc);
        for kv in &self.kv {
            let index = dc.next_index();
            dc.kv_set(&kv.key, kv.value.clone().into(), kv.flags, index);
        }
    }
}

impl FixtureService {
    fn to_service(&self) -> Service {
        Service {
            node: self.node.clone(),
            id: self.id.clone().unwrap_or_else(|| self.service.clone()),
            service: self.service.clone(),
            tags: self.tags.clone(),
            address: self.address.clone(),
            tagged: self.tagged_addresses.clone(),
            tagged_ports: BTreeMap::new(),
            meta: self.meta.clone(),
            port: self.port,
            weights: self.weights.map(|w| (w.passing, w.warning)),
            enable_tag_override: self.enable_tag_override,
            create_index: 0,
            modify_index: 0,
        }
    }
}

impl FixtureCheck {
    fn validate_status(&self) -> Result<(), FixtureError> {
        if valid_status(&self.status) {
            Ok(())
        } else {
            Err(FixtureError::InvalidStatus {
                check_id: self.id.clone(),
                status: self.status.clone(),
            })
        }
    }

    /// The check on `node` (of `service`: instance ID and name), with the fixture's optional
    /// name, output, notes and type over the agent's defaults.
    fn to_check(&self, node: &str, service: Option<(&str, &str)>) -> Check {
        let mut check = Check::new(node, &self.id, &self.status, service);
        if let Some(name) = &self.name {
            check.name.clone_from(name);
        }
        if let Some(output) = &self.output {
            check.output.clone_from(output);
        }
        check.notes = self.notes.clone().unwrap_or_default();
        check.check_type = self.check_type.clone().unwrap_or_default();
        check
    }
}

/// Whether a status is one a check may have.
pub(crate) fn valid_status(status: &str) -> bool {
    matches!(status, "passing" | "warning" | "critical")
}
