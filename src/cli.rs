//! Command line (clap). This contract is relied on by users' scripts: keep it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, Overrides};

/// Node-local DNS resolver in front of Consul.
#[derive(Debug, Parser)]
#[command(name = "dnsfront", version, about, long_about = None)]
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
