//! GPIO: the pattern scheduler that turns rule decisions into output edges, and the backends
//! that drive pins.
//!
//! Owns: output state and timing. Never does: rule matching (that is `rules`) or any network
//! I/O. Every output starts in its safe (inactive) state and is driven back to it on every exit
//! path of [`run_engine`] (shutdown, channel close) and, through [`safe`], on a panic.
//!
//! Semantics, per output:
//! - Pre-emption: a fire with a priority at least that of the running pattern replaces it (the
//!   old pattern does not resume); a lower-priority fire while a pattern runs is ignored.
//! - Re-trigger: the rule that started the running pattern firing again *extends* it
//!   ([`pattern::PatternCursor::extend`]): the phase is kept, nothing restarts mid-edge.
//! - `max_on` ends any pattern, extensions included, counted from the pattern's start.
//! - Silence stops every pattern at once; outputs go inactive.
//! - Tones need a backend that can make them (rppal); others drive the envelope (on for the
//!   tone's duration), logged once per output.
//!
//! Every edge, start, extension, pre-emption, silence and `max_on` cut is counted per output
//! ([`crate::stats::OutputCounters`]).

mod backend;
mod cdev;
pub mod pattern;
mod rppal;
pub mod safe;
mod sim;
mod tools;

pub use backend::{Backend, GpioError, OnPress};
pub use cdev::{resolve as resolve_cdev_line, ChipDesc, LineAddr};
pub use sim::SimBackend;
pub use tools::{describe, test_output, TestOutputError};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{GpioBackendKind, GpioConfig, OutputConfig, Pattern};
use crate::rules::Fire;
use crate::stats::Stats;
use pattern::PatternCursor;

/// Opens the configured backend, with every output claimed in its inactive state.
pub fn open_backend(cfg: &GpioConfig) -> Result<Box<dyn Backend>, GpioError> {
    match cfg.backend {
        GpioBackendKind::None => Ok(Box::new(sim::NoneBackend)),
        GpioBackendKind::Sim => Ok(Box::new(SimBackend::new(
            &cfg.outputs,
            cfg.sim_trace.as_deref(),
        )?)),
        GpioBackendKind::Rppal => rppal::open(&cfg.outputs),
        GpioBackendKind::Cdev => cdev::open(&cfg.outputs),
    }
}

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
    Test { output: usize, pattern: Pattern },
    /// A manual command (`outputs/{name}/set`, Home Assistant's siren and light): run
    /// `pattern` (`None`: stop the output) with `priority`, like a rule of that priority: a
    /// higher-priority pattern running on the output is neither pre-empted nor stopped.
    /// Snooze does not hold it back: the user asked for it.
    Manual {
        output: usize,
        pattern: Option<Pattern>,
        priority: i32,
    },
    /// Silence now, and let no rule start a pattern for `for_` (zero ends a snooze): on
    /// buzzers only, or on lights too when `lights`.
    Snooze { for_: Duration, lights: bool },
}

/// The rule index of installer tests: never equal to a real rule, so never "extends".
const TEST_RULE: usize = usize::MAX;
/// The rule index of manual commands: a new command replaces the running one (no extension).
const MANUAL_RULE: usize = usize::MAX - 1;

struct Active {
    rule: usize,
    priority: i32,
    started: Instant,
    cursor: PatternCursor,
    tone: Option<(u32, f64)>,
}

/// What an output is doing right now.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    Off,
    On,
    Tone(u32, f64),
}

struct Engine {
    outputs: Vec<OutputConfig>,
    backend: Box<dyn Backend>,
    stats: Arc<Stats>,
    active: Vec<Option<Active>>,
    level: Vec<Level>,
    /// Outputs whose "this backend cannot make tones" line was logged.
    tone_warned: Vec<bool>,
    /// Until when rule fires are held back, and whether lights are held back too.
    snoozed: Option<(Instant, bool)>,
}

