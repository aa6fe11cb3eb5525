//! `dnsfront check`: a short health report of the installation, one
//! `ok|warn|fail` line per check. Every check is bounded by [`CHECK_TIMEOUT`].
//!
//! Checks: the config file; Consul (leader known? the ACL token accepted,
//! tried with a read the resolver's least-privilege policy allows? in watch
//! mode, does the agent serve watches from its streaming view?); each listen socket (free to bind, or answering DNS);
//! the running server over its control socket; the hosts snapshot in the
//! state dir (verified with the configured public key) and whether it is the
//! one in KV (generation and SHA-256); each upstream (a
//! query for [`PROBE_NAME`] NS, with its round trip).

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dnsfront_consul as consul;
use hickory_server::proto::rr::{Name, RecordType};

use crate::cli::{CheckArgs, DEFAULT_CONFIG_FILE};
use crate::config::{RawConfig, Settings};
use crate::control;
use crate::reload::ConfigSource;

/// Longest wait of one check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The name each upstream is asked for (type NS): the root, which every
/// recursive resolver answers.
pub const PROBE_NAME: &str = ".";
/// A snapshot older than this is reported as a warning.
pub const SNAPSHOT_WARN_AGE: Duration = Duration::from_secs(24 * 3600);

/// The verdict of one check; the report's is the worst of its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Healthy: exit code 0.
    Ok,
    /// Degraded or not checkable: exit code 1.
    Warn,
    /// Broken: exit code 2.
    Fail,
}

impl Status {
    /// The exit code of a report whose worst line has this status, after the
    /// Nagios plugin convention that Consul's script checks follow: 0
    /// passing, 1 warning, anything else critical.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warn => 1,
            Self::Fail => 2,
        }
    }

    /// The Nagios/Consul name of the state, for `--json`.
    pub fn state(self) -> &'static str {
        match self {
            Self::Ok => "passing",
            Self::Warn => "warning",
            Self::Fail => "critical",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that `{:<4}` lines the report up.
        f.pad(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Line {
    /// Verdict.
    pub status: Status,
    /// What was checked, e.g. `consul leader`.
    pub what: String,
    /// What was found.
    pub detail: String,
}

impl Line {
    fn new(status: Status, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            what: what.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4} {}: {}", self.status, self.what, self.detail)
    }
}

/// `dnsfront check`: prints the report (one line per check, or `--json`)
/// and returns its status, the worst of its lines (see [`Status::exit_code`]).
pub async fn run(args: CheckArgs) -> anyhow::Result<Status> {
    let lines = checks(&args).await;
    let status = worst(&lines);
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", json_report(&lines))?;
    } else {
        for line in &lines {
            writeln!(stdout, "{line}")?;
        }
    }
    stdout.flush()?;
    Ok(status)
}

/// The report's status: the worst of its lines (Ok when there are none).
pub fn worst(lines: &[Line]) -> Status {
    lines
        .iter()
        .map(|line| line.status)
        .max()
        .unwrap_or(Status::Ok)
}

/// The `--json` report: `{"status":"passing|warning|critical","exit_code":N,
/// "checks":[{"status":"ok|warn|fail","check":..,"detail":..}]}`.
pub fn json_report(lines: &[Line]) -> serde_json::Value {
    let status = worst(lines);
    serde_json::json!({
        "status": status.state(),
        "exit_code": status.exit_code(),
        "checks": lines
            .iter()
            .map(|line| serde_json::json!({
                "status": line.status.to_string(),
                "check": line.what,
                "detail": line.detail,
            }))
            .collect::<Vec<_>>(),
    })
}

