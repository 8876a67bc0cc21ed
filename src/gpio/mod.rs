//! GPIO: the pattern scheduler that turns rule decisions into output edges, and the backends
//! that drive pins.
//!
//! Owns: output state and timing. Never does: rule matching (that is `rules`) or any network
//! I/O. Every output starts in its safe (inactive) state and is driven back to it on every exit
//! path of [`run_engine`]: shutdown, channel close, and backend errors.
//!
//! Pre-emption: a fire with a priority at least that of the running pattern replaces it (the old
//! pattern does not resume); a lower-priority fire while a pattern runs is ignored.

mod backend;
pub mod pattern;

pub use backend::{open_backend, Backend, GpioError};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::OutputConfig;
use crate::rules::Fire;
use crate::stats::Stats;
use pattern::PatternCursor;

/// Fires waiting for the engine. A burst larger than this is dropped at the sender (counted):
/// lights cannot show more than a handful of patterns per second anyway.
pub const FIRE_CHANNEL_CAPACITY: usize = 64;

/// What the engine can be told.
#[derive(Debug, Clone, PartialEq)]
pub enum GpioCommand {
    /// A rule matched a live alert.
    Fire(Fire),
    /// Stop every active pattern now (MQTT `cmd/silence`, an acknowledge button).
    Silence,
    /// Run `pattern` on output `output` now, pre-empting anything (installer test).
    Test {
        output: usize,
        pattern: crate::config::Pattern,
    },
}

struct Active {
    priority: i32,
    started: Instant,
    cursor: PatternCursor,
    /// When the next edge is due, and its level.
    next: Option<(Instant, bool)>,
}

/// Runs until `shutdown` turns true or every sender is dropped; then all outputs go safe.
pub async fn run_engine(
    outputs: Vec<OutputConfig>,
    mut backend: Box<dyn Backend>,
    mut commands: mpsc::Receiver<GpioCommand>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
    activity: watch::Sender<Vec<bool>>,
) {
    let mut active: Vec<Option<Active>> = outputs.iter().map(|_| None).collect();
    let mut level = vec![false; outputs.len()];
    for i in 0..outputs.len() {
        set(&mut *backend, &outputs, &mut level, i, false, &stats, true);
    }
    loop {
        let due = active
            .iter()
            .filter_map(|a| a.as_ref().and_then(|a| a.next.map(|(t, _)| t)))
            .min();
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            cmd = commands.recv() => {
                let fire = match cmd {
                    None => break,
                    Some(GpioCommand::Fire(f)) => f,
                    Some(GpioCommand::Test { output, pattern }) => Fire { output, rule: usize::MAX, pattern, priority: i32::MAX },
                    Some(GpioCommand::Silence) => {
                        for i in 0..active.len() {
                            if active[i].take().is_some() {
                                log::info!("gpio: {} silenced", outputs[i].name);
                            }
                            set(&mut *backend, &outputs, &mut level, i, false, &stats, false);
                        }
                        publish_activity(&activity, &active);
                        continue;
                    }
                };
                let Some(cfg) = outputs.get(fire.output) else { continue };
                if let Some(a) = &active[fire.output] {
                    if fire.priority < a.priority {
                        log::debug!("gpio: {} keeps its higher-priority pattern", cfg.name);
                        continue;
                    }
                }
                let now = Instant::now();
                let mut cursor = PatternCursor::new(fire.pattern, cfg.max_on);
                let next = cursor.next_edge().map(|(off, l)| (now + off, l));
                active[fire.output] = Some(Active { priority: fire.priority, started: now, cursor, next });
                advance(&mut *backend, &outputs, &mut level, &mut active, fire.output, &stats);
                publish_activity(&activity, &active);
            }
            _ = sleep_until_opt(due), if due.is_some() => {
                for i in 0..active.len() {
                    advance(&mut *backend, &outputs, &mut level, &mut active, i, &stats);
                }
                publish_activity(&activity, &active);
            }
        }
    }
    for (i, a) in active.iter_mut().enumerate() {
        *a = None;
        set(&mut *backend, &outputs, &mut level, i, false, &stats, true);
    }
    publish_activity(&activity, &active);
    log::info!("gpio: all outputs in their safe state");
}

/// Tells watchers (MQTT `{prefix}/outputs/{name}`) which outputs run a pattern; only changes
/// wake them, not every blink edge.
fn publish_activity(activity: &watch::Sender<Vec<bool>>, active: &[Option<Active>]) {
    let now: Vec<bool> = active.iter().map(Option::is_some).collect();
    activity.send_if_modified(|v| {
        if *v != now {
            *v = now;
            true
        } else {
            false
        }
    });
}

async fn sleep_until_opt(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await
    }
}

/// Applies every edge of output `i` that is due now.
fn advance(
    backend: &mut dyn Backend,
    outputs: &[OutputConfig],
    level: &mut [bool],
    active: &mut [Option<Active>],
    i: usize,
    stats: &Stats,
) {
    let now = Instant::now();
    while let Some(a) = active[i].as_mut() {
        match a.next {
            Some((t, l)) if t <= now => {
                set(backend, outputs, level, i, l, stats, false);
                a.next = a.cursor.next_edge().map(|(off, l)| (a.started + off, l));
            }
            Some(_) => break,
            None => {
                // Pattern over: make sure it ends inactive, whatever its last edge was.
                set(backend, outputs, level, i, false, stats, false);
                active[i] = None;
            }
        }
    }
}

fn set(
    backend: &mut dyn Backend,
    outputs: &[OutputConfig],
    level: &mut [bool],
    i: usize,
    on: bool,
    stats: &Stats,
    force: bool,
) {
    if level[i] == on && !force {
        return;
    }
    match backend.set(i, on) {
        Ok(()) => {
            if level[i] != on {
                stats.inc(&stats.gpio_edges);
            }
            level[i] = on;
        }
        Err(e) => {
            stats.inc(&stats.gpio_errors);
            stats.warn_limited(
                "gpio",
                format_args!(
                    "gpio: cannot set {} {}: {e}",
                    outputs[i].name,
                    if on { "on" } else { "off" }
                ),
            );
        }
    }
}

/// A pattern's total length, for logs and tests.
pub fn pattern_length(p: &crate::config::Pattern, max_on: Duration) -> Duration {
    let mut c = PatternCursor::new(p.clone(), max_on);
    let mut last = Duration::ZERO;
    while let Some((t, _)) = c.next_edge() {
        last = t;
    }
    last
}
