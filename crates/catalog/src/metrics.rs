//! Metric names of the catalog cache, and their descriptions.

use metrics::{counter, describe_counter, describe_gauge, gauge};

/// Background refreshes, tagged `outcome` (ok or a Consul error kind).
pub const REFRESHES: &str = "catalog.refreshes";
/// First fetches of a never-seen key, tagged `outcome`.
pub const FIRST_FETCHES: &str = "catalog.first_fetches";
/// Number of cached keys.
pub const ENTRIES: &str = "catalog.entries";
/// 1 while the circuit breaker holds Consul requests back, else 0.
pub const CIRCUIT_OPEN: &str = "catalog.consul_circuit_open";

/// Registers descriptions with the installed recorder.
pub fn describe() {
    describe_counter!(
        REFRESHES,
        "Background refreshes of cached Consul data, by outcome"
    );
    describe_counter!(
        FIRST_FETCHES,
        "First fetches of a never-seen name, by outcome"
    );
    describe_gauge!(ENTRIES, "Cached services and nodes");
    describe_gauge!(
        CIRCUIT_OPEN,
        "1 while Consul requests are held back by the circuit breaker"
    );
}

pub(crate) fn refresh(outcome: &'static str) {
    counter!(REFRESHES, "outcome" => outcome).increment(1);
}

pub(crate) fn first_fetch(outcome: &'static str) {
    counter!(FIRST_FETCHES, "outcome" => outcome).increment(1);
}

pub(crate) fn entries(count: u64) {
    gauge!(ENTRIES).set(count as f64);
}

pub(crate) fn circuit_open(open: bool) {
    gauge!(CIRCUIT_OPEN).set(if open { 1.0 } else { 0.0 });
}