/// Runs every check and returns the lines, in report order.
pub async fn checks(args: &CheckArgs) -> Vec<Line> {
    let file = args.config.clone().or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG_FILE);
        default.exists().then_some(default)
    });
    let source = ConfigSource {
        file: file.clone(),
        ..ConfigSource::default()
    };
    let settings = match source.load() {
        Ok(loaded) => loaded.settings,
        Err(error) => return vec![Line::new(Status::Fail, "config", error.to_string())],
    };
    let mut lines = vec![Line::new(
        Status::Ok,
        "config",
        match &file {
            Some(path) => format!("{} is valid", path.display()),
            None => format!("defaults ({DEFAULT_CONFIG_FILE} does not exist)"),
        },
    )];
    lines.extend(
        settings
            .warnings
            .iter()
            .map(|warning| Line::new(Status::Warn, "security", warning.clone())),
    );
    let token_origin = token_origin(file.as_deref());
    lines.extend(check_consul(&settings, token_origin).await);
    for addr in &settings.listen {
        lines.push(check_listen(*addr, &settings.dns.domain).await);
    }
    lines.push(check_server(args.control.as_deref(), &settings).await);
    lines.push(check_snapshot(&settings));
    lines.extend(check_snapshot_delivery(&settings).await);
    lines.extend(check_snapshot_trust(&settings));
    lines.extend(check_upstreams(&settings).await);
    lines
}

/// Where the token comes from, named without its value.
fn token_origin(file: Option<&Path>) -> Option<String> {
    let raw = file.and_then(|path| RawConfig::load(path).ok())?;
    if raw.consul.token.is_some() {
        Some("consul.token".to_owned())
    } else {
        raw.consul
            .token_file
            .map(|path| format!("consul.token_file {}", path.display()))
    }
    .or_else(|| {
        std::env::var("CONSUL_HTTP_TOKEN")
            .is_ok_and(|token| !token.is_empty())
            .then(|| "CONSUL_HTTP_TOKEN".to_owned())
    })
}

async fn check_consul(settings: &Settings, token_origin: Option<String>) -> Vec<Line> {
    let config = consul::Config {
        request_timeout: settings.consul.request_timeout.min(CHECK_TIMEOUT),
        ..settings.consul.clone()
    };
    let address = config.address.clone();
    let client = match consul::Client::new(config) {
        Ok(client) => client,
        Err(error) => return vec![Line::new(Status::Fail, "consul", error.to_string())],
    };
    let has_token = client.has_token();
    let mut lines = Vec::new();
    let reachable = match bounded(client.status_leader()).await {
        Ok(leader) if leader.is_empty() => {
            lines.push(Line::new(
                Status::Fail,
                "consul leader",
                format!("{address} answers but the cluster has no leader"),
            ));
            true
        }
        Ok(leader) => {
            lines.push(Line::new(
                Status::Ok,
                "consul leader",
                format!("{leader} (asked {address})"),
            ));
            true
        }
        Err(error) => {
            lines.push(Line::new(
                Status::Fail,
                "consul leader",
                format!("{address}: {error}"),
            ));
            false
        }
    };
    if !reachable {
        lines.push(Line::new(
            Status::Warn,
            "consul acl",
            "not checked (Consul unreachable)",
        ));
        return lines;
    }
    let origin = token_origin.unwrap_or_else(|| "the configuration".to_owned());
    lines.push(check_token(&client, has_token, &origin).await);
    if settings.catalog.refresh == dnsfront_catalog::RefreshMode::Watch {
        lines.push(check_streaming(&client).await);
    }
    lines
}

/// The wait of the streaming probe: short, so that a service whose index is
/// still 1 answers well within [`CHECK_TIMEOUT`].
const STREAMING_PROBE_WAIT: Duration = Duration::from_millis(500);

