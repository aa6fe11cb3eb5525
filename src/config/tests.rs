use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dnsfront_catalog as catalog;
use dnsfront_forward as forward;

use super::*;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    let mut raw = RawConfig::parse(text, "test.toml")?;
    raw.forward.resolv_file = PathBuf::from("/nonexistent/dnsfront-test-resolv.conf");
    raw.validate(&Env::default())
}

fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for {text:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn empty_file_gives_documented_defaults() {
    let settings = parse("").expect("defaults are valid");
    assert_eq!(
        settings.listen,
        vec!["127.0.0.1:53".parse::<SocketAddr>().expect("addr")]
    );
    assert_eq!(settings.consul.address, DEFAULT_CONSUL);
    assert!(settings.consul.stale);
    assert_eq!(settings.dns.domain.to_ascii(), "consul.");
    assert_eq!(settings.dns.service_ttl, Duration::from_secs(5));
    assert_eq!(settings.catalog.refresh_interval, Duration::from_secs(10));
    assert!(settings.forward.upstreams.is_empty());
}

#[test]
fn every_table_rejects_unknown_keys_and_names_the_path() {
    for table in [
        "dns", "consul", "catalog", "forward", "state", "snapshot", "publish", "hosts", "log",
        "metrics",
    ] {
        let message = error_of(&format!("[{table}]\nno_such_key = 1\n"));
        assert!(
            message.contains(&format!("{table}.no_such_key")),
            "{table}: {message}"
        );
        assert!(message.contains("unknown field"), "{table}: {message}");
    }
    let message = error_of("bogus = true\n");
    assert!(message.contains("bogus"), "{message}");
}

#[test]
fn bad_values_name_the_key_and_the_problem() {
    let cases = [
        ("[dns]\nlisten = [\"not-an-addr\"]", "dns.listen"),
        (
            "[dns]\nallowed_networks = [\"10.0.0.0/99\"]",
            "dns.allowed_networks",
        ),
        ("[dns]\nservice_ttl = \"1.5s\"", "dns.service_ttl"),
        ("[dns]\nmax_udp_payload = 100", "dns.max_udp_payload"),
        (
            "[catalog]\nrefresh_interval = \"0s\"",
            "catalog.refresh_interval",
        ),
        (
            "[catalog]\nnegative_cache_ttl = \"0s\"",
            "catalog.negative_cache_ttl",
        ),
        (
            "[catalog]\nrefresh_interval = \"ten\"",
            "catalog.refresh_interval",
        ),
        (
            "[consul]\naddress = \"ftp://consul:8501\"",
            "consul.address",
        ),
        ("[forward]\nupstreams = [\"nope\"]", "forward.upstreams"),
        (
            "[forward]\nupstreams = [\"127.0.0.1:53\"]",
            "forward.upstreams",
        ),
        (
            "[forward]\ndeadline = \"100ms\"\nattempt_timeout = \"1s\"",
            "forward.deadline",
        ),
    ];
    for (text, key) in cases {
        let message = error_of(text);
        assert!(
            message.contains(key),
            "{text:?} gave {message:?}, expected key {key}"
        );
    }
}

#[test]
fn upstream_that_is_our_own_listen_address_is_a_loop() {
    let message =
        error_of("[dns]\nlisten = [\"0.0.0.0:5300\"]\n[forward]\nupstreams = [\"127.0.0.1:5300\"]");
    assert!(message.contains("forwarding loop"), "{message}");
    // Another port on loopback is a different server: allowed.
    parse("[dns]\nlisten = [\"127.0.0.1:5300\"]\n[forward]\nupstreams = [\"127.0.0.1:53\"]")
        .expect("different port is fine");
}

#[test]
fn command_line_overrides_the_file() {
    let mut raw = RawConfig::parse("[dns]\nlisten = [\"127.0.0.1:5300\"]\n", "t").expect("parse");
    raw.apply(&Overrides {
        listen: vec!["127.0.0.2:53".into()],
        consul: Some("http://127.0.0.9:8500".into()),
        upstreams: vec!["192.0.2.1".into()],
        state_dir: None,
        domain: Some("Example.".into()),
    });
    let settings = raw.validate(&Env::default()).expect("valid");
    assert_eq!(settings.listen[0].to_string(), "127.0.0.2:53");
    assert_eq!(settings.consul.address, "http://127.0.0.9:8500");
    assert_eq!(settings.forward.upstreams[0].to_string(), "192.0.2.1:53");
    assert_eq!(settings.dns.domain.to_ascii(), "example.");
}

#[test]
fn consul_address_and_token_come_from_the_environment() {
    let env = Env {
        consul_http_addr: Some("10.1.2.3:8500".into()),
        consul_http_token: Some("s3cr3t-token".into()),
        consul_http_token_file: None,
        ..Env::default()
    };
    let settings = RawConfig::default().validate(&env).expect("valid");
    assert_eq!(settings.consul.address, "http://10.1.2.3:8500");
    let token = settings.consul.token.as_ref().expect("token from env");
    assert_eq!(token.expose(), "s3cr3t-token");
    assert!(
        !format!("{settings:?}").contains("s3cr3t"),
        "token leaked into Debug output"
    );
}

#[test]
fn token_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "file-token\n").expect("write");
    let text = format!("[consul]\ntoken_file = {:?}\n", path.display().to_string());
    let settings = parse(&text).expect("valid");
    assert_eq!(
        settings
            .consul
            .token
            .as_ref()
            .map(|t| t.expose().to_owned()),
        Some("file-token".into())
    );
    let missing = error_of("[consul]\ntoken_file = \"/nonexistent/token\"\n");
    assert!(missing.contains("consul.token_file"), "{missing}");
}

