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

/// The largest decoded snapshot the limits let through: every count at its limit, the
/// datacenter at its longest (it is copied into every instance and node), and the rest of
/// the inflate cap spent on the longest strings. Prints the peak RSS it takes to decode
/// it (the figure in the README's memory model):
/// `cargo test -p dnsfront-snapshot --test decode_bomb -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_the_worst_accepted_snapshot() {
    // First with one-byte tags, to learn how much of the inflate cap is left for longer ones.
    let short = worst_document(1);
    let spare = MAX_INFLATED_SIZE - 64 * 1024 - short.len();
    let tag_len = (1 + spare / LIMITS.tags).min(LIMITS.string_len);
    let bytes = worst_document(tag_len);
    eprintln!(
        "worst document: {} bytes of JSON (cap {MAX_INFLATED_SIZE}), {} instances, {} tags of {tag_len} bytes, {} nodes",
        bytes.len(),
        LIMITS.instances,
        LIMITS.tags,
        LIMITS.nodes
    );
    assert!(bytes.len() <= MAX_INFLATED_SIZE);
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = peak_rss_kib();
    let mut snapshot: dnsfront_snapshot::Snapshot =
        serde_json::from_slice(&bytes).expect("within the limits");
    snapshot.normalize();
    let growth = peak_rss_kib().saturating_sub(before);
    eprintln!(
        "decoded {} services, {} instances, {} nodes: peak RSS grew by {} MiB (the {} MiB payload was already there)",
        snapshot.services.len(),
        snapshot.instance_count(),
        snapshot.nodes.len(),
        growth / 1024,
        bytes.len() >> 20
    );
}

/// Every count at its limit, the datacenter and publisher at their longest, distinct tags
/// of `tag_len` bytes.
fn worst_document(tag_len: usize) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut json = format!(
        r#"{{"generation":1,"consul_index":1,"created_unix_ms":1,"publisher":"{}","datacenter":"{}","services":{{"#,
        "p".repeat(LIMITS.string_len),
        "d".repeat(LIMITS.datacenter_len)
    );
    let per_service = LIMITS.instances / LIMITS.services;
    let tags_per_instance = LIMITS.tags / LIMITS.instances;
    let mut instance = 0;
    for service in 0..LIMITS.services {
        if service > 0 {
            json.push(',');
        }
        write!(json, r#""s{service}":["#).expect("string");
        for n in 0..per_service {
            if n > 0 {
                json.push(',');
            }
            let tags = (0..tags_per_instance)
                .map(|t| format!(r#""{:t<tag_len$}""#, t))
                .collect::<Vec<_>>()
                .join(",");
            write!(
                json,
                r#"{{"node":"n{instance}","node_address":"10.0.0.1","service_address":"fd00::1","port":80,"tags":[{tags}],"weight":1,"status":"passing"}}"#
            )
            .expect("string");
            instance += 1;
        }
        json.push(']');
    }
    json.push_str(r#"},"nodes":{"#);
    for node in 0..LIMITS.nodes {
        if node > 0 {
            json.push(',');
        }
        write!(
            json,
            r#""n{node}":{{"name":"n{node}","address":"10.0.0.1"}}"#
        )
        .expect("string");
    }
    json.push_str("}}");
    json.into_bytes()
}

#[test]
fn control_characters_and_long_names_are_refused_at_decode() {
    let newline = br#"{"generation":1,"consul_index":1,"created_unix_ms":1,"publisher":"p\n6.6.6.6 evil.example","datacenter":"dc1","services":{},"nodes":{}}"#;
    assert!(matches!(
        decode(&envelope(newline), None),
        Err(Error::Shape {
            what: "control characters in a string",
            ..
        })
    ));
    let long = format!(
        r#"{{"generation":1,"consul_index":1,"created_unix_ms":1,"publisher":"p","datacenter":"dc1","services":{{}},"nodes":{{"{}":{{"name":"n","address":null}}}}}}"#,
        "n".repeat(LIMITS.string_len + 1)
    );
    assert!(matches!(
        decode(&envelope(long.as_bytes()), None),
        Err(Error::Shape { what: "bytes in a string", limit }) if limit == LIMITS.string_len
    ));
    // The same document within the limits decodes.
    let fine = long.replace(&"n".repeat(LIMITS.string_len + 1), "n");
    assert!(decode(&envelope(fine.as_bytes()), None).is_ok());
}
