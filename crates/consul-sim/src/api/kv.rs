//! `/v1/kv/:key`: GET (single, `?raw`, `?recurse`, `?keys`), PUT (plain, `?cas`, `?acquire`,
//! `?release`) and DELETE (single, `?cas`, `?recurse`).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tokio::time::Instant;

use super::Call;
use super::blocking::{Read, blocking_read};
use super::body::{content_length, too_large};
use super::params::{Params, cas_param, write_dc};
use super::response::{Answer, Resp, bad_request, json_value, method_not_allowed, server_error};
use crate::model;
use crate::state::{Dc, under_prefix};

/// Consul's default `kv_max_value_size` (raft `SuggestedMaxDataSize`).
pub(super) const KV_MAX_VALUE_SIZE: usize = 524_288;

/// `key` is the decoded path after `/v1/kv/` (may be empty).
pub(super) async fn route(call: &Call<'_>, key: &str) -> Answer {
    match *call.method {
        Method::GET | Method::HEAD => Ok(get(call, key).await),
        Method::PUT => put(call, key),
        Method::DELETE => delete(call, key),
        _ => Err(method_not_allowed(call.method, "GET,PUT,DELETE")),
    }
}

/// `/v1/kv` itself: a read of the whole store; anything else lacks its key.
pub(super) async fn route_without_key(call: &Call<'_>) -> Answer {
    if call.is_get() {
        Ok(get(call, "").await)
    } else {
        Err(bad_request("Missing key name"))
    }
}

// === reads ===

async fn get(call: &Call<'_>, key: &str) -> Resp {
    if call.params.has("keys") {
        list_keys(call, key).await
    } else if call.params.has("recurse") {
        list_entries(call, key).await
    } else {
        get_one(call, key).await
    }
}

/// `?keys[&separator=]`: the keys under a prefix, folded at the separator.
async fn list_keys(call: &Call<'_>, prefix: &str) -> Resp {
    let separator = call.params.get("separator").unwrap_or_default().to_owned();
    blocking_read(call, None, |dc| {
        let index = dc.kv_prefix_index(prefix);
        let mut keys: Vec<String> = Vec::new();
        for (entry_key, _) in under_prefix(&dc.kv, prefix) {
            let rest = &entry_key[prefix.len()..];
            let listed = match rest.find(separator.as_str()) {
                Some(position) if !separator.is_empty() => {
                    format!("{prefix}{}", &rest[..position + separator.len()])
                }
                _ => entry_key.clone(),
            };
            if keys.last() != Some(&listed) {
                keys.push(listed);
            }
        }
        Read::listing(index, &keys)
    })
    .await
}

/// `?recurse`: every entry under a prefix.
async fn list_entries(call: &Call<'_>, prefix: &str) -> Resp {
    blocking_read(call, None, |dc| {
        let index = dc.kv_prefix_index(prefix);
        let entries: Vec<model::KvJson<'_>> = under_prefix(&dc.kv, prefix)
            .map(|(_, entry)| model::KvJson::new(entry))
            .collect();
        Read::listing(index, &entries)
    })
    .await
}

/// One entry as JSON, or with `?raw` its bare value (served sandboxed, as Consul does).
async fn get_one(call: &Call<'_>, key: &str) -> Resp {
    let raw = call.params.has("raw");
    let mut response = blocking_read(call, None, |dc| match dc.kv.get(key) {
        None => Read::not_found(dc.kv_table_index()),
        Some(entry) if raw => Read {
            index: entry.modify_index,
            status: StatusCode::OK,
            body: entry.value.clone(),
            content_type: Some("text/plain"),
        },
        Some(entry) => Read::json(entry.modify_index, &[model::KvJson::new(entry)]),
    })
    .await;
    if raw && response.status() == StatusCode::OK {
        let headers = response.headers_mut();
        headers.insert(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static("sandbox"),
        );
    }
    response
}

// === writes ===

