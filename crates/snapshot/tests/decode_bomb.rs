//! A small hostile envelope cannot make a decoder allocate much: its own test binary, so the
//! peak RSS it reads belongs to this one test.

mod common;

use common::{envelope, tags_document};
use dnsfront_snapshot::codec::{LIMITS, MAX_INFLATED_SIZE, MAX_VALUE_SIZE};
use dnsfront_snapshot::{Error, decode};

/// Peak resident set of this process so far, in KiB (Linux `VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line")
}

#[test]
fn hostile_tag_documents_are_refused_with_bounded_memory() {
    // 64 MiB of `"",` in about 65 KB: the envelope of issue 13.
    let bomb_json = tags_document((64 * 1024 * 1024 - 1024) / 3);
    let bomb = envelope(&bomb_json);
    drop(bomb_json);
    eprintln!("bomb envelope: {} bytes", bomb.len());
    assert!(bomb.len() <= MAX_VALUE_SIZE, "fits in one Consul value");
    // Just under the inflate cap: the shape limits have to stop it.
    let under_cap_json = tags_document((MAX_INFLATED_SIZE - 1024) / 3);
    let under_cap = envelope(&under_cap_json);
    drop(under_cap_json);

    // Reset the peak to the current RSS (Linux 4.0+), so building the inputs does not count.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = peak_rss_kib();
    let started = std::time::Instant::now();
    let result = decode(&bomb, None);
    assert!(
        matches!(result, Err(Error::TooLargeInflated { limit }) if limit == MAX_INFLATED_SIZE),
        "{result:?}"
    );
    let result = decode(&under_cap, None);
    assert!(
        matches!(
            result,
            Err(Error::Shape { what: "tags of one instance", limit })
                if limit == LIMITS.tags_per_instance
        ),
        "{result:?}"
    );
    let elapsed = started.elapsed();
    let growth_mib = peak_rss_kib().saturating_sub(before) / 1024;
    eprintln!("rejected in {elapsed:?}, peak RSS grew by {growth_mib} MiB (from {before} KiB)");
    // The inflated payload (at most MAX_INFLATED_SIZE) is the largest allocation; a plain
    // `Vec<String>` reader of the under-cap document alone would take over 100 MiB.
    assert!(
        growth_mib <= 2 * (MAX_INFLATED_SIZE as u64 >> 20),
        "decoding hostile documents grew the peak RSS by {growth_mib} MiB"
    );
}
