//! The `publish` and `snapshot ...` commands.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use dnsfront_consul as consul;
use dnsfront_snapshot as snapshot;
use tracing::{info, warn};

use crate::cli::{ExportFormat, PublishArgs, SnapshotCommand};
use crate::config::{Env, RawConfig};
use crate::{shutdown_on_signals, telemetry};

/// `dnsfront publish`: runs until SIGTERM/SIGINT, then releases the lock.
pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    if let Some(consul) = &args.consul {
        raw.consul.address = Some(consul.clone());
    }
    let env = Env::from_process();
    let (consul_config, publish, catalog) = raw.validate_publish(&env)?;
    telemetry::init_logging(
        args.log_level.as_deref().unwrap_or(&raw.log.level),
        args.log_format.unwrap_or(raw.log.format),
    );
    // The publisher sends StatsD only: the HTTP endpoint belongs to `serve`,
    // which may run on the same node with the same config file.
    let _metrics = telemetry::init_metrics(&crate::config::MetricsSettings {
        prometheus_listen: None,
        ..raw.metrics.validate(&env.datadog)?
    })?;
    telemetry::describe_metrics();
    for warning in raw.token_warnings(&consul_config) {
        warn!(warning = %warning, "Risky configuration");
    }
    let client = consul::Client::new(consul_config).context("consul")?;
    let identity = match publish.identity.clone() {
        Some(identity) => identity,
        None => {
            client
                .agent_self()
                .await
                .context("asking the Consul agent for its node name (or set publish.identity)")?
                .node_name
        }
    };
    let config = snapshot::publisher::PublisherConfig {
        key: publish.key.clone(),
        lock_key: snapshot::follower::lock_key_for(&publish.key),
        stop_key: publish.stop_key.clone(),
        pointer_key: snapshot::pointer::pointer_key_for(&publish.key),
        signing_key: publish.signing_key.clone(),
        min_interval: publish.min_interval,
        session_ttl: publish.session_ttl,
        lock_delay: publish.lock_delay,
        min_services: publish.min_services,
        max_drop_fraction: publish.max_drop_fraction,
        force: args.force,
        only_passing: catalog.only_passing,
        // The generation high-water mark, so nothing read from KV can set the counter
        // back, even across restarts: the unit's own state directory when systemd gives
        // one (dnsfront-publish.service), else `state.dir`.
        state_dir: Some(publisher_state_dir(&raw.state.dir)),
        events: crate::events::sink(&raw.metrics.validate(&env.datadog)?)?,
        ..snapshot::publisher::PublisherConfig::new(identity.clone())
    };
    info!(identity = %identity, key = %publish.key, signed = publish.signing_key.is_some(), state_dir = ?config.state_dir, "Publisher starting");
    if publish.signing_key.is_none() {
        warn!(
            "Publishing UNSIGNED snapshots: resolvers accept them only with snapshot.allow_unsigned = true; set publish.signing_key_file in production"
        );
    }
    let shutdown = shutdown_on_signals()?;
    snapshot::publisher::Publisher::new(config, client)
        .run(shutdown)
        .await
        .context("publisher")?;
    Ok(())
}

/// `$STATE_DIRECTORY` (its first entry) when systemd set it, else `configured`.
fn publisher_state_dir(configured: &Path) -> std::path::PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            dirs.to_str()
                .and_then(|dirs| dirs.split(':').next())
                .filter(|dir| !dir.is_empty())
                .map(std::path::PathBuf::from)
        })
        .unwrap_or_else(|| configured.to_owned())
}