/// How a PUT changes its key; Consul allows at most one of the query flags.
enum WriteMode<'a> {
    /// A plain set.
    Set,
    /// `?cas=index`: only if the key's `ModifyIndex` is `index` (0: only if absent).
    Cas(u64),
    /// `?acquire=session`: set and take the lock, unless another session holds it.
    Acquire(&'a str),
    /// `?release=session`: set and give the lock up, if that session holds it.
    Release(&'a str),
}

impl<'a> WriteMode<'a> {
    /// `Err(400)` when more than one mode flag is given (`raw_query` goes in the message).
    fn reject_conflicts(params: &Params, raw_query: &str) -> Result<(), Resp> {
        let modes = ["cas", "acquire", "release"]
            .iter()
            .filter(|mode| params.has(mode))
            .count();
        if modes > 1 {
            return Err(bad_request(&format!("Conflicting flags: {raw_query}")));
        }
        Ok(())
    }

    fn from_params(params: &'a Params) -> Result<Self, Resp> {
        if let Some(cas) = cas_param(params)? {
            Ok(Self::Cas(cas))
        } else if let Some(session_id) = params.get("acquire") {
            Ok(Self::Acquire(session_id))
        } else if let Some(session_id) = params.get("release") {
            Ok(Self::Release(session_id))
        } else {
            Ok(Self::Set)
        }
    }
}

/// PUT: answers `true` when the write was applied, `false` when its condition failed.
fn put(call: &Call<'_>, key: &str) -> Answer {
    let params = call.params;
    if key.is_empty() {
        return Err(bad_request("Missing key name"));
    }
    check_value_size(call.headers, &call.body)?;
    WriteMode::reject_conflicts(params, call.raw_query)?;
    let flags = match params.get("flags") {
        None | Some("") => 0,
        Some(value) => value
            .parse::<u64>()
            .map_err(|_| bad_request("Invalid flags"))?,
    };
    let mode = WriteMode::from_params(params)?;
    let mut state = call.sim.lock();
    let dc_name = write_dc(&state, params)?;
    let dc = state.dc_mut(&dc_name);
    let value = call.body.clone();
    let applied = match mode {
        WriteMode::Set => {
            let index = dc.next_index();
            dc.kv_set(key, value, flags, index);
            true
        }
        WriteMode::Cas(cas) => put_cas(dc, key, cas, value, flags),
        WriteMode::Acquire(session_id) => put_acquire(dc, key, session_id, value, flags)?,
        WriteMode::Release(session_id) => put_release(dc, key, session_id, value, flags),
    };
    drop(state);
    if applied {
        call.sim.notify();
    }
    Ok(json_value(&applied))
}

/// `Err(413)` for a value above [`KV_MAX_VALUE_SIZE`], declared or actual.
fn check_value_size(headers: &HeaderMap, body: &Bytes) -> Result<(), Resp> {
    let size = content_length(headers).unwrap_or(body.len() as u64);
    if size > KV_MAX_VALUE_SIZE as u64 || body.len() > KV_MAX_VALUE_SIZE {
        return Err(too_large(size.max(body.len() as u64)));
    }
    Ok(())
}

fn put_cas(dc: &mut Dc, key: &str, cas: u64, value: Bytes, flags: u64) -> bool {
    let matches = match dc.kv.get(key) {
        None => cas == 0,
        Some(entry) => cas != 0 && entry.modify_index == cas,
    };
    if matches {
        let index = dc.next_index();
        dc.kv_set(key, value, flags, index);
    }
    matches
}

/// Refused (`Ok(false)`) during the key's lock-delay or while another session holds it;
/// re-acquiring a held lock keeps its `LockIndex`.
fn put_acquire(
    dc: &mut Dc,
    key: &str,
    session_id: &str,
    value: Bytes,
    flags: u64,
) -> Result<bool, Resp> {
    if !dc.sessions.contains_key(session_id) {
        return Err(server_error(&format!("invalid session {session_id:?}")));
    }
    let now = Instant::now();
    let delayed = dc.lock_delays.get(key).is_some_and(|until| *until > now);
    let holder = dc.kv.get(key).and_then(|entry| entry.session.as_deref());
    if delayed || holder.is_some_and(|holder| holder != session_id) {
        return Ok(false);
    }
    let already_held = holder == Some(session_id);
    let index = dc.next_index();
    dc.kv_set(key, value, flags, index);
    if let Some(entry) = dc.kv.get_mut(key) {
        if !already_held {
            entry.lock_index += 1;
        }
        entry.session = Some(session_id.to_owned());
    }
    Ok(true)
}

fn put_release(dc: &mut Dc, key: &str, session_id: &str, value: Bytes, flags: u64) -> bool {
    let held = dc
        .kv
        .get(key)
        .is_some_and(|entry| entry.session.as_deref() == Some(session_id));
    if held {
        let index = dc.next_index();
        dc.kv_set(key, value, flags, index);
        if let Some(entry) = dc.kv.get_mut(key) {
            entry.session = None;
        }
    }
    held
}

/// DELETE: answers `false` only when a `?cas` delete's index did not match.
fn delete(call: &Call<'_>, key: &str) -> Answer {
    let params = call.params;
    let recurse = params.has("recurse");
    if key.is_empty() && !recurse {
        return Err(bad_request("Missing key name"));
    }
    let cas = cas_param(params)?;
    let mut state = call.sim.lock();
    let dc_name = write_dc(&state, params)?;
    let dc = state.dc_mut(&dc_name);
    let (deleted, changed) = if recurse {
        (true, delete_tree(dc, key))
    } else if let Some(cas) = cas {
        match dc.kv.get(key) {
            None => (true, false),
            Some(entry) if entry.modify_index == cas => (true, delete_key(dc, key)),
            Some(_) => (false, false),
        }
    } else {
        (true, delete_key(dc, key))
    };
    drop(state);
    if changed {
        call.sim.notify();
    }
    Ok(json_value(&deleted))
}

/// Deletes every key under `prefix` at one index; returns whether any existed.
fn delete_tree(dc: &mut Dc, prefix: &str) -> bool {
    let doomed: Vec<String> = under_prefix(&dc.kv, prefix)
        .map(|(key, _)| key.clone())
        .collect();
    if doomed.is_empty() {
        return false;
    }
    let index = dc.next_index();
    for key in doomed {
        dc.kv_delete_key(&key, index);
    }
    true
}

/// Deletes one key; returns whether it existed.
fn delete_key(dc: &mut Dc, key: &str) -> bool {
    if !dc.kv.contains_key(key) {
        return false;
    }
    let index = dc.next_index();
    dc.kv_delete_key(key, index)
}