/// Does the agent serve watches from its streaming view? One blocking read as
/// the catalog's watches send it (`?cached&index=1&wait=`), on the `consul`
/// service (every token that may read service health may read it), and its
/// `X-Consul-Query-Backend`. Without streaming every watch read is an RPC on
/// a server, on every node at once.
async fn check_streaming(client: &consul::Client) -> Line {
    const WHAT: &str = "consul streaming";
    let options = consul::QueryOptions {
        index: Some(1),
        wait: Some(STREAMING_PROBE_WAIT),
        cached: true,
        ..consul::QueryOptions::default()
    };
    let cost = "every watch read is an RPC on a Consul server: the whole fleet is in the \
                expensive mode; set use_streaming_backend = true (the default since Consul \
                1.10) and keep http_config.use_cache on, on the client agents";
    match bounded(client.health_service("consul", &options)).await {
        Ok(response) => match response.meta.backend {
            consul::QueryBackend::Streaming => Line::new(
                Status::Ok,
                WHAT,
                "the agent serves watches from its streaming view (X-Consul-Query-Backend: streaming)",
            ),
            consul::QueryBackend::BlockingQuery => Line::new(
                Status::Warn,
                WHAT,
                format!(
                    "the agent does not stream (X-Consul-Query-Backend: blocking-query): {cost}"
                ),
            ),
            consul::QueryBackend::Unknown => Line::new(
                Status::Warn,
                WHAT,
                format!(
                    "the agent does not say how it served a watch (no X-Consul-Query-Backend: \
                     Consul before 1.10, or a proxy that drops it), so it does not stream: {cost}"
                ),
            ),
        },
        Err(error) => Line::new(Status::Warn, WHAT, format!("not checked: {error}")),
    }
}

/// Tries the token with a call the resolver's own policy allows: the health
/// of the `consul` service (small; `service_prefix` read, and any known token
/// gets an answer, filtered to what it may read). `/v1/agent/self` only adds
/// the agent's name when the token may read it (`agent:read`, which the
/// resolver does not need): a 403 there is no verdict on the token.
async fn check_token(client: &consul::Client, has_token: bool, origin: &str) -> Line {
    let who = if has_token {
        format!("token from {origin}")
    } else {
        "no token configured; the agent's default token".to_owned()
    };
    match bounded(client.health_service("consul", &consul::QueryOptions::default())).await {
        Ok(_) => {}
        Err(error) if error.token_rejected() => {
            return Line::new(
                Status::Fail,
                "consul acl",
                if has_token {
                    format!(
                        "token rejected (403 ACL not found: expired, revoked or unknown to this \
                         datacenter; the token comes from {origin})"
                    )
                } else {
                    "anonymous requests rejected (403 ACL not found): set consul.token_file"
                        .to_owned()
                },
            );
        }
        Err(error @ consul::Error::Forbidden { .. }) => {
            return Line::new(
                Status::Fail,
                "consul acl",
                format!("{who} may not read service health: {error}"),
            );
        }
        Err(error) => return Line::new(Status::Fail, "consul acl", error.to_string()),
    }
    let agent = match bounded(client.agent_self()).await {
        Ok(agent) => format!("agent {}, datacenter {}", agent.node_name, agent.datacenter),
        Err(consul::Error::Forbidden { .. }) => {
            "agent details not readable with this token (agent:read, not needed)".to_owned()
        }
        Err(error) => format!("agent details unavailable: {error}"),
    };
    Line::new(
        Status::Ok,
        "consul acl",
        format!("{who} accepted ({agent})"),
    )
}

/// A Consul call bounded by [`CHECK_TIMEOUT`] (on top of the client's own deadline).
async fn bounded<T>(
    call: impl Future<Output = Result<T, consul::Error>>,
) -> Result<T, consul::Error> {
    tokio::time::timeout(CHECK_TIMEOUT + Duration::from_millis(200), call)
        .await
        .unwrap_or_else(|_| {
            Err(consul::Error::Timeout {
                endpoint: "consul".to_owned(),
            })
        })
}

async fn check_listen(addr: SocketAddr, domain: &Name) -> Line {
    let what = format!("listen {addr}");
    if addr.port() == 0 {
        return Line::new(Status::Ok, what, "port 0: the kernel picks a port at start");
    }
    let target = control::probe::query_target(addr);
    // Something answering there (a running dnsfront, or the resolver it replaces)?
    if let Ok(answer) =
        control::probe::query(target, domain, RecordType::SOA, Duration::from_secs(1)).await
    {
        return Line::new(
            Status::Ok,
            what,
            format!(
                "in use and answering DNS ({} for {domain} SOA in {} ms)",
                answer.rcode, answer.rtt_ms
            ),
        );
    }
    let bound = std::net::UdpSocket::bind(addr).and_then(|udp| {
        let tcp = std::net::TcpListener::bind(addr)?;
        drop((udp, tcp));
        Ok(())
    });
    match bound {
        Ok(()) => Line::new(Status::Ok, what, "free: dnsfront can bind it (UDP and TCP)"),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Line::new(
            Status::Fail,
            what,
            "in use by something that does not answer DNS",
        ),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => Line::new(
            Status::Warn,
            what,
            "nothing answers DNS there, and binding it needs root or CAP_NET_BIND_SERVICE (not tested as this user)",
        ),
        Err(error) => Line::new(Status::Fail, what, format!("cannot bind: {error}")),
    }
}

