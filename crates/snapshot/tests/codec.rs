//! Envelope encoding and verification through the public API, including golden files.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use common::{Prng, data_dir, fixture, instance, node, other_signing_key, test_signing_key};
use dnsfront_snapshot::codec::{FORMAT_VERSION, MAGIC, MAX_INFLATED_SIZE, MAX_VALUE_SIZE};
use dnsfront_snapshot::{Error, Snapshot, decode, encode, keys};
use flate2::{Compression, write::GzEncoder};
use sha2::{Digest, Sha256};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// An unsigned envelope assembled by hand, so tests can lie in any field.
fn raw_envelope(compressed: &[u8], declared_inflated: u32, checksum: [u8; 32]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(FORMAT_VERSION);
    out.push(0);
    out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    out.extend_from_slice(&declared_inflated.to_be_bytes());
    out.extend_from_slice(&checksum);
    out.extend_from_slice(compressed);
    out
}

#[test]
fn round_trip_unsigned_and_signed() {
    let snapshot = fixture();
    let key = test_signing_key();

    let unsigned = encode(&snapshot, None).expect("encodes");
    let verified = decode(&unsigned, None).expect("decodes");
    assert_eq!(verified.snapshot, snapshot);
    assert!(!verified.signed);
    assert_eq!(verified.encoded_size, unsigned.len());
    let canonical = serde_json::to_vec(&snapshot).expect("json");
    assert_eq!(
        verified.checksum,
        <[u8; 32]>::from(Sha256::digest(&canonical))
    );

    let signed = encode(&snapshot, Some(&key)).expect("encodes");
    assert_eq!(signed.len(), unsigned.len() + 64);
    let verified = decode(&signed, Some(&key.verifying_key())).expect("verifies");
    assert_eq!(verified.snapshot, snapshot);
    assert!(verified.signed);
    // Without a configured key a signed snapshot is still readable.
    assert!(decode(&signed, None).expect("decodes").signed);
}

/// Hostname addresses travel in optional fields, written only when set: a
/// snapshot without them keeps its bytes (the golden files), one with them
/// comes back whole.
#[test]
fn hostname_addresses_round_trip_in_optional_fields() {
    let plain = fixture();
    let json = String::from_utf8(serde_json::to_vec(&plain).expect("json")).expect("utf8");
    assert!(!json.contains("hostname"), "{json}");

    let mut snapshot = fixture();
    let mut rds = instance("node-r", Some("10.0.0.9"), None, 5432, &["aurora"]);
    rds.hostname = Some("db.cluster-1.rds.amazonaws.com".to_owned());
    rds.datacenter = snapshot.datacenter.clone();
    snapshot.services.insert("rds".to_owned(), vec![rds]);
    let mut edge = node("edge-1", None);
    edge.hostname = Some("edge-1.example.com".to_owned());
    edge.datacenter = snapshot.datacenter.clone();
    snapshot.nodes.insert("edge-1".to_owned(), edge);
    let decoded = decode(&encode(&snapshot, None).expect("encodes"), None).expect("decodes");
    assert_eq!(decoded.snapshot, snapshot);
    assert_eq!(
        decoded.snapshot.services["rds"][0].hostname.as_deref(),
        Some("db.cluster-1.rds.amazonaws.com")
    );
    assert_eq!(decoded.snapshot.services["rds"][0].address(), None);
}

#[test]
fn round_trip_normalizes_unsorted_input() {
    let mut messy = fixture();
    messy.services.get_mut("web").expect("web").reverse();
    messy.services.insert(
        "API".to_owned(),
        vec![instance("n", Some("10.9.9.9"), None, 1, &["b", "a"])],
    );
    let decoded = decode(&encode(&messy, None).expect("encodes"), None).expect("decodes");
    let mut expected = messy.clone();
    expected.normalize();
    assert_eq!(decoded.snapshot, expected);
    assert!(decoded.snapshot.service("api").is_some());
}