/// `dnsfront snapshot ...`: offline commands, no Consul needed.
pub fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match command {
        SnapshotCommand::Export {
            state_dir,
            format,
            domain,
        } => {
            let verified = load_state(&state_dir)?;
            match format {
                ExportFormat::Hosts => {
                    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                    stdout.write_all(
                        snapshot::to_hosts_file(&verified.snapshot, &domain).as_bytes(),
                    )?;
                }
                ExportFormat::Json => {
                    serde_json::to_writer_pretty(&mut stdout, &verified.snapshot)?;
                    writeln!(stdout)?;
                }
            }
        }
        SnapshotCommand::Show {
            state_dir,
            public_key,
        } => {
            let key = public_key
                .as_deref()
                .map(snapshot::keys::load_verifying_key)
                .transpose()
                .context("public key")?;
            let verified =
                verify_state(&state_dir, key.as_ref())?.with_context(|| no_snapshot(&state_dir))?;
            describe(&mut stdout, &verified, key.is_some())?;
        }
        SnapshotCommand::Verify { file, public_key } => {
            let key = public_key
                .as_deref()
                .map(snapshot::keys::load_verifying_key)
                .transpose()
                .context("public key")?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let verified = snapshot::decode(&bytes, key.as_ref())
                .with_context(|| format!("{} failed verification", file.display()))?;
            writeln!(
                stdout,
                "{}: ok (generation {}, {}){}",
                file.display(),
                verified.snapshot.generation,
                if verified.signed {
                    "signed"
                } else {
                    "unsigned"
                },
                if key.is_some() {
                    ", signature verified"
                } else {
                    ""
                }
            )?;
        }
        SnapshotCommand::Keygen {
            private_key,
            public_key,
        } => {
            let (private, public) = snapshot::keys::generate_keypair();
            write_private(&private_key, &private)?;
            std::fs::write(&public_key, format!("{public}\n"))
                .with_context(|| format!("writing {}", public_key.display()))?;
            writeln!(
                stdout,
                "private key: {} (for publish.signing_key_file)\npublic key:  {} (for snapshot.public_key_file)",
                private_key.display(),
                public_key.display()
            )?;
        }
    }
    Ok(())
}

fn load_state(state_dir: &Path) -> anyhow::Result<snapshot::Verified> {
    verify_state(state_dir, None)?.with_context(|| no_snapshot(state_dir))
}

fn no_snapshot(state_dir: &Path) -> String {
    format!(
        "no snapshot in {} (expected {})",
        state_dir.display(),
        snapshot::store::path(state_dir).display()
    )
}

/// Reads and verifies the snapshot in `state_dir` (format, checksum, and the
/// signature when `key` is given); `Ok(None)` when there is none.
pub(crate) fn verify_state(
    state_dir: &Path,
    key: Option<&snapshot::VerifyingKey>,
) -> anyhow::Result<Option<snapshot::Verified>> {
    let Some(bytes) = snapshot::store::load(state_dir)? else {
        return Ok(None);
    };
    snapshot::decode(&bytes, key).map(Some).with_context(|| {
        format!(
            "{} is not a valid snapshot",
            snapshot::store::path(state_dir).display()
        )
    })
}

/// How long ago the publisher built `snapshot` (whole seconds).
pub(crate) fn snapshot_age(snapshot: &snapshot::Snapshot) -> Duration {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Duration::from_secs(now_ms.saturating_sub(snapshot.created_unix_ms) / 1000)
}

/// `key_checked`: the signature was verified with a public key (else a signature is only
/// reported as present, never as good).
fn describe(
    out: &mut impl std::io::Write,
    verified: &snapshot::Verified,
    key_checked: bool,
) -> anyhow::Result<()> {
    let snapshot = &verified.snapshot;
    let age = snapshot_age(snapshot);
    writeln!(out, "generation:   {}", snapshot.generation)?;
    writeln!(out, "age:          {}", humantime::format_duration(age))?;
    writeln!(out, "datacenter:   {}", snapshot.datacenter)?;
    writeln!(out, "consul index: {}", snapshot.consul_index)?;
    writeln!(out, "publisher:    {}", snapshot.publisher)?;
    writeln!(
        out,
        "signed:       {}",
        match (verified.signed, key_checked) {
            (true, true) => "yes (verified with the public key)",
            (true, false) => "unverified (signature present; pass --public-key to verify it)",
            (false, _) => "no",
        }
    )?;
    writeln!(out, "size:         {} bytes", verified.encoded_size)?;
    writeln!(out, "services:     {}", snapshot.services.len())?;
    writeln!(out, "instances:    {}", snapshot.instance_count())?;
    writeln!(out, "nodes:        {}", snapshot.nodes.len())?;
    Ok(())
}

/// The private key file is created with mode 0600 and never overwritten.
fn write_private(path: &Path, key: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    writeln!(file, "{key}")?;
    Ok(())
}
