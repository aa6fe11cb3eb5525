//! Encoded size of realistic catalogs against Consul's 512 KiB value limit.

mod common;

use dnsfront_snapshot::codec::MAX_VALUE_SIZE;
use dnsfront_snapshot::{Error, decode, encode};

#[test]
fn catalog_of_2000_nodes_and_500_services_fits_in_one_value() {
    let snapshot = common::synthetic_catalog(2_000, 500, 4);
    assert_eq!(snapshot.nodes.len(), 2_000);
    assert_eq!(snapshot.services.len(), 500);
    assert_eq!(snapshot.instance_count(), 2_000);
    let json_size = serde_json::to_vec(&snapshot).expect("json").len();
    let unsigned = encode(&snapshot, None).expect("fits");
    let signed = encode(&snapshot, Some(&common::test_signing_key())).expect("fits");
    eprintln!(
        "size: 2000 nodes x 500 services x 4 instances (2000 instances): json {json_size} bytes, \
         encoded {} bytes unsigned, {} bytes signed, limit {MAX_VALUE_SIZE}",
        unsigned.len(),
        signed.len()
    );
    assert!(signed.len() <= MAX_VALUE_SIZE);
    assert_eq!(decode(&signed, None).expect("decodes").snapshot, snapshot);
}

#[test]
fn denser_catalogs_report_their_size_or_fail_loudly() {
    for per_service in [20, 100] {
        let snapshot = common::synthetic_catalog(2_000, 500, per_service);
        let n_instances = snapshot.instance_count();
        match encode(&snapshot, Some(&common::test_signing_key())) {
            Ok(encoded) => {
                eprintln!(
                    "size: 2000 nodes x 500 services x {per_service} ({n_instances} instances): {} bytes signed",
                    encoded.len()
                );
                assert!(encoded.len() <= MAX_VALUE_SIZE);
            }
            Err(Error::TooLarge {
                encoded, instances, ..
            }) => {
                eprintln!(
                    "size: 2000 nodes x 500 services x {per_service} ({instances} instances): {encoded} bytes, TOO LARGE"
                );
                assert!(encoded > MAX_VALUE_SIZE);
                assert_eq!(instances, n_instances);
            }
            Err(error) => panic!("unexpected error: {error}"),
        }
    }
}
