//! The `alert-relay` binary: parses arguments, sets up logging and signals, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use alert_relay::config::{Config, ConfigError};

const USAGE: &str = "\
alert-relay: real-time alerts -> durable queue -> MQTT and GPIO

Usage:
  alert-relay run --config FILE            run the relay in the foreground
  alert-relay check-config --config FILE   validate FILE and print it resolved (secrets redacted)
  alert-relay test-output NAME [--pattern P] --config FILE
                                           run a pattern on output NAME with the real backend,
                                           then leave every output off; P is a TOML inline table,
                                           e.g. '{ kind = \"blink\", on = \"200ms\", off = \"200ms\", count = 3 }'
  alert-relay gpio list --config FILE      configured outputs, backend, and what the board reports
  alert-relay --version

Logging: RUST_LOG=debug|info|warn (default info).
Exit status: 0 ok, 1 runtime failure, 2 bad config or usage.";

enum Command {
    Run(PathBuf),
    CheckConfig(PathBuf),
    TestOutput {
        config: PathBuf,
        output: String,
        pattern: Option<String>,
    },
    GpioList(PathBuf),
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
    let mut positional = Vec::new();
    let mut pattern = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pattern" if cmd == Some("test-output") => {
                pattern = Some(it.next().ok_or("--pattern needs a value")?.clone());
            }
            s if !s.starts_with('-') && matches!(cmd, Some("test-output") | Some("gpio")) => {
                positional.push(s.to_string())
            }
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
        Some("test-output") => match positional.as_slice() {
            [name] => Ok(Command::TestOutput {
                config,
                output: name.clone(),
                pattern,
            }),
            _ => Err("test-output needs exactly one output NAME".into()),
        },
        Some("gpio") => match positional.as_slice() {
            [l] if l == "list" => Ok(Command::GpioList(config)),
            _ => Err("usage: gpio list --config FILE".into()),
        },
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
        Command::TestOutput {
            config,
            output,
            pattern,
        } => test_output(&config, &output, pattern.as_deref()),
        Command::GpioList(path) => match Config::load(&path) {
            Ok(cfg) => {
                print!("{}", alert_relay::gpio::describe(&cfg.gpio));
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

fn test_output(path: &std::path::Path, output: &str, pattern: Option<&str>) -> ExitCode {
    init_logging();
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(path, e),
    };
    let pattern = match pattern.map(|p| alert_relay::config::parse_pattern(p, "--pattern")) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("alert-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("alert-relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = alert_relay::gpio::test_output(&cfg.gpio, output, pattern, shutdown_signal());
    match rt.block_on(run) {
        Ok(r) => {
            println!(
                "test-output: {} on backend {}: {} edges{}{}; all outputs off",
                r.output,
                r.backend,
                r.edges,
                if r.max_on_cuts > 0 {
                    ", cut by max_on"
                } else {
                    ""
                },
                if r.interrupted { ", interrupted" } else { "" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("alert-relay: test-output: {e}");
            ExitCode::FAILURE
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
    match rt.block_on(alert_relay::run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
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
