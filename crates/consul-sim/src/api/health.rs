//! `/v1/health/service/:service` and `/v1/health/state/:state`.

use super::Call;
use super::blocking::{Read, StreamView, blocking_read, cache_key, health_service_read};
use super::params::{Params, parse_go_bool};
use super::response::{Answer, bad_request, not_found_page};
use crate::model;

/// `rest` is the decoded path after `/v1/health/`.
pub(super) async fn route(call: &Call<'_>, rest: &str) -> Answer {
    if let Some(check_state) = rest.strip_prefix("state/") {
        call.require_get()?;
        return state(call, check_state).await;
    }
    if let Some(name) = rest.strip_prefix("service/") {
        call.require_get()?;
        return service(call, name).await;
    }
    Ok(not_found_page())
}

/// `/v1/health/service/:service` (`?passing`, `?tag`, `?cached` and the read options).
async fn service(call: &Call<'_>, name: &str) -> Answer {
    let params = call.params;
    let passing_only = match params.get("passing") {
        None => false,
        Some("") => true,
        Some(value) => {
            parse_go_bool(value).ok_or_else(|| bad_request("Invalid value for ?passing"))?
        }
    };
    if name.is_empty() {
        return Err(bad_request("Missing service name"));
    }
    let tags = params.all("tag");
    let key = cache_key(call.raw_path, call.raw_query);
    let view = StreamView {
        service: name,
        tags: &tags,
    };
    Ok(health_service_read(call, &key, view, |dc| {
        let entries = model::health_service(dc, name, &tags, passing_only);
        Read::json(dc.service_query_index(name), &entries)
    })
    .await)
}

/// `/v1/health/state/:state`. As in Consul 1.16, only an empty state is refused; any other
/// unknown state matches no check (Consul looks it up in the status index), so it is `200 []`.
async fn state(call: &Call<'_>, check_state: &str) -> Answer {
    if check_state.is_empty() {
        return Err(bad_request("Missing check state"));
    }
    let node_meta = node_meta_filters(call.params);
    Ok(blocking_read(call, None, |dc| {
        Read::json(
            dc.checks_index,
            &model::health_state(dc, check_state, &node_meta),
        )
    })
    .await)
}

/// `?node-meta=key:value` filters (all must match); a pair without `:` has an empty value,
/// as Consul's `parseMetaPair`.
fn node_meta_filters(params: &Params) -> Vec<(String, String)> {
    params
        .all("node-meta")
        .into_iter()
        .map(|filter| {
            let (key, value) = filter.split_once(':').unwrap_or((filter, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}
