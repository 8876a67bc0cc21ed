//! The `cdev` backend: the Linux GPIO character device (uAPI v2, via `gpiocdev`), for any
//! Linux board and for Raspberry Pi models rppal will never know.
//!
//! Lines are found by name (`line = "GPIO17"`, searched across every /dev/gpiochip*) or by
//! chip label, name or path plus offset: never by a hard-coded `gpiochipN`, whose number
//! changes between kernels and boards (the Pi 5's header moved from gpiochip0 to gpiochip4).
//! The lookup ([`resolve`]) is pure and tested here; the chip scan and the requests are I/O.
//!
//! Tones: the character device has no PWM, so a tone is driven as a plain on/off envelope.

use std::path::PathBuf;

/// One GPIO chip as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChipDesc {
    pub path: PathBuf,
    /// `gpiochip0`
    pub name: String,
    /// `pinctrl-bcm2711`
    pub label: String,
    /// Line names by offset ("" when unnamed).
    pub lines: Vec<String>,
}

/// Where an output or button lives: the chip's path and the line's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineAddr {
    pub chip: PathBuf,
    pub offset: u32,
}

/// Finds `line` by name across all chips (it must be unique), or `chip` (label, name or path)
/// plus `offset`. Errors say what was looked for and what exists.
pub fn resolve(
    chips: &[ChipDesc],
    line: Option<&str>,
    chip: Option<&str>,
    offset: Option<u32>,
) -> Result<LineAddr, String> {
    if chips.is_empty() {
        return Err("no GPIO chips found (no /dev/gpiochip*): is this a Linux board with GPIO, and is /dev/gpiochip* passed into the container or sandbox?".into());
    }
    if let Some(name) = line {
        let found: Vec<LineAddr> = chips
            .iter()
            .flat_map(|c| {
                c.lines
                    .iter()
                    .enumerate()
                    .filter(move |(_, n)| n.as_str() == name)
                    .map(move |(o, _)| LineAddr {
                        chip: c.path.clone(),
                        offset: o as u32,
                    })
            })
            .collect();
        return match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(format!(
                "no GPIO line is named {name:?} (run `alert-relay gpio list` to see the names, or use chip + offset)"
            )),
            many => Err(format!(
                "{} lines are named {name:?} ({}); use chip + offset instead",
                many.len(),
                many.iter()
                    .map(|a| format!("{} offset {}", a.chip.display(), a.offset))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    }
    let (Some(want), Some(offset)) = (chip, offset) else {
        return Err("needs line = \"GPIO17\" or chip + offset".into());
    };
    let matching: Vec<&ChipDesc> = chips
        .iter()
        .filter(|c| c.label == want || c.name == want || c.path.as_os_str() == want)
        .collect();
    let c = match matching.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "no GPIO chip has the label, name or path {want:?} (present: {})",
                chips
                    .iter()
                    .map(|c| format!("{} {:?}", c.name, c.label))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        _ => {
            return Err(format!(
                "several GPIO chips match {want:?}; give its path (/dev/gpiochipN) or a line name"
            ))
        }
    };
    if offset as usize >= c.lines.len() {
        return Err(format!(
            "chip {} ({:?}) has {} lines; offset {offset} does not exist",
            c.name,
            c.label,
            c.lines.len()
        ));
    }
    Ok(LineAddr {
        chip: c.path.clone(),
        offset,
    })
}

/// What to do about an OS error opening /dev/gpiochip*.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn hint(e: &str) -> &'static str {
    if e.contains("ermission") || e.contains("EACCES") || e.contains("os error 13") {
        "add the service user to the `gpio` group (or a udev rule giving it /dev/gpiochip*)"
    } else if e.contains("busy") || e.contains("os error 16") {
        "another program holds the line (check with `gpioinfo`)"
    } else {
        "check /dev/gpiochip* exists and is readable by the service user"
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::sync::{Arc, Mutex};

    use gpiocdev::line::{Bias, EdgeDetection, Value};
    use gpiocdev::Request;

    use super::{hint, resolve, ChipDesc, LineAddr};
    use crate::config::{AckButton, OutputConfig};
    use crate::gpio::backend::{Backend, GpioError, OnPress};
    use crate::gpio::safe::{self, MakeSafe};

    /// The consumer name other tools (`gpioinfo`) show for our lines.
    const CONSUMER: &str = "alert-relay";

    /// Every chip the kernel offers, with its line names.
    pub fn scan() -> Result<Vec<ChipDesc>, GpioError> {
        let paths = gpiocdev::chip::chips().map_err(|e| {
            let s = e.to_string();
            GpioError::Cdev(format!("cannot list /dev/gpiochip*: {s} ({})", hint(&s)))
        })?;
        let mut out = Vec::new();
        for path in paths {
            let open = |e: gpiocdev::Error| {
                let s = e.to_string();
                GpioError::Cdev(format!(
                    "cannot open {}: {s} ({})",
                    path.display(),
                    hint(&s)
                ))
            };
            let chip = gpiocdev::Chip::from_path(&path).map_err(open)?;
            let info = chip.info().map_err(open)?;
            let lines = chip
                .line_info_iter()
                .map_err(open)?
                .map(|l| l.map(|l| l.name).unwrap_or_default())
                .collect();
            out.push(ChipDesc {
                path,
                name: info.name,
                label: info.label,
                lines,
            });
        }
        Ok(out)
    }

    struct Line {
        req: Request,
        offset: u32,
    }

    struct Lines(Mutex<Vec<Line>>);

    impl MakeSafe for Lines {
        fn make_safe(&self) {
            if let Some(lines) = safe::try_lock(&self.0) {
                for l in lines.iter() {
                    let _ = l.req.set_value(l.offset, Value::Inactive);
                }
            }
        }
    }

    struct Cdev {
        lines: Arc<Lines>,
        names: Vec<String>,
    }

    fn addr(
        chips: &[ChipDesc],
        what: &str,
        o: (&Option<String>, &Option<String>, Option<u32>),
    ) -> Result<LineAddr, GpioError> {
        resolve(chips, o.0.as_deref(), o.1.as_deref(), o.2)
            .map_err(|e| GpioError::Cdev(format!("{what}: {e}")))
    }

    pub fn open(outputs: &[OutputConfig]) -> Result<Box<dyn Backend>, GpioError> {
        let chips = scan()?;
        let mut lines = Vec::new();
        for o in outputs {
            let a = addr(
                &chips,
                &format!("output {:?}", o.name),
                (&o.line, &o.chip, o.offset),
            )?;
            let mut b = Request::builder();
            b.on_chip(&a.chip)
                .with_consumer(CONSUMER)
                .with_line(a.offset);
            if o.active_low {
                b.as_active_low();
            }
            // Requested as an output already inactive: the line never glitches on.
            let req = b.as_output(Value::Inactive).request().map_err(|e| {
                let s = e.to_string();
                GpioError::Pin {
                    name: o.name.clone(),
                    what: format!("{} offset {}", a.chip.display(), a.offset),
                    reason: format!("{s} ({})", hint(&s)),
                }
            })?;
            lines.push(Line {
                req,
                offset: a.offset,
            });
        }
        let lines = Arc::new(Lines(Mutex::new(lines)));
        let dyn_lines: Arc<dyn MakeSafe> = lines.clone();
        safe::register(&dyn_lines);
        Ok(Box::new(Cdev {
            lines,
            names: outputs.iter().map(|o| o.name.clone()).collect(),
        }))
    }

    impl Backend for Cdev {
        fn name(&self) -> &'static str {
            "cdev"
        }

        fn set(&mut self, i: usize, on: bool) -> Result<(), GpioError> {
            let lines = self.lines.0.lock().unwrap_or_else(|p| p.into_inner());
            let l = lines.get(i).ok_or(GpioError::NoSuchOutput(i))?;
            let v = if on { Value::Active } else { Value::Inactive };
            l.req.set_value(l.offset, v).map_err(|e| GpioError::Set {
                name: self.names.get(i).cloned().unwrap_or_default(),
                reason: e.to_string(),
            })
        }

        fn watch_ack(&mut self, button: &AckButton, mut pressed: OnPress) -> Result<(), GpioError> {
            let chips = scan()?;
            let a = addr(
                &chips,
                "ack_button",
                (&button.line, &button.chip, button.offset),
            )?;
            let mut b = Request::builder();
            b.on_chip(&a.chip)
                .with_consumer(CONSUMER)
                .with_line(a.offset)
                .as_input()
                .with_debounce_period(button.debounce)
                // Edges are reported in logical terms: "rising" is a press either way.
                .with_edge_detection(EdgeDetection::RisingEdge);
            if button.active_low {
                b.as_active_low().with_bias(Bias::PullUp);
            } else {
                b.with_bias(Bias::PullDown);
            }
            let req = b.request().map_err(|e| {
                let s = e.to_string();
                GpioError::Pin {
                    name: "ack_button".into(),
                    what: format!("{} offset {}", a.chip.display(), a.offset),
                    reason: format!("{s} ({})", hint(&s)),
                }
            })?;
            // Blocks on the line's event queue for the life of the process.
            std::thread::Builder::new()
                .name("gpio-ack".into())
                .spawn(move || loop {
                    match req.read_edge_event() {
                        Ok(_) => pressed(),
                        Err(e) => {
                            log::error!("gpio: acknowledge button stopped: {e}");
                            return;
                        }
                    }
                })
                .map_err(|e| GpioError::Cdev(format!("cannot start the button thread: {e}")))?;
            Ok(())
        }
    }
}

