//! Metric names of the snapshot publisher and follower, and their descriptions.

use metrics::{Unit, counter, gauge};
use metrics_util::MetricKind;

/// Generation of the snapshot currently in memory.
pub const GENERATION: &str = "snapshot.generation";
/// Age of the snapshot in memory (now − created), in seconds.
pub const AGE_SECONDS: &str = "snapshot.age_seconds";
/// Encoded size of the last applied or published snapshot, in bytes.
pub const SIZE_BYTES: &str = "snapshot.size_bytes";
/// Snapshots a follower refused, tagged `reason` ([`crate::Error::reason`], e.g. `shape`,
/// or `rollback`, `generation`, `unsigned`).
pub const REJECTED: &str = "snapshot.rejected_total";
/// Snapshots a follower verified, stored and swapped in.
pub const APPLIED: &str = "snapshot.applied_total";
/// Snapshots a publisher wrote to Consul.
pub const PUBLISHED: &str = "snapshot.published_total";
/// Publishes skipped, tagged `reason` (unchanged, min_interval, too_small, shrink_guard, kill_switch, ...).
pub const PUBLISH_SKIPPED: &str = "snapshot.publish_skipped_total";

/// 1 while the snapshot in KV is not the one this follower holds (other SHA-256: not
/// applied yet, rejected, or held back by the kill switch), else 0. Summed over a fleet:
/// the nodes behind.
pub const BEHIND: &str = "snapshot.behind";
/// Generation of the latest snapshot in KV as this follower last read it (when it decoded).
pub const KV_GENERATION: &str = "snapshot.kv_generation";
/// Answers to the follower's reads of the pointer key, tagged `result`: `new` (names a
/// newer snapshot: a value fetch is scheduled), `held` (names the snapshot held, or one it
/// refuses by generation), `unchanged` (the blocking wait ran out), `missing` (no pointer:
/// the follower watches the value key as before pointers), `invalid` (refused).
pub const POINTER_READS: &str = "snapshot.pointer_reads_total";
/// Reads of the value key that a pointer asked for, tagged `result`: `ok` (the value is the
/// one the pointer names), `mismatch` (another value: replaced since, or a bad pointer),
/// `missing`, `failed` (Consul error).
pub const VALUE_FETCHES: &str = "snapshot.value_fetches_total";
/// The random delay drawn before fetching the latest snapshot the pointer named (0 when
/// fetched at once: the first fetch after a start with nothing held), in seconds.
pub const FETCH_DELAY_SECONDS: &str = "snapshot.fetch_delay_seconds";
/// Hosts-file deliveries, tagged `result` (written, unchanged, failed).
pub const HOSTS_FILE_WRITES: &str = "snapshot.hosts_file_writes_total";
/// After-delivery command runs, tagged `result` (ok, failed, timeout, not_run).
pub const AFTER_DELIVERY_COMMANDS: &str = "snapshot.after_delivery_commands_total";

