//! ACL enforcement per endpoint (see `crate::acl` for the rules): calls refused
//! before routing (KV, sessions, agent, operator), and the filtering of
//! catalog, health and KV list answers after it.

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use serde_json::Value;

use super::Call;
use super::response::{Resp, text};
use crate::acl::{Access, AclToken, Resource};

/// `Err(403 Permission denied …)` for a call the token's policy does not allow.
pub(super) fn authorize(call: &Call<'_>, path: &str, token: &AclToken) -> Result<(), Resp> {
    let state = call.sim.lock();
    let agent_node = state.agent_node.clone();
    let required = if let Some(key) = path.strip_prefix("/v1/kv/") {
        let listing = call.params.has("recurse") || call.params.has("keys");
        if call.is_get() {
            // Lists are filtered instead.
            (!listing).then(|| (Resource::Key, key.to_owned(), Access::Read))
        } else {
            Some((Resource::Key, key.to_owned(), Access::Write))
        }
    } else if let Some(action) = path.strip_prefix("/v1/session/") {
        let (action, id) = action.split_once('/').unwrap_or((action, ""));
        let node = match action {
            "create" => serde_json::from_slice::<Value>(&call.body)
                .ok()
                .and_then(|body| body["Node"].as_str().map(str::to_owned))
                .filter(|node| !node.is_empty())
                .unwrap_or_else(|| agent_node.clone()),
            _ => state
                .dcs
                .values()
                .find_map(|dc| dc.sessions.get(id).map(|session| session.node.clone()))
                .unwrap_or_else(|| agent_node.clone()),
        };
        let access = if call.is_get() {
            Access::Read
        } else {
            Access::Write
        };
        Some((Resource::Session, node, access))
    } else if path.starts_with("/v1/agent/") {
        let access = if call.is_get() {
            Access::Read
        } else {
            Access::Write
        };
        Some((Resource::Agent, agent_node, access))
    } else if path.starts_with("/v1/operator/") {
        let access = if call.is_get() {
            Access::Read
        } else {
            Access::Write
        };
        Some((Resource::Operator, String::new(), access))
    } else {
        None
    };
    drop(state);
    let Some((resource, name, access)) = required else {
        return Ok(());
    };
    token.require(resource, &name, access).map_err(|denied| {
        note(call, path, &denied);
        text(StatusCode::FORBIDDEN, &denied)
    })
}

/// Leaves out of a successful catalog, health or KV list answer what the
/// token may not read, as Consul's `filterACL` does, and says so in
/// `X-Consul-Results-Filtered-By-ACLs`.
pub(super) fn filter(call: &Call<'_>, path: &str, token: &AclToken, response: &mut Resp) {
    if !response.status().is_success() {
        return;
    }
    let Ok(mut body) = serde_json::from_slice::<Value>(response.body()) else {
        return;
    };
    let reads = |resource: Resource, name: &str| token.policy.allows(resource, name, Access::Read);
    let node_of = |entry: &Value| entry["Node"].as_str().unwrap_or_default().to_owned();
    let mut removed = false;
    if let Some(service) = path.strip_prefix("/v1/health/service/") {
        if let Value::Array(entries) = &mut body {
            let service_allowed = reads(Resource::Service, service);
            removed = keep(entries, |entry| {
                service_allowed
                    && reads(
                        Resource::Node,
                        entry["Node"]["Node"].as_str().unwrap_or_default(),
                    )
            });
        }
    } else if path.starts_with("/v1/health/state/") {
        if let Value::Array(checks) = &mut body {
            removed = keep(checks, |check| {
                let service = check["ServiceName"].as_str().unwrap_or_default();
                reads(Resource::Node, &node_of(check))
                    && (service.is_empty() || reads(Resource::Service, service))
            });
        }
    } else if path == "/v1/catalog/services" {
        if let Value::Object(services) = &mut body {
            let before = services.len();
            services.retain(|name, _| reads(Resource::Service, name));
            removed |= services.len() != before;
        }
    } else if path == "/v1/catalog/nodes" {
        if let Value::Array(nodes) = &mut body {
            removed = keep(nodes, |node| reads(Resource::Node, &node_of(node)));
        }
    } else if let Some(node) = path.strip_prefix("/v1/catalog/node/") {
        if !body.is_null() && !reads(Resource::Node, node) {
            body = Value::Null;
            removed = true;
        } else if let Some(Value::Object(services)) = body.get_mut("Services") {
            let before = services.len();
            services.retain(|_, service| {
                reads(
                    Resource::Service,
                    service["Service"].as_str().unwrap_or_default(),
                )
            });
            removed |= services.len() != before;
        }
    } else if path.starts_with("/v1/kv") && call.is_get() {
        if let Value::Array(entries) = &mut body {
            removed = keep(entries, |entry| {
                let key = entry
                    .as_str()
                    .or_else(|| entry["Key"].as_str())
                    .unwrap_or_default();
                reads(Resource::Key, key)
            });
        }
    } else {
        return;
    }
    if !removed {
        return;
    }
    note(call, path, "entries filtered out");
    if let Ok(bytes) = serde_json::to_vec(&body) {
        *response.body_mut() = Bytes::from(bytes);
    }
    response.headers_mut().insert(
        HeaderName::from_static("x-consul-results-filtered-by-acls"),
        HeaderValue::from_static("true"),
    );
}

/// Records one refusal for [`crate::Sim::acl_denials`].
fn note(call: &Call<'_>, path: &str, why: &str) {
    call.sim
        .lock()
        .acl_denials
        .push(format!("{} {path}: {why}", call.method));
}

/// Keeps the entries `allowed` says; whether any was left out.
fn keep(entries: &mut Vec<Value>, allowed: impl Fn(&Value) -> bool) -> bool {
    let before = entries.len();
    entries.retain(|entry| allowed(entry));
    entries.len() != before
}
