//! The explain report as text for a terminal: one line per part, each
//! written by its own function.

use std::fmt::Write as _;
use std::time::Duration;

use super::protocol::{CatalogDetails, DnsAnswer, ExplainReport, SnapshotInfo};

/// EDE info code 3: Stale Answer.
const EDE_STALE_ANSWER: u16 = 3;

/// The explain report as text for a terminal.
pub fn render_explain(report: &ExplainReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} (zone {})",
        report.name, report.qtype, report.zone
    );
    match (&report.answer, &report.answer_error) {
        (Some(answer), _) => answer_lines(&mut out, answer),
        (None, Some(error)) => line(&mut out, "answer", &format!("none ({error})")),
        (None, None) => line(&mut out, "answer", "none"),
    }
    line(
        &mut out,
        "source",
        &format!("{} ({})", report.source, why(&report.source)),
    );
    if let Some(note) = &report.note {
        line(&mut out, "note", note);
    }
    if let Some(catalog) = &report.catalog {
        catalog_lines(&mut out, catalog);
    }
    if report.zone == "consul" {
        consul_lines(
            &mut out,
            report.consul_unavailable,
            report.snapshot.as_ref(),
        );
    }
    if let Some(cache) = &report.forward_cache {
        line(&mut out, "fwd cache", &forward_cache(cache));
    }
    if let Some(upstreams) = &report.upstreams {
        let upstreams = if upstreams.is_empty() {
            "none configured".to_owned()
        } else {
            upstreams.join(", ")
        };
        line(&mut out, "upstreams", &upstreams);
    }
    out
}

/// `  label:     text`, the label column 11 wide.
fn line(out: &mut String, label: &str, text: &str) {
    let label = format!("{label}:");
    let _ = writeln!(out, "  {label:<10} {text}");
}

/// The answer our listener gave: rcode, records (the authority when there
/// are none), EDE codes.
fn answer_lines(out: &mut String, answer: &DnsAnswer) {
    line(
        out,
        "answer",
        &format!(
            "{} from {} over {} in {} ms",
            answer.rcode, answer.server, answer.transport, answer.rtt_ms
        ),
    );
    for record in &answer.answers {
        let _ = writeln!(
            out,
            "             {} {} {} {}",
            record.name, record.ttl, record.rtype, record.data
        );
    }
    if answer.answers.is_empty() {
        for record in &answer.authority {
            let _ = writeln!(
                out,
                "             (authority) {} {} {}",
                record.name, record.ttl, record.rtype
            );
        }
    }
    if !answer.ede.is_empty() {
        let codes: Vec<String> = answer
            .ede
            .iter()
            .map(|code| match *code {
                EDE_STALE_ANSWER => "3 (Stale Answer)".to_owned(),
                other => other.to_string(),
            })
            .collect();
        line(out, "ede", &codes.join(", "));
    }
}

/// What a `source` means for the operator.
fn why(source: &str) -> &'static str {
    match source {
        "fresh" => "Consul data refreshed within the last two refresh periods",
        "stale" => "the last good Consul data: Consul is failing (short TTL, EDE 3)",
        "snapshot" => "the hosts snapshot: no usable Consul data (short TTL, EDE 3)",
        "upstream" => "an upstream resolver, just now",
        "cache" => "the forwarder's response cache",
        "local" => "the local hosts files",
        "agent" => "the Consul agent's DNS interface (dns.agent_dns), just now",
        _ => "nothing cached: synthesised from the name, or an error",
    }
}

/// `catalog: service web tag primary (dc dc1): fresh, 2 healthy instance(s), ...`
/// and the last error, if any.
fn catalog_lines(out: &mut String, catalog: &CatalogDetails) {
    let mut text = format!("{} {}", catalog.kind, catalog.name);
    if let Some(tag) = &catalog.tag {
        let _ = write!(text, " tag {tag}");
    }
    if let Some(dc) = &catalog.datacenter {
        let _ = write!(text, " (dc {dc})");
    }
    let _ = write!(text, ": {}", catalog.state);
    if let Some(instances) = catalog.instances {
        let _ = write!(text, ", {instances} healthy instance(s)");
    }
    if let Some(age) = catalog.age_seconds {
        let _ = write!(text, ", refreshed {age:.1} s ago");
    }
    if let Some(index) = catalog.consul_index {
        let _ = write!(text, ", Consul index {index}");
    }
    if let Some(refresh) = &catalog.refresh {
        let _ = write!(text, ", {refresh}");
    }
    if let Some(service) = &catalog.from_service {
        let _ = write!(
            text,
            ", from service {service}'s health data (no /v1/catalog/node read)"
        );
    }
    line(out, "catalog", &text);
    if let Some(backend) = &catalog.query_backend {
        let mut read = format!("{backend} (how the agent served the last read)");
        if let Some(cache) = catalog.agent_cache.as_deref().filter(|c| *c != "none") {
            let _ = write!(read, ", X-Cache {cache}");
        }
        if let Some(age) = catalog.agent_cache_age_seconds {
            let _ = write!(read, ", Age {age} s");
        }
        line(out, "backend", &read);
    }
    if let Some(error) = &catalog.last_error {
        let _ = writeln!(out, "  last error: {error}");
    }
}