async fn check_server(control_path: Option<&Path>, settings: &Settings) -> Line {
    let path = match control_path {
        Some(path) => path.to_owned(),
        None => match control::client_candidates(&settings.state_dir)
            .into_iter()
            .find(|path| path.exists())
        {
            Some(path) => path,
            None => {
                return Line::new(
                    Status::Warn,
                    "server",
                    "no running dnsfront found (no control socket)",
                );
            }
        },
    };
    match control::request(&path, &control::Request::Stats, CHECK_TIMEOUT).await {
        Ok(value) => match serde_json::from_value::<control::Stats>(value) {
            Ok(stats) => Line::new(
                if stats.consul_unavailable {
                    Status::Warn
                } else {
                    Status::Ok
                },
                "server",
                format!(
                    "dnsfront {} (pid {}) up {}, listening on {}, {} cached Consul names, Consul {}{}",
                    stats.version,
                    stats.pid,
                    humantime::format_duration(Duration::from_secs(stats.uptime_seconds)),
                    stats.listen.join(", "),
                    stats.catalog_entries,
                    if stats.consul_unavailable {
                        "unavailable (serving stale data or the snapshot)"
                    } else {
                        "reachable"
                    },
                    stats
                        .snapshot
                        .map(|s| format!(", snapshot generation {}", s.generation))
                        .unwrap_or_default()
                ),
            ),
            Err(error) => Line::new(Status::Warn, "server", format!("malformed stats: {error}")),
        },
        Err(error) => Line::new(Status::Warn, "server", format!("{error:#}")),
    }
}

/// How snapshots are trusted: a warning unless they must be signed.
fn check_snapshot_trust(settings: &Settings) -> Option<Line> {
    let follow = settings.follow.as_ref()?;
    let status = if follow.verifying_key.is_some() {
        Status::Ok
    } else {
        Status::Warn
    };
    Some(Line::new(status, "signing", follow.trust()))
}

fn check_snapshot(settings: &Settings) -> Line {
    let Some(follow) = &settings.follow else {
        return Line::new(
            Status::Ok,
            "snapshot",
            "not followed (snapshot.follow = false)",
        );
    };
    let dir = &settings.state_dir;
    match crate::commands::verify_state(dir, follow.verifying_key.as_ref()) {
        Ok(None) => Line::new(
            Status::Warn,
            "snapshot",
            format!(
                "none in {} yet (the resolver fetches one from Consul; without it a Consul outage means SERVFAIL for names not cached)",
                dir.display()
            ),
        ),
        Ok(Some(verified)) => {
            let age = crate::commands::snapshot_age(&verified.snapshot);
            let signature = match (verified.signed, follow.verifying_key.is_some()) {
                (true, true) => "signature verified",
                (true, false) => "signed, no public key configured",
                (false, _) => "unsigned",
            };
            Line::new(
                if age > SNAPSHOT_WARN_AGE {
                    Status::Warn
                } else {
                    Status::Ok
                },
                "snapshot",
                format!(
                    "generation {}, {} old, {signature}, {} services, {} nodes",
                    verified.snapshot.generation,
                    humantime::format_duration(age),
                    verified.snapshot.services.len(),
                    verified.snapshot.nodes.len()
                ),
            )
        }
        Err(error) => Line::new(Status::Fail, "snapshot", format!("{error:#}")),
    }
}