#[test]
fn resolv_conf_lines_become_upstreams() {
    let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\n";
    let upstreams = parse_resolv_conf(text);
    assert_eq!(
        upstreams
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["10.0.0.2:53", "[fe80::1]:53"]
    );
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../config/dnsfront.toml");
    parse(text).expect("config/dnsfront.toml must stay valid");
}

#[test]
fn config_errors_never_quote_a_token() {
    for text in [
        "[consul]\ntoken = 12345678\n",
        "[consul]\ntokne = \"s3cr3t-value\"\n",
        "[consul]\ntoken = \"s3cr3t-value\n",
    ] {
        let message = error_of(text);
        assert!(
            !message.contains("s3cr3t") && !message.contains("12345678"),
            "{text:?} leaked: {message}"
        );
        assert!(
            message.contains("line 2"),
            "{text:?}: position missing: {message}"
        );
    }
}

#[test]
fn publish_settings_are_validated_with_key_paths() {
    let check = |text: &str, key: &str| {
        let raw = RawConfig::parse(text, "t").expect("parse");
        let error = raw
            .validate_publish(&Env::default())
            .expect_err(text)
            .to_string();
        assert!(error.contains(key), "{text:?} gave {error:?}");
    };
    check("[publish]\nsession_ttl = \"5s\"", "publish.session_ttl");
    check("[publish]\nlock_delay = \"2m\"", "publish.lock_delay");
    check(
        "[publish]\nmax_drop_fraction = 1.5",
        "publish.max_drop_fraction",
    );
    check(
        "[publish]\nsigning_key_file = \"/nonexistent/key\"",
        "publish.signing_key_file",
    );
    let raw = RawConfig::parse("", "t").expect("parse");
    let (_, publish, _) = raw
        .validate_publish(&Env::default())
        .expect("defaults are valid");
    assert_eq!(publish.key, "dnsfront/hosts");
    assert_eq!(publish.stop_key, "dnsfront/hosts-stop");
}

#[test]
fn metrics_default_to_statsd_on_loopback_and_no_http_endpoint() {
    let settings = parse("").expect("defaults are valid");
    assert_eq!(
        settings.metrics,
        MetricsSettings {
            statsd_address: Some(StatsdTarget::Udp("127.0.0.1:8125".to_owned())),
            prefix: "dnsfront".to_owned(),
            tags: Vec::new(),
            statsd_tags: Vec::new(),
            prometheus_listen: None,
            events: false,
        }
    );
    let off = parse("[metrics]\nstatsd = false\n").expect("valid");
    assert!(off.metrics.is_disabled());
}

