//! The JSON fixture format loaded by [`crate::Sim::load_fixture`] and `consul-sim --fixture`.

use std::collections::BTreeMap;

use serde::Deserialize;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fixture {
    #[serde(default)]
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
    #[serde(default)]
    pub(crate) datacenter: Option<String>,
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) meta: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FixtureService {
    pub(crate) node: String,
    #[serde(default)]
    pub(crate) id: Option<String>,
    pub(crate) service: String,
    #[serde(default)]
    pub(crate) address: String,
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
    #[serde(default)]
    pub(crate) node: Option<String>,
    pub(crate) id: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) output: Option<String>,
    #[serde(default)]
    pub(crate) notes: Option<String>,
    #[serde(default, rename = "type")]
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

/// Whether a status is one a check may have.
pub(crate) fn valid_status(status: &str) -> bool {
    matches!(status, "passing" | "warning" | "critical")
}