/// Every metric of this crate, declared once: (name, kind, unit, description).
/// `src/telemetry.rs` describes them to the recorder; the README lists them.
pub const METRICS: &[(&str, MetricKind, Unit, &str)] = &[
    (
        GENERATION,
        MetricKind::Gauge,
        Unit::Count,
        "Generation of the hosts snapshot in memory",
    ),
    (
        AGE_SECONDS,
        MetricKind::Gauge,
        Unit::Seconds,
        "Age of the hosts snapshot in memory",
    ),
    (
        SIZE_BYTES,
        MetricKind::Gauge,
        Unit::Bytes,
        "Encoded size of the hosts snapshot",
    ),
    (
        REJECTED,
        MetricKind::Counter,
        Unit::Count,
        "Hosts snapshots refused by the follower, by reason",
    ),
    (
        APPLIED,
        MetricKind::Counter,
        Unit::Count,
        "Hosts snapshots applied by the follower",
    ),
    (
        PUBLISHED,
        MetricKind::Counter,
        Unit::Count,
        "Hosts snapshots written to Consul by the publisher",
    ),
    (
        PUBLISH_SKIPPED,
        MetricKind::Counter,
        Unit::Count,
        "Hosts snapshot publishes skipped, by reason",
    ),
    (
        BEHIND,
        MetricKind::Gauge,
        Unit::Count,
        "1 while the snapshot in KV differs from the one this follower holds",
    ),
    (
        KV_GENERATION,
        MetricKind::Gauge,
        Unit::Count,
        "Generation of the latest hosts snapshot in KV, as the follower read it",
    ),
    (
        POINTER_READS,
        MetricKind::Counter,
        Unit::Count,
        "Answers to the follower's reads of the snapshot pointer key, by result",
    ),
    (
        VALUE_FETCHES,
        MetricKind::Counter,
        Unit::Count,
        "Reads of the snapshot value key asked for by the pointer, by result",
    ),
    (
        FETCH_DELAY_SECONDS,
        MetricKind::Gauge,
        Unit::Seconds,
        "Random delay drawn before fetching the snapshot the pointer names",
    ),
    (
        HOSTS_FILE_WRITES,
        MetricKind::Counter,
        Unit::Count,
        "Hosts-file deliveries, by result",
    ),
    (
        AFTER_DELIVERY_COMMANDS,
        MetricKind::Counter,
        Unit::Count,
        "After-delivery command runs, by result",
    ),
];

/// Sets [`BEHIND`].
pub fn set_behind(behind: bool) {
    gauge!(BEHIND).set(if behind { 1.0 } else { 0.0 });
}

/// Sets [`KV_GENERATION`].
pub fn set_kv_generation(generation: u64) {
    gauge!(KV_GENERATION).set(generation as f64);
}

/// Counts one [`POINTER_READS`] answer.
pub fn pointer_read(result: &'static str) {
    counter!(POINTER_READS, "result" => result).increment(1);
}

/// Counts one [`VALUE_FETCHES`] outcome.
pub fn value_fetch(result: &'static str) {
    counter!(VALUE_FETCHES, "result" => result).increment(1);
}

/// Sets [`FETCH_DELAY_SECONDS`].
pub fn set_fetch_delay(delay: std::time::Duration) {
    gauge!(FETCH_DELAY_SECONDS).set(delay.as_secs_f64());
}

/// Counts one [`HOSTS_FILE_WRITES`] outcome.
pub fn hosts_file_write(result: &'static str) {
    counter!(HOSTS_FILE_WRITES, "result" => result).increment(1);
}

/// Counts one [`AFTER_DELIVERY_COMMANDS`] outcome.
pub fn after_delivery_command(result: &'static str) {
    counter!(AFTER_DELIVERY_COMMANDS, "result" => result).increment(1);
}

/// Sets [`GENERATION`].
pub fn set_generation(generation: u64) {
    gauge!(GENERATION).set(generation as f64);
}

/// Sets [`AGE_SECONDS`].
pub fn set_age_seconds(age_seconds: f64) {
    gauge!(AGE_SECONDS).set(age_seconds);
}

/// Sets [`SIZE_BYTES`].
pub fn set_size_bytes(size_bytes: usize) {
    gauge!(SIZE_BYTES).set(size_bytes as f64);
}

/// Counts one [`REJECTED`] snapshot.
pub fn rejected(reason: &'static str) {
    counter!(REJECTED, "reason" => reason).increment(1);
}

/// Counts one [`APPLIED`] snapshot.
pub fn applied() {
    counter!(APPLIED).increment(1);
}

/// Counts one [`PUBLISHED`] snapshot.
pub fn published() {
    counter!(PUBLISHED).increment(1);
}

/// Counts one [`PUBLISH_SKIPPED`] publish.
pub fn publish_skipped(reason: &'static str) {
    counter!(PUBLISH_SKIPPED, "reason" => reason).increment(1);
}
