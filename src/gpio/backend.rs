//! Backends behind one trait: `sim` (records edges), `rppal` (Raspberry Pi), `none`.
//!
//! A backend takes logical levels (`true` = active: light on, buzzer sounding) and applies
//! `active_low` itself.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::config::{GpioBackendKind, GpioConfig, OutputConfig};

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// The sim trace file cannot be written: check the path and its directory's permissions.
    #[error("cannot write GPIO trace file {path}: {source}")]
    Trace {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The GPIO device cannot be opened. On a Raspberry Pi the service user must be in the
    /// `gpio` group (for /dev/gpiomem); elsewhere use backend = "cdev".
    #[error("cannot open the GPIO device: {0} (is the user in the `gpio` group, and does /dev/gpiomem exist? on non-Pi boards use backend = \"cdev\")")]
    Open(String),
    /// A pin cannot be claimed: another process may hold it, or the number is wrong.
    #[error(
        "cannot claim BCM pin {pin} for output {name:?}: {reason} (is another program using it?)"
    )]
    Pin {
        name: String,
        pin: u8,
        reason: String,
    },
    /// The backend is not part of this build or this platform.
    #[error(
        "GPIO backend {0:?} is not available in this build; use \"rppal\", \"sim\" or \"none\""
    )]
    Unavailable(&'static str),
    #[error("output {0} does not exist")]
    NoSuchOutput(usize),
    #[error("setting {name:?}: {reason}")]
    Set { name: String, reason: String },
}

pub trait Backend: Send {
    fn name(&self) -> &'static str;
    /// Drives output `i` (index into the configured outputs) to logical level `on`.
    fn set(&mut self, i: usize, on: bool) -> Result<(), GpioError>;
}

/// Opens the configured backend.
pub fn open_backend(cfg: &GpioConfig) -> Result<Box<dyn Backend>, GpioError> {
    match cfg.backend {
        GpioBackendKind::None => Ok(Box::new(NoneBackend)),
        GpioBackendKind::Sim => Ok(Box::new(SimBackend::new(
            &cfg.outputs,
            cfg.sim_trace.as_deref(),
        )?)),
        GpioBackendKind::Rppal => rppal_backend::open(&cfg.outputs),
        GpioBackendKind::Cdev => Err(GpioError::Unavailable("cdev")),
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
pub struct SimBackend {
    names: Vec<String>,
    trace: Option<(PathBuf, File)>,
    start: Instant,
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
        Ok(SimBackend {
            names: outputs.iter().map(|o| o.name.clone()).collect(),
            trace,
            start: Instant::now(),
        })
    }
}

impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }
    fn set(&mut self, i: usize, on: bool) -> Result<(), GpioError> {
        let name = self.names.get(i).ok_or(GpioError::NoSuchOutput(i))?;
        let at = crate::clock::rfc3339_micros(crate::clock::unix_micros(SystemTime::now()));
        log::info!("gpio[sim] {name} {}", if on { "ON" } else { "off" });
        if let Some((path, f)) = &mut self.trace {
            let line = serde_json::json!({
                "at": at,
                "mono_us": self.start.elapsed().as_micros() as u64,
                "output": name,
                "on": on,
            });
            writeln!(f, "{line}").map_err(|source| GpioError::Trace {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod rppal_backend {
    use super::{Backend, GpioError};
    use crate::config::OutputConfig;
    use rppal::gpio::{Gpio, OutputPin};

    struct Rppal {
        pins: Vec<(OutputPin, bool, String)>,
    }

    pub fn open(outputs: &[OutputConfig]) -> Result<Box<dyn Backend>, GpioError> {
        let gpio = Gpio::new().map_err(|e| GpioError::Open(e.to_string()))?;
        let mut pins = Vec::new();
        for o in outputs {
            let bcm = o.pin.ok_or_else(|| GpioError::Pin {
                name: o.name.clone(),
                pin: 0,
                reason: "no pin configured".into(),
            })?;
            let pin = gpio.get(bcm).map_err(|e| GpioError::Pin {
                name: o.name.clone(),
                pin: bcm,
                reason: e.to_string(),
            })?;
            // Claim the pin already at its inactive level so it never glitches on.
            let mut out = if o.active_low {
                pin.into_output_high()
            } else {
                pin.into_output_low()
            };
            // Leave the pin driven inactive when we exit rather than floating back to input.
            out.set_reset_on_drop(false);
            pins.push((out, o.active_low, o.name.clone()));
        }
        Ok(Box::new(Rppal { pins }))
    }

    impl Backend for Rppal {
        fn name(&self) -> &'static str {
            "rppal"
        }
        fn set(&mut self, i: usize, on: bool) -> Result<(), GpioError> {
            let (pin, active_low, _) = self.pins.get_mut(i).ok_or(GpioError::NoSuchOutput(i))?;
            if on != *active_low {
                pin.set_high();
            } else {
                pin.set_low();
            }
            Ok(())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod rppal_backend {
    use super::{Backend, GpioError};
    use crate::config::OutputConfig;
    pub fn open(_: &[OutputConfig]) -> Result<Box<dyn Backend>, GpioError> {
        Err(GpioError::Unavailable("rppal"))
    }
}