/// Whether Consul is reachable, and the hosts snapshot in memory.
fn consul_lines(out: &mut String, consul_unavailable: bool, snapshot: Option<&SnapshotInfo>) {
    line(
        out,
        "consul",
        if consul_unavailable {
            "unavailable (circuit breaker open: serving stale data or the snapshot)"
        } else {
            "reachable"
        },
    );
    let Some(snapshot) = snapshot else {
        line(out, "snapshot", "none in memory");
        return;
    };
    let knows = match snapshot.has_name {
        Some(true) => "; knows this name",
        Some(false) => "; does not know this name",
        None => "",
    };
    line(
        out,
        "snapshot",
        &format!(
            "generation {}, {} old, dc {}, {} services, {} nodes{knows}",
            snapshot.generation,
            humantime::format_duration(Duration::from_secs(snapshot.age_seconds)),
            snapshot.datacenter,
            snapshot.services,
            snapshot.nodes,
        ),
    );
}

/// The forwarder's cache entry: state, age, TTL left, who answered, the rule.
fn forward_cache(cache: &serde_json::Value) -> String {
    let field = |key: &str| {
        cache
            .get(key)
            .filter(|value| !value.is_null())
            .map(ToString::to_string)
    };
    let text_field = |key: &str| cache.get(key).and_then(|value| value.as_str());
    let mut text = text_field("state").unwrap_or("unknown").to_owned();
    if let Some(age) = field("age_secs") {
        let _ = write!(text, ", stored {age} s ago");
    }
    if let Some(left) = field("remaining_ttl_secs") {
        let _ = write!(text, ", {left} s of TTL left");
    }
    if let Some(by) = text_field("answered_by") {
        let _ = write!(text, ", answered by {by}");
    }
    if let Some(rule) = text_field("rule") {
        let _ = write!(text, ", rule {rule}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::RecordLine;

    #[test]
    fn a_consul_report_has_one_aligned_line_per_part() {
        let report = ExplainReport {
            name: "_web._primary.dc1.consul.".to_owned(),
            qtype: "SRV".to_owned(),
            zone: "consul".to_owned(),
            kind: Some("service".to_owned()),
            source: "stale".to_owned(),
            answer: Some(DnsAnswer {
                server: "127.0.0.1:53".to_owned(),
                transport: "udp".to_owned(),
                rcode: "NOERROR".to_owned(),
                rtt_ms: 0.4,
                answers: vec![RecordLine {
                    name: "_web._primary.dc1.consul.".to_owned(),
                    rtype: "SRV".to_owned(),
                    ttl: 5,
                    data: "1 1 80 node-1.node.dc1.consul.".to_owned(),
                }],
                authority: Vec::new(),
                ede: vec![3],
            }),
            catalog: Some(CatalogDetails {
                kind: "service".to_owned(),
                name: "web".to_owned(),
                tag: Some("primary".to_owned()),
                datacenter: Some("dc1".to_owned()),
                state: "stale".to_owned(),
                instances: Some(2),
                consul_index: Some(7),
                ..CatalogDetails::default()
            }),
            consul_unavailable: true,
            ..ExplainReport::default()
        };
        let text = render_explain(&report);
        let expected = [
            "_web._primary.dc1.consul. SRV (zone consul)",
            "  answer:    NOERROR from 127.0.0.1:53 over udp in 0.4 ms",
            "             _web._primary.dc1.consul. 5 SRV 1 1 80 node-1.node.dc1.consul.",
            "  ede:       3 (Stale Answer)",
            "  source:    stale (the last good Consul data: Consul is failing (short TTL, EDE 3))",
            "  catalog:   service web tag primary (dc dc1): stale, 2 healthy instance(s), Consul index 7",
            "  consul:    unavailable (circuit breaker open: serving stale data or the snapshot)",
            "  snapshot:  none in memory",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{text}");
    }
}