/// Runs until `shutdown` turns true or every sender is dropped; then all outputs go safe and
/// the backend is dropped (its pins released). Returns the command channel, so a config
/// reload can start the next engine on it while every sender stays valid.
pub async fn run_engine(
    outputs: Vec<OutputConfig>,
    backend: Box<dyn Backend>,
    mut commands: mpsc::Receiver<GpioCommand>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
    activity: watch::Sender<Vec<bool>>,
) -> mpsc::Receiver<GpioCommand> {
    stats.register_outputs(outputs.iter().map(|o| o.name.as_str()));
    let n = outputs.len();
    let mut e = Engine {
        outputs,
        backend,
        stats,
        active: (0..n).map(|_| None).collect(),
        level: vec![Level::Off; n],
        tone_warned: vec![false; n],
        snoozed: None,
    };
    for i in 0..n {
        e.drive(i, Level::Off, true);
    }
    loop {
        let due = e.next_due();
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            cmd = commands.recv() => {
                match cmd {
                    None => break,
                    Some(GpioCommand::Fire(f)) => {
                        if !e.snoozes(f.output) {
                            e.fire(f, false);
                        }
                    }
                    Some(GpioCommand::Manual { output, pattern: Some(pattern), priority }) => e.fire(
                        Fire { output, rule: MANUAL_RULE, pattern: pattern.into(), priority },
                        true,
                    ),
                    Some(GpioCommand::Manual { output, pattern: None, priority }) => {
                        e.stop(output, priority);
                    }
                    Some(GpioCommand::Snooze { for_, lights }) => e.snooze(for_, lights),
                    Some(GpioCommand::Test { output, pattern }) => e.fire(
                        Fire { output, rule: TEST_RULE, pattern: pattern.into(), priority: i32::MAX },
                        true,
                    ),
                    Some(GpioCommand::Silence) => e.silence(),
                }
                publish_activity(&activity, &e.active);
            }
            _ = sleep_until_opt(due), if due.is_some() => {
                for i in 0..n {
                    e.advance(i);
                }
                publish_activity(&activity, &e.active);
            }
        }
    }
    for i in 0..n {
        e.active[i] = None;
        e.drive(i, Level::Off, true);
    }
    publish_activity(&activity, &e.active);
    drop(e);
    log::info!("gpio: all outputs in their safe state");
    commands
}

impl Engine {
    fn next_due(&self) -> Option<Instant> {
        self.active
            .iter()
            .flatten()
            .filter_map(|a| a.cursor.peek().map(|e| a.started + e.at))
            .min()
    }

    fn fire(&mut self, f: Fire, restart: bool) {
        let i = f.output;
        let Some(name) = self.outputs.get(i).map(|o| o.name.clone()) else {
            return;
        };
        let now = Instant::now();
        if let Some(a) = &mut self.active[i] {
            if !restart && a.rule == f.rule {
                a.cursor.extend(now - a.started);
                self.count(i, |c| &c.extended);
                log::debug!("gpio: {name} pattern extended by rule {}", f.rule);
                self.advance(i);
                return;
            }
            if f.priority < a.priority {
                self.count(i, |c| &c.ignored_lower_priority);
                log::debug!("gpio: {name} keeps its higher-priority pattern");
                return;
            }
            self.count(i, |c| &c.preempted);
            log::debug!("gpio: {name} pattern pre-empted (priority {})", f.priority);
        }
        self.count(i, |c| &c.patterns_started);
        let tone = match *f.pattern {
            Pattern::Tone {
                frequency, duty, ..
            } => Some((frequency, duty)),
            _ => None,
        };
        let max_on = self.outputs[i].max_on;
        self.active[i] = Some(Active {
            rule: f.rule,
            priority: f.priority,
            started: now,
            cursor: PatternCursor::new(Pattern::clone(&f.pattern), max_on),
            tone,
        });
        self.advance(i);
    }