#[test]
fn metrics_keys_are_validated_with_their_paths() {
    let settings = parse(
        "[metrics]\nstatsd_address = \"statsd.local:9125\"\nprefix = \"edge.dns\"\n\
         tags = { env = \"prod\", az = \"b\" }\nprometheus_listen = \"127.0.0.1:9153\"\n",
    )
    .expect("valid");
    assert_eq!(
        settings.metrics.statsd_address,
        Some(StatsdTarget::Udp("statsd.local:9125".to_owned()))
    );
    assert_eq!(settings.metrics.prefix, "edge.dns");
    assert_eq!(
        settings.metrics.tags,
        vec![
            ("az".to_owned(), "b".to_owned()),
            ("env".to_owned(), "prod".to_owned())
        ]
    );
    assert_eq!(
        settings.metrics.prometheus_listen,
        Some("127.0.0.1:9153".parse().expect("addr"))
    );

    let cases = [
        ("statsd_address = \"localhost\"", "metrics.statsd_address"),
        ("statsd_address = \"127.0.0.1:0\"", "metrics.statsd_address"),
        ("prefix = \"bad prefix\"", "metrics.prefix"),
        ("tags = { \"1env\" = \"x\" }", "metrics.tags.1env"),
        ("tags = { env = \"a,b\" }", "metrics.tags.env"),
        (
            "prometheus_listen = \"localhost\"",
            "metrics.prometheus_listen",
        ),
        (
            "prometheus_listen = \"0.0.0.0:9153\"",
            "metrics.prometheus_listen",
        ),
        (
            "prometheus_listen = \"[::]:9153\"",
            "metrics.prometheus_listen",
        ),
        (
            "statsd_address = \"unix://relative.sock\"",
            "metrics.statsd_address",
        ),
        (
            "statsd_address = \"tcp://127.0.0.1:8125\"",
            "metrics.statsd_address",
        ),
    ];
    for (line, key) in cases {
        let message = error_of(&format!("[metrics]\n{line}\n"));
        assert!(message.starts_with(key), "{line}: {message}");
    }
}

#[test]
fn a_wildcard_metrics_endpoint_needs_its_own_key() {
    let message = error_of("[metrics]\nprometheus_listen = \"0.0.0.0:9153\"\n");
    assert!(
        message.contains("metrics.prometheus_allow_wildcard"),
        "the error names the way out: {message}"
    );
    let settings = parse(
        "[metrics]\nprometheus_listen = \"0.0.0.0:9153\"\nprometheus_allow_wildcard = true\n",
    )
    .expect("valid");
    assert_eq!(
        settings.metrics.prometheus_listen,
        Some("0.0.0.0:9153".parse().expect("addr"))
    );
    // Accepted, and listed among the risky settings (`dnsfront check`).
    assert!(
        settings
            .warnings
            .iter()
            .any(|warning| warning.starts_with("metrics.prometheus_listen is 0.0.0.0:9153")),
        "{:?}",
        settings.warnings
    );
    // A specific address needs no acknowledgement.
    let settings = parse("[metrics]\nprometheus_listen = \"10.0.0.5:9153\"\n").expect("valid");
    assert!(settings.metrics.prometheus_listen.is_some());
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
}

fn metrics_with(text: &str, datadog: DatadogEnv) -> Result<MetricsSettings, ConfigError> {
    let raw = RawConfig::parse(text, "test.toml").expect("parses");
    raw.validate(&Env {
        datadog,
        ..Env::default()
    })
    .map(|settings| settings.metrics)
}