#[test]
fn encoding_is_deterministic() {
    let key = test_signing_key();
    let snapshot = fixture();
    assert_eq!(
        encode(&snapshot, Some(&key)).expect("encodes"),
        encode(&snapshot, Some(&key)).expect("encodes")
    );

    // Same content built in a different order and case: same checksum, same bytes.
    let mut reordered = Snapshot {
        generation: snapshot.generation,
        consul_index: snapshot.consul_index,
        created_unix_ms: snapshot.created_unix_ms,
        publisher: snapshot.publisher.clone(),
        datacenter: snapshot.datacenter.clone(),
        services: BTreeMap::new(),
        nodes: BTreeMap::new(),
    };
    for (name, instances) in snapshot.services.iter().rev() {
        let mut instances = instances.clone();
        instances.reverse();
        for one in &mut instances {
            one.tags.reverse();
        }
        reordered
            .services
            .insert(name.to_ascii_uppercase(), instances);
    }
    for (name, entry) in snapshot.nodes.iter().rev() {
        reordered
            .nodes
            .insert(name.to_ascii_uppercase(), entry.clone());
    }
    assert_ne!(
        reordered, snapshot,
        "the test input really is in another order"
    );
    assert_eq!(reordered.content_checksum(), snapshot.content_checksum());
    assert_eq!(
        encode(&reordered, Some(&key)).expect("encodes"),
        encode(&snapshot, Some(&key)).expect("encodes")
    );

    // Metadata does not change the content checksum, but content does.
    let mut newer = snapshot.clone();
    newer.generation += 1;
    newer.created_unix_ms += 1000;
    newer.consul_index += 7;
    newer.publisher = "consul-server-2".to_owned();
    assert_eq!(newer.content_checksum(), snapshot.content_checksum());
    newer
        .nodes
        .insert("node-e".to_owned(), node("node-e", Some("10.0.0.5")));
    assert_ne!(newer.content_checksum(), snapshot.content_checksum());
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let encoded = encode(&fixture(), Some(&test_signing_key())).expect("encodes");
    for length in 0..encoded.len() {
        let result = decode(&encoded[..length], None);
        assert!(
            matches!(result, Err(Error::Truncated)),
            "prefix of {length} bytes gave {result:?}"
        );
    }
}

#[test]
fn every_single_byte_corruption_is_rejected_or_harmless() {
    let snapshot = fixture();
    let key = test_signing_key();
    let verifying_key = key.verifying_key();
    let unsigned = encode(&snapshot, None).expect("encodes");
    let signed = encode(&snapshot, Some(&key)).expect("encodes");
    // Every byte of the unsigned envelope; for the signed one the signed header, checksum
    // and signature (payload corruption is the unsigned case again, and verifying is slow
    // in debug builds).
    let signed_prefix = 18 + 32 + 64;
    // gzip ignores its header's mtime, xfl and os bytes (6); nothing else may pass.
    for (encoded, range, verifying_key, may_pass) in [
        (&unsigned, 0..unsigned.len(), None, 6),
        (&signed, 0..signed_prefix, Some(&verifying_key), 0),
    ] {
        let mut n_rejected = 0;
        let n_tried = range.len();
        for index in range {
            let mut corrupt = encoded.clone();
            corrupt[index] ^= 0x55;
            match decode(&corrupt, verifying_key) {
                Err(_) => n_rejected += 1,
                // Only bytes gzip itself ignores (header mtime/xfl/os) may change, and then
                // the content must be exactly the original.
                Ok(verified) => assert_eq!(verified.snapshot, snapshot, "byte {index}"),
            }
        }
        assert!(
            n_rejected + may_pass >= n_tried,
            "{n_rejected} of {n_tried} rejected"
        );
    }
}