    /// Whether a snooze holds back rule fires on output `i` now.
    fn snoozes(&mut self, i: usize) -> bool {
        let Some((until, lights)) = self.snoozed else {
            return false;
        };
        if Instant::now() >= until {
            self.snoozed = None;
            log::info!("gpio: snooze over");
            return false;
        }
        let held = lights
            || self
                .outputs
                .get(i)
                .is_some_and(|o| o.kind != crate::config::OutputKind::Light);
        if held {
            log::debug!(
                "gpio: {} snoozed; rule pattern skipped",
                self.outputs[i].name
            );
        }
        held
    }

    fn snooze(&mut self, for_: Duration, lights: bool) {
        if for_.is_zero() {
            self.snoozed = None;
            log::info!("gpio: snooze ended");
            return;
        }
        self.silence();
        // A duration too far ahead for the clock is as good as forever.
        let until = Instant::now()
            .checked_add(for_)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        self.snoozed = Some((until, lights));
        log::info!("gpio: snoozed for {for_:?}");
    }

    /// Stops output `i` unless the pattern running there has a priority above `priority`.
    fn stop(&mut self, i: usize, priority: i32) {
        let Some(a) = self.active.get(i).and_then(Option::as_ref) else {
            return;
        };
        if a.priority > priority {
            self.count(i, |c| &c.ignored_lower_priority);
            log::info!(
                "gpio: {} keeps its higher-priority pattern (manual off ignored)",
                self.outputs[i].name
            );
            return;
        }
        self.active[i] = None;
        self.count(i, |c| &c.silenced);
        self.drive(i, Level::Off, false);
    }

    fn silence(&mut self) {
        self.stats.inc(&self.stats.gpio_silenced);
        for i in 0..self.active.len() {
            if self.active[i].take().is_some() {
                self.count(i, |c| &c.silenced);
                log::info!("gpio: {} silenced", self.outputs[i].name);
            }
            self.drive(i, Level::Off, false);
        }
    }

    /// Applies every edge of output `i` that is due now; ends the pattern after its last.
    fn advance(&mut self, i: usize) {
        let now = Instant::now();
        while let Some(a) = &mut self.active[i] {
            let Some(edge) = a.cursor.peek() else {
                // Pattern over: make sure it ends inactive, whatever its last edge was.
                self.active[i] = None;
                self.drive(i, Level::Off, false);
                break;
            };
            if a.started + edge.at > now {
                break;
            }
            a.cursor.advance();
            let level = match (edge.on, a.tone) {
                (false, _) => Level::Off,
                (true, None) => Level::On,
                (true, Some((f, d))) => Level::Tone(f, d),
            };
            if edge.capped {
                self.count(i, |c| &c.max_on_cuts);
                log::warn!(
                    "gpio: {} reached max_on ({:?}); pattern cut",
                    self.outputs[i].name,
                    self.outputs[i].max_on
                );
            }
            self.drive(i, level, false);
        }
    }

    fn count(
        &self,
        i: usize,
        which: impl Fn(&crate::stats::OutputCounters) -> &std::sync::atomic::AtomicU64,
    ) {
        if let Some(c) = self.stats.output(i) {
            self.stats.inc(which(c));
        }
    }

