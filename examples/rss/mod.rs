//! Peak memory of the real `alert-relay run` for a config with N `[[gpio.rules]]`: shared by
//! `examples/rules_rss.rs` (the figures) and `tests/rules_memory.rs` (the +5 MB bound). Both
//! declare `mod support` beside `mod rss` (the broker and subscriber come from there).
//!
//! Measurement: the relay runs as a child process under a `NOTIFY_SOCKET` this module binds,
//! like systemd's; once it sends `READY=1` (queue recovered, every stage running) and, with a
//! broker, once the retained state of its last rule has arrived (HA discovery and the rule
//! states are published on connect, after READY), `/proc/<pid>/status` is read: `VmHWM` (the
//! peak resident set since start, so the config parse is counted even though its memory is
//! freed) and `VmRSS` (resident now). Peak is the figure compared: it does not depend on when
//! glibc gives freed pages back, nor on how long one waits.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The cases measured: with no broker (the relay keeps retrying) for both rule shapes, and
/// connected to a broker (discovery and the rule states are published).
pub const CASES: [(bool, Shape); 3] = [
    (false, Shape::Example),
    (false, Shape::Heavy),
    (true, Shape::Example),
];

/// Runs of each measurement; the median is kept (a single run's peak moved by ~0.5 MB on a
/// loaded machine).
pub const RUNS: usize = 3;

/// The median (by peak) of [`RUNS`] runs of `rules` rules of `shape`, connected to the broker
/// on `broker_port` when given (the wait then ends at the relay's first stats message, sent
/// after discovery), else pointed at a port nobody listens on.
pub async fn median(bin: &Path, rules: usize, shape: Shape, broker_port: Option<u16>) -> Rss {
    let mut runs = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let broker = broker_port.is_some() as u8;
        let prefix = format!("rss-{broker}-{rules}-{run}-{}", std::process::id());
        let r = match broker_port {
            Some(port) => {
                // A prefix of its own: no retained stats of an earlier run satisfy the wait.
                let stats = format!("{prefix}/stats");
                let sub = crate::support::Subscriber::start(port, &stats).await;
                let rt = tokio::runtime::Handle::current();
                let bin = bin.to_owned();
                tokio::task::spawn_blocking(move || {
                    measure(&bin, rules, shape, port, &prefix, || {
                        rt.block_on(crate::support::wait_until(
                            "the relay's first stats message",
                            Duration::from_secs(120),
                            || !sub.on(&stats).is_empty(),
                        ))
                    })
                })
                .await
                .expect("measure")
            }
            None => measure(
                bin,
                rules,
                shape,
                crate::support::free_port(),
                &prefix,
                || {},
            ),
        };
        runs.push(r);
    }
    runs.sort_by_key(|r| r.peak_kib);
    runs[RUNS / 2]
}

/// What `/proc/<pid>/status` said, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub peak_kib: u64,
    pub now_kib: u64,
}

/// The rules measured: `Example` is config/example.toml's first rule, numbered (a name, an
/// exact label and a glob, one output, a blink pattern); `Heavy` adds a second output and quiet
/// hours (more per rule to hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Example,
    Heavy,
}

/// A config with `rules` rules of `shape`, sim GPIO, Home Assistant discovery on, MQTT on
/// `mqtt_port` under `prefix`, queue under `dir`.
pub fn config(dir: &Path, rules: usize, shape: Shape, mqtt_port: u16, prefix: &str) -> String {
    let mut t = format!(
        "[source]\nurl = \"ws://127.0.0.1:9/\"\nbackoff_initial = \"5s\"\nbackoff_max = \"10s\"\n\
         [queue]\ndir = {:?}\n\
         [mqtt]\nport = {mqtt_port}\nclient_id = \"rss-bench\"\ntopic_prefix = \"{prefix}\"\n\
         ha_discovery = true\nbackoff_initial = \"1s\"\nbackoff_max = \"2s\"\n\
         [gpio]\nbackend = \"sim\"\n\
         [[gpio.outputs]]\nname = \"red\"\n[[gpio.outputs]]\nname = \"buzzer\"\nkind = \"buzzer\"\n",
        dir.join("queue").display().to_string()
    );
    let extra = match shape {
        Shape::Example => "output = \"red\"\n",
        Shape::Heavy => "outputs = [\"red\", \"buzzer\"]\nquiet_hours = [\"22:00-07:00\"]\n",
    };
    for i in 0..rules {
        t.push_str(&format!(
            "[[gpio.rules]]\nname = \"rule_{i}\"\nlabels = [\"traffic_violation_{i}\", \"intrusion_{i}*\"]\n\
             min_confidence = 0.8\nmissing_confidence = \"skip\"\n{extra}\
             pattern = {{ kind = \"blink\", on = \"200ms\", off = \"200ms\", count = 5 }}\n\
             priority = 10\ncooldown = \"10s\"\nmax_age = \"30s\"\n"
        ));
    }
    t
}

/// Runs `bin run` on [`config`] and reads its memory once it has started. `settled` is called
/// after READY=1 and waits for whatever else must have happened first (the broker's view of
/// the startup publishes); it returns when the relay is done starting.
pub fn measure(
    bin: &Path,
    rules: usize,
    shape: Shape,
    mqtt_port: u16,
    prefix: &str,
    settled: impl FnOnce(),
) -> Rss {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, config(dir.path(), rules, shape, mqtt_port, prefix))
        .expect("write config");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind NOTIFY_SOCKET");
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alert-relay run");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no READY=1 within 120 s ({rules} rules)");
        sock.set_read_timeout(Some(left)).expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("alert-relay exited before READY=1: {status}");
        }
    }
    settled();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("proc status");
    let _ = child.kill();
    let _ = child.wait();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in /proc status"))
    };
    Rss {
        peak_kib: field("VmHWM:"),
        now_kib: field("VmRSS:"),
    }
}
