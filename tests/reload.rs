//! SIGHUP reloads the config file (SPEC §4 "Signals"), with the real binary: a changed rule and
//! a changed pin take effect without a restart, no alert is lost or published twice across the
//! reload, keys that need a restart are named and kept, an invalid file is reported in
//! `check-config`'s words and the running config stays, and a closed terminal does not stop or
//! crash the relay.

#[path = "../examples/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{alert_frame, wait_until, Broker, Subscriber, WsServer};

const WAIT: Duration = Duration::from_secs(30);

/// The relay's config: one output and one rule, as the test rewrites them.
fn config(
    ws: &str,
    mqtt: u16,
    dir: &Path,
    output: &str,
    pin: u8,
    label: &str,
    extra: &str,
) -> String {
    support::relay_config(
        ws,
        mqtt,
        &dir.join("q"),
        &format!(
            r#"topic_prefix = "reload{mqtt}"
[gpio]
backend = "sim"
sim_trace = {trace:?}
[[gpio.outputs]]
name = "{output}"
pin = {pin}
[[gpio.rules]]
name = "door"
labels = ["{label}"]
outputs = ["{output}"]
pattern = {{ kind = "solid", duration = "300ms" }}
{extra}
"#,
            trace = dir.join("trace.jsonl").display().to_string()
        ),
    )
}

