//! Command line (clap). This contract is relied on by users' scripts: keep it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, Overrides};

/// The config file `check` and `explain` read when not told.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/dnsfront/dnsfront.toml";

/// `--version`: the package version and the commit it was built from
/// (`unknown` outside a git checkout; see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DNSFRONT_COMMIT"),
    ")"
);

/// Node-local DNS resolver in front of Consul.
#[derive(Debug, Parser)]
#[command(name = "dnsfront", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve DNS: Consul names from the catalog cache, everything else forwarded.
    Serve(ServeArgs),
    /// Serve on 127.0.0.1:5353 with an embedded simulated Consul and a sample catalog.
    Demo(DemoArgs),
    /// Validate a config file: exit 0 if valid, 64 with the key path and problem if not.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Publish the hosts snapshot to Consul KV (run on Consul server nodes; a
    /// Consul session lock elects one writer among them).
    Publish(PublishArgs),
    /// Inspect, export or verify the hosts snapshot.
    Snapshot {
        /// What to do with it.
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Check the installation: config, Consul (leader, ACL token), listen
    /// sockets, the running server, the hosts snapshot and each upstream.
    /// One `ok|warn|fail` line per check (or `--json`); the exit code follows
    /// the Nagios/Consul script-check convention: 0 all ok, 1 a warning,
    /// 2 a failure.
    Check(CheckArgs),
    /// Ask the running server where the answer for NAME comes from right now
    /// (over its control socket).
    Explain(ExplainArgs),
    /// Ask the running server to re-read its configuration now (as SIGHUP
    /// does) and wait for the outcome: exit 0 when it was applied, 1 with the
    /// key and the problem when the new configuration is invalid (the server
    /// keeps serving with the running one). dnsfront.service's `ExecReload=`.
    Reload(ReloadArgs),
    /// Print the shell completion script for SHELL (the package installs
    /// them; generated from these definitions).
    #[command(hide = true)]
    Completions {
        /// bash, zsh or fish.
        shell: clap_complete::Shell,
    },
    /// Print the effective configuration (defaults filled in) as TOML.
    PrintConfig {
        /// The config file (defaults only when omitted).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `dnsfront serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (TOML); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// UDP+TCP address to listen on; repeat for several (default 127.0.0.1:53).
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// Consul agent HTTP address (default $CONSUL_HTTP_ADDR or http://127.0.0.1:8500).
    #[arg(long, value_name = "URL")]
    pub consul: Option<String>,
    /// Upstream resolver for non-Consul names; repeat for several (default: the resolv file).
    #[arg(long = "upstream", value_name = "ADDR[:PORT]")]
    pub upstream: Vec<String>,
    /// Directory for on-disk state (default /var/lib/dnsfront).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The Consul domain (default consul).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Log level or filter, e.g. `debug` or `info,dnsfront_catalog=debug` (RUST_LOG wins).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The flags that override config file values.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            consul: self.consul.clone(),
            upstreams: self.upstream.clone(),
            state_dir: self.state_dir.clone(),
            domain: self.domain.clone(),
        }
    }
}

/// `dnsfront check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file (default /etc/dnsfront/dnsfront.toml when it exists, else the defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The running server's control socket (default: found from the config).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Print the report as one JSON object (status, exit_code, checks).
    #[arg(long)]
    pub json: bool,
}

/// `dnsfront explain`
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The name to explain, e.g. web.service.consul.
    pub name: String,
    /// Record type (default A).
    #[arg(value_name = "TYPE")]
    pub qtype: Option<String>,
    /// Config file, to find the control socket (default /etc/dnsfront/dnsfront.toml when it exists).
    #[arg(long, value_name = "FILE", conflicts_with = "control")]
    pub config: Option<PathBuf>,
    /// The control socket of the running server.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dnsfront reload`
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Config file, to find the control socket (default /etc/dnsfront/dnsfront.toml when it exists).
    #[arg(long, value_name = "FILE", conflicts_with = "control")]
    pub config: Option<PathBuf>,
    /// The control socket of the running server.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dnsfront demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// UDP+TCP address to listen on.
    #[arg(
        long = "listen",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:5353"
    )]
    pub listen: Vec<String>,
    /// Upstream resolver for non-Consul names (default: the resolv file, else /etc/resolv.conf).
    #[arg(long = "upstream", value_name = "ADDR[:PORT]")]
    pub upstream: Vec<String>,
    /// Log level or filter.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// `dnsfront publish`
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Config file (TOML): `[consul]`, `[snapshot]` and `[publish]` are read.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Consul agent HTTP address (default $CONSUL_HTTP_ADDR or http://127.0.0.1:8500).
    #[arg(long, value_name = "URL")]
    pub consul: Option<String>,
    /// Publish even when the guards (minimum size, maximum drop) say no.
    #[arg(long)]
    pub force: bool,
    /// Log level or filter (RUST_LOG wins).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// `dnsfront snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Print the snapshot in the state dir as a hosts file (for dnsmasq's
    /// addn-hosts: the migration and rollback path) or as JSON.
    Export {
        /// State directory holding the snapshot.
        #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "hosts")]
        format: ExportFormat,
        /// The Consul domain used in hosts-file names.
        #[arg(long, default_value = "consul")]
        domain: String,
    },
    /// Summarise the snapshot in the state dir: generation, age, size, counts, signer.
    Show {
        /// State directory holding the snapshot.
        #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Public key to verify the signature with (snapshot.public_key_file); without
        /// it a signature is reported as unverified.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Verify a snapshot file (format, checksum, and signature when a key is given).
    Verify {
        /// The snapshot file (e.g. STATE_DIR/hosts-snapshot.bin, or a value saved from KV).
        file: PathBuf,
        /// Ed25519 public key file (base64); then an unsigned snapshot fails.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Generate an Ed25519 key pair for signing snapshots.
    Keygen {
        /// Where to write the private key (mode 0600; for `publish.signing_key_file`).
        #[arg(long, value_name = "FILE")]
        private_key: PathBuf,
        /// Where to write the public key (for `snapshot.public_key_file`).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
    },
}

/// `snapshot export --format`
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// `IP NAME` lines.
    Hosts,
    /// The decoded snapshot.
    Json,
}
