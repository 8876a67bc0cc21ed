//! The backends without hardware: `sim` records every edge (a log line, and a JSON line in a
//! trace file that tests and benchmarks read), `none` drives nothing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::backend::{Backend, GpioError};
use super::safe::{self, MakeSafe};
use crate::config::OutputConfig;

pub struct NoneBackend;

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
