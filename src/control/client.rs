//! The control socket's client: `dnsfront explain`, and [`request`] for
//! `dnsfront check` and scripts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use super::client_candidates;
use super::protocol::{ExplainReport, Request};
use super::render::render_explain;
use crate::cli::{DEFAULT_CONFIG_FILE, ExplainArgs, ReloadArgs};
use crate::reload::Outcome;

/// How long `explain` waits for the server (it waits up to a few seconds on
/// our own listener and, for a never-seen name, on Consul).
const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `reload` waits for the server (it reads the config, the resolv
/// file and the hosts files; systemd's own ExecReload= timeout is longer).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to the control socket at `path` and returns the
/// response's payload (`explain`, `stats` or `reload`), or its error.
pub async fn request(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let cmd = request.cmd();
    let response = tokio::time::timeout(timeout, async {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        write.write_all(line.as_bytes()).await?;
        let mut reader = BufReader::new(read);
        let mut response = String::new();
        reader.read_line(&mut response).await?;
        if response.is_empty() {
            bail!("{} closed the connection without answering", path.display());
        }
        Ok::<_, anyhow::Error>(response)
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "{} did not answer within {}",
            path.display(),
            humantime::format_duration(timeout)
        )
    })??;
    let mut value: serde_json::Value =
        serde_json::from_str(&response).context("malformed control response")?;
    if value["ok"].as_bool() != Some(true) {
        bail!(
            "{}",
            value["error"]
                .as_str()
                .unwrap_or("the server refused the request")
        );
    }
    Ok(value[cmd].take())
}

/// The control socket to talk to: `--control`, else the first that exists of
/// [`client_candidates`] for the config's state dir (`--config`, else
/// `/etc/dnsfront/dnsfront.toml` when it exists, else the defaults).
pub fn find_socket(config: Option<&Path>, control: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = control {
        return Ok(path.to_owned());
    }
    let file = config.map(Path::to_owned).or_else(|| {
        let default = Path::new(DEFAULT_CONFIG_FILE);
        default.exists().then(|| default.to_owned())
    });
    let raw = match &file {
        Some(path) => crate::config::RawConfig::load(path)?,
        None => crate::config::RawConfig::default(),
    };
    let candidates = client_candidates(&raw.state.dir);
    candidates
        .iter()
        .find(|path| path.exists())
        .cloned()
        .with_context(|| {
            format!(
                "no control socket found (looked at {}); is dnsfront serve running? Pass --control PATH",
                candidates
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// `dnsfront explain NAME [TYPE]`: prints the running server's report.
pub async fn run_explain(args: ExplainArgs) -> anyhow::Result<()> {
    let path = find_socket(args.config.as_deref(), args.control.as_deref())?;
    let value = request(
        &path,
        &Request::Explain {
            name: args.name.clone(),
            qtype: args.qtype.clone(),
        },
        EXPLAIN_TIMEOUT,
    )
    .await?;
    if args.json {
        println!("{value}");
    } else {
        let report: ExplainReport =
            serde_json::from_value(value).context("malformed explain report")?;
        print!("{}", render_explain(&report));
    }
    Ok(())
}

/// `dnsfront reload`: asks the running server to reload and prints what
/// changed. An invalid configuration is an error naming the key (the server
/// keeps the running one), so `systemctl reload` fails and says why.
pub async fn run_reload(args: ReloadArgs) -> anyhow::Result<()> {
    let path = find_socket(args.config.as_deref(), args.control.as_deref())?;
    let value = request(&path, &Request::Reload, RELOAD_TIMEOUT)
        .await
        .context("reload refused; the server keeps its running configuration")?;
    if args.json {
        println!("{value}");
        return Ok(());
    }
    let outcome: Outcome = serde_json::from_value(value).context("malformed reload report")?;
    let list = |keys: &[String]| {
        if keys.is_empty() {
            "none".to_owned()
        } else {
            keys.join(", ")
        }
    };
    println!("reloaded: changed: {}", list(&outcome.changed));
    if !outcome.restart_required.is_empty() {
        println!(
            "restart required (running values kept): {}",
            list(&outcome.restart_required)
        );
    }
    Ok(())
}
