//! `/v1/session/{create,renew/:id,destroy/:id,info/:id,node/:node,list}`.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;

use super::Call;
use super::blocking::{Read, blocking_read};
use super::params::write_dc;
use super::response::{
    Answer, Resp, bad_request, json_value, method_not_allowed, not_found_page, server_error, text,
};
use crate::Sim;
use crate::duration::parse_go_duration;
use crate::model;
use crate::state::{Behavior, Session};

/// Session TTL bounds (`session_ttl_min` default and `SessionTTLMax`).
const SESSION_TTL_MIN: Duration = Duration::from_secs(10);
const SESSION_TTL_MAX: Duration = Duration::from_secs(86_400);
/// Default and maximum session lock-delay.
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// `rest` is the decoded path after `/v1/session/`: an action and its argument.
pub(super) async fn route(call: &Call<'_>, rest: &str) -> Answer {
    let (action, argument) = rest.split_once('/').unwrap_or((rest, ""));
    match action {
        "create" if call.is_put() => create(call),
        "renew" if call.is_put() => renew(call, argument),
        "destroy" if call.is_put() => destroy(call, argument),
        "info" | "node" | "list" if call.is_get() => Ok(read(call, action, argument).await),
        "create" | "renew" | "destroy" => Err(method_not_allowed(call.method, "PUT")),
        "info" | "node" | "list" => Err(method_not_allowed(call.method, "GET")),
        _ => Ok(not_found_page()),
    }
}

/// `LockDelay` may be a Go duration string or a number (seconds below 1000, else nanoseconds).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LockDelayJson {
    Text(String),
    Number(u64),
}

/// The body of `PUT /v1/session/create` (all optional; an empty body is all defaults).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionCreate {
    #[serde(default)]
    name: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    lock_delay: Option<LockDelayJson>,
    #[serde(default)]
    behavior: String,
    #[serde(default, rename = "TTL")]
    ttl: String,
    #[serde(default)]
    node_checks: Option<Vec<String>>,
    #[serde(default)]
    checks: Option<Vec<String>>,
}

impl SessionCreate {
    fn parse(body: &Bytes) -> Result<Self, Resp> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(body)
            .map_err(|error| bad_request(&format!("Request decode failed: {error}")))
    }

    /// The TTL; `None` when absent or zero (the session never expires).
    fn ttl(&self) -> Result<Option<Duration>, Resp> {
        if self.ttl.is_empty() {
            return Ok(None);
        }
        let ttl = parse_go_duration(&self.ttl).ok_or_else(|| invalid_duration(&self.ttl))?;
        if ttl.is_zero() {
            return Ok(None);
        }
        if !(SESSION_TTL_MIN..=SESSION_TTL_MAX).contains(&ttl) {
            return Err(server_error(&format!(
                "Invalid Session TTL '{}', must be between [10s=24h0m0s]",
                ttl.as_nanos()
            )));
        }
        Ok(Some(ttl))
    }

    fn lock_delay(&self) -> Result<Duration, Resp> {
        let lock_delay = match &self.lock_delay {
            None => DEFAULT_LOCK_DELAY,
            Some(LockDelayJson::Number(number)) if *number < 1000 => Duration::from_secs(*number),
            Some(LockDelayJson::Number(nanos)) => Duration::from_nanos(*nanos),
            Some(LockDelayJson::Text(text)) => {
                parse_go_duration(text).ok_or_else(|| invalid_duration(text))?
            }
        };
        if lock_delay > MAX_LOCK_DELAY {
            return Err(server_error("Lock delay must be less than 1m0s"));
        }
        Ok(lock_delay)
    }

    fn behavior(&self) -> Result<Behavior, Resp> {
        match self.behavior.as_str() {
            "" | "release" => Ok(Behavior::Release),
            "delete" => Ok(Behavior::Delete),
            other => Err(server_error(&format!("Invalid Behavior setting '{other}'"))),
        }
    }
}

fn invalid_duration(text: &str) -> Resp {
    bad_request(&format!(
        "Request decode failed: time: invalid duration {text:?}"
    ))
}

/// `PUT /v1/session/create`: answers `{"ID": …}`; a session with a TTL expires after
/// TTL × the multiplier unless renewed.
fn create(call: &Call<'_>) -> Answer {
    let request = SessionCreate::parse(&call.body)?;
    let ttl = request.ttl()?;
    let lock_delay = request.lock_delay()?;
    let behavior = request.behavior()?;
    let mut state = call.sim.lock();
    let dc_name = write_dc(&state, call.params)?;
    let node = if request.node.is_empty() {
        state.agent_node.clone()
    } else {
        request.node
    };
    let expires_at = ttl.map(|ttl| Instant::now() + ttl * state.session_ttl_multiplier);
    let dc = state.dc_mut(&dc_name);
    let index = dc.next_index();
    let id = crate::state::random_uuid();
    let session = Session {
        id: id.clone(),
        name: request.name,
        node,
        lock_delay,
        behavior,
        ttl,
        node_checks: request
            .node_checks
            .or(request.checks)
            .unwrap_or_else(|| vec!["serfHealth".to_owned()]),
        expires_at,
        create_index: index,
        modify_index: index,
    };
    dc.sessions.insert(id.clone(), session);
    dc.sessions_index = index;
    drop(state);
    if let Some(expires_at) = expires_at {
        schedule_expiry(call.sim, &dc_name, &id, expires_at);
    }
    call.sim.notify();
    Ok(json_value(&serde_json::json!({ "ID": id })))
}

/// Expires the session at `at` unless it was renewed (or is gone) by then; needs a runtime.
fn schedule_expiry(sim: &Sim, dc_name: &str, session_id: &str, at: Instant) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let sim = sim.clone();
    let dc_name = dc_name.to_owned();
    let session_id = session_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        sim.expire_session(&dc_name, &session_id);
    });
}

fn renew(call: &Call<'_>, session_id: &str) -> Answer {
    let mut state = call.sim.lock();
    let dc_name = write_dc(&state, call.params)?;
    let multiplier = state.session_ttl_multiplier;
    let dc = state.dc_mut(&dc_name);
    let Some(session) = dc.sessions.get_mut(session_id) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            &format!("Session id '{session_id}' not found"),
        ));
    };
    let expires_at = session.ttl.map(|ttl| Instant::now() + ttl * multiplier);
    session.expires_at = expires_at;
    let response = json_value(&[model::SessionJson::new(session)]);
    drop(state);
    if let Some(expires_at) = expires_at {
        schedule_expiry(call.sim, &dc_name, session_id, expires_at);
    }
    Ok(response)
}

fn destroy(call: &Call<'_>, session_id: &str) -> Answer {
    if session_id.is_empty() {
        return Err(bad_request("Missing session"));
    }
    let mut state = call.sim.lock();
    let dc_name = write_dc(&state, call.params)?;
    let changed = state
        .dc_mut(&dc_name)
        .invalidate_session(session_id, Instant::now());
    drop(state);
    if changed {
        call.sim.notify();
    }
    Ok(json_value(&true))
}

/// `info/:id`, `node/:node` and `list`: blocking reads of the session table.
async fn read(call: &Call<'_>, action: &str, argument: &str) -> Resp {
    blocking_read(call, None, |dc| {
        let sessions: Vec<model::SessionJson<'_>> = dc
            .sessions
            .values()
            .filter(|session| match action {
                "info" => session.id == argument,
                "node" => session.node == argument,
                _ => true,
            })
            .map(model::SessionJson::new)
            .collect();
        Read::json(dc.sessions_index, &sessions)
    })
    .await
}
