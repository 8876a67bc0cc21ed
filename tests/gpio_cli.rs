//! The installer tools and the safe-state promise, through real processes: `test-output` and
//! `gpio list` run the real binary with the sim backend and its trace file; SIGTERM and a
//! panic (made to abort, like the release profile's `panic = "abort"`) arrive mid-pattern and
//! the trace must end with every output off.

#[path = "../examples/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use alert_relay::config::Config;
use alert_relay::gpio::{open_backend, run_engine, GpioCommand};

fn relay() -> Command {
    support::command_for(env!("CARGO_BIN_EXE_alert-relay"))
}

fn sim_config(dir: &Path) -> (PathBuf, PathBuf) {
    let trace = dir.join("trace.jsonl");
    let text = format!(
        r#"[source]
url = "ws://127.0.0.1:1/"
[queue]
dir = {queue:?}
[gpio]
backend = "sim"
sim_trace = {trace:?}
[[gpio.outputs]]
name = "red"
pin = 17
max_on = "2m"
[[gpio.outputs]]
name = "buzzer"
pin = 27
kind = "buzzer"
"#,
        queue = dir.join("q").display().to_string(),
        trace = trace.display().to_string()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    (path, trace)
}

/// The last level the trace shows for `output`.
fn last_level(edges: &[(String, bool)], output: &str) -> Option<bool> {
    edges
        .iter()
        .rev()
        .find(|(o, _)| o == output)
        .map(|(_, on)| *on)
}

#[test]
fn test_output_blinks_the_named_output_and_leaves_everything_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, trace) = sim_config(dir.path());
    let out = support::run_ok(
        relay()
            .args(["test-output", "red", "--config"])
            .arg(&cfg)
            .args([
                "--pattern",
                r#"{ kind = "blink", on = "30ms", off = "30ms", count = 3 }"#,
            ]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("6 edges"), "{stdout}");
    let red: Vec<bool> = support::sim_trace_edges(&trace)
        .into_iter()
        .filter(|(o, _)| o == "red")
        .map(|(_, on)| on)
        .collect();
    // Forced off at start, three blinks, forced off at exit.
    assert_eq!(red, [false, true, false, true, false, true, false, false]);
    assert_eq!(
        last_level(&support::sim_trace_edges(&trace), "buzzer"),
        Some(false)
    );
}

#[test]
fn test_output_names_unknown_outputs_and_bad_patterns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = sim_config(dir.path());
    let out = relay()
        .args(["test-output", "green", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"green\"") && err.contains("red, buzzer"),
        "{err}"
    );
    let out = relay()
        .args(["test-output", "red", "--config"])
        .arg(&cfg)
        .args(["--pattern", r#"{ kind = "blink", on = "1s" }"#])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pattern.off"), "{err}");
}

#[test]
fn gpio_list_shows_the_configured_outputs_and_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = sim_config(dir.path());
    let out = support::run_ok(relay().args(["gpio", "list", "--config"]).arg(&cfg));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("backend: sim"), "{s}");
    assert!(
        s.contains("red") && s.contains("BCM 17") && s.contains("max_on 120s"),
        "{s}"
    );
    assert!(s.contains("buzzer") && s.contains("BCM 27"), "{s}");
}