#[test]
fn bad_magic_and_garbage_are_rejected() {
    assert!(matches!(
        decode(b"hello world, not a snapshot", None),
        Err(Error::BadMagic)
    ));
    assert!(matches!(decode(b"DNX", None), Err(Error::BadMagic)));
    assert!(matches!(decode(b"DNS", None), Err(Error::Truncated)));
    let oversized = vec![0_u8; MAX_VALUE_SIZE + 1];
    assert!(matches!(
        decode(&oversized, None),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn zip_bomb_with_honest_header_is_refused_before_inflating() {
    // Declares more than the cap: refused from the header alone.
    let compressed = gzip(b"{}");
    let envelope = raw_envelope(&compressed, (MAX_INFLATED_SIZE + 1) as u32, [0; 32]);
    let result = decode(&envelope, None);
    assert!(
        matches!(result, Err(Error::TooLargeInflated { limit }) if limit == MAX_INFLATED_SIZE),
        "{result:?}"
    );
}

#[test]
fn zip_bomb_with_lying_header_stops_at_the_declared_size() {
    // 8 MiB of zeros compress to a few KiB; the header claims 1 KiB.
    let zeros = vec![0_u8; 8 * 1024 * 1024];
    let compressed = gzip(&zeros);
    assert!(compressed.len() < 64 * 1024);
    let envelope = raw_envelope(&compressed, 1024, Sha256::digest(&zeros).into());
    let result = decode(&envelope, None);
    assert!(
        matches!(result, Err(Error::TooLargeInflated { limit: 1024 })),
        "{result:?}"
    );
}

#[test]
fn payload_shorter_than_declared_and_non_gzip_are_rejected() {
    let payload = br#"{"not":"used"}"#;
    let short = raw_envelope(
        &gzip(payload),
        payload.len() as u32 + 10,
        Sha256::digest(payload).into(),
    );
    assert!(matches!(decode(&short, None), Err(Error::Malformed { .. })));

    let not_gzip = raw_envelope(b"plainly not gzip", 16, [0; 32]);
    assert!(matches!(decode(&not_gzip, None), Err(Error::Decompress(_))));
}

#[test]
fn valid_envelope_with_wrong_document_is_a_json_error() {
    let payload = br#"{"generation":"not a number"}"#;
    let envelope = raw_envelope(
        &gzip(payload),
        payload.len() as u32,
        Sha256::digest(payload).into(),
    );
    let result = decode(&envelope, None);
    assert!(matches!(result, Err(Error::Json(_))), "{result:?}");
}

#[test]
fn too_large_reports_the_numbers() {
    // Random hex tags do not compress well, so a few thousand instances exceed 512 KiB.
    let mut prng = Prng::new(1);
    let mut snapshot = fixture();
    let n_services = 30;
    let per_service = 100;
    for service_index in 0..n_services {
        let instances = (0..per_service)
            .map(|instance_index| {
                let tags: Vec<String> = (0..12)
                    .map(|_| format!("{:016x}{:016x}", prng.next_u64(), prng.next_u64()))
                    .collect();
                let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                instance(
                    &format!("node-{instance_index:04}"),
                    Some("10.0.0.1"),
                    None,
                    80,
                    &tags,
                )
            })
            .collect();
        snapshot
            .services
            .insert(format!("big-{service_index:02}"), instances);
    }
    let expected_services = snapshot.services.len();
    let expected_instances = snapshot.instance_count();
    let expected_nodes = snapshot.nodes.len();
    match encode(&snapshot, Some(&test_signing_key())) {
        Err(Error::TooLarge {
            encoded,
            limit,
            services,
            instances,
            nodes,
        }) => {
            assert!(encoded > limit, "{encoded} > {limit}");
            assert_eq!(limit, MAX_VALUE_SIZE);
            assert_eq!(services, expected_services);
            assert_eq!(instances, expected_instances);
            assert_eq!(nodes, expected_nodes);
            let message = encode(&snapshot, None).expect_err("too large").to_string();
            assert!(
                message.contains(&format!("{expected_instances} instances")),
                "{message}"
            );
            assert!(message.contains("524288"), "{message}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

// === golden files ===

const GOOD_SIGNED: &str = "good-signed.bin";
const GOOD_UNSIGNED: &str = "good-unsigned.bin";
const BAD_CHECKSUM: &str = "bad-checksum.bin";
const TRUNCATED: &str = "truncated.bin";
const FUTURE_VERSION: &str = "future-version.bin";
const WRONG_SIGNATURE: &str = "wrong-signature.bin";

fn golden(name: &str) -> Vec<u8> {
    let path = data_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; regenerate with `cargo test -p dnsfront-snapshot --test codec -- --ignored regenerate_golden_files`",
            path.display()
        )
    })
}

/// Writes the golden files and the test key files. Run by hand after a format change.
#[test]
#[ignore = "regenerates tests/data; run by hand after a deliberate format change"]
fn regenerate_golden_files() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).expect("data dir");
    let snapshot = fixture();
    let key = test_signing_key();
    let write =
        |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("write golden");

    let good_signed = encode(&snapshot, Some(&key)).expect("encodes");
    let good_unsigned = encode(&snapshot, None).expect("encodes");
    let mut bad_checksum = good_unsigned.clone();
    bad_checksum[18] ^= 0xff; // first checksum byte
    let mut future_version = good_signed.clone();
    future_version[8] = FORMAT_VERSION + 1;
    write(GOOD_SIGNED, &good_signed);
    write(GOOD_UNSIGNED, &good_unsigned);
    write(BAD_CHECKSUM, &bad_checksum);
    write(TRUNCATED, &good_signed[..good_signed.len() / 2]);
    write(FUTURE_VERSION, &future_version);
    write(
        WRONG_SIGNATURE,
        &encode(&snapshot, Some(&other_signing_key())).expect("encodes"),
    );
    write(
        "test-verifying.key",
        format!("{}\n", keys::verifying_key_to_base64(&key.verifying_key())).as_bytes(),
    );
}

#[test]
fn golden_good_envelopes_decode_to_the_fixture() {
    let verifying_key =
        keys::load_verifying_key(&data_dir().join("test-verifying.key")).expect("key file");
    assert_eq!(verifying_key, test_signing_key().verifying_key());

    let signed = golden(GOOD_SIGNED);
    let verified = decode(&signed, Some(&verifying_key)).expect("golden signed verifies");
    assert_eq!(verified.snapshot, fixture());
    assert!(verified.signed);
    assert_eq!(verified.encoded_size, signed.len());

    let unsigned = golden(GOOD_UNSIGNED);
    let verified = decode(&unsigned, None).expect("golden unsigned decodes");
    assert_eq!(verified.snapshot, fixture());
    assert!(!verified.signed);
    assert_eq!(verified.checksum, fixture_checksum());
}

/// The serialized format is the golden files': decoding and encoding again gives the same
/// bytes, whatever in-memory model the snapshot uses.
#[test]
fn golden_good_envelopes_re_encode_byte_for_byte() {
    let key = test_signing_key();
    for (name, signing_key) in [(GOOD_SIGNED, Some(&key)), (GOOD_UNSIGNED, None)] {
        let golden = golden(name);
        let decoded = decode(&golden, None).expect("golden decodes").snapshot;
        assert_eq!(
            encode(&decoded, signing_key).expect("encodes"),
            golden,
            "{name}"
        );
        assert_eq!(
            encode(&fixture(), signing_key).expect("encodes"),
            golden,
            "{name}"
        );
    }
}

/// The content checksum is SHA-256 of `{"datacenter":…,"services":…,"nodes":…}`, the tail of
/// the golden payload: a publisher compares it with what an older build published.
#[test]
fn content_checksum_matches_the_golden_payload() {
    let envelope = golden(GOOD_UNSIGNED);
    let mut payload = Vec::new();
    flate2::read::GzDecoder::new(&envelope[18 + 32..])
        .read_to_end(&mut payload)
        .expect("golden payload inflates");
    let payload = String::from_utf8(payload).expect("JSON is UTF-8");
    let content = format!(
        "{{{}",
        &payload[payload.find("\"datacenter\"").expect("datacenter field")..]
    );
    assert!(payload.starts_with("{\"generation\":42,"), "{payload}");
    assert_eq!(
        fixture().content_checksum(),
        <[u8; 32]>::from(Sha256::digest(content.as_bytes()))
    );
}

fn fixture_checksum() -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(&fixture()).expect("json")).into()
}

