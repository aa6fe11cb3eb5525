//! The server's side of `explain`: the router says which part answers and
//! which Consul name it is; the catalog cache, the hosts snapshot or the
//! forwarder say what they hold for it; our own listener gives the answer a
//! client gets now.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dnsfront_catalog as catalog;
use dnsfront_dns::ConsulName;
use dnsfront_snapshot as snapshot;
use hickory_server::proto::op::Query;
use hickory_server::proto::rr::{Name, RecordType};

use super::probe;
use super::protocol::{CatalogDetails, ExplainReport, SnapshotInfo};
use super::server::Context;

/// How long explain waits for our own DNS listener.
const SELF_QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The report for `name` (type `qtype`, default A).
pub(super) async fn explain(
    context: &Context,
    name: &str,
    qtype: Option<&str>,
) -> Result<ExplainReport, String> {
    let qtype_text = qtype.unwrap_or("A").to_ascii_uppercase();
    let rtype: RecordType = qtype_text
        .parse()
        .map_err(|_| format!("unknown record type {qtype_text:?}"))?;
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    let qname = Name::from_ascii(&fqdn).map_err(|error| format!("bad name {name:?}: {error}"))?;

    // First the router, exactly like a query: it says which data answered.
    // Then our own listener over loopback: the answer a client gets now.
    let explanation = context.router.explain(&fqdn, rtype).await;
    let mut report = ExplainReport {
        name: fqdn.clone(),
        qtype: rtype.to_string(),
        zone: explanation.zone.to_owned(),
        source: explanation.source.to_owned(),
        note: explanation.note.clone(),
        ..ExplainReport::default()
    };
    match self_target(&context.listen) {
        Some(server) => match probe::query(server, &qname, rtype, SELF_QUERY_TIMEOUT).await {
            Ok(answer) => report.answer = Some(answer),
            Err(error) => report.answer_error = Some(format!("{error:#}")),
        },
        None => report.answer_error = Some("no DNS listener".to_owned()),
    }

    if let Some(consul_name) = context.router.consul_name(&qname, rtype) {
        add_consul_details(context, &consul_name, &mut report).await;
    } else if report.zone == "forward" {
        add_forward_details(context, &qname.to_lowercase(), rtype, &mut report);
    }
    Ok(report)
}

/// What the catalog cache and the hosts snapshot hold for `consul_name`.
async fn add_consul_details(
    context: &Context,
    consul_name: &ConsulName,
    report: &mut ExplainReport,
) {
    // The breaker of the datacenter the name is asked in.
    let datacenter = match consul_name {
        ConsulName::Service { datacenter, .. } | ConsulName::Node { datacenter, .. } => {
            datacenter.as_deref()
        }
        _ => None,
    };
    report.consul_unavailable = context.catalog.consul_unavailable_in(datacenter);
    report.kind = Some(consul_name.kind().to_owned());
    report.catalog = catalog_details(&context.catalog, consul_name).await;
    report.snapshot = context
        .hosts
        .current()
        .map(|snapshot| snapshot_info(&snapshot, snapshot_has(&snapshot, consul_name)));
}

/// The upstreams and what the forwarder's cache holds for the question.
fn add_forward_details(
    context: &Context,
    lower: &Name,
    rtype: RecordType,
    report: &mut ExplainReport,
) {
    let forwarder = &context.forwarder;
    report.upstreams = Some(
        forwarder
            .config()
            .upstreams
            .iter()
            .map(ToString::to_string)
            .collect(),
    );
    report.forward_cache =
        serde_json::to_value(forwarder.explain(&Query::query(lower.clone(), rtype), false)).ok();
}

