//! The `alert-relay` binary: parses arguments, sets up logging and signals, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use alert_relay::config::{Config, ConfigError};

const USAGE: &str = "\
alert-relay: real-time alerts -> durable queue -> MQTT and GPIO

Usage:
  alert-relay run --config FILE            run the relay in the foreground
  alert-relay check-config --config FILE   validate FILE and print it resolved (secrets redacted)
  alert-relay --version

Logging: RUST_LOG=debug|info|warn (default info).
Exit status: 0 ok, 1 runtime failure, 2 bad config or usage.";

enum Command {
    Run(PathBuf),
    CheckConfig(PathBuf),
    Version,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let cmd = it.next().map(String::as_str);
    match cmd {
        None | Some("-h") | Some("--help") | Some("help") => return Ok(Command::Help),
        Some("-V") | Some("--version") => return Ok(Command::Version),
        _ => {}
    }
    let mut config = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => {
                config = Some(PathBuf::from(it.next().ok_or("--config needs a FILE")?));
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]))
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let config = config.ok_or("--config FILE is required")?;
    match cmd {
        Some("run") => Ok(Command::Run(config)),
        Some("check-config") => Ok(Command::CheckConfig(config)),
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Ok(Command::Help),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("alert-relay: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("alert-relay {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig(path) => match Config::load(&path) {
            Ok(cfg) => {
                print!("{}", cfg.redacted_toml());
                eprintln!("alert-relay: {} is valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&path, e),
        },
        Command::Run(path) => {
            init_logging();
            let cfg = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => return config_error(&path, e),
            };
            run(cfg)
        }
    }
}

fn config_error(path: &std::path::Path, e: ConfigError) -> ExitCode {
    eprintln!("alert-relay: bad config {}: {e}", path.display());
    ExitCode::from(2)
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
}

fn run(cfg: Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("alert-relay {} starting", env!("CARGO_PKG_VERSION"));
    // Handlers go in before startup work, so a SIGTERM during startup stops cleanly too.
    let shutdown = {
        let _runtime = rt.enter();
        shutdown_signal()
    };
    match rt.block_on(alert_relay::run(cfg, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now (inside the runtime) and returns a future that
/// resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move { wait_for_signal(term, int).await }
}

async fn wait_for_signal(
    term: std::io::Result<tokio::signal::unix::Signal>,
    int: std::io::Result<tokio::signal::unix::Signal>,
) {
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM received"),
                _ = int.recv() => log::info!("SIGINT received"),
            }
        }
        _ => {
            log::warn!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}
