//! The `dnsfront` binary: CLI → config → telemetry → runtime → App.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use dnsfront::cli::{Cli, Command, ServeArgs};
use dnsfront::config::{ConfigError, Env, RawConfig};
use dnsfront::reload::ConfigSource;
use dnsfront::{App, check, commands, control, demo, shutdown_on_signals, systemd, telemetry};

/// jemalloc instead of glibc malloc: with the forwarder's cache churn glibc's arenas
/// grew to two or three times the live heap (see benches/README.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        Command::Completions { shell } => completions(shell),
        Command::Serve(args) => {
            // Before the runtime starts any thread: this unsets LISTEN_FDS.
            let inherited = match systemd::take_listen_fds() {
                Ok(inherited) => inherited,
                Err(error) => {
                    eprintln!("dnsfront: {error:#}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            with_runtime(|| serve(args, inherited))
        }
        Command::Publish(args) => with_runtime(|| commands::publish(args)),
        Command::Check(args) => with_runtime(|| async move {
            // A check that cannot even report is critical (2), not a warning.
            let status = check::run(args).await.map_err(|error| {
                eprintln!("dnsfront: {error:#}");
                anyhow::Error::new(Unhealthy(check::Status::Fail.exit_code()))
            })?;
            match status.exit_code() {
                0 => Ok(()),
                code => Err(anyhow::Error::new(Unhealthy(code))),
            }
        }),
        Command::Explain(args) => with_runtime(|| control::run_explain(args)),
        Command::Reload(args) => with_runtime(|| control::run_reload(args)),
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

/// `dnsfront check` found a warning (1) or a failure (2): its exit code (the
/// report names the check).
#[derive(Debug)]
struct Unhealthy(u8);

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unhealthy (exit code {})", self.0)
    }
}

impl std::error::Error for Unhealthy {}

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

/// Prints the completion script (built in memory first: clap_complete
/// panics on a write error such as a closed pipe).
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dnsfront", &mut script);
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dnsfront: cannot write the completion script: {error}");
            ExitCode::from(EXIT_FAILURE)
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

async fn serve(args: ServeArgs, inherited: Option<dnsfront_dns::Inherited>) -> anyhow::Result<()> {
    // The same source is re-read on SIGHUP: the file and the same flags.
    let source = ConfigSource {
        file: args.config.clone(),
        overrides: args.overrides(),
        log_level_flag: args.log_level.clone(),
    };
    let loaded = source.load()?;
    let settings = loaded.settings.clone();
    telemetry::init_logging(
        source.log_level(&settings),
        args.log_format.unwrap_or(settings.log_format),
    );
    let metrics = telemetry::init_metrics(&settings.metrics)?;
    telemetry::describe_metrics();
    let control_socket = control::socket_path(&settings.state_dir);
    let app = App::build_with_sockets(settings, inherited)?
        .with_reload(source, loaded)
        .with_control_socket(&control_socket);
    let shutdown = shutdown_on_signals()?;
    let ready = telemetry::Readiness::default();
    let metrics_http = metrics
        .serve_http(ready.clone(), shutdown.child_token())
        .await?;
    // The sockets are bound and `run` starts serving them at once; ready
    // before the listening line is printed, so whoever reads that line finds
    // /health ready. /health turns 503 as soon as shutdown begins.
    ready.set(true);
    {
        let mut line: serde_json::Value = serde_json::from_str(&app.listening_line())?;
        if let Some(addr) = metrics_http {
            line["metrics_http"] = addr.to_string().into();
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
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
        // The files' safety-net checks run on the blocking pool every 30 s:
        // kept alive past that, its threads are reused instead of started
        // and ended for each check (tokio's default keeps them 10 s).
        .thread_keep_alive(std::time::Duration::from_secs(90))
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
        // The report already said what failed.
        Err(ref error) if let Some(Unhealthy(code)) = error.downcast_ref::<Unhealthy>() => {
            ExitCode::from(*code)
        }
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