#[test]
fn statsd_agent_and_unified_tags_come_from_the_datadog_variables() {
    let udp = |address: &str| Some(StatsdTarget::Udp(address.to_owned()));
    // DD_AGENT_HOST with DD_DOGSTATSD_PORT, or the default port.
    let host = DatadogEnv {
        agent_host: Some("10.0.0.9".into()),
        dogstatsd_port: Some("9125".into()),
        ..DatadogEnv::default()
    };
    assert_eq!(
        metrics_with("", host.clone())
            .expect("valid")
            .statsd_address,
        udp("10.0.0.9:9125")
    );
    let host_only = DatadogEnv {
        agent_host: Some("dd-agent.local".into()),
        ..DatadogEnv::default()
    };
    assert_eq!(
        metrics_with("", host_only).expect("valid").statsd_address,
        udp("dd-agent.local:8125")
    );
    let ipv6 = DatadogEnv {
        agent_host: Some("fd00::1".into()),
        ..DatadogEnv::default()
    };
    assert_eq!(
        metrics_with("", ipv6).expect("valid").statsd_address,
        udp("[fd00::1]:8125")
    );
    // DD_DOGSTATSD_URL wins over DD_AGENT_HOST, as in datadog-go.
    let url = DatadogEnv {
        dogstatsd_url: Some("unix:///var/run/datadog/dsd.socket".into()),
        ..host.clone()
    };
    assert_eq!(
        metrics_with("", url.clone()).expect("valid").statsd_address,
        Some(StatsdTarget::Unix("/var/run/datadog/dsd.socket".into()))
    );
    let udp_url = DatadogEnv {
        dogstatsd_url: Some("udp://127.0.0.2:8126".into()),
        ..DatadogEnv::default()
    };
    assert_eq!(
        metrics_with("", udp_url).expect("valid").statsd_address,
        udp("127.0.0.2:8126")
    );
    // The file's key wins over every variable; statsd = false turns it all off.
    let from_file = metrics_with(
        "[metrics]\nstatsd_address = \"127.0.0.1:7125\"\n",
        url.clone(),
    );
    assert_eq!(
        from_file.expect("valid").statsd_address,
        udp("127.0.0.1:7125")
    );
    let off = metrics_with("[metrics]\nstatsd = false\n", url).expect("valid");
    assert!(off.is_disabled());

    // Unified service tags: StatsD only, and a metrics.tags key wins.
    let tagged = DatadogEnv {
        env: Some("prod".into()),
        service: Some("dns".into()),
        version: Some("1.2.3".into()),
        ..DatadogEnv::default()
    };
    let settings =
        metrics_with("[metrics]\ntags = { service = \"resolver\" }\n", tagged).expect("valid");
    assert_eq!(
        settings.tags,
        vec![("service".to_owned(), "resolver".to_owned())]
    );
    assert_eq!(
        settings.statsd_tags,
        vec![
            ("env".to_owned(), "prod".to_owned()),
            ("version".to_owned(), "1.2.3".to_owned())
        ]
    );

    // Bad values are refused naming the variable.
    let cases = [
        (
            DatadogEnv {
                dogstatsd_url: Some("10.0.0.1:8125".into()),
                ..DatadogEnv::default()
            },
            "DD_DOGSTATSD_URL",
        ),
        (
            DatadogEnv {
                dogstatsd_url: Some("unix://dsd.socket".into()),
                ..DatadogEnv::default()
            },
            "DD_DOGSTATSD_URL",
        ),
        (
            DatadogEnv {
                agent_host: Some("bad host".into()),
                ..DatadogEnv::default()
            },
            "DD_AGENT_HOST",
        ),
        (
            DatadogEnv {
                dogstatsd_port: Some("0".into()),
                ..DatadogEnv::default()
            },
            "DD_DOGSTATSD_PORT",
        ),
        (
            DatadogEnv {
                env: Some("pro d".into()),
                ..DatadogEnv::default()
            },
            "DD_ENV",
        ),
    ];
    for (datadog, variable) in cases {
        let message = metrics_with("", datadog.clone())
            .expect_err(&format!("{datadog:?}"))
            .to_string();
        assert!(message.starts_with(variable), "{datadog:?}: {message}");
    }
}

