//! Control-socket request lines (`dnsfront::control::Request`, parsed with
//! `serde_json::from_slice` as the server does): never panics, and a request
//! that parses survives serialize → parse unchanged.
#![no_main]

use dnsfront::control::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<Request>(data) else {
        return;
    };
    let line = serde_json::to_vec(&request).expect("serializes");
    assert!(!line.contains(&b'\n'), "one line");
    let again: Request = serde_json::from_slice(&line).expect("our own line parses");
    assert_eq!(again, request);
    assert!(["explain", "stats", "reload"].contains(&request.cmd()));
});