/// The catalog cache's view of the Consul key behind a name (services and
/// nodes; `None` for the forms without one).
///
/// Today this asks the cache the way a query does (`Cache::service` /
/// `Cache::node`) for the freshness and instance count, then the entry's
/// bookkeeping (`describe_service`/`describe_node`: age, Consul index, refresh
/// state, last error). Explain calls it right after its DNS query, so the
/// entry is already cached and no extra Consul request is made.
async fn catalog_details(cache: &catalog::Cache, name: &ConsulName) -> Option<CatalogDetails> {
    let (details, info) = match name {
        ConsulName::Service {
            name,
            tag,
            datacenter,
        } => {
            let (state, instances) = match cache.service(name, datacenter.as_deref()).await {
                catalog::Lookup::Found(instances, freshness) => {
                    (freshness_tag(freshness).to_owned(), Some(instances.len()))
                }
                catalog::Lookup::NotFound(freshness) => (not_found(freshness), Some(0)),
                catalog::Lookup::Unavailable => ("unavailable".to_owned(), None),
            };
            let details = CatalogDetails {
                kind: "service".to_owned(),
                name: name.clone(),
                tag: tag.clone(),
                datacenter: datacenter.clone(),
                state,
                instances,
                ..CatalogDetails::default()
            };
            (details, cache.describe_service(name, datacenter.as_deref()))
        }
        ConsulName::Node { name, datacenter } => {
            let state = match cache.node(name, datacenter.as_deref()).await {
                catalog::Lookup::Found(_, freshness) => freshness_tag(freshness).to_owned(),
                catalog::Lookup::NotFound(freshness) => not_found(freshness),
                catalog::Lookup::Unavailable => "unavailable".to_owned(),
            };
            let details = CatalogDetails {
                kind: "node".to_owned(),
                name: name.clone(),
                datacenter: datacenter.clone(),
                state,
                ..CatalogDetails::default()
            };
            (details, cache.describe_node(name, datacenter.as_deref()))
        }
        ConsulName::Apex | ConsulName::Addr(_) | ConsulName::Fallback | ConsulName::Invalid => {
            return None;
        }
    };
    Some(with_entry_info(details, info.as_ref()))
}

fn freshness_tag(freshness: catalog::Freshness) -> &'static str {
    match freshness {
        catalog::Freshness::Fresh => "fresh",
        catalog::Freshness::Stale => "stale",
        catalog::Freshness::Snapshot => "snapshot",
    }
}

fn not_found(freshness: catalog::Freshness) -> String {
    format!("not_found ({})", freshness_tag(freshness))
}

/// Adds the entry's bookkeeping (no I/O): age, Consul index, refresh state, last error,
/// how the agent served the last read.
fn with_entry_info(details: CatalogDetails, info: Option<&catalog::EntryInfo>) -> CatalogDetails {
    let Some(info) = info else {
        return details;
    };
    CatalogDetails {
        age_seconds: Some(info.age_ms as f64 / 1000.0),
        consul_index: Some(info.consul_index),
        refresh: Some(
            serde_json::to_value(info.refresh)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default(),
        ),
        last_error: info.last_error.as_ref().map(|error| {
            format!(
                "{} ({}s ago): {}",
                error.kind,
                error.age_ms / 1000,
                error.message
            )
        }),
        query_backend: info.query_backend.map(str::to_owned),
        agent_cache: info.agent_cache.map(str::to_owned),
        agent_cache_age_seconds: info.agent_cache_age_s,
        from_service: info.from_service.clone(),
        ..details
    }
}

/// Whether `snapshot` knows `name` (`None` for the forms it cannot hold).
fn snapshot_has(snapshot: &snapshot::Snapshot, name: &ConsulName) -> Option<bool> {
    let same_dc = |dc: &Option<String>| {
        dc.as_deref()
            .is_none_or(|dc| dc.eq_ignore_ascii_case(&snapshot.datacenter))
    };
    match name {
        ConsulName::Service {
            name, datacenter, ..
        } => Some(same_dc(datacenter) && snapshot.service(name).is_some()),
        ConsulName::Node { name, datacenter } => {
            Some(same_dc(datacenter) && snapshot.node(name).is_some())
        }
        ConsulName::Apex | ConsulName::Addr(_) | ConsulName::Fallback | ConsulName::Invalid => None,
    }
}

/// The snapshot's summary; `has_name` as [`snapshot_has`] found (explain only).
pub(super) fn snapshot_info(snapshot: &snapshot::Snapshot, has_name: Option<bool>) -> SnapshotInfo {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    SnapshotInfo {
        generation: snapshot.generation,
        age_seconds: now_ms.saturating_sub(snapshot.created_unix_ms) / 1000,
        consul_index: snapshot.consul_index,
        datacenter: snapshot.datacenter.clone(),
        services: snapshot.services.len(),
        nodes: snapshot.nodes.len(),
        has_name,
    }
}

/// The address to query our own listener on: loopback when we listen on it
/// or on a wildcard, else the first listen address.
fn self_target(listen: &[SocketAddr]) -> Option<SocketAddr> {
    listen
        .iter()
        .find(|addr| addr.ip().is_loopback())
        .copied()
        .or_else(|| {
            listen
                .iter()
                .find(|addr| addr.ip().is_unspecified())
                .map(|addr| probe::query_target(*addr))
        })
        .or_else(|| listen.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_queries_go_to_loopback() {
        let wildcard: SocketAddr = "0.0.0.0:53".parse().expect("addr");
        let public: SocketAddr = "192.0.2.1:53".parse().expect("addr");
        assert_eq!(
            self_target(&[public, wildcard]),
            Some("127.0.0.1:53".parse().expect("addr"))
        );
        assert_eq!(self_target(&[public]), Some(public));
    }
}
