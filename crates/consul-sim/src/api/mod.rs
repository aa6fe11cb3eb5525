//! The simulated HTTP API. [`handle`] logs each request, applies any injected fault, checks
//! the ACL token against the endpoint (`acl`: refused or filtered, per `crate::acl`) and
//! routes by endpoint family (one module each); the shared pieces are
//! request parsing (`params`, `body`), responses (`response`), blocking reads (`blocking`)
//! and fault application (`fault_plan`).

// Early returns carry the finished error response; its size is irrelevant off a hot path.
#![allow(clippy::result_large_err)]

mod acl;
mod agent;
mod blocking;
mod body;
mod catalog;
mod fault_plan;
mod health;
mod kv;
mod params;
mod response;
mod session;
mod sim;
mod status;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

pub(crate) use body::buffer_request;
pub(crate) use fault_plan::HugeBody;

use body::{BodyTooLarge, too_large};
use fault_plan::FaultPlan;
use params::{Params, decode, redact_token, request_token};
use response::{Answer, Resp, method_not_allowed, not_found_page, text};

use crate::{RequestRecord, Sim};

/// The client agent a listener plays (a request extension; [`crate::Sim::serve_agent`]).
#[derive(Debug, Clone)]
pub(crate) struct AgentId(pub(crate) std::sync::Arc<str>);

/// Marks a response the agent served itself (streaming view or agent-cache hit): no
/// server RPC.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServedByAgent;

/// One routed request, as the endpoint families see it.
struct Call<'a> {
    sim: &'a Sim,
    /// The client agent that received the request.
    agent: &'a str,
    method: &'a Method,
    headers: &'a HeaderMap,
    /// The path as sent (not percent-decoded); agent-cache keys are built from it.
    raw_path: &'a str,
    /// The query string as sent.
    raw_query: &'a str,
    params: &'a Params,
    body: Bytes,
}

impl Call<'_> {
    fn is_get(&self) -> bool {
        *self.method == Method::GET || *self.method == Method::HEAD
    }

    fn is_put(&self) -> bool {
        *self.method == Method::PUT
    }

    /// `Err(405)` unless the method is GET (or HEAD).
    fn require_get(&self) -> Result<(), Resp> {
        if self.is_get() {
            Ok(())
        } else {
            Err(method_not_allowed(self.method, "GET"))
        }
    }
}

/// Handles one request end to end.
pub(crate) async fn handle(sim: &Sim, request: http::Request<Bytes>) -> Resp {
    let (parts, body) = request.into_parts();
    let raw_path = parts.uri.path();
    let raw_query = parts.uri.query().unwrap_or_default();
    if let Some(rest) = raw_path.strip_prefix("/v1/sim/") {
        return sim::route(sim, &parts.method, rest);
    }
    let agent = match parts.extensions.get::<AgentId>() {
        Some(AgentId(agent)) => agent.to_string(),
        None => sim.agent_node(),
    };
    let plan = {
        let mut state = sim.lock();
        state.load.count_request(&agent);
        state.requests.push(RequestRecord {
            method: parts.method.to_string(),
            path: raw_path.to_owned(),
            query: redact_token(raw_query),
        });
        FaultPlan::collect(&mut state, raw_path)
    };
    tracing::trace!(method = %parts.method, path = %raw_path, "Simulated Consul request");
    plan.hold().await;
    let mut response = if let Some(forced) = plan.forced_response() {
        forced
    } else if let Some(BodyTooLarge(size)) = parts.extensions.get::<BodyTooLarge>() {
        too_large(*size)
    } else {
        let params = Params::parse(raw_query);
        let call = Call {
            sim,
            agent: &agent,
            method: &parts.method,
            headers: &parts.headers,
            raw_path,
            raw_query,
            params: &params,
            body,
        };
        route(call).await.unwrap_or_else(|response| response)
    };
    finish(sim, raw_path, &plan, &mut response);
    sim.count_response_body(response.body().len());
    count_server_rpc(sim, &agent, raw_path, &response);
    response
}

/// One server RPC for every request the agent does not answer itself (see `crate::load`).
fn count_server_rpc(sim: &Sim, agent: &str, path: &str, response: &Resp) {
    let agent_local =
        path.starts_with("/v1/agent/") || response.extensions().get::<ServedByAgent>().is_some();
    if !agent_local {
        sim.lock().load.count_rpc(agent, response.body().len());
    }
}

/// Headers every response carries, then the faults that rewrite a finished response.
fn finish(sim: &Sim, path: &str, plan: &FaultPlan, response: &mut Resp) {
    let mut state = sim.lock();
    let policy = if state.acl_tokens.is_empty() {
        "allow"
    } else {
        "deny"
    };
    response.headers_mut().insert(
        HeaderName::from_static("x-consul-default-acl-policy"),
        HeaderValue::from_static(policy),
    );
    plan.rewrite_index(&mut state, path, response);
    drop(state);
    plan.corrupt_body(response);
    response.headers_mut().remove(CONTENT_LENGTH);
}

/// Routes by endpoint family; every path but `/v1/status/*` needs a known token when ACLs
/// are on, and gets what that token's policy allows.
async fn route(call: Call<'_>) -> Answer {
    let path = decode(call.raw_path, false);
    let token = if path.starts_with("/v1/status/") {
        None
    } else {
        check_acl(&call)?
    };
    if let Some(token) = &token {
        acl::authorize(&call, &path, token)?;
    }
    let mut response = route_endpoint(&call, &path).await?;
    if let Some(token) = &token {
        acl::filter(&call, &path, token, &mut response);
    }
    Ok(response)
}

async fn route_endpoint(call: &Call<'_>, path: &str) -> Answer {
    if let Some(rest) = path.strip_prefix("/v1/health/") {
        health::route(call, rest).await
    } else if let Some(key) = path.strip_prefix("/v1/kv/") {
        kv::route(call, key).await
    } else if path == "/v1/kv" {
        kv::route_without_key(call).await
    } else if let Some(rest) = path.strip_prefix("/v1/catalog/") {
        catalog::route(call, rest).await
    } else if let Some(rest) = path.strip_prefix("/v1/session/") {
        session::route(call, rest).await
    } else if let Some(rest) = path.strip_prefix("/v1/status/") {
        status::route(call, rest)
    } else if path == "/v1/agent/self" {
        call.require_get()?;
        Ok(agent::agent_self(call.sim))
    } else {
        Ok(not_found_page())
    }
}

/// The request's token when ACLs are on (`None` when off); `Err(403 ACL not
/// found)` for a request without a known token. (Consul would apply the
/// anonymous token's policy to a request without one; here it is refused.)
fn check_acl(call: &Call<'_>) -> Result<Option<crate::acl::AclToken>, Resp> {
    let state = call.sim.lock();
    if state.acl_tokens.is_empty() {
        return Ok(None);
    }
    request_token(call.headers, call.params)
        .and_then(|secret| state.acl_tokens.get(&secret).cloned())
        .map(Some)
        .ok_or_else(|| text(StatusCode::FORBIDDEN, "ACL not found"))
}