#[cfg(target_os = "linux")]
pub use imp::{open, scan};

#[cfg(not(target_os = "linux"))]
pub fn open(
    _: &[crate::config::OutputConfig],
) -> Result<Box<dyn super::backend::Backend>, super::backend::GpioError> {
    Err(super::backend::GpioError::Unavailable("cdev"))
}

#[cfg(not(target_os = "linux"))]
pub fn scan() -> Result<Vec<ChipDesc>, super::backend::GpioError> {
    Err(super::backend::GpioError::Unavailable("cdev"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chips() -> Vec<ChipDesc> {
        vec![
            ChipDesc {
                path: "/dev/gpiochip0".into(),
                name: "gpiochip0".into(),
                label: "pinctrl-rp1".into(),
                lines: vec!["ID_SDA".into(), "GPIO17".into(), "".into(), "GPIO27".into()],
            },
            ChipDesc {
                path: "/dev/gpiochip1".into(),
                name: "gpiochip1".into(),
                label: "rpi-firmware-gpio".into(),
                lines: vec!["ACT_LED".into(), "DUP".into(), "DUP".into()],
            },
        ]
    }

    #[test]
    fn line_names_are_found_on_any_chip() {
        assert_eq!(
            resolve(&chips(), Some("GPIO27"), None, None),
            Ok(LineAddr {
                chip: "/dev/gpiochip0".into(),
                offset: 3
            })
        );
        assert_eq!(
            resolve(&chips(), Some("ACT_LED"), None, None),
            Ok(LineAddr {
                chip: "/dev/gpiochip1".into(),
                offset: 0
            })
        );
    }

    #[test]
    fn missing_or_ambiguous_line_names_say_what_to_do() {
        let e = resolve(&chips(), Some("GPIO99"), None, None).expect_err("must fail");
        assert!(e.contains("gpio list"), "{e}");
        let e = resolve(&chips(), Some("DUP"), None, None).expect_err("must fail");
        assert!(e.contains("chip + offset"), "{e}");
    }

    #[test]
    fn chips_are_found_by_label_name_or_path_and_offsets_checked() {
        let want = Ok(LineAddr {
            chip: "/dev/gpiochip1".into(),
            offset: 2,
        });
        assert_eq!(
            resolve(&chips(), None, Some("rpi-firmware-gpio"), Some(2)),
            want
        );
        assert_eq!(resolve(&chips(), None, Some("gpiochip1"), Some(2)), want);
        assert_eq!(
            resolve(&chips(), None, Some("/dev/gpiochip1"), Some(2)),
            want
        );
        let e = resolve(&chips(), None, Some("pinctrl-rp1"), Some(4)).expect_err("must fail");
        assert!(e.contains("4 lines"), "{e}");
        let e = resolve(&chips(), None, Some("pinctrl-bcm2835"), Some(1)).expect_err("must fail");
        assert!(e.contains("pinctrl-rp1"), "{e}");
    }

    #[test]
    fn no_chips_explains_the_device_nodes() {
        let e = resolve(&[], Some("GPIO17"), None, None).expect_err("must fail");
        assert!(e.contains("/dev/gpiochip"), "{e}");
    }
}
