//! The hosts(5) parser (`crates/hosts`) on arbitrary file contents: never
//! panics, every well-formed line is found by name, and forward and reverse
//! lookups agree.
#![no_main]

use std::net::IpAddr;

use dnsfront_hosts::{LocalHosts, Lookup};
use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;

/// A name hosts files may hold (the spec, written independently of the parser).
fn usable(token: &str) -> Option<String> {
    let name = token.strip_suffix('.').unwrap_or(token);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| name.to_ascii_lowercase())
}

fuzz_target!(|data: &[u8]| {
    let hosts = LocalHosts::from_text(data);
    let stats = hosts.stats();
    assert!(
        stats.names <= stats.entries && stats.addresses <= stats.entries,
        "{stats:?}"
    );
    assert_eq!(hosts.is_empty(), stats.names == 0);

    for line in data.split(|&b| b == b'\n') {
        let line = line.split(|&b| b == b'#').next().unwrap_or_default();
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let mut tokens = line.split_ascii_whitespace();
        let Some(Ok(address)) = tokens.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in tokens.filter_map(usable) {
            let addresses = hosts.addresses(&name).expect("a listed name is found");
            assert!(addresses.contains(&address), "{name} lost {address}");
            assert!(
                hosts
                    .addresses(&name.to_ascii_uppercase())
                    .is_some_and(|upper| upper == addresses),
                "case matters for {name}"
            );
            if address.is_unspecified() {
                assert!(hosts.names(address).is_none(), "no PTR for {address}");
                continue;
            }
            let names = hosts.names(address).expect("a listed address has names");
            assert!(
                names.iter().any(|listed| **listed == *name),
                "{address} lost {name}"
            );
            let reverse = Name::from(address).to_ascii();
            match hosts.lookup(&reverse) {
                Some(Lookup::Names {
                    address: found,
                    names: found_names,
                }) => {
                    assert_eq!(found, address);
                    assert_eq!(found_names, names);
                }
                // A reverse name may itself be listed as a name.
                Some(Lookup::Addresses(_)) => {}
                None => panic!("{reverse} not found"),
            }
        }
    }
});
