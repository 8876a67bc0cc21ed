//! The `alert-relay` binary: parses arguments, sets up logging and signals, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use alert_relay::config::{Config, ConfigError};
use alert_relay::source::admin::{AdminCommand, Target};

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
  alert-relay queue stats --dir DIR        summarise a queue directory as JSON (read-only)
  alert-relay queue dump --dir DIR         print its records as JSON lines (read-only)
  alert-relay --version

VideoDB alerts and events (VideoDB mode config; --rtstream/--index default to [[source.alerts]]):
  alert-relay alerts list    --config FILE [--rtstream ID --index ID]
  alert-relay alerts create  --config FILE --event EVENT_ID [--callback-url URL] [--rtstream ID --index ID]
  alert-relay alerts enable  ID --config FILE [--rtstream ID --index ID]
  alert-relay alerts disable ID --config FILE [--rtstream ID --index ID]
  alert-relay alerts delete  ID --config FILE [--rtstream ID --index ID]
  alert-relay events create  --config FILE --label LABEL --prompt PROMPT
  alert-relay events list    --config FILE

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
    QueueStats(PathBuf),
    QueueDump(PathBuf),
    Version,
    Help,
    Admin(PathBuf, AdminCommand),
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let cmd = it.next().map(String::as_str);
    match cmd {
        None | Some("-h") | Some("--help") | Some("help") => return Ok(Command::Help),
        Some("-V") | Some("--version") => return Ok(Command::Version),
        Some("alerts") | Some("events") => return parse_admin(args),
        Some("queue") => return parse_queue_args(&args[1..]),
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

/// `alerts ...` / `events create ...`: a verb, an optional positional ID, options.
fn parse_admin(args: &[String]) -> Result<Command, String> {
    let group = args[0].as_str();
    let verb = args
        .get(1)
        .map(String::as_str)
        .ok_or("alerts/events need a verb")?;
    let mut config = None;
    let mut positional = Vec::new();
    let mut opt = std::collections::HashMap::new();
    let mut it = args[2..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => {
                config = Some(PathBuf::from(it.next().ok_or("--config needs a FILE")?))
            }
            o @ ("--rtstream" | "--index" | "--event" | "--callback-url" | "--label"
            | "--prompt") => {
                let v = it.next().ok_or_else(|| format!("{o} needs a value"))?;
                opt.insert(o, v.clone());
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]))
            }
            s if s.starts_with('-') => return Err(format!("unexpected option {s:?}")),
            s => positional.push(s.to_string()),
        }
    }
    let config = config.ok_or("--config FILE is required")?;
    let target = Target {
        rtstream_id: opt.remove("--rtstream"),
        index_id: opt.remove("--index"),
    };
    let mut take = |k: &str| {
        opt.remove(k)
            .ok_or_else(|| format!("{group} {verb} needs {k}"))
    };
    let cmd = match (group, verb) {
        ("alerts", "list") => AdminCommand::AlertsList { target },
        ("alerts", "create") => AdminCommand::AlertsCreate {
            target,
            event_id: take("--event")?,
            callback_url: opt.remove("--callback-url"),
        },
        ("alerts", v @ ("enable" | "disable")) => AdminCommand::AlertsSetEnabled {
            target,
            alert_id: positional
                .pop()
                .ok_or_else(|| format!("alerts {v} needs the alert ID"))?,
            enabled: v == "enable",
        },
        ("alerts", "delete") => AdminCommand::AlertsDelete {
            target,
            alert_id: positional.pop().ok_or("alerts delete needs the alert ID")?,
        },
        ("events", "create") => AdminCommand::EventsCreate {
            label: take("--label")?,
            prompt: take("--prompt")?,
        },
        ("events", "list") => AdminCommand::EventsList,
        _ => return Err(format!("unknown command {group} {verb}")),
    };
    if !positional.is_empty() || !opt.is_empty() {
        return Err(format!("{group} {verb}: unexpected arguments"));
    }
    Ok(Command::Admin(config, cmd))
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
        Command::Admin(path, cmd) => {
            init_logging();
            let cfg = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => return config_error(&path, e),
            };
            admin(cfg, cmd)
        }
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
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // Handlers are installed inside the runtime (they need its reactor) before the test runs.
    let shutdown = {
        let _in_runtime = rt.enter();
        shutdown_signal()
    };
    let run = alert_relay::gpio::test_output(&cfg.gpio, output, pattern, shutdown);
    match rt.block_on(run) {
        Ok(r) => {
            // Not println!: after a SIGHUP from a closed SSH session stdout is gone, and a
            // failed print must not turn a clean stop into a panic.
            use std::io::Write;
            let _ = writeln!(
                std::io::stdout(),
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
    alert_relay::logging::init();
}

fn run(cfg: Config) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    log::info!("alert-relay {} starting", env!("CARGO_PKG_VERSION"));
    // Handlers go in before the queue directory exists: a SIGTERM right after start must
    // stop the daemon cleanly, not kill it with the default action.
    let shutdown = {
        let _in_runtime = rt.enter();
        shutdown_signal()
    };
    let stats = std::sync::Arc::new(alert_relay::stats::Stats::default());
    let result = rt.block_on(async {
        let relay = alert_relay::run_with(cfg, shutdown, stats, systemd_ready);
        tokio::pin!(relay);
        // Under systemd (Type=notify, WatchdogSec) the runtime proves it is alive by pinging
        // at half the watchdog interval; a wedged event loop stops pinging and gets restarted.
        match sd_notify::watchdog_enabled() {
            Some(interval) => {
                let mut tick = tokio::time::interval(interval / 2);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        r = &mut relay => break r,
                        _ = tick.tick() => {
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                        }
                    }
                }
            }
            None => relay.await,
        }
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Tells systemd (when it started us with NOTIFY_SOCKET) that the relay is up: the queue is
/// recovered and every stage runs. Outside systemd this does nothing.
fn systemd_ready() {
    match sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        Ok(()) => log::debug!("systemd: READY=1 sent (if NOTIFY_SOCKET is set)"),
        Err(e) => log::warn!("systemd: cannot send READY=1: {e}"),
    }
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

fn admin(cfg: Config, cmd: AdminCommand) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(alert_relay::source::admin::run(&cfg.source, cmd)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("alert-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs handlers now for every signal whose default action would end the process without
/// driving the outputs to their safe state: SIGTERM, SIGINT, SIGHUP (a closed terminal or SSH
/// session, which flaky Wi-Fi makes common while an installer tries the relay by hand) and
/// SIGQUIT. The future resolves on the first of them; the caller then stops cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut handled = Vec::new();
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::quit(), "SIGQUIT"),
    ] {
        match signal(kind) {
            Ok(s) => handled.push((s, name)),
            Err(e) => log::warn!("cannot handle {name} ({e}): it would stop the relay uncleanly"),
        }
    }
    async move {
        if handled.is_empty() {
            log::warn!("no signal handlers; stop with SIGKILL");
            return std::future::pending::<()>().await;
        }
        let name = std::future::poll_fn(|cx| {
            for (s, name) in handled.iter_mut() {
                if s.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*name);
                }
            }
            std::task::Poll::Pending
        })
        .await;
        log::info!("{name} received");
    }
}
