//! Backends behind one trait: `rppal` (Raspberry Pi), `cdev` (the Linux GPIO character
//! device, any board), `sim` (records edges), `none`.
//!
//! A backend takes logical levels (`true` = active: light on, buzzer sounding) and applies
//! `active_low` itself. Every backend claims its outputs already inactive and registers them
//! with [`super::safe`] so a panic drives them inactive even though `Drop` never runs.
//!
//! Tones: only `rppal` makes them (software PWM on any pin). `cdev`, `sim` and `none` return
//! `Ok(false)` from [`Backend::tone`] and the engine drives a plain on/off envelope instead
//! (logged once per output).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::safe::{self, MakeSafe};
use crate::config::{AckButton, GpioBackendKind, GpioConfig, OutputConfig};

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// The sim trace file cannot be written: check the path and its directory's permissions.
    #[error("cannot write GPIO trace file {path}: {source}")]
    Trace {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The GPIO device cannot be opened (rppal). The service user must be in the `gpio` group
    /// (for /dev/gpiomem); boards rppal does not know need backend = "cdev".
    #[error("cannot open the GPIO device: {0}")]
    Open(String),
    /// A pin cannot be claimed: another process may hold it, or the number is wrong.
    #[error("cannot claim {what} for {name:?}: {reason}")]
    Pin {
        name: String,
        what: String,
        reason: String,
    },
    /// The cdev backend cannot find or open a chip or line; the message says what to do.
    #[error("cdev: {0}")]
    Cdev(String),
    /// The backend is not part of this build or this platform.
    #[error("GPIO backend {0:?} is not available on this platform; use \"sim\" or \"none\"")]
    Unavailable(&'static str),
    /// The backend cannot read an acknowledge button.
    #[error("gpio.ack_button needs backend \"rppal\" or \"cdev\", not {0:?}")]
    NoAckButton(&'static str),
    #[error("output {0} does not exist")]
    NoSuchOutput(usize),
    #[error("setting {name:?}: {reason}")]
    Set { name: String, reason: String },
}

/// Called (from a backend's own thread) each time the acknowledge button is pressed.
pub type OnPress = Box<dyn FnMut() + Send + 'static>;

pub trait Backend: Send {
    fn name(&self) -> &'static str;
    /// Drives output `i` (index into the configured outputs) to logical level `on`. Ends any
    /// tone on it.
    fn set(&mut self, i: usize, on: bool) -> Result<(), GpioError>;
    /// Starts a tone on output `i`: a square wave of `frequency` Hz, active for `duty` of each
    /// period. `Ok(false)`: this backend cannot make tones (the caller drives plain "on").
    fn tone(&mut self, i: usize, frequency: u32, duty: f64) -> Result<bool, GpioError> {
        let _ = (i, frequency, duty);
        Ok(false)
    }
    /// Calls `pressed` whenever the acknowledge button is pressed (debounced).
    fn watch_ack(&mut self, button: &AckButton, pressed: OnPress) -> Result<(), GpioError> {
        let _ = (button, pressed);
        Err(GpioError::NoAckButton(self.name()))
    }
}

/// Opens the configured backend, with every output claimed in its inactive state.
pub fn open_backend(cfg: &GpioConfig) -> Result<Box<dyn Backend>, GpioError> {
    match cfg.backend {
        GpioBackendKind::None => Ok(Box::new(NoneBackend)),
        GpioBackendKind::Sim => Ok(Box::new(SimBackend::new(
            &cfg.outputs,
            cfg.sim_trace.as_deref(),
        )?)),
        GpioBackendKind::Rppal => super::rppal::open(&cfg.outputs),
        GpioBackendKind::Cdev => super::cdev::open(&cfg.outputs),
    }
}

struct NoneBackend;

impl Backend for NoneBackend {
    fn name(&self) -> &'static str {
        "none"
    }
    fn set(&mut self, _: usize, _: bool) -> Result<(), GpioError> {
        Ok(())
    }
}

/// Records every edge: a log line, and a JSON line in the trace file when configured:
/// `{"at": "<RFC 3339 µs>", "mono_us": <µs since start>, "output": "red", "on": true}`.
/// `mono_us` counts from [`SimBackend::start`], a monotonic clock (benchmarks compare it).
pub struct SimBackend {
    shared: Arc<SimShared>,
}

struct SimShared {
    names: Vec<String>,
    start: Instant,
    inner: Mutex<SimInner>,
}

struct SimInner {
    trace: Option<(PathBuf, File)>,
    level: Vec<bool>,
}

impl SimBackend {
    pub fn new(outputs: &[OutputConfig], trace: Option<&Path>) -> Result<SimBackend, GpioError> {
        let trace = match trace {
            Some(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| GpioError::Trace {
                        path: p.to_owned(),
                        source,
                    })?;
                Some((p.to_owned(), f))
            }
            None => None,
        };
        let shared = Arc::new(SimShared {
            names: outputs.iter().map(|o| o.name.clone()).collect(),
            start: Instant::now(),
            inner: Mutex::new(SimInner {
                trace,
                level: vec![false; outputs.len()],
            }),
        });
        let dyn_shared: Arc<dyn MakeSafe> = shared.clone();
        safe::register(&dyn_shared);
        Ok(SimBackend { shared })
    }

    /// The instant `mono_us` in the trace counts from.
    pub fn start(&self) -> Instant {
        self.shared.start
    }
}

impl SimShared {
    fn record(&self, inner: &mut SimInner, i: usize, on: bool) -> Result<(), GpioError> {
        let name = self.names.get(i).ok_or(GpioError::NoSuchOutput(i))?;
        let mono_us = self.start.elapsed().as_micros() as u64;
        inner.level[i] = on;
        log::info!("gpio[sim] {name} {}", if on { "ON" } else { "off" });
        if let Some((path, f)) = &mut inner.trace {
            let at = crate::clock::rfc3339_micros(crate::clock::unix_micros(SystemTime::now()));
            let line = serde_json::json!({
                "at": at,
                "mono_us": mono_us,
                "output": name,
                "on": on,
            });
            // One write per line: readers of the trace (tests, tools tailing it) never see
            // half a line, which `writeln!` on an unbuffered file would emit in pieces.
            let line = format!("{line}\n");
            f.write_all(line.as_bytes())
                .map_err(|source| GpioError::Trace {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

impl MakeSafe for SimShared {
    fn make_safe(&self) {
        let Some(mut inner) = safe::try_lock(&self.inner) else {
            return;
        };
        for i in 0..self.names.len() {
            if inner.level[i] {
                let _ = self.record(&mut inner, i, false);
            }
        }
    }
}

impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }
    fn set(&mut self, i: usize, on: bool) -> Result<(), GpioError> {
        let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.record(&mut inner, i, on)
    }
}
