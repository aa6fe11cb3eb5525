//! Query parameters and the request facts derived from them: datacenter, CAS index, ACL token.

use http::header::HeaderMap;

use super::response::{Resp, bad_request, no_leader, no_path_to_dc};
use crate::state::State;

/// Parsed query string; a bare `?passing` is `Some("")`.
#[derive(Debug, Default)]
pub(super) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub(super) fn parse(query: &str) -> Self {
        let pairs = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) => (decode(key, true), decode(value, true)),
                None => (decode(pair, true), String::new()),
            })
            .collect();
        Self { pairs }
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Percent-decodes; `plus_as_space` for query components.
pub(super) fn decode(input: &str, plus_as_space: bool) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string with any `token=` value replaced, so tokens never reach the request log.
pub(super) fn redact_token(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("token", _)) => "token=redacted",
            _ => pair,
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Go's `strconv.ParseBool`.
pub(super) fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The store a request addresses: its datacenter (unknown ⇒ 500 `No path to
/// datacenter`), and within it the namespace and partition of `?ns` and `?partition`.
/// Without Enterprise namespaces (see [`State::is_enterprise`]) a non-empty `ns` or
/// `partition` is a 400, as Consul Community Edition answers.
pub(super) fn dc_param(state: &State, params: &Params) -> Result<String, Resp> {
    let dc = params
        .get("datacenter")
        .filter(|dc| !dc.is_empty())
        .or_else(|| params.get("dc").filter(|dc| !dc.is_empty()))
        .map_or_else(|| state.default_dc.clone(), str::to_owned);
    if !state.dcs.contains_key(&dc) {
        return Err(no_path_to_dc());
    }
    let namespace = params.get("ns").filter(|ns| !ns.is_empty());
    let partition = params.get("partition").filter(|ap| !ap.is_empty());
    if namespace.is_none() && partition.is_none() {
        return Ok(dc);
    }
    if !state.is_enterprise() {
        let (param, feature) = if namespace.is_some() {
            ("ns", "Namespaces")
        } else {
            ("partition", "Admin Partitions")
        };
        return Err(bad_request(&format!(
            "Invalid query parameter: \"{param}\" - {feature} are a Consul Enterprise feature"
        )));
    }
    let (partition, namespace) = (
        partition.unwrap_or("default"),
        namespace.unwrap_or("default"),
    );
    let scoped = crate::state::scope_name(&dc, partition, namespace);
    if state.dcs.contains_key(&scoped) {
        Ok(scoped)
    } else {
        Err(bad_request(&format!(
            "Namespace {namespace:?} does not exist in partition {partition:?}"
        )))
    }
}

/// The datacenter a write addresses; without a leader ⇒ 500 `No cluster leader` first.
pub(super) fn write_dc(state: &State, params: &Params) -> Result<String, Resp> {
    if state.no_leader() {
        return Err(no_leader());
    }
    dc_param(state, params)
}

/// The optional `?cas=` index of a KV write or delete.
pub(super) fn cas_param(params: &Params) -> Result<Option<u64>, Resp> {
    params
        .get("cas")
        .map(|value| {
            value
                .parse::<u64>()
                .map_err(|_| bad_request("Invalid cas index"))
        })
        .transpose()
}

/// The ACL token of a request: `X-Consul-Token`, else `Authorization: Bearer`, else `?token=`.
pub(super) fn request_token(headers: &HeaderMap, params: &Params) -> Option<String> {
    if let Some(token) = headers
        .get("x-consul-token")
        .and_then(|value| value.to_str().ok())
        .filter(|token| !token.is_empty())
    {
        return Some(token.to_owned());
    }
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    {
        let mut parts = value.split_whitespace();
        if parts
            .next()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer"))
            && let Some(token) = parts.next()
        {
            return Some(token.to_owned());
        }
    }
    params
        .get("token")
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_and_repeated_params() {
        let params = Params::parse("passing&tag=a&tag=B%20c&dc=dc1&x=1+2");
        assert_eq!(params.get("passing"), Some(""));
        assert_eq!(params.all("tag"), vec!["a", "B c"]);
        assert_eq!(params.get("x"), Some("1 2"));
        assert!(!params.has("stale"));
    }

    #[test]
    fn redacts_tokens_from_logged_queries() {
        assert_eq!(
            redact_token("stale&token=s3cret&tag=a"),
            "stale&token=redacted&tag=a"
        );
        assert_eq!(redact_token(""), "");
    }

    #[test]
    fn decodes_percent_sequences() {
        assert_eq!(decode("a%2Fb", false), "a/b");
        assert_eq!(decode("a+b", false), "a+b");
        assert_eq!(decode("100%", false), "100%");
        assert_eq!(decode("%zz", false), "%zz");
    }
}