#[test]
fn forward_rules_and_policies_are_parsed_and_checked_with_key_paths() {
    let settings = parse(
        r#"
[dns]
listen = ["127.0.0.1:53"]
[forward]
upstreams = ["192.0.2.1"]
strategy = "race"
serve_stale = "2h"
rebind_protection = true
rebind_allow = ["corp.example"]
[[forward.rules]]
zone = "Query.Consul"
upstreams = ["127.0.0.1:8600"]
[[forward.rules]]
zone = "10.in-addr.arpa"
upstreams = ["10.0.0.2", "10.0.0.3:5353"]
"#,
    )
    .expect("valid");
    let forward = &settings.forward;
    assert_eq!(forward.strategy, forward::Strategy::Race);
    assert_eq!(forward.serve_stale, Duration::from_secs(7200));
    assert_eq!(forward.rules.len(), 2);
    assert_eq!(
        forward.rules[1].upstreams,
        vec![
            "10.0.0.2:53".parse::<SocketAddr>().expect("addr"),
            "10.0.0.3:5353".parse().expect("addr")
        ]
    );

    let message = error_of("[[forward.rules]]\nzone = \"a..b\"\nupstreams = [\"10.0.0.1\"]\n");
    assert!(message.contains("forward.rules[0].zone"), "{message}");
    let message = error_of("[[forward.rules]]\nzone = \"x.example\"\nupstreams = [\"nope\"]\n");
    assert!(message.contains("forward.rules[0].upstreams"), "{message}");
    let message = error_of(
        "[dns]\nlisten = [\"127.0.0.1:53\"]\n[[forward.rules]]\nzone = \"x.example\"\nupstreams = [\"127.0.0.1:53\"]\n",
    );
    assert!(message.contains("forwarding loop"), "{message}");
    let message = error_of("[forward]\nstrategy = \"random\"\n");
    assert!(message.contains("forward.strategy"), "{message}");
}

#[test]
fn hosts_and_query_log_keys_are_checked() {
    let settings =
        parse("[hosts]\nfiles = []\nttl = \"10s\"\n[log]\nqueries = true\nquery_sample = 0.25\n")
            .expect("valid");
    assert!(settings.hosts.files.is_empty());
    assert_eq!(settings.dns.local_ttl, Duration::from_secs(10));
    assert!(settings.dns.query_log.enabled);
    assert!((settings.dns.query_log.sample - 0.25).abs() < f64::EPSILON);
    assert_eq!(
        parse("").expect("defaults").hosts.files,
        vec![PathBuf::from("/etc/hosts")]
    );
    let message = error_of("[log]\nquery_sample = 1.5\n");
    assert!(message.contains("log.query_sample"), "{message}");
    let message = error_of("[hosts]\nwatch_interval = \"1ms\"\n");
    assert!(message.contains("hosts.watch_interval"), "{message}");
}

#[test]
fn tcp_limit_keys_are_parsed_and_checked() {
    let settings = parse(
        "[dns]\ntcp_max_connections = 50\ntcp_max_connections_per_client = 5\ntcp_max_pipelined = 2\ntcp_max_lifetime = \"30s\"\n[forward]\nmax_in_flight = 100\n",
    )
    .expect("valid");
    let server = &settings.server;
    assert_eq!(server.tcp_max_connections, 50);
    assert_eq!(server.tcp_max_connections_per_client, 5);
    assert_eq!(server.tcp_max_pipelined, 2);
    assert_eq!(server.tcp_max_lifetime, Duration::from_secs(30));
    assert_eq!(
        server.reserved_fds,
        100 + 256,
        "upstream sockets are reserved"
    );
    for (text, key) in [
        ("tcp_max_connections = 0", "dns.tcp_max_connections"),
        (
            "tcp_max_connections_per_client = 0",
            "dns.tcp_max_connections_per_client",
        ),
        ("tcp_max_pipelined = 0", "dns.tcp_max_pipelined"),
        ("tcp_max_lifetime = \"5s\"", "dns.tcp_max_lifetime"),
    ] {
        let message = error_of(&format!("[dns]\n{text}\n"));
        assert!(message.starts_with(key), "{text}: {message}");
    }
}