#[test]
fn golden_bad_envelopes_are_rejected_with_the_right_error() {
    let verifying_key =
        keys::load_verifying_key(&data_dir().join("test-verifying.key")).expect("key file");
    let key = Some(&verifying_key);

    let result = decode(&golden(BAD_CHECKSUM), None);
    assert!(matches!(result, Err(Error::ChecksumMismatch)), "{result:?}");
    let result = decode(&golden(TRUNCATED), key);
    assert!(matches!(result, Err(Error::Truncated)), "{result:?}");
    let result = decode(&golden(FUTURE_VERSION), key);
    assert!(
        matches!(result, Err(Error::UnsupportedVersion(2))),
        "{result:?}"
    );
    assert_eq!(
        result.expect_err("future").to_string(),
        "unsupported snapshot format version 2 (this build reads version 1)"
    );
    let result = decode(&golden(GOOD_UNSIGNED), key);
    assert!(matches!(result, Err(Error::Unsigned)), "{result:?}");
    let result = decode(&golden(WRONG_SIGNATURE), key);
    assert!(matches!(result, Err(Error::BadSignature)), "{result:?}");
    // The wrong-signature file is otherwise intact: without a key it decodes.
    assert_eq!(
        decode(&golden(WRONG_SIGNATURE), None)
            .expect("intact")
            .snapshot,
        fixture()
    );
}

#[test]
fn error_reasons_are_bounded_labels() {
    assert_eq!(Error::ChecksumMismatch.reason(), "checksum");
    assert_eq!(Error::BadSignature.reason(), "bad_signature");
    assert_eq!(MAX_VALUE_SIZE, 524_288);
}
