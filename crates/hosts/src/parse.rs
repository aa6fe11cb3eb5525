//! The hosts(5) format: `ADDRESS NAME [ALIAS...]`, `#` starts a comment.
//!
//! Parsing never fails: a line with a bad address, or without any usable name,
//! is skipped and counted; a bad name on an otherwise good line is skipped and
//! the line counted as bad, while its other names are kept (dnsmasq does the same).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::Arc;

/// Longest name we accept (RFC 1035 §2.3.4: 255 octets on the wire).
const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Malformed lines found in one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BadLines {
    /// How many lines had a problem.
    pub(crate) count: usize,
    /// The first such line (1-based), 0 when none.
    pub(crate) first: usize,
}

/// Accumulates the entries of one or more files.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    by_name: HashMap<Box<str>, Vec<IpAddr>>,
    by_address: HashMap<IpAddr, Vec<Box<str>>>,
    entries: usize,
}

impl Builder {
    /// Adds every entry of `text` (one file's contents).
    pub(crate) fn add_file(&mut self, text: &[u8]) -> BadLines {
        let mut bad = BadLines::default();
        for (index, line) in text.split(|&byte| byte == b'\n').enumerate() {
            if !self.add_line(line) {
                bad.count += 1;
                if bad.first == 0 {
                    bad.first = index + 1;
                }
            }
        }
        bad
    }

    /// Adds one line; false when (part of) it was malformed.
    fn add_line(&mut self, line: &[u8]) -> bool {
        let line = match line.iter().position(|&byte| byte == b'#') {
            Some(comment) => &line[..comment],
            None => line,
        };
        let mut tokens = line
            .split(u8::is_ascii_whitespace)
            .filter(|token| !token.is_empty());
        let Some(address) = tokens.next() else {
            return true; // blank or comment-only
        };
        let Some(address) = std::str::from_utf8(address)
            .ok()
            .and_then(|text| text.parse::<IpAddr>().ok())
        else {
            return false;
        };
        let mut good = true;
        let mut any_name = false;
        for token in tokens {
            match normalize_file_name(token) {
                Some(name) => {
                    any_name = true;
                    self.insert(name, address);
                }
                None => good = false,
            }
        }
        good && any_name
    }

    fn insert(&mut self, name: Box<str>, address: IpAddr) {
        let addresses = self.by_name.entry(name.clone()).or_default();
        if addresses.contains(&address) {
            return;
        }
        addresses.push(address);
        self.entries += 1;
        // 0.0.0.0 / :: lines are blocklists: a PTR listing every blocked name helps nobody.
        if address.is_unspecified() {
            return;
        }
        match self.by_address.entry(address) {
            Entry::Occupied(mut names) => names.get_mut().push(name),
            Entry::Vacant(slot) => {
                slot.insert(vec![name]);
            }
        }
    }

    /// Freezes the entries into a lookup table.
    pub(crate) fn build(self) -> Table {
        Table {
            names: self.by_name.len(),
            addresses: self.by_address.len(),
            entries: self.entries,
            by_name: self
                .by_name
                .into_iter()
                .map(|(name, addresses)| (name, addresses.into()))
                .collect(),
            by_address: self
                .by_address
                .into_iter()
                .map(|(address, names)| (address, names.into()))
                .collect(),
        }
    }
}

/// The merged contents of every hosts file, read-only once built.
#[derive(Debug, Default)]
pub(crate) struct Table {
    by_name: HashMap<Box<str>, Arc<[IpAddr]>>,
    by_address: HashMap<IpAddr, Arc<[Box<str>]>>,
    /// Distinct names.
    pub(crate) names: usize,
    /// Distinct addresses that have a PTR (unspecified addresses excluded).
    pub(crate) addresses: usize,
    /// Distinct (name, address) pairs.
    pub(crate) entries: usize,
}

impl Table {
    /// Addresses of a normalized name, in file order.
    pub(crate) fn addresses(&self, name: &str) -> Option<&Arc<[IpAddr]>> {
        self.by_name.get(name)
    }

    /// Names of an address, the first one seen first.
    pub(crate) fn names(&self, address: &IpAddr) -> Option<&Arc<[Box<str>]>> {
        self.by_address.get(address)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// A name from a hosts file, lower-cased and without a trailing dot; `None`
/// when it is not a usable DNS name (letters, digits, `-` and `_` in labels of
/// 1 to 63 characters).
fn normalize_file_name(token: &[u8]) -> Option<Box<str>> {
    let token = token.strip_suffix(b".").unwrap_or(token);
    if token.is_empty() || token.len() > MAX_NAME_LEN {
        return None;
    }
    let labels_ok = token.split(|&byte| byte == b'.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .iter()
                .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    });
    if !labels_ok {
        return None;
    }
    let text = std::str::from_utf8(token).ok()?;
    Some(text.to_ascii_lowercase().into_boxed_str())
}

/// A queried name in table form: lower-case, without the trailing dot.
pub(crate) fn normalize_query(name: &str) -> std::borrow::Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|byte| byte.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles +
/// `ip6.arpa`) stands for; `None` for any other name, including partial
/// reverse names. Case-insensitive, with or without the trailing dot.
pub fn reverse_address(name: &str) -> Option<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let is_reverse = |suffix: &str| {
        name.len() > suffix.len()
            && name.is_char_boundary(name.len() - suffix.len())
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    if !is_reverse(".in-addr.arpa") && !is_reverse(".ip6.arpa") {
        return None; // most names: no allocation
    }
    let lower = name.to_ascii_lowercase();
    if let Some(labels) = lower.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut count = 0;
        for label in labels.split('.') {
            if count == 4 || label.is_empty() || label.len() > 3 {
                return None;
            }
            if !label.bytes().all(|byte| byte.is_ascii_digit())
                || (label.len() > 1 && label.starts_with('0'))
            {
                return None;
            }
            octets[3 - count] = label.parse().ok()?;
            count += 1;
        }
        return (count == 4).then(|| IpAddr::from(octets));
    }
    if let Some(labels) = lower.strip_suffix(".ip6.arpa") {
        let mut octets = [0u8; 16];
        let mut count = 0;
        for label in labels.split('.') {
            if count == 32 || label.len() != 1 {
                return None;
            }
            let nibble = u8::try_from(label.chars().next()?.to_digit(16)?).ok()?;
            // The first label is the lowest nibble of the last octet.
            let position = 31 - count;
            let octet = &mut octets[position / 2];
            if position % 2 == 0 {
                *octet |= nibble << 4;
            } else {
                *octet |= nibble;
            }
            count += 1;
        }
        return (count == 32).then(|| IpAddr::from(octets));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip literal")
    }