#[test]
fn cdev_without_gpio_chips_says_what_to_check() {
    let has_chips = std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("gpiochip"))
        })
        .unwrap_or(false);
    if has_chips {
        support::skipped(
            "cdev_without_gpio_chips_says_what_to_check",
            "this machine has /dev/gpiochip*, the error path cannot be shown",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[source]\nurl = \"ws://127.0.0.1:1/\"\n[gpio]\nbackend = \"cdev\"\n[[gpio.outputs]]\nname = \"red\"\nline = \"GPIO17\"\n",
    )
    .expect("write");
    let out = relay()
        .args(["test-output", "red", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/gpiochip"), "{err}");
}

#[tokio::test]
async fn sigterm_mid_pattern_turns_the_output_off() {
    signal_mid_pattern_turns_the_output_off("TERM").await;
}

/// A closed terminal or SSH session (SIGHUP) must not leave a buzzer sounding.
#[tokio::test]
async fn sighup_mid_pattern_turns_the_output_off() {
    signal_mid_pattern_turns_the_output_off("HUP").await;
}

#[tokio::test]
async fn sigquit_mid_pattern_turns_the_output_off() {
    signal_mid_pattern_turns_the_output_off("QUIT").await;
}

async fn signal_mid_pattern_turns_the_output_off(signal: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, trace) = sim_config(dir.path());
    let mut child = relay()
        .args(["test-output", "red", "--config"])
        .arg(&cfg)
        .args(["--pattern", r#"{ kind = "solid", duration = "60s" }"#])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    support::wait_until("red to turn on", Duration::from_secs(20), || {
        last_level(&support::sim_trace_edges(&trace), "red") == Some(true)
    })
    .await;
    // Like a terminal that went away with the SSH session: the report cannot be printed,
    // and the stop must still be clean.
    drop(child.stdout.take());
    support::signal(child.id(), signal);
    support::wait_until("test-output to exit", Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
    .await;
    let status = child.wait().expect("wait");
    assert!(status.success(), "SIG{signal}: {status:?}");
    let edges = support::sim_trace_edges(&trace);
    assert_eq!(last_level(&edges, "red"), Some(false), "{edges:?}");
    assert_eq!(last_level(&edges, "buzzer"), Some(false), "{edges:?}");
}

/// Env var that turns this test binary into the panicking child.
const PANIC_CHILD: &str = "ALERT_RELAY_GPIO_PANIC_CHILD";

#[test]
fn panic_mid_pattern_leaves_every_output_off() {
    if let Ok(config) = std::env::var(PANIC_CHILD) {
        panicking_child(Path::new(&config));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, trace) = sim_config(dir.path());
    let out = support::command_for(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "panic_mid_pattern_leaves_every_output_off",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PANIC_CHILD, &cfg)
        .output()
        .expect("run child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child must have died: {stderr}");
    assert!(stderr.contains("simulated fault"), "{stderr}");
    let edges = support::sim_trace_edges(&trace);
    let red_on = edges.iter().position(|e| *e == ("red".into(), true));
    assert!(red_on.is_some(), "red was on before the panic: {edges:?}");
    assert_eq!(last_level(&edges, "red"), Some(false), "{edges:?}");
    assert_eq!(last_level(&edges, "buzzer"), Some(false), "{edges:?}");
}

/// Opens the sim backend (which installs the safe-state panic hook), starts a long pattern,
/// then panics the way a release build does: the hook runs, then the process aborts without
/// unwinding, so no destructor can be what turns the outputs off.
fn panicking_child(config: &Path) {
    let cfg = Config::load(config).expect("config");
    let backend = open_backend(&cfg.gpio).expect("sim backend");
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook(info);
        std::process::abort();
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let trace = cfg.gpio.sim_trace.clone().expect("trace");
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let (activity, _) = tokio::sync::watch::channel(vec![false; 2]);
        let stats = std::sync::Arc::new(alert_relay::stats::Stats::default());
        tokio::spawn(run_engine(
            cfg.gpio.outputs.clone(),
            backend,
            rx,
            stop_rx,
            stats,
            activity,
        ));
        let pattern = alert_relay::config::parse_pattern(
            r#"{ kind = "solid", duration = "60s" }"#,
            "pattern",
        )
        .expect("pattern");
        tx.send(GpioCommand::Test { output: 0, pattern })
            .await
            .expect("send");
        support::wait_until("red to turn on", Duration::from_secs(20), || {
            last_level(&support::sim_trace_edges(&trace), "red") == Some(true)
        })
        .await;
        panic!("simulated fault while red is on");
    });
}
