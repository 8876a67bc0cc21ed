//! The `alert-relay` binary: parses arguments ([`cli`]), sets up logging and signals
//! ([`signals`]), calls the library, and speaks systemd's notify protocol ([`systemd`]).

mod cli;
mod signals;
mod subcommands;
mod systemd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alert_relay::config::{Config, ConfigError};
use cli::{Command, USAGE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match cli::parse_args(&args) {
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
        Command::Admin(path, cmd) => {
            alert_relay::logging::init();
            match Config::load(&path) {
                Ok(cfg) => subcommands::admin(cfg, cmd),
                Err(e) => config_error(&path, e),
            }
        }
        Command::TestOutput {
            config,
            output,
            pattern,
        } => subcommands::test_output(&config, &output, pattern.as_deref()),
        Command::GpioList(path) => match Config::load(&path) {
            Ok(cfg) => {
                print!("{}", alert_relay::gpio::describe(&cfg.gpio));
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&path, e),
        },
        Command::QueueStats(dir) => subcommands::queue_offline(&dir, false),
        Command::QueueDump(dir) => subcommands::queue_offline(&dir, true),
        Command::Run(path) => {
            alert_relay::logging::init();
            match Config::load(&path) {
                Ok(cfg) => run(cfg, path),
                Err(e) => config_error(&path, e),
            }
        }
    }
}

/// `run`: the relay in the foreground until SIGTERM, SIGINT or SIGQUIT; SIGHUP reloads `path`.
fn run(cfg: Config, path: PathBuf) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    log::info!("alert-relay {} starting", env!("CARGO_PKG_VERSION"));
    // Handlers go in before the queue directory exists: a SIGTERM right after start must
    // stop the daemon cleanly, not kill it with the default action.
    let (shutdown, requests) = {
        let _in_runtime = rt.enter();
        (signals::stop(signals::Hangup::Reloads), signals::reloads())
    };
    let options = alert_relay::RunOptions {
        on_ready: Some(Box::new(systemd::ready)),
        reload: Some(alert_relay::reload::Reload {
            path,
            requests,
            notify: systemd::reloading,
        }),
        ..Default::default()
    };
    let relay = alert_relay::run(cfg, shutdown, options);
    let result = rt.block_on(systemd::watched(relay));
    systemd::stopping();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints what `check-config` prints for a bad file (a reload logs the same words).
fn config_error(path: &Path, e: ConfigError) -> ExitCode {
    eprintln!("alert-relay: {}", alert_relay::reload::bad_config(path, &e));
    ExitCode::from(2)
}

/// The single-threaded runtime every subcommand runs on.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("alert-relay: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}
