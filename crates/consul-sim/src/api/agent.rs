//! `/v1/agent/self`: the local agent's configuration and membership, as a Consul server.

use super::response::{Resp, json_value};
use crate::{CONSUL_VERSION, Sim};

const REVISION: &str = "b71d0a2b";

pub(super) fn agent_self(sim: &Sim) -> Resp {
    let state = sim.lock();
    let body = serde_json::json!({
        "Config": {
            "Datacenter": state.default_dc,
            "PrimaryDatacenter": state.default_dc,
            "NodeName": state.agent_node,
            "NodeID": state.agent_node_id,
            "Server": true,
            "Revision": REVISION,
            "Version": CONSUL_VERSION,
            "BuildDate": "2023-12-14T20:00:00Z",
        },
        "Member": {
            "Name": state.agent_node,
            "Addr": "127.0.0.1",
            "Port": 8301,
            "Tags": {
                "build": format!("{CONSUL_VERSION}:{REVISION}"),
                "dc": state.default_dc,
                "id": state.agent_node_id,
                "role": "consul",
                "port": "8300",
                "vsn": "2",
            },
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        },
        "Meta": {},
    });
    json_value(&body)
}
