//! The `rppal` backend: Raspberry Pi 1–5 through /dev/gpiomem (rppal 0.22; note rppal is no
//! longer maintained upstream, so Pi models after the 5 need `cdev`).
//!
//! Tones use rppal's software PWM (a thread toggling the pin): good for a passive buzzer's
//! 0.5–5 kHz, with audible jitter under heavy load. Never does: anything but drive and read
//! the configured pins.

#[cfg(not(target_os = "linux"))]
use super::backend::{Backend, GpioError};
#[cfg(not(target_os = "linux"))]
use crate::config::OutputConfig;

/// What to do about an rppal open error, for the message an installer reads.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn hint(e: &str) -> &'static str {
    if e.contains("ermission") {
        "add the service user to the `gpio` group (sudo usermod -aG gpio USER, then log in again) and check /dev/gpiomem exists"
    } else if e.contains("nknown") || e.contains("model") || e.contains("SoC") {
        "this board is not a Raspberry Pi rppal knows; use backend = \"cdev\""
    } else if e.contains("No such file") || e.contains("not found") {
        "/dev/gpiomem is missing: is this a Raspberry Pi, and is the device passed into the container?"
    } else {
        "check /dev/gpiomem and the `gpio` group, or try backend = \"cdev\""
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::sync::{Arc, Mutex};

    use rppal::gpio::{Gpio, InputPin, OutputPin, Trigger};

    use super::hint;
    use crate::config::{AckButton, OutputConfig};
    use crate::gpio::backend::{Backend, GpioError, OnPress};
    use crate::gpio::safe::{self, MakeSafe};

    struct Pin {
        out: OutputPin,
        active_low: bool,
        name: String,
        pwm: bool,
    }

    struct Pins(Mutex<Vec<Pin>>);

    impl MakeSafe for Pins {
        fn make_safe(&self) {
            if let Some(mut pins) = safe::try_lock(&self.0) {
                for p in pins.iter_mut() {
                    drive(p, false);
                }
            }
        }
    }

    fn drive(p: &mut Pin, on: bool) {
        if p.pwm {
            let _ = p.out.clear_pwm();
            p.pwm = false;
        }
        if on != p.active_low {
            p.out.set_high();
        } else {
            p.out.set_low();
        }
    }

    struct Rppal {
        pins: Arc<Pins>,
        /// Keeps the acknowledge button's interrupt thread alive.
        ack: Option<InputPin>,
    }

    fn gpio() -> Result<Gpio, GpioError> {
        Gpio::new().map_err(|e| {
            let s = e.to_string();
            GpioError::Open(format!("{s} ({})", hint(&s)))
        })
    }

    pub fn open(outputs: &[OutputConfig]) -> Result<Box<dyn Backend>, GpioError> {
        let gpio = gpio()?;
        let mut pins = Vec::new();
        for o in outputs {
            let bcm = o.pin.ok_or_else(|| GpioError::Pin {
                name: o.name.clone(),
                what: "a pin".into(),
                reason: "no pin configured".into(),
            })?;
            let pin = gpio.get(bcm).map_err(|e| GpioError::Pin {
                name: o.name.clone(),
                what: format!("BCM pin {bcm}"),
                reason: format!("{e} (is another program using it?)"),
            })?;
            // Claim the pin already at its inactive level so it never glitches on.
            let mut out = if o.active_low {
                pin.into_output_high()
            } else {
                pin.into_output_low()
            };
            // Leave the pin driven inactive when we exit rather than floating back to input.
            out.set_reset_on_drop(false);
            pins.push(Pin {
                out,
                active_low: o.active_low,
                name: o.name.clone(),
                pwm: false,
            });
        }
        let pins = Arc::new(Pins(Mutex::new(pins)));
        let dyn_pins: Arc<dyn MakeSafe> = pins.clone();
        safe::register(&dyn_pins);
        Ok(Box::new(Rppal { pins, ack: None }))
    }

    impl Backend for Rppal {
        fn name(&self) -> &'static str {
            "rppal"
        }

        fn set(&mut self, i: usize, on: bool) -> Result<(), GpioError> {
            let mut pins = self.pins.0.lock().unwrap_or_else(|p| p.into_inner());
            let p = pins.get_mut(i).ok_or(GpioError::NoSuchOutput(i))?;
            drive(p, on);
            Ok(())
        }

        fn tone(&mut self, i: usize, frequency: u32, duty: f64) -> Result<bool, GpioError> {
            let mut pins = self.pins.0.lock().unwrap_or_else(|p| p.into_inner());
            let p = pins.get_mut(i).ok_or(GpioError::NoSuchOutput(i))?;
            // PWM drives the physical level: invert the duty for active-low wiring.
            let duty = if p.active_low { 1.0 - duty } else { duty };
            p.out
                .set_pwm_frequency(f64::from(frequency), duty)
                .map_err(|e| GpioError::Set {
                    name: p.name.clone(),
                    reason: format!("software PWM at {frequency} Hz: {e}"),
                })?;
            p.pwm = true;
            Ok(true)
        }

        fn watch_ack(&mut self, button: &AckButton, mut pressed: OnPress) -> Result<(), GpioError> {
            let bcm = button.pin.ok_or_else(|| GpioError::Pin {
                name: "ack_button".into(),
                what: "a pin".into(),
                reason: "no pin configured".into(),
            })?;
            let claim = |e: rppal::gpio::Error| GpioError::Pin {
                name: "ack_button".into(),
                what: format!("BCM pin {bcm}"),
                reason: e.to_string(),
            };
            let pin = gpio()?.get(bcm).map_err(claim)?;
            // A button to ground needs a pull-up (pressed = low), one to 3V3 a pull-down.
            let (mut input, trigger) = if button.active_low {
                (pin.into_input_pullup(), Trigger::FallingEdge)
            } else {
                (pin.into_input_pulldown(), Trigger::RisingEdge)
            };
            input
                .set_async_interrupt(trigger, Some(button.debounce), move |_| pressed())
                .map_err(claim)?;
            self.ack = Some(input);
            Ok(())
        }
    }

    /// What the board says about itself, for `alert-relay gpio list`.
    pub fn describe() -> String {
        match rppal::system::DeviceInfo::new() {
            Ok(d) => format!("Raspberry Pi: {} ({})", d.model(), d.soc()),
            Err(e) => format!("not a Raspberry Pi rppal recognises: {e} (try backend = \"cdev\")"),
        }
    }
}

#[cfg(target_os = "linux")]
pub use imp::{describe, open};

#[cfg(not(target_os = "linux"))]
pub fn open(_: &[OutputConfig]) -> Result<Box<dyn Backend>, GpioError> {
    Err(GpioError::Unavailable("rppal"))
}

#[cfg(not(target_os = "linux"))]
pub fn describe() -> String {
    "rppal is only available on Linux".into()
}
