//! The resolv.conf parser (`dnsfront::config::parse_resolv_conf`, the
//! forwarder's `resolv-file`): never panics, finds every well-formed
//! `nameserver` line, in order, on port 53.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let found = dnsfront::config::parse_resolv_conf(text);
    // The spec, written independently: `nameserver ADDRESS[%zone]`, comments from # or ;.
    let expected: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let line = &line[..line.find(['#', ';']).unwrap_or(line.len())];
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let address = words.next()?;
            let address = &address[..address.find('%').unwrap_or(address.len())];
            address
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect();
    assert_eq!(found, expected);
});
