//! The `dnsfront` binary: CLI → config → telemetry → runtime → App.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use dnsfront::cli::{Cli, Command, ServeArgs};
use dnsfront::config::{ConfigError, Env, RawConfig};
use dnsfront::{App, commands, demo, shutdown_on_signals, telemetry};

/// Exit code for bad command lines and configs (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code for runtime failures (cannot bind, ...).
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::PrintConfig { config } => print_config(config.as_deref()),
        Command::Serve(args) => with_runtime(|| serve(args)),
        Command::Publish(args) => with_runtime(|| commands::publish(args)),
        Command::Snapshot { command } => match commands::snapshot(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("dnsfront: {error:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Demo(args) => {
            telemetry::init_logging(
                args.log_level.as_deref().unwrap_or("info"),
                dnsfront::config::LogFormat::Text,
            );
            with_runtime(|| demo::run(args))
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let result = RawConfig::load(file).and_then(|raw| raw.validate(&Env::from_process()));
    match result {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("dnsfront: invalid config: {error}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn print_config(file: Option<&std::path::Path>) -> ExitCode {
    let raw = match file.map(RawConfig::load).transpose() {
        Ok(raw) => raw.unwrap_or_default(),
        Err(error) => {
            eprintln!("dnsfront: invalid config: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match toml::to_string_pretty(&raw) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("dnsfront: cannot print config: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    raw.apply(&args.overrides());
    let settings = raw.validate(&Env::from_process())?;
    telemetry::init_logging(
        args.log_level.as_deref().unwrap_or(&settings.log_level),
        args.log_format.unwrap_or(settings.log_format),
    );
    let metrics = telemetry::init_metrics(&settings.metrics)?;
    telemetry::describe_metrics();
    let app = App::build(settings)?;
    let shutdown = shutdown_on_signals()?;
    let ready = telemetry::Readiness::default();
    let metrics_http = metrics
        .serve_http(ready.clone(), shutdown.child_token())
        .await?;
    {
        let mut line: serde_json::Value = serde_json::from_str(&app.listening_line())?;
        if let Some(addr) = metrics_http {
            line["metrics_http"] = addr.to_string().into();
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
    // The sockets are bound and `run` starts serving them at once; /health
    // turns 503 as soon as shutdown begins.
    ready.set(true);
    let not_ready = ready.clone();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        not_ready.set(false);
    });
    let result = app.run(shutdown).await;
    ready.set(false);
    metrics.flush();
    result
}

fn with_runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dnsfront: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dnsfront: {error:#}");
            if error.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}