/// Files sent == files delivered: the snapshot this node holds (state dir) against the
/// one in KV, by generation and payload SHA-256. A warning while they differ (not applied
/// yet, refused, or held back by the kill switch); `None` when snapshots are not followed.
async fn check_snapshot_delivery(settings: &Settings) -> Option<Line> {
    const WHAT: &str = "delivery";
    let follow = settings.follow.as_ref()?;
    let key = follow.verifying_key.as_ref();
    let held = match crate::commands::verify_state(&settings.state_dir, key) {
        Ok(held) => held.map(|verified| (verified.snapshot.generation, verified.checksum)),
        // check_snapshot reports it.
        Err(_) => None,
    };
    let config = consul::Config {
        request_timeout: settings.consul.request_timeout.min(CHECK_TIMEOUT),
        ..settings.consul.clone()
    };
    let client = match consul::Client::new(config) {
        Ok(client) => client,
        Err(error) => return Some(Line::new(Status::Warn, WHAT, error.to_string())),
    };
    let options = consul::QueryOptions::default();
    let sent = match bounded(client.kv_get(&follow.key, &options)).await {
        Ok(response) => response.value.and_then(|pair| pair.value),
        Err(error) => {
            return Some(Line::new(
                Status::Warn,
                WHAT,
                format!("not checked: reading {} failed: {error}", follow.key),
            ));
        }
    };
    let describe = |(generation, checksum): (u64, [u8; 32])| {
        format!(
            "generation {generation} (sha256 {})",
            dnsfront_snapshot::events::short_sha(&checksum)
        )
    };
    let held_text = held.map_or_else(|| "nothing".to_owned(), describe);
    let Some(sent) = sent else {
        return Some(Line::new(
            Status::Ok,
            WHAT,
            format!(
                "no snapshot in {} yet; this node holds {held_text}",
                follow.key
            ),
        ));
    };
    Some(match dnsfront_snapshot::decode(&sent, key) {
        Err(error) => Line::new(
            Status::Warn,
            WHAT,
            format!(
                "behind: {} holds a snapshot this node refuses ({error}); it holds {held_text}",
                follow.key
            ),
        ),
        Ok(verified) => {
            let in_kv = (verified.snapshot.generation, verified.checksum);
            if held == Some(in_kv) {
                Line::new(Status::Ok, WHAT, format!("up to date: {}", describe(in_kv)))
            } else {
                Line::new(
                    Status::Warn,
                    WHAT,
                    format!(
                        "behind: holds {held_text}, {} has {}",
                        follow.key,
                        describe(in_kv)
                    ),
                )
            }
        }
    })
}

async fn check_upstreams(settings: &Settings) -> Vec<Line> {
    let upstreams = settings.forward.upstreams.clone();
    if upstreams.is_empty() {
        return vec![Line::new(
            Status::Warn,
            "upstreams",
            format!(
                "none ({}): names outside the Consul domain get SERVFAIL",
                settings.upstream_origin
            ),
        )];
    }
    let Ok(probe) = Name::from_ascii(PROBE_NAME) else {
        return Vec::new();
    };
    let mut probes = tokio::task::JoinSet::new();
    for (index, upstream) in upstreams.iter().copied().enumerate() {
        let probe = probe.clone();
        probes.spawn(async move {
            let result =
                control::probe::query(upstream, &probe, RecordType::NS, CHECK_TIMEOUT).await;
            (index, upstream, result)
        });
    }
    let mut results = probes.join_all().await;
    results.sort_by_key(|(index, _, _)| *index);
    let usable =
        |answer: &control::DnsAnswer| matches!(answer.rcode.as_str(), "NOERROR" | "NXDOMAIN");
    let answering = results
        .iter()
        .filter(|(_, _, result)| result.as_ref().is_ok_and(usable))
        .count();
    results
        .into_iter()
        .map(|(_, upstream, result)| {
            let what = format!("upstream {upstream}");
            // One dead upstream among live ones is degraded (failover works); all dead is a failure.
            let failed = if answering == 0 {
                Status::Fail
            } else {
                Status::Warn
            };
            match result {
                Ok(answer) => Line::new(
                    if usable(&answer) { Status::Ok } else { failed },
                    what,
                    format!(
                        "{} for {PROBE_NAME} NS in {} ms",
                        answer.rcode, answer.rtt_ms
                    ),
                ),
                Err(error) => Line::new(failed, what, format!("{error:#}")),
            }
        })
        .collect()
}