    fn table(text: &str) -> (Table, BadLines) {
        let mut builder = Builder::default();
        let bad = builder.add_file(text.as_bytes());
        (builder.build(), bad)
    }

    #[test]
    fn parses_the_hosts_format() {
        let (table, bad) = table(
            "# comment\n\
             \n\
             127.0.0.1\tlocalhost\n\
             10.0.0.1   web.internal   Web  # trailing comment\n\
             10.0.0.2 web.internal\n\
             fd00::1 web.internal ipv6-only\n\
             10.0.0.1 web.internal\n\
             \x20\x20 10.0.0.3 indented.\r\n",
        );
        assert_eq!(bad, BadLines::default());
        assert_eq!(
            table.addresses("web.internal").map(|a| a.to_vec()),
            Some(vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1")]),
            "file order, duplicates once"
        );
        assert_eq!(
            table.addresses("web").map(|a| a.to_vec()),
            Some(vec![ip("10.0.0.1")]),
            "aliases are lower-cased"
        );
        assert_eq!(
            table.addresses("indented").map(|a| a.to_vec()),
            Some(vec![ip("10.0.0.3")]),
            "leading blanks, trailing dot and CRLF are fine"
        );
        let names: Vec<&str> = table
            .names(&ip("10.0.0.1"))
            .expect("PTR names")
            .iter()
            .map(|name| &**name)
            .collect();
        assert_eq!(names, vec!["web.internal", "web"], "canonical name first");
        assert_eq!(table.names, 5);
        assert_eq!(table.entries, 7);
    }

    #[test]
    fn bad_lines_are_counted_and_skipped() {
        let (table, bad) = table(
            "10.0.0.1 good\n\
             300.0.0.1 bad-address\n\
             fe80::1%eth0 zone-id\n\
             10.0.0.2\n\
             10.0.0.3 ok bad/name also-ok\n\
             \u{00e9}\u{00e9} x\n\
             10.0.0.4 a..b\n",
        );
        assert_eq!(bad, BadLines { count: 6, first: 2 });
        assert!(table.addresses("good").is_some());
        assert!(
            table.addresses("ok").is_some(),
            "good names of a bad line stay"
        );
        assert!(table.addresses("also-ok").is_some());
        assert!(table.addresses("bad-address").is_none());
        assert_eq!(table.names, 3);
    }

    #[test]
    fn binary_garbage_does_not_panic() {
        let garbage: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut builder = Builder::default();
        let bad = builder.add_file(&garbage);
        assert!(bad.count > 0);
        let long = format!("10.0.0.1 {}\n", "a".repeat(300));
        let (table, bad) = table(&long);
        assert_eq!(bad.count, 1);
        assert!(table.is_empty());
    }

    #[test]
    fn unspecified_addresses_get_no_ptr() {
        let (table, _) = table("0.0.0.0 ads.example tracker.example\n:: ads.example\n");
        assert_eq!(table.addresses("ads.example").map(|a| a.len()), Some(2));
        assert!(table.names(&ip("0.0.0.0")).is_none());
        assert_eq!(table.addresses, 0);
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_address("1.0.0.10.in-addr.arpa."),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            reverse_address("1.0.0.10.IN-ADDR.ARPA"),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(reverse_address("0.0.10.in-addr.arpa."), None, "partial");
        assert_eq!(reverse_address("1.1.0.0.10.in-addr.arpa."), None);
        assert_eq!(reverse_address("256.0.0.10.in-addr.arpa."), None);
        assert_eq!(reverse_address("01.0.0.10.in-addr.arpa."), None);
        assert_eq!(reverse_address("in-addr.arpa."), None);
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(reverse_address(v6), Some(ip("fd00::1")));
        let upper = "B.A.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.IP6.ARPA";
        assert_eq!(reverse_address(upper), Some(ip("2001:db8::ab")));
        assert_eq!(reverse_address("1.0.ip6.arpa."), None);
        assert_eq!(reverse_address("example.org."), None);
    }

    #[test]
    fn query_names_normalize() {
        assert_eq!(normalize_query("Web.Internal."), "web.internal");
        assert_eq!(normalize_query("web"), "web");
    }
}