/// The binary running `run --config path`, its stderr lines collected.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(path: &Path) -> Daemon {
        let mut child = support::command_for(env!("CARGO_BIN_EXE_alert-relay"))
            .args(["run", "--config"])
            .arg(path)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the relay");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                l.lock().expect("lock").push(line);
            }
        });
        Daemon { child, lines }
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn log(&self) -> String {
        self.lines.lock().expect("lock").join("\n")
    }

    fn signal(&self, name: &str) {
        support::signal(self.child.id(), name);
    }

    /// SIGHUP, then waits for the next "reloaded" line; returns how long that took.
    async fn reload(&self) -> Duration {
        let before = self.count("reloaded ");
        let t = Instant::now();
        self.signal("HUP");
        while self.count("reloaded ") <= before {
            assert!(
                t.elapsed() < WAIT,
                "no reloaded line within {WAIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t.elapsed()
    }

    /// SIGTERM; waits for a clean exit.
    fn stop(mut self) {
        self.signal("TERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "exit {status:?}:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ons(trace: &Path, output: &str) -> usize {
    support::sim_trace_edges(trace)
        .iter()
        .filter(|(o, on)| o == output && *on)
        .count()
}

/// How many times each event id arrived on `{prefix}/alerts/...`.
fn published(sub: &Subscriber) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in sub
        .snapshot()
        .into_iter()
        .filter(|m| m.topic.contains("/alerts/"))
    {
        if let Some(id) = m.json()["event_id"].as_str() {
            *seen.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    seen
}

struct Setup {
    _broker: Broker,
    ws: WsServer,
    sub: Subscriber,
    dir: tempfile::TempDir,
    path: PathBuf,
    port: u16,
}

async fn setup() -> Setup {
    let broker = Broker::start_any();
    let port = broker.port();
    let ws = WsServer::start().await;
    let sub = Subscriber::start(port, &format!("reload{port}/alerts/#")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    Setup {
        _broker: broker,
        ws,
        sub,
        dir,
        path,
        port,
    }
}

impl Setup {
    fn write(&self, output: &str, pin: u8, label: &str, extra: &str) {
        let text = config(
            &self.ws.url(),
            self.port,
            self.dir.path(),
            output,
            pin,
            label,
            extra,
        );
        // One client id for every version of the file: a new one is a connection key.
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("client_id = ") {
                    format!("client_id = \"reload-test-{}\"\n", self.port)
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&self.path, text).expect("write config");
    }
    fn trace(&self) -> PathBuf {
        self.dir.path().join("trace.jsonl")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_rule_and_pin_without_losing_or_repeating_an_alert() {
    let s = setup().await;
    s.write("red17", 17, "person", "");
    let relay = Daemon::start(&s.path);
    wait_until("source and broker connected", WAIT, || {
        relay.count("source: connected") >= 1 && relay.count("mqtt: connected") >= 1
    })
    .await;
    let trace = s.trace();

    // Old config: "person" lights red17.
    s.ws.send_text(alert_frame("a-0", "person", 0.9));
    wait_until("red17 on for person", WAIT, || ons(&trace, "red17") == 1).await;

    // Alerts keep coming while the file changes and SIGHUP arrives.
    for i in 1..=10 {
        s.ws.send_text(alert_frame(&format!("b-{i}"), "other", 0.9));
    }
    // New config: the rule wants "car", the output moved to pin 27 (renamed to say so), and a
    // queue key that needs a restart changed too.
    s.write("red27", 27, "car", "");
    let text = std::fs::read_to_string(&s.path).expect("read");
    std::fs::write(
        &s.path,
        text.replace("max_bytes = \"8MiB\"", "max_bytes = \"4MiB\""),
    )
    .expect("write");
    let took = relay.reload().await;
    eprintln!("reload: SIGHUP to the reloaded line in {took:?}");
    for i in 11..=20 {
        s.ws.send_text(alert_frame(&format!("b-{i}"), "other", 0.9));
    }
    assert_eq!(
        relay.count("kept as they were: queue.max_bytes"),
        1,
        "{}",
        relay.log()
    );

    // The old output went to its safe state and the new one started in it.
    let e = support::sim_trace_edges(&trace);
    let last_red17 = e
        .iter()
        .rev()
        .find(|(o, _)| o == "red17")
        .expect("red17 edges");
    assert!(!last_red17.1, "red17 left on: {e:?}");
    assert_eq!(
        e.iter().find(|(o, _)| o == "red27"),
        Some(&("red27".to_string(), false)),
        "red27 must start off: {e:?}"
    );

    // "person" no longer fires; "car" fires on the new output. Fires go through the engine in
    // order, so once car's edge is there, person's would be too.
    s.ws.send_text(alert_frame("c-person", "person", 0.9));
    s.ws.send_text(alert_frame("c-car", "car", 0.9));
    wait_until("red27 on for car", WAIT, || ons(&trace, "red27") == 1).await;
    assert_eq!(
        ons(&trace, "red17"),
        1,
        "{:?}",
        support::sim_trace_edges(&trace)
    );

    // Every alert published exactly once, none lost.
    let mut want: Vec<String> = (1..=20).map(|i| format!("b-{i}")).collect();
    want.extend(["a-0", "c-person", "c-car"].map(String::from));
    wait_until("every alert published", WAIT, || {
        let p = published(&s.sub);
        want.iter().all(|id| p.contains_key(id))
    })
    .await;
    // Wait for the relay to have nothing in flight, then look for doubles.
    let stats = Subscriber::start(s.port, &format!("reload{}/stats", s.port)).await;
    wait_until("an idle queue in stats", WAIT, || {
        stats
            .on(&format!("reload{}/stats", s.port))
            .last()
            .is_some_and(|m| m.json()["queue"]["depth_records"] == 0)
    })
    .await;
    let p = published(&s.sub);
    let doubled: Vec<_> = p.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "published more than once: {doubled:?}\n{}",
        relay.log()
    );
    assert_eq!(p.len(), want.len(), "{p:?}");
    // The WebSocket was not touched: the source did not reconnect.
    assert_eq!(
        s.ws.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(relay.count("mqtt: connected"), 1, "{}", relay.log());
    relay.stop();
    let e = support::sim_trace_edges(&trace);
    assert_eq!(e.last().map(|(_, on)| *on), Some(false), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_reported_as_check_config_says_and_the_old_config_stays() {
    let s = setup().await;
    s.write("red17", 17, "person", "");
    let relay = Daemon::start(&s.path);
    wait_until("source and broker connected", WAIT, || {
        relay.count("source: connected") >= 1 && relay.count("mqtt: connected") >= 1
    })
    .await;
    let trace = s.trace();

    // A typo: a rule naming an output that does not exist.
    let good = std::fs::read_to_string(&s.path).expect("read");
    std::fs::write(
        &s.path,
        good.replace("outputs = [\"red17\"]", "outputs = [\"red71\"]"),
    )
    .expect("write");
    let check = support::command_for(env!("CARGO_BIN_EXE_alert-relay"))
        .args(["check-config", "--config"])
        .arg(&s.path)
        .output()
        .expect("check-config");
    assert_eq!(check.status.code(), Some(2));
    let said = String::from_utf8_lossy(&check.stderr);
    let said = said
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("alert-relay: "))
        .expect("check-config's line")
        .to_string();
    let before = relay.count("the running config stays");
    relay.signal("HUP");
    wait_until("the reload error", WAIT, || {
        relay.count("the running config stays") > before
    })
    .await;
    assert_eq!(relay.count(&said), 1, "want {said:?} in:\n{}", relay.log());

    // The old rule still fires on the old output.
    s.ws.send_text(alert_frame("x-1", "person", 0.9));
    wait_until("red17 on after the failed reload", WAIT, || {
        ons(&trace, "red17") == 1
    })
    .await;
    wait_until("x-1 published", WAIT, || {
        published(&s.sub).contains_key("x-1")
    })
    .await;

    // Its 300 ms pattern over (a fire during it would extend it, not switch on again).
    wait_until("red17 off again", WAIT, || {
        support::sim_trace_edges(&trace).last() == Some(&("red17".to_string(), false))
    })
    .await;

    // Fixed file: the next SIGHUP applies it.
    std::fs::write(&s.path, good.replace("[\"person\"]", "[\"car\"]")).expect("write");
    relay.reload().await;
    s.ws.send_text(alert_frame("x-2", "car", 0.9));
    wait_until("red17 on for car", WAIT, || ons(&trace, "red17") == 2).await;
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_terminal_neither_stops_nor_crashes_the_relay() {
    let s = setup().await;
    s.write("red17", 17, "person", "");
    let mut child = support::command_for(env!("CARGO_BIN_EXE_alert-relay"))
        .args(["run", "--config"])
        .arg(&s.path)
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read until it is up, then close the read ends: every log line now meets EPIPE.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + WAIT;
    let mut line = String::new();
    while !line.contains("source: connected") {
        assert!(Instant::now() < deadline, "relay did not connect");
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read") > 0,
            "stderr closed early"
        );
    }
    drop(stderr);
    drop(child.stdout.take());
    // The hang-up a closing SSH session sends: a reload now, not a stop.
    let pid = child.id().to_string();
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("kill")
    };
    assert!(kill("HUP").success());
    s.ws.send_text(alert_frame("t-1", "person", 0.9));
    wait_until("t-1 published with stderr closed", WAIT, || {
        published(&s.sub).contains_key("t-1")
    })
    .await;
    wait_until("red17 on", WAIT, || ons(&s.trace(), "red17") == 1).await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the relay stopped"
    );
    assert!(kill("QUIT").success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let e = support::sim_trace_edges(&s.trace());
    assert_eq!(e.last().map(|(_, on)| *on), Some(false), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_settings_change_in_place_and_connection_keys_reconnect() {
    let s = setup().await;
    s.write("red17", 17, "person", "");
    let slow = std::fs::read_to_string(&s.path).expect("read");
    std::fs::write(
        &s.path,
        slow.replace("stats_interval = \"1s\"", "stats_interval = \"30s\""),
    )
    .expect("write");
    let relay = Daemon::start(&s.path);
    wait_until("source and broker connected", WAIT, || {
        relay.count("source: connected") >= 1 && relay.count("mqtt: connected") >= 1
    })
    .await;
    let stats = Subscriber::start(s.port, &format!("reload{}/stats", s.port)).await;
    let text = std::fs::read_to_string(&s.path).expect("read");

    // In place: a faster stats interval and a publish rate, on the same connection.
    std::fs::write(
        &s.path,
        text.replace(
            "stats_interval = \"30s\"",
            "stats_interval = \"1s\"\nmax_publish_rate = 500",
        ),
    )
    .expect("write");
    relay.reload().await;
    // The publisher applies them on its own task, just after the "reloaded" line (later still
    // under qemu in the aarch64 suite).
    let applied = "mqtt: reloaded settings applied on the running connection";
    wait_until("the publisher applied the new settings", WAIT, || {
        relay.count(applied) >= 1
    })
    .await;
    assert_eq!(relay.count(applied), 1, "{}", relay.log());
    let before = stats.on(&format!("reload{}/stats", s.port)).len();
    let t = Instant::now();
    wait_until("3 more stats messages", WAIT, || {
        stats.on(&format!("reload{}/stats", s.port)).len() >= before + 3
    })
    .await;
    // At the old 30 s interval three more take a minute at least.
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    s.ws.send_text(alert_frame("m-1", "person", 0.9));
    wait_until("m-1 published", WAIT, || {
        published(&s.sub).contains_key("m-1")
    })
    .await;
    assert_eq!(relay.count("mqtt: connected"), 1, "{}", relay.log());

    // A connection key: a new client id reconnects, and nothing is lost.
    let text = std::fs::read_to_string(&s.path).expect("read");
    let id_line = text
        .lines()
        .find(|l| l.starts_with("client_id = "))
        .expect("client_id line")
        .to_string();
    std::fs::write(
        &s.path,
        text.replace(&id_line, "client_id = \"reload-test-renamed\""),
    )
    .expect("write");
    relay.reload().await;
    wait_until("a second connection", WAIT, || {
        relay.count("mqtt: connected") == 2
    })
    .await;
    s.ws.send_text(alert_frame("m-2", "person", 0.9));
    wait_until("m-2 published", WAIT, || {
        published(&s.sub).contains_key("m-2")
    })
    .await;
    let p = published(&s.sub);
    assert_eq!((p.get("m-1"), p.get("m-2")), (Some(&1), Some(&1)), "{p:?}");
    // The WebSocket stayed up throughout.
    assert_eq!(
        s.ws.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_source_key_reconnects_the_source_and_nothing_else() {
    let s = setup().await;
    s.write("red17", 17, "person", "");
    let relay = Daemon::start(&s.path);
    wait_until("source and broker connected", WAIT, || {
        relay.count("source: connected") >= 1 && relay.count("mqtt: connected") >= 1
    })
    .await;
    s.ws.send_text(alert_frame("s-1", "person", 0.9));
    wait_until("s-1 published", WAIT, || {
        published(&s.sub).contains_key("s-1")
    })
    .await;
    let text = std::fs::read_to_string(&s.path).expect("read");
    std::fs::write(
        &s.path,
        text.replace("max_frame_bytes = \"16KiB\"", "max_frame_bytes = \"32KiB\""),
    )
    .expect("write");
    relay.reload().await;
    wait_until("a second WebSocket connection", WAIT, || {
        s.ws.connections.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    s.ws.send_text(alert_frame("s-2", "person", 0.9));
    wait_until("s-2 published", WAIT, || {
        published(&s.sub).contains_key("s-2")
    })
    .await;
    let p = published(&s.sub);
    assert_eq!((p.get("s-1"), p.get("s-2")), (Some(&1), Some(&1)), "{p:?}");
    // The broker connection and the outputs were not touched.
    assert_eq!(relay.count("mqtt: connected"), 1, "{}", relay.log());
    assert_eq!(relay.count("gpio: all outputs in their safe state"), 0);
    relay.stop();
}
