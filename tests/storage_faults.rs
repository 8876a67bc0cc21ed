//! Storage faults with the real binary, real filesystems and real processes (issue 12):
//! a tmpfs smaller than one segment at the default sizes, two relays on one directory, a
//! queue directory the service user cannot write, and a segment it cannot read.
//!
//! Mounting a tmpfs and running the relay as `nobody` need root: those tests print
//! `SKIPPED: ...` and return when they cannot run (CI runs as root).

mod http_support;
#[path = "../examples/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_support::*;
use support::*;

const T: Duration = Duration::from_secs(60);

/// The relay binary as a child process (as `nobody` when `user` is set); killed on drop.
struct RelayProcess(Child);

impl RelayProcess {
    fn start(bin: &Path, config: &Path, log: &Path, as_nobody: bool) -> RelayProcess {
        RelayProcess(
            relay_command(bin, config, log, as_nobody)
                .spawn()
                .expect("start relay"),
        )
    }

    /// SIGTERM, then waits for the clean exit.
    fn stop(mut self) {
        signal(self.0.id(), "TERM");
        let status = self.0.wait().expect("wait for the relay");
        assert!(status.success(), "relay exited with {status} after SIGTERM");
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay_command(bin: &Path, config: &Path, log: &Path, as_nobody: bool) -> Command {
    let log = std::fs::File::create(log).expect("relay log file");
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]);
        c.args(command_args_for(bin));
        c
    } else {
        command_for(bin)
    };
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// `command_for(bin)` as an argument list (the qemu runner prefix, when set, then `bin`).
fn command_args_for(bin: &Path) -> Vec<String> {
    let mut args: Vec<String> = std::env::var("ALERT_RELAY_TEST_RUNNER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    args.push(bin.display().to_string());
    args
}

/// The binary copied where `nobody` may run it (the checkout may sit under a 0700 home).
fn public_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("alert-relay");
    std::fs::copy(env!("CARGO_BIN_EXE_alert-relay"), &bin).expect("copy the binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A temp dir `nobody` may enter, with an empty queue dir `q` in it (root's); None, with a
/// SKIPPED line, when not root.
fn dir_for_nobody(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if !is_root() {
        skipped(test, "running the relay as nobody needs root");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    chmod(dir.path(), 0o755);
    let queue = dir.path().join("q");
    std::fs::create_dir(&queue).expect("mkdir");
    Some((dir, queue))
}

fn chown_nobody(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown nobody {}", path.display());
}

/// A config whose queue keys are all defaults except the directory: webhook on, the
/// WebSocket pointing where nothing listens, short MQTT backoffs.
fn config(dir: &Path, queue: &Path, mqtt_port: u16, http_port: u16) -> PathBuf {
    let (token_path, _) = token_file(dir);
    chmod(&token_path, 0o644);
    let text = format!(
        r#"
[source]
url = "ws://127.0.0.1:{}/none"
backoff_initial = "50ms"
backoff_max = "500ms"

[queue]
dir = "{}"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "relay-storage-{}"
backoff_initial = "50ms"
backoff_max = "500ms"
stats_interval = "1s"
{}"#,
        free_port(),
        queue.display(),
        unique_id(),
        http_section(http_port, &token_path, "max_body_bytes = \"64KiB\""),
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).expect("write config");
    chmod(&path, 0o644);
    path
}

/// A webhook alert of about `bytes` bytes.
fn alert(id: &str, bytes: usize) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&webhook_body(id, "intrusion", &now_rfc3339())).expect("json");
    v["explanation"] = serde_json::Value::String("x".repeat(bytes.saturating_sub(300)));
    v.to_string()
}

async fn post_alert(http: SocketAddr, id: &str, bytes: usize) -> u16 {
    let token = "test-token-0123456789abcdef"; // what token_file writes
    post_webhook(http, token, &alert(id, bytes)).await.status
}

async fn healthz(http: SocketAddr) -> Reply {
    exchange(http, &get("/healthz")).await
}

/// The "queue appends failing: ..." reason of a /healthz answer.
fn appends_failing(h: &Reply) -> Option<String> {
    h.json()["reasons"]
        .as_array()?
        .iter()
        .filter_map(|r| r.as_str())
        .find(|r| r.starts_with("queue appends failing"))
        .map(str::to_owned)
}

fn delivered_ids(sub: &Subscriber) -> Vec<String> {
    sub.on("alert-relay/alerts/")
        .iter()
        .filter_map(|m| m.json()["event_id"].as_str().map(str::to_owned))
        .collect()
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn a_tmpfs_smaller_than_one_segment_at_default_sizes_drains_then_accepts_again() {
    let test = "a_tmpfs_smaller_than_one_segment_at_default_sizes_drains_then_accepts_again";
    let Some(fs) = SmallFs::mount(test, "3m") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt_port, http_port) = (free_port(), free_port());
    let config = config(dir.path(), &fs.path().join("q"), mqtt_port, http_port);
    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let bin = env!("CARGO_BIN_EXE_alert-relay").as_ref();
    let log = dir.path().join("relay-1.log");
    let relay = RelayProcess::start(bin, &config, &log, false);
    wait_listening(http, T).await;
    wait_until("the free-space warning at start", T, || {
        log_of(&log).contains("short of queue.max_bytes")
    })
    .await;

    // Broker down: ~4.4 KB alerts until the 3 MiB disk refuses them.
    let mut accepted = Vec::new();
    let (mut refused_in_a_row, mut i) = (0, 0);
    while refused_in_a_row < 20 {
        let id = format!("outage-{i}");
        i += 1;
        match post_alert(http, &id, 4400).await {
            200 => {
                accepted.push(id);
                refused_in_a_row = 0;
            }
            503 => refused_in_a_row += 1,
            other => panic!("webhook answered {other}"),
        }
        assert!(i < 5000, "the 3 MiB disk never filled");
    }
    assert!(accepted.len() > 100, "only {} accepted", accepted.len());
    let h = healthz(http).await;
    assert_eq!(h.status, 503, "healthz while appends fail: {}", h.text());
    assert!(
        appends_failing(&h).is_some_and(|r| r.to_lowercase().contains("no space")),
        "healthz names the error: {}",
        h.text()
    );
    eprintln!(
        "outage: {} accepted, then refused (disk full)",
        accepted.len()
    );

    // Broker back: the backlog drains, then new alerts are accepted again by themselves.
    let broker = Broker::start(mqtt_port);
    let sub = Subscriber::start(broker.port(), "alert-relay/alerts/#").await;
    wait_until("the backlog delivered", T, || {
        let got = delivered_ids(&sub);
        accepted.iter().all(|id| got.contains(id))
    })
    .await;
    let mut after = Vec::new();
    let mut longest = Duration::ZERO;
    for j in 0..1500 {
        let id = format!("after-{j}");
        let t0 = Instant::now();
        loop {
            match post_alert(http, &id, 4400).await {
                200 => break,
                503 => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(10),
                        "{id} refused for 10 s with the broker draining; log:\n{}",
                        log_of(&log)
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("webhook answered {other}"),
            }
        }
        longest = longest.max(t0.elapsed());
        after.push(id);
    }
    eprintln!(
        "after the drain: 1500 of 1500 accepted ({:.1} MB through a 3 MiB disk), longest wait {longest:?}",
        1500.0 * 4400.0 / 1e6
    );
    wait_until("the new alerts delivered", T, || {
        let got = delivered_ids(&sub);
        after.iter().all(|id| got.contains(id))
    })
    .await;
    // (Still 503 for "source disconnected": nothing serves the WebSocket here.)
    let h = healthz(http).await;
    assert_eq!(
        appends_failing(&h),
        None,
        "healthz after recovery: {}",
        h.text()
    );

    // A clean restart publishes nothing already delivered again (the ack position was
    // persisted in place, on a full disk too): a marker sent after the restart comes out
    // first.
    relay.stop();
    let before = delivered_ids(&sub).len();
    let relay = RelayProcess::start(bin, &config, &dir.path().join("relay-2.log"), false);
    wait_listening(http, T).await;
    assert_eq!(post_alert(http, "marker", 500).await, 200);
    wait_until("the marker delivered", T, || {
        delivered_ids(&sub).contains(&"marker".to_owned())
    })
    .await;
    let all = delivered_ids(&sub);
    assert_eq!(
        all.len(),
        before + 1,
        "republished after a clean restart: {:?}",
        &all[before..]
    );
    relay.stop();
}

#[test]
fn two_relays_started_at_once_on_an_empty_dir_one_runs_the_other_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = dir.path().join("q");
    let config = config(dir.path(), &queue, free_port(), free_port());
    let bin: &Path = env!("CARGO_BIN_EXE_alert-relay").as_ref();
    let spawn = |n: u32| {
        let log = dir.path().join(format!("relay-{n}.log"));
        (RelayProcess::start(bin, &config, &log, false), log)
    };
    let (mut a, log_a) = spawn(1);
    let (mut b, log_b) = spawn(2);
    let deadline = Instant::now() + T;
    let (loser_log, winner) = loop {
        if let Some(s) = a.0.try_wait().expect("wait") {
            assert_eq!(s.code(), Some(1), "{}", log_of(&log_a));
            break (log_a, b);
        }
        if let Some(s) = b.0.try_wait().expect("wait") {
            assert_eq!(s.code(), Some(1), "{}", log_of(&log_b));
            break (log_b, a);
        }
        assert!(
            Instant::now() < deadline,
            "both relays still run on one dir"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = log_of(&loser_log);
    assert!(
        err.contains("in use by another alert-relay") && err.contains(&queue.display().to_string()),
        "the loser names the directory and the holder: {err}"
    );
    let mut winner = winner;
    assert!(
        winner.0.try_wait().expect("wait").is_none(),
        "the winner exited too"
    );
    let held = std::fs::read_to_string(queue.join("lock")).expect("lock file");
    assert_eq!(
        held.trim(),
        winner.0.id().to_string(),
        "lock names the winner"
    );
}

#[test]
fn an_unwritable_queue_dir_refuses_the_start_naming_path_user_and_fix() {
    let test = "an_unwritable_queue_dir_refuses_the_start_naming_path_user_and_fix";
    let Some((dir, queue)) = dir_for_nobody(test) else {
        return;
    };
    chmod(&queue, 0o755); // root's: nobody may read it, not write it
    let config = config(dir.path(), &queue, free_port(), free_port());
    let bin = public_binary(dir.path());
    let log = dir.path().join("relay.log");
    let out = relay_command(&bin, &config, &log, true)
        .output()
        .expect("run the relay as nobody");
    let err = log_of(&log);
    assert_eq!(out.status.code(), Some(1), "exit status; log:\n{err}");
    assert!(
        err.contains(&queue.display().to_string())
            && err.contains("user nobody")
            && err.contains("chown -R nobody"),
        "names the path, the user and the fix: {err}"
    );
}

#[tokio::test]
async fn a_mode_000_segment_is_never_quarantined_and_is_delivered_once_readable() {
    let test = "a_mode_000_segment_is_never_quarantined_and_is_delivered_once_readable";
    let Some((dir, queue)) = dir_for_nobody(test) else {
        return;
    };
    chown_nobody(&queue);
    let (mqtt_port, http_port) = (free_port(), free_port());
    let config = config(dir.path(), &queue, mqtt_port, http_port);
    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let bin = public_binary(dir.path());

    // Ten alerts accepted while the broker is down, then a clean stop.
    let relay = RelayProcess::start(&bin, &config, &dir.path().join("relay-1.log"), true);
    wait_listening(http, T).await;
    let ids: Vec<String> = (0..10).map(|i| format!("held-{i}")).collect();
    for id in &ids {
        assert_eq!(post_alert(http, id, 500).await, 200, "{id}");
    }
    relay.stop();
    let segments: Vec<PathBuf> = std::fs::read_dir(&queue)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert!(!segments.is_empty(), "no segment written");
    for s in &segments {
        chmod(s, 0o000);
    }

    // Unreadable: the start is refused naming the file; nothing is quarantined or skipped.
    let broker = Broker::start(mqtt_port);
    let sub = Subscriber::start(broker.port(), "alert-relay/alerts/#").await;
    let log = dir.path().join("relay-2.log");
    let out = relay_command(&bin, &config, &log, true)
        .output()
        .expect("run as nobody");
    let err = log_of(&log);
    assert_eq!(
        out.status.code(),
        Some(1),
        "start with an unreadable segment:\n{err}"
    );
    assert!(
        segments
            .iter()
            .any(|s| err.contains(&s.display().to_string())),
        "names the unreadable file: {err}"
    );
    let names: Vec<String> = std::fs::read_dir(&queue)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".corrupt")),
        "quarantined: {names:?}"
    );

    // Readable again: all ten delivered, and the next alert's seq is above theirs.
    for s in &segments {
        chmod(s, 0o644);
    }
    let relay = RelayProcess::start(&bin, &config, &dir.path().join("relay-3.log"), true);
    wait_until("the ten held alerts delivered", T, || {
        let got = delivered_ids(&sub);
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    wait_listening(http, T).await;
    assert_eq!(post_alert(http, "after", 500).await, 200);
    wait_until("the new alert delivered", T, || {
        delivered_ids(&sub).contains(&"after".to_owned())
    })
    .await;
    let seq_of = |id: &str| -> u64 {
        sub.on("alert-relay/alerts/")
            .iter()
            .find(|m| m.json()["event_id"] == id)
            .and_then(|m| m.json()["relay"]["seq"].as_u64())
            .expect("relay.seq")
    };
    let newest_held = ids.iter().map(|id| seq_of(id)).max().expect("seqs");
    assert!(
        seq_of("after") > newest_held,
        "seq reused: after = {}, held up to {newest_held}",
        seq_of("after")
    );
    relay.stop();
}
