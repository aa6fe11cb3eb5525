//! Metric names of the local hosts files and their descriptions.

use metrics::Unit;
use metrics_util::MetricKind;

/// Gauge: (name, address) pairs loaded from the hosts files.
pub const ENTRIES: &str = "hosts.entries";
/// Counter: loads of the hosts files, tagged `result` (ok, error).
pub const RELOADS: &str = "hosts.reloads_total";

/// Every metric of this crate, declared once: (name, kind, unit, description).
/// `src/telemetry.rs` describes them to the recorder; the README lists them.
pub const METRICS: &[(&str, MetricKind, Unit, &str)] = &[
    (
        ENTRIES,
        MetricKind::Gauge,
        Unit::Count,
        "Name/address pairs loaded from the local hosts files",
    ),
    (
        RELOADS,
        MetricKind::Counter,
        Unit::Count,
        "Loads of the local hosts files, by result (ok, error)",
    ),
];
