//! Logging setup and metric descriptions.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Per-query logs of hickory's server are INFO; they would drown a busy node's
/// journal and cost latency, so they are held at WARN unless asked for.
const QUIET_LIBRARIES: &str = "hickory_server=warn,hickory_proto=warn,hickory_net=warn";

/// Installs the tracing subscriber on stderr. `RUST_LOG` wins over `level`.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| format!("{level},{QUIET_LIBRARIES}"));
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|error| {
        eprintln!("dnsfront: invalid log filter {filter:?} ({error}); using info");
        EnvFilter::new(format!("info,{QUIET_LIBRARIES}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already installed (tests build several apps in one process): keep the first.
    let _ = result;
}

/// Describes every crate's metrics to the installed recorder.
pub fn describe_metrics() {
    dnsfront_catalog::metrics::describe();
    dnsfront_consul::metrics::describe();
    dnsfront_dns::metrics::describe();
    dnsfront_forward::metrics::describe();
    dnsfront_snapshot::metrics::describe();
}
