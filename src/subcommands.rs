//! The one-shot subcommands: `test-output`, `queue stats|dump`, `alerts ...`/`events ...`.
//!
//! Owns: what each prints (the queue's JSON lines included) and its exit status. Never does:
//! run the relay.

use std::process::ExitCode;

use alert_relay::config::Config;
use alert_relay::source::admin::AdminCommand;

pub fn test_output(path: &std::path::Path, output: &str, pattern: Option<&str>) -> ExitCode {
    alert_relay::logging::init();
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return crate::config_error(path, e),
    };
    let pattern = match pattern.map(|p| alert_relay::config::parse_pattern(p, "--pattern")) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("alert-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // Handlers are installed inside the runtime (they need its reactor) before the test runs.
    let shutdown = {
        let _in_runtime = rt.enter();
        crate::signals::stop(crate::signals::Hangup::Stops)
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
pub fn queue_offline(dir: &std::path::Path, dump: bool) -> ExitCode {
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

pub fn admin(cfg: Config, cmd: AdminCommand) -> ExitCode {
    let rt = match crate::runtime() {
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