#[test]
fn catalog_watch_mode_keys_are_parsed_and_checked() {
    let settings = parse("[catalog]\nrefresh = \"watch\"\nwatch_wait = \"2m\"\nmax_watches = 50\n")
        .expect("valid");
    assert_eq!(settings.catalog.refresh, catalog::RefreshMode::Watch);
    assert_eq!(settings.catalog.watch_wait, Duration::from_secs(120));
    assert_eq!(settings.catalog.max_watches, 50);
    // Watch is the fleet-safe default (issue 14 §3).
    assert_eq!(
        parse("").expect("defaults").catalog.refresh,
        catalog::RefreshMode::Watch
    );
    let settings = parse("[catalog]\nnode_refresh_interval = \"5m\"\n").expect("valid");
    assert_eq!(
        settings.catalog.node_refresh_interval,
        Duration::from_secs(300)
    );
    let message = error_of("[catalog]\nnode_refresh_interval = \"2h\"\n");
    assert!(
        message.contains("catalog.node_refresh_interval"),
        "{message}"
    );
    let message = error_of("[catalog]\nrefresh = \"watch\"\nwatch_wait = \"11m\"\n");
    assert!(message.contains("catalog.watch_wait"), "{message}");
    let message = error_of("[catalog]\nrefresh = \"sometimes\"\n");
    assert!(message.contains("catalog.refresh"), "{message}");
}

// === the key registry against the schema and the docs ===

