//! The trait every backend implements: `rppal` (Raspberry Pi), `cdev` (the Linux GPIO
//! character device, any board), and `sim` (records edges) and `none` in [`super::sim`];
//! [`super::open_backend`] picks one.
//!
//! A backend takes logical levels (`true` = active: light on, buzzer sounding) and applies
//! `active_low` itself. Every backend claims its outputs already inactive and registers them
//! with [`super::safe`] so a panic drives them inactive even though `Drop` never runs.
//!
//! Tones: only `rppal` makes them (software PWM on any pin). `cdev`, `sim` and `none` return
//! `Ok(false)` from [`Backend::tone`] and the engine drives a plain on/off envelope instead
//! (logged once per output).

use std::path::PathBuf;

use crate::config::AckButton;

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