    /// Drives output `i` to `level` (unless it is there already and `force` is false).
    fn drive(&mut self, i: usize, level: Level, force: bool) {
        if self.level[i] == level && !force {
            return;
        }
        let result = match level {
            Level::Off => self.backend.set(i, false),
            Level::On => self.backend.set(i, true),
            Level::Tone(f, d) => match self.backend.tone(i, f, d) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    if !self.tone_warned[i] {
                        self.tone_warned[i] = true;
                        log::warn!(
                            "gpio: backend {} cannot make tones; {} sounds its tone patterns as plain on/off",
                            self.backend.name(),
                            self.outputs[i].name
                        );
                    }
                    self.backend.set(i, true)
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => {
                let was_on = self.level[i] != Level::Off;
                let is_on = level != Level::Off;
                if was_on != is_on {
                    self.stats.inc(&self.stats.gpio_edges);
                    self.count(i, |c| &c.edges);
                }
                self.level[i] = level;
            }
            Err(e) => {
                self.stats.inc(&self.stats.gpio_errors);
                self.count(i, |c| &c.errors);
                self.stats.warn_limited(
                    "gpio",
                    format_args!(
                        "gpio: cannot set {} {}: {e}",
                        self.outputs[i].name,
                        if level == Level::Off { "off" } else { "on" }
                    ),
                );
            }
        }
    }
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

/// Sleeps until `t`, precisely. tokio's timer fires up to ~2 ms late (1 ms wheel ticks, and
/// epoll's timeout is rounded up to whole milliseconds), so on Linux a one-shot timerfd races
/// it: the kernel's high-resolution timer wakes the reactor on time, without spinning, and a
/// sleeping thread gets the scheduler's wake-up preference under load. With tokio's clock
/// paused (tests) the tokio sleep wins at once; where no timerfd can be made, it is the only
/// timer.
async fn sleep_until_opt(t: Option<Instant>) {
    let Some(t) = t else { return };
    tokio::select! {
        _ = tokio::time::sleep_until(t) => {}
        true = precise::sleep(t.saturating_duration_since(Instant::now())) => {}
    }
}

#[cfg(target_os = "linux")]
mod precise {
    use std::time::Duration;

    use rustix::time::{
        timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
        TimerfdTimerFlags, Timespec,
    };
    use tokio::io::unix::AsyncFd;

    /// Resolves `true` after `d` on the monotonic clock; never resolves if no timer can be
    /// made (the tokio sleep it races then decides).
    pub async fn sleep(d: Duration) -> bool {
        if d.is_zero() {
            return true;
        }
        let arm = || -> std::io::Result<AsyncFd<std::os::fd::OwnedFd>> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            let spec = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: Timespec {
                    tv_sec: d.as_secs() as _,
                    tv_nsec: d.subsec_nanos() as _,
                },
            };
            timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)?;
            // tokio deprecated the safe constructor because an arbitrary `AsRawFd` type may
            // close or swap its descriptor; an `OwnedFd` moved in here cannot (nothing else can
            // reach it), which is exactly the contract `AsyncFd::register` asks callers to
            // uphold, so this stays sound without `unsafe` (forbidden crate-wide).
            #[allow(deprecated)]
            AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
        };
        let armed = arm().ok();
        match armed {
            Some(fd) => fd.readable().await.is_ok(),
            None => std::future::pending().await,
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod precise {
    pub async fn sleep(_: std::time::Duration) -> bool {
        std::future::pending().await
    }
}

/// A pattern's total length on an output with this `max_on`, for logs and tools.
pub fn pattern_length(p: &Pattern, max_on: Duration) -> Duration {
    let mut c = PatternCursor::new(p.clone(), max_on);
    let mut last = Duration::ZERO;
    while let Some((t, _)) = c.next_edge() {
        last = t;
    }
    last
}

/// Connects the acknowledge button (if configured) to the engine: each press sends
/// [`GpioCommand::Silence`]. A backend that cannot read buttons is an error.
pub fn watch_ack_button(
    cfg: &crate::config::GpioConfig,
    backend: &mut dyn Backend,
    commands: &mpsc::Sender<GpioCommand>,
) -> Result<(), GpioError> {
    let Some(button) = &cfg.ack_button else {
        return Ok(());
    };
    if matches!(
        cfg.backend,
        crate::config::GpioBackendKind::Sim | crate::config::GpioBackendKind::None
    ) {
        log::warn!(
            "gpio: ack_button is ignored with backend {:?} (no input pins); use the MQTT silence command",
            backend.name()
        );
        return Ok(());
    }
    let tx = commands.clone();
    backend.watch_ack(
        button,
        Box::new(move || {
            log::info!("gpio: acknowledge button pressed");
            // Full channel: a silence is already queued or the engine is busy; either way a
            // second press will get through.
            let _ = tx.try_send(GpioCommand::Silence);
        }),
    )
}