/// The field names serde expects where `text` put an unknown key, read from
/// its "unknown field `x`, expected one of `a`, `b`" message.
fn expected_fields(text: &str) -> Vec<String> {
    let message = error_of(text);
    let (_, expected) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("{text:?}: {message}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Every key path the serde structs accept (nested tables such as
/// `forward.rules` count as one key).
fn schema_keys() -> Vec<String> {
    let mut paths = Vec::new();
    for table in expected_fields("no_such_table = 1\n") {
        for field in expected_fields(&format!("[{table}]\nno_such_key = 1\n")) {
            paths.push(format!("{table}.{field}"));
        }
    }
    paths
}

fn registry_keys() -> Vec<String> {
    keys::KEYS.iter().map(|key| key.path.to_owned()).collect()
}

fn sorted(mut paths: Vec<String>) -> Vec<String> {
    paths.sort();
    paths.dedup();
    paths
}

#[test]
fn the_key_registry_names_exactly_the_keys_of_the_file_schema() {
    let schema = sorted(schema_keys());
    assert!(schema.len() > 60, "{schema:?}");
    assert_eq!(keys::KEYS.len(), schema.len(), "a key is declared twice");
    assert_eq!(sorted(registry_keys()), schema);
}

/// The keys `config/dnsfront.toml` shows, commented out or not: `key = ...`
/// lines under a `[table]`, and nested `[table.key]` / `[[table.key]]` headers.
fn documented_keys(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut table = String::new();
    for line in text.lines() {
        let line = line.trim();
        let uncommented = line.trim_start_matches('#').trim();
        // A commented-out table header (`# [[forward.rules]]`) documents its key too.
        if uncommented.starts_with('[') {
            table = uncommented.trim_matches(['[', ']']).to_owned();
            if table.contains('.') {
                paths.push(table.clone());
            }
            continue;
        }
        let Some((name, _)) = uncommented.split_once(" = ") else {
            continue;
        };
        let is_key = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_key && !table.contains('.') {
            paths.push(format!("{table}.{name}"));
        }
    }
    paths
}

#[test]
fn shipped_config_documents_every_key_and_no_other() {
    let documented = sorted(documented_keys(include_str!("../../config/dnsfront.toml")));
    assert_eq!(documented, sorted(registry_keys()));
}

#[test]
fn shipped_config_shows_the_default_values() {
    let shipped = RawConfig::parse(include_str!("../../config/dnsfront.toml"), "dnsfront.toml")
        .expect("parses");
    let as_value = |raw: &RawConfig| toml::Value::try_from(raw).expect("serializes");
    let (shipped, default) = (as_value(&shipped), as_value(&RawConfig::default()));
    for key in keys::KEYS {
        let (table, name) = key.path.split_once('.').expect("table.key");
        let get = |value: &toml::Value| value.get(table).and_then(|t| t.get(name)).cloned();
        assert_eq!(get(&shipped), get(&default), "{}", key.path);
    }
}

/// The README's "Need a restart:" list, tables (`[consul]`) expanded to their keys.
fn readme_restart_keys(readme: &str) -> Vec<String> {
    let start = readme.find("Need a restart:").expect("README restart list");
    let list = &readme[start..];
    let list = &list[..list.find("\n\n").unwrap_or(list.len())];
    let mut paths = Vec::new();
    for token in list.split('`').skip(1).step_by(2) {
        match token.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            Some(table) => paths.extend(
                registry_keys()
                    .into_iter()
                    .filter(|path| path.starts_with(&format!("{table}."))),
            ),
            None => paths.push(token.to_owned()),
        }
    }
    paths
}

/// The first column of the README's "Applied live:" table.
fn readme_live_entries(readme: &str) -> Vec<String> {
    let start = readme.find("Applied live:").expect("README live table");
    readme[start..]
        .lines()
        .skip(1)
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn readme_reload_tables_agree_with_the_key_registry() {
    let readme = include_str!("../../README.md");
    let restart: Vec<String> = keys::KEYS
        .iter()
        .filter(|key| key.reload == keys::Reload::Restart)
        .map(|key| key.path.to_owned())
        .collect();
    assert_eq!(sorted(readme_restart_keys(readme)), sorted(restart));

    let live_entries = readme_live_entries(readme);
    assert!(!live_entries.is_empty(), "README live table found");
    for entry in &live_entries {
        let known = registry_keys().contains(entry)
            || registry_keys()
                .iter()
                .any(|path| path.starts_with(&format!("{}.", entry.trim_matches(['[', ']']))));
        assert!(
            known,
            "README live table names {entry}, no such key or table"
        );
    }
    for key in keys::KEYS.iter().filter(|key| key.reload.is_live()) {
        let table = format!("[{}]", key.path.split_once('.').expect("table.key").0);
        assert!(
            live_entries
                .iter()
                .any(|entry| entry == key.path || *entry == table),
            "{} applies live but the README's live table does not name it",
            key.path
        );
    }
    for entry in &live_entries {
        let key = keys::KEYS.iter().find(|key| key.path == entry);
        assert!(
            key.is_none_or(|key| key.reload.is_live()),
            "README says {entry} applies live, the registry says it needs a restart"
        );
    }
}

#[test]
fn readme_names_only_keys_that_exist() {
    let tables = expected_fields("no_such_table = 1\n");
    let metrics: Vec<&str> = crate::telemetry::ALL_METRICS
        .iter()
        .copied()
        .flatten()
        .map(|(name, ..)| *name)
        .collect();
    let readme = include_str!("../../README.md");
    for token in readme.split('`').skip(1).step_by(2) {
        let Some((table, rest)) = token.split_once('.') else {
            continue;
        };
        let is_key_like = tables.iter().any(|t| t == table)
            && !rest.is_empty()
            && rest.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if is_key_like && !metrics.contains(&token) {
            assert!(
                registry_keys().iter().any(|path| path == token),
                "README names `{token}`, which is no config key (nor metric)"
            );
        }
    }
}

// === forwarder errors, named by key path (moved from crates/forward) ===

fn forward_error(config: &forward::Config) -> String {
    let error = config.validate().expect_err("invalid forwarder config");
    super::forward::invalid_forward(error).to_string()
}

#[test]
fn forwarder_errors_name_the_key_path() {
    let bad_payload = forward::Config {
        udp_payload: 100,
        ..forward::Config::default()
    };
    let error = forward_error(&bad_payload);
    assert!(error.contains("forward.udp_payload"), "{error}");
    assert_eq!(
        error,
        "forward.udp_payload: must be between 512 and 4096, got 100"
    );

    let inverted = forward::Config {
        min_ttl: Duration::from_secs(600),
        max_ttl: Duration::from_secs(60),
        ..forward::Config::default()
    };
    let error = forward_error(&inverted);
    assert!(error.contains("forward.min_ttl"), "{error}");
    assert_eq!(
        error,
        "forward.min_ttl: must not exceed forward.max_ttl (60s), got 600s"
    );

    let short_deadline = forward::Config {
        deadline: Duration::from_millis(100),
        attempt_timeout: Duration::from_millis(500),
        ..forward::Config::default()
    };
    assert_eq!(
        forward_error(&short_deadline),
        "forward.deadline: must be at least forward.attempt_timeout (500ms), got 100ms"
    );

    let zero_port = forward::Config {
        upstreams: vec!["127.0.0.1:0".parse().expect("literal")],
        ..forward::Config::default()
    };
    assert_eq!(
        forward_error(&zero_port),
        "forward.upstreams: entry 0 is not a usable address: 127.0.0.1:0"
    );
}

fn rule(zone: &str, upstreams: &[&str]) -> forward::DomainRule {
    forward::DomainRule {
        zone: zone.parse().expect("zone literal"),
        upstreams: upstreams
            .iter()
            .map(|addr| addr.parse().expect("addr literal"))
            .collect(),
    }
}

#[test]
fn forwarder_rule_errors_name_the_rule() {
    let config = forward::Config {
        rules: vec![
            rule("example.com.", &["10.0.0.1:53"]),
            rule("10.in-addr.arpa", &["10.0.0.2:53"]),
            rule("Example.COM", &["10.0.0.3:53"]),
        ],
        ..forward::Config::default()
    };
    assert_eq!(
        forward_error(&config),
        "forward.rules[2].zone: example.com. appears in an earlier rule"
    );

    let empty = forward::Config {
        rules: vec![rule("corp.example.", &[])],
        ..forward::Config::default()
    };
    let error = forward_error(&empty);
    assert!(error.starts_with("forward.rules[0].upstreams:"), "{error}");

    let unusable = forward::Config {
        rules: vec![
            rule("a.example.", &["10.0.0.1:53"]),
            rule("b.example.", &["10.0.0.1:0"]),
        ],
        ..forward::Config::default()
    };
    let error = forward_error(&unusable);
    assert!(error.starts_with("forward.rules[1].upstreams:"), "{error}");

    let root = forward::Config {
        rules: vec![rule(".", &["10.0.0.1:53"])],
        ..forward::Config::default()
    };
    assert_eq!(
        forward_error(&root),
        "forward.rules[0].zone: must not be the root: use forward.upstreams for the default"
    );

    let root_allowed = forward::Config {
        rebind_allow: vec![".".parse().expect("root")],
        ..forward::Config::default()
    };
    assert_eq!(
        forward_error(&root_allowed),
        "forward.rebind_allow[0]: must not be the root: set forward.rebind_protection = false instead"
    );
}

#[test]
fn forwarder_numeric_settings_name_their_key() {
    let cases = [
        (
            forward::Config {
                max_fails: 0,
                ..forward::Config::default()
            },
            "forward.max_fails",
        ),
        (
            forward::Config {
                probe_interval: Duration::from_millis(10),
                ..forward::Config::default()
            },
            "forward.probe_interval",
        ),
        (
            forward::Config {
                serve_stale: Duration::from_secs(30 * 86_400),
                ..forward::Config::default()
            },
            "forward.serve_stale",
        ),
        (
            forward::Config {
                stale_answer_ttl: Duration::ZERO,
                ..forward::Config::default()
            },
            "forward.stale_answer_ttl",
        ),
    ];
    for (config, key) in cases {
        let error = forward_error(&config);
        assert!(error.starts_with(key), "{error}");
    }
}

/// Every key path a validation message spells (`"dns.listen"`,
/// `"forward.rules[{index}].zone"`, `"metrics.tags.{key}"`) is a registered key.
#[test]
fn validation_messages_name_registered_keys() {
    let tables = expected_fields("no_such_table = 1\n");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("src/config").flatten() {
        let name = entry.file_name();
        if name == "tests.rs" {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read");
        for literal in text.split('"').skip(1).step_by(2) {
            let Some((table, rest)) = literal.split_once('.') else {
                continue;
            };
            if !tables.iter().any(|t| t == table) {
                continue;
            }
            let field: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let path = format!("{table}.{field}");
            if field.is_empty() || name == "keys.rs" {
                continue;
            }
            assert!(
                registry_keys().contains(&path),
                "{}: {literal:?} names no registered key",
                name.to_string_lossy()
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} key paths found");
}
