//! resolv.conf-format upstream lists (dnsmasq's `resolv-file`).

use std::net::{IpAddr, SocketAddr};

/// The `nameserver` lines of a resolv.conf-format text, as port-53 addresses.
/// Other lines (search, options, comments) are ignored; so are unparseable
/// addresses and IPv6 zone suffixes.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|address| {
            let address = address.split('%').next().unwrap_or(address);
            address.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}
