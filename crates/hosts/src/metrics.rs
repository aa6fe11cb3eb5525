//! Metric names of the local hosts files and their descriptions.

use metrics::{Unit, describe_counter, describe_gauge};

/// Gauge: (name, address) pairs loaded from the hosts files.
pub const ENTRIES: &str = "hosts.entries";
/// Counter: loads of the hosts files, tagged `result` (ok, error).
pub const RELOADS: &str = "hosts.reloads";

/// Registers descriptions for every metric of this crate.
pub fn describe() {
    describe_gauge!(
        ENTRIES,
        Unit::Count,
        "Name/address pairs loaded from the local hosts files"
    );
    describe_counter!(
        RELOADS,
        Unit::Count,
        "Loads of the local hosts files, by result (ok, error)"
    );
}
