//! The `alert-relay` binary: parses arguments, sets up logging and signals, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use alert_relay::config::{Config, ConfigError};

const USAGE: &str = "\
alert-relay: real-time alerts -> durable queue -> MQTT and GPIO

Usage:
  alert-relay run --config FILE            run the relay in the foreground
  alert-relay check-config --config FILE   validate FILE and print it resolved (secrets redacted)
  alert-relay queue stats --dir DIR        summarise a queue directory as JSON (read-only)
  alert-relay queue dump --dir DIR         print its records as JSON lines (read-only)
  alert-relay --version

Logging: RUST_LOG=debug|info|warn (default info).
Exit status: 0 ok, 1 runtime failure, 2 bad config or usage.";

enum Command {
    Run(PathBuf),
    CheckConfig(PathBuf),
    QueueStats(PathBuf),
    QueueDump(PathBuf),
    Version,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let cmd = it.next().map(String::as_str);
    match cmd {
        None | Some("-h") | Some("--help") | Some("help") => return Ok(Command::Help),
        Some("-V") | Some("--version") => return Ok(Command::Version),
        Some("queue") => return parse_queue_args(&args[1..]),
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

/// `queue stats|dump --dir DIR`.
fn parse_queue_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let sub = it.next().map(String::as_str);
    let mut dir = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(it.next().ok_or("--dir needs a DIR")?)),
            s if s.starts_with("--dir=") => dir = Some(PathBuf::from(&s["--dir=".len()..])),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let dir = dir.ok_or("--dir DIR is required")?;
    match sub {
        Some("stats") => Ok(Command::QueueStats(dir)),
        Some("dump") => Ok(Command::QueueDump(dir)),
        other => Err(format!("queue needs `stats` or `dump`, not {other:?}")),
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
        Command::QueueStats(dir) => queue_offline(&dir, false),
        Command::QueueDump(dir) => queue_offline(&dir, true),
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

/// `queue stats` / `queue dump`: a read-only scan of DIR (safe next to a running relay).
fn queue_offline(dir: &std::path::Path, dump: bool) -> ExitCode {
    use std::io::Write;
    if !dir.is_dir() {
        eprintln!(
            "alert-relay: queue directory {} does not exist",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_failed = false;
    let summary = alert_relay::queue::inspect_dir(dir, |r| {
        if !dump || write_failed {
            return;
        }
        let mut line = serde_json::json!({
            "seq": r.record.seq,
            "accepted_at": alert_relay::clock::rfc3339_micros(r.record.accepted_us),
            "acked": r.acked,
        });
        match alert_relay::alert::QueuedMessage::decode(&r.record.payload) {
            Ok(m) => {
                line["topic"] = m.topic_suffix.into();
                line["via"] = m.via.as_str().into();
                line["body"] = serde_json::from_slice(&m.body)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&m.body).into());
            }
            Err(e) => {
                line["error"] = e.to_string().into();
                line["payload_bytes"] = r.record.payload.len().into();
            }
        }
        write_failed = writeln!(out, "{line}").is_err();
    });
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            eprintln!("alert-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    if dump {
        eprintln!(
            "alert-relay: {} records ({} unacknowledged) in {}",
            summary.records,
            summary.unacked_records,
            dir.display()
        );
    } else {
        let mut v = serde_json::to_value(&summary).unwrap_or_default();
        let now = alert_relay::clock::unix_micros(std::time::SystemTime::now());
        v["oldest_unacked_age_s"] = summary
            .oldest_unacked_us
            .map(|us| now.saturating_sub(us) as f64 / 1e6)
            .into();
        write_failed = writeln!(out, "{v:#}").is_err();
    }
    if write_failed || out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
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
