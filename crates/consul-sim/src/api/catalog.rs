//! `/v1/catalog/{services,service/:service,nodes,node/:node,datacenters}`.

use super::Call;
use super::blocking::{Read, blocking_read};
use super::response::{Answer, Resp, bad_request, json_value, not_found_page};
use crate::model;

/// `rest` is the decoded path after `/v1/catalog/`; every catalog endpoint is GET only.
pub(super) async fn route(call: &Call<'_>, rest: &str) -> Answer {
    call.require_get()?;
    match rest.split_once('/') {
        None if rest == "services" => Ok(services(call).await),
        None if rest == "nodes" => Ok(nodes(call).await),
        None if rest == "datacenters" => Ok(datacenters(call)),
        Some(("service", name)) => service(call, name).await,
        Some(("node", name)) => Ok(node(call, name).await),
        _ => Ok(not_found_page()),
    }
}

async fn services(call: &Call<'_>) -> Resp {
    blocking_read(call, Some("/v1/catalog/services"), |dc| {
        Read::json(dc.services_index, &model::catalog_services(dc))
    })
    .await
}

async fn service(call: &Call<'_>, name: &str) -> Answer {
    if name.is_empty() {
        return Err(bad_request("Missing service name"));
    }
    let tags = call.params.all("tag");
    let key = format!("/v1/catalog/service/{name}?{}", tags.join(","));
    Ok(blocking_read(call, Some(&key), |dc| {
        Read::json(
            dc.service_query_index(name),
            &model::catalog_service(dc, name, &tags),
        )
    })
    .await)
}

async fn nodes(call: &Call<'_>) -> Resp {
    blocking_read(call, None, |dc| {
        let nodes: Vec<model::NodeJson<'_>> = dc
            .nodes
            .values()
            .map(|node| model::NodeJson::new(node, &dc.name))
            .collect();
        Read::json(dc.nodes_index, &nodes)
    })
    .await
}

async fn node(call: &Call<'_>, name: &str) -> Resp {
    blocking_read(call, None, |dc| {
        Read::json(
            dc.nodes_index.max(dc.services_index),
            &model::catalog_node(dc, name),
        )
    })
    .await
}

/// Not a blocking read: the known datacenters, in name order.
fn datacenters(call: &Call<'_>) -> Resp {
    let names: Vec<String> = call
        .sim
        .lock()
        .dcs
        .keys()
        .filter(|name| !name.contains('/'))
        .cloned()
        .collect();
    json_value(&names)
}
