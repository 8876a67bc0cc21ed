//! Installer tools: `alert-relay test-output` (drive one output through the real backend and
//! engine, then leave everything safe) and `alert-relay gpio list` (what is configured and
//! what the board reports).

use std::fmt::Write;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{open_backend, pattern_length, run_engine, GpioCommand, GpioError};
use crate::config::{GpioBackendKind, GpioConfig, OutputKind, Pattern};
use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum TestOutputError {
    #[error("no output named {0:?} in the config (configured: {1})")]
    NoSuchOutput(String, String),
    #[error("a tone needs a passive_buzzer output; {0:?} is not one")]
    ToneOnWrongKind(String),
    #[error(transparent)]
    Gpio(#[from] GpioError),
}

/// What `test-output` did.
#[derive(Debug, Clone, PartialEq)]
pub struct TestReport {
    pub output: String,
    pub backend: &'static str,
    pub edges: u64,
    pub max_on_cuts: u64,
    pub interrupted: bool,
}

/// The pattern `test-output` runs without `--pattern`: three short blinks for lights and
/// buzzers, a short 2 kHz tone for passive buzzers (a DC level only clicks them).
pub fn default_test_pattern(kind: OutputKind) -> Pattern {
    match kind {
        OutputKind::PassiveBuzzer => Pattern::Tone {
            frequency: 2000,
            duty: 0.5,
            duration: Duration::from_millis(500),
        },
        _ => Pattern::Blink {
            on: Duration::from_millis(200),
            off: Duration::from_millis(200),
            count: Some(3),
            duration: None,
        },
    }
}

/// Runs `pattern` on output `name` through the configured backend and the real engine, waits
/// for it to end (or for `interrupt`), and returns with every output in its safe state.
pub async fn test_output(
    cfg: &GpioConfig,
    name: &str,
    pattern: Option<Pattern>,
    interrupt: impl Future<Output = ()>,
) -> Result<TestReport, TestOutputError> {
    let Some(i) = cfg.outputs.iter().position(|o| o.name == name) else {
        let names: Vec<&str> = cfg.outputs.iter().map(|o| o.name.as_str()).collect();
        return Err(TestOutputError::NoSuchOutput(
            name.into(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        ));
    };
    let out = &cfg.outputs[i];
    let pattern = pattern.unwrap_or_else(|| default_test_pattern(out.kind));
    if matches!(pattern, Pattern::Tone { .. }) && out.kind != OutputKind::PassiveBuzzer {
        return Err(TestOutputError::ToneOnWrongKind(name.into()));
    }
    let backend = open_backend(cfg)?;
    let backend_name = backend.name();
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (activity, mut watch_activity) = watch::channel(vec![false; cfg.outputs.len()]);
    let engine = tokio::spawn(run_engine(
        cfg.outputs.clone(),
        backend,
        rx,
        stop_rx,
        stats.clone(),
        activity,
    ));
    let length = pattern_length(&pattern, out.max_on);
    log::info!("test-output: {name} runs {pattern:?} for {length:?} on backend {backend_name}");
    let _ = tx.send(GpioCommand::Test { output: i, pattern }).await;
    let finished = async {
        // The pattern runs for `length`; then wait until the engine reports it idle.
        tokio::time::sleep(length).await;
        let _ = watch_activity.wait_for(|v| !v[i]).await;
    };
    let interrupted = tokio::select! {
        _ = finished => false,
        _ = interrupt => true,
    };
    let _ = stop_tx.send(true);
    let _ = engine.await;
    let c = stats.output(i);
    let get = |f: fn(&crate::stats::OutputCounters) -> &std::sync::atomic::AtomicU64| {
        c.map(|c| Stats::get(f(c))).unwrap_or(0)
    };
    Ok(TestReport {
        output: name.into(),
        backend: backend_name,
        edges: get(|c| &c.edges),
        max_on_cuts: get(|c| &c.max_on_cuts),
        interrupted,
    })
}

/// `alert-relay gpio list`: the configured outputs, the backend, and what the board reports
/// (GPIO chips and line names for cdev; the Pi model for rppal).
pub fn describe(cfg: &GpioConfig) -> String {
    let mut s = String::new();
    let backend = match cfg.backend {
        GpioBackendKind::Rppal => "rppal",
        GpioBackendKind::Cdev => "cdev",
        GpioBackendKind::Sim => "sim",
        GpioBackendKind::None => "none",
    };
    let _ = writeln!(s, "backend: {backend}");
    let _ = writeln!(s, "outputs:");
    if cfg.outputs.is_empty() {
        let _ = writeln!(s, "  (none configured)");
    }
    for o in &cfg.outputs {
        let at = match (o.pin, &o.line, &o.chip, o.offset) {
            (_, Some(l), _, _) if cfg.backend == GpioBackendKind::Cdev => format!("line {l:?}"),
            (_, None, Some(c), Some(off)) if cfg.backend == GpioBackendKind::Cdev => {
                format!("chip {c:?} offset {off}")
            }
            (Some(p), ..) => format!("BCM {p}"),
            (None, Some(l), ..) => format!("line {l:?}"),
            _ => "-".into(),
        };
        let kind = match o.kind {
            OutputKind::Light => "light",
            OutputKind::Buzzer => "buzzer",
            OutputKind::PassiveBuzzer => "passive_buzzer",
        };
        let _ = writeln!(
            s,
            "  {:<12} {:<22} {:<15} active_{} max_on {}",
            o.name,
            at,
            kind,
            if o.active_low { "low" } else { "high" },
            crate::config::fmt_duration(o.max_on)
        );
    }
    if let Some(b) = &cfg.ack_button {
        let at = match (b.pin, &b.line) {
            (_, Some(l)) if cfg.backend == GpioBackendKind::Cdev => format!("line {l:?}"),
            (Some(p), _) => format!("BCM {p}"),
            _ => format!("chip {:?} offset {:?}", b.chip, b.offset),
        };
        let _ = writeln!(
            s,
            "ack_button: {at}, active_{}, debounce {}",
            if b.active_low { "low" } else { "high" },
            crate::config::fmt_duration(b.debounce)
        );
    }
    let _ = writeln!(s, "board:");
    match cfg.backend {
        GpioBackendKind::Rppal => {
            let _ = writeln!(s, "  {}", super::rppal::describe());
        }
        GpioBackendKind::Cdev => match super::cdev::scan() {
            Ok(chips) if chips.is_empty() => {
                let _ = writeln!(s, "  no GPIO chips (/dev/gpiochip*) found");
            }
            Ok(chips) => {
                for c in &chips {
                    let _ = writeln!(
                        s,
                        "  {} {} label {:?}, {} lines",
                        c.path.display(),
                        c.name,
                        c.label,
                        c.lines.len()
                    );
                    for (off, n) in c.lines.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
                        let _ = writeln!(s, "    {off:>3} {n}");
                    }
                }
                for o in &cfg.outputs {
                    let r = super::cdev::resolve(
                        &chips,
                        o.line.as_deref(),
                        o.chip.as_deref(),
                        o.offset,
                    );
                    let _ = match r {
                        Ok(a) => writeln!(
                            s,
                            "  output {} -> {} offset {}",
                            o.name,
                            a.chip.display(),
                            a.offset
                        ),
                        Err(e) => writeln!(s, "  output {}: {e}", o.name),
                    };
                }
            }
            Err(e) => {
                let _ = writeln!(s, "  {e}");
            }
        },
        GpioBackendKind::Sim => {
            let _ = writeln!(
                s,
                "  simulated: edges are logged{}",
                cfg.sim_trace
                    .as_ref()
                    .map(|p| format!(" and appended to {}", p.display()))
                    .unwrap_or_default()
            );
        }
        GpioBackendKind::None => {
            let _ = writeln!(s, "  none: outputs are not driven");
        }
    }
    s
}
