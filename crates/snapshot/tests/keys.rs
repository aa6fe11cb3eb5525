//! Key files: generation, loading, and rejection of bad files.

mod common;

use dnsfront_snapshot::{Error, decode, encode, keys};

#[test]
fn generated_key_pair_signs_and_verifies_through_files() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (private, public) = keys::generate_keypair();
    let (other_private, _) = keys::generate_keypair();
    assert_ne!(private, other_private, "keys are random");
    let private_path = temp.path().join("snapshot.key");
    let public_path = temp.path().join("snapshot.pub");
    std::fs::write(&private_path, format!("{private}\n")).expect("write");
    std::fs::write(&public_path, format!("  {public}\n\n")).expect("write");

    let signing_key = keys::load_signing_key(&private_path).expect("private key loads");
    let verifying_key = keys::load_verifying_key(&public_path).expect("public key loads");
    assert_eq!(signing_key.verifying_key(), verifying_key);
    assert_eq!(keys::verifying_key_to_base64(&verifying_key), public);

    let encoded = encode(&common::fixture(), Some(&signing_key)).expect("encodes");
    assert!(
        decode(&encoded, Some(&verifying_key))
            .expect("verifies")
            .signed
    );
}

#[test]
fn bad_key_files_are_rejected_with_the_path() {
    let temp = tempfile::tempdir().expect("temp dir");
    let cases: [(&str, &[u8]); 4] = [
        ("empty.key", b"\n"),
        ("not-base64.key", b"this is not base64!\n"),
        ("short.key", b"AAAA\n"),
        ("long.key", b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"),
    ];
    for (name, content) in cases {
        let path = temp.path().join(name);
        std::fs::write(&path, content).expect("write");
        let error = keys::load_verifying_key(&path).expect_err(name);
        assert!(matches!(error, Error::Key { .. }), "{name}: {error:?}");
        assert!(error.to_string().contains(name), "{error}");
        assert!(matches!(
            keys::load_signing_key(&path),
            Err(Error::Key { .. })
        ));
    }
    let missing = keys::load_signing_key(&temp.path().join("missing.key"));
    assert!(matches!(missing, Err(Error::Io { .. })), "{missing:?}");
}
