//! `alert-relay queue stats|dump --dir DIR`: offline, read-only views of a queue directory.

#[path = "../examples/support/mod.rs"]
mod support;

use std::process::Command;

use alert_relay::alert::{parse_frame, Alert, Frame, QueuedMessage, Via};
use alert_relay::config::{FsyncPolicy, OnFull, QueueConfig};
use alert_relay::queue::Queue;

/// The relay binary, under `ALERT_RELAY_TEST_RUNNER` (qemu-user) when CI sets it.
fn relay() -> Command {
    support::command_for(env!("CARGO_BIN_EXE_alert-relay"))
}

fn queued(event_id: &str, label: &str) -> Vec<u8> {
    let text = serde_json::json!({"channel": "alert", "rtstream_id": "rts-1",
        "data": {"event_id": event_id, "label": label, "confidence": 0.9}})
    .to_string();
    let Ok(Frame::Envelope(env)) = parse_frame(&text) else {
        panic!("not an envelope: {text}");
    };
    let alert = Alert::from_envelope(env).expect("alert");
    QueuedMessage::from_alert(&alert, Via::Websocket).encode()
}

#[test]
fn queue_dump_prints_every_record_as_a_json_line_and_stats_summarises() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = QueueConfig {
        dir: dir.path().to_owned(),
        max_bytes: 1 << 20,
        on_full: OnFull::DropOldest,
        fsync: FsyncPolicy::Batch,
        segment_bytes: 4 << 10,
        max_records: None,
        max_age: None,
    };
    let (mut q, _) = Queue::open(&cfg).expect("open");
    for i in 0..40u64 {
        let seq = q
            .append_durable(
                &queued(&format!("ev-{i}"), "intrusion"),
                1_700_000_000_000_000 + i,
            )
            .expect("append");
        assert_eq!(seq, i + 1);
    }
    for r in q.read_batch(10, 1 << 20).expect("read") {
        q.ack(r.seq).expect("ack");
    }
    q.close().expect("close");
    drop(q);

    let out = support::run_ok(relay().args(["queue", "dump", "--dir"]).arg(dir.path()));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    // Acked records may still be on disk until their segment goes; every unacked one is there.
    let unacked: Vec<&serde_json::Value> = lines.iter().filter(|l| l["acked"] == false).collect();
    assert_eq!(unacked.len(), 30);
    assert_eq!(unacked[0]["seq"], 11);
    assert_eq!(unacked[0]["topic"], "alerts/intrusion");
    assert_eq!(unacked[0]["body"]["event_id"], "ev-10");
    assert_eq!(unacked[0]["accepted_at"], "2023-11-14T22:13:20.000010Z");
    assert_eq!(lines.last().expect("lines")["seq"], 40);

    let out = support::run_ok(relay().args(["queue", "stats", "--dir"]).arg(dir.path()));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(stats["unacked_records"], 30);
    assert_eq!(stats["ack_position"], 11);
    assert_eq!(stats["last_seq"], 40);
    assert_eq!(stats["corrupt_records"], 0);
    assert!(stats["oldest_unacked_age_s"]
        .as_f64()
        .is_some_and(|a| a > 0.0));

    let out = relay()
        .args(["queue", "stats", "--dir", "/nonexistent/queue"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/queue"));
}

#[test]
fn bad_queue_bounds_are_rejected_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (line, key) in [
        ("max_records = 3", "queue.max_records"),
        ("max_age = \"10ms\"", "queue.max_age"),
        ("max_age = \"soon\"", "queue.max_age"),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!("[source]\nurl = \"ws://127.0.0.1:9/\"\n[queue]\n{line}\n"),
        )
        .expect("write");
        let out = relay()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{line}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{line}: expected {key:?} in {err:?}");
    }
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        "[source]\nurl = \"ws://127.0.0.1:9/\"\n[queue]\nmax_records = 5000\nmax_age = \"2h\"\n",
    )
    .expect("write");
    let out = relay()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_records = 5000"), "{text}");
    assert!(text.contains("max_age = \"7200s\""), "{text}");
}

/// Two real relays on one queue directory: the second exits 1 naming the directory and the
/// PID of the first, which keeps running; `queue stats` works beside it (it takes no lock).
#[test]
fn a_second_relay_on_the_same_queue_dir_exits_1_naming_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = dir.path().join("queue");
    // Nothing listens on either port: the relay keeps retrying and holds its queue.
    let config = support::relay_config(
        &format!("ws://127.0.0.1:{}/", support::free_port()),
        support::free_port(),
        &queue,
        "",
    );
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config).expect("config");
    let mut first = relay()
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("first relay");
    let lock = queue.join("lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pid = first.id().to_string();
    while std::fs::read_to_string(&lock)
        .ok()
        .map(|s| s.trim().to_owned())
        != Some(pid.clone())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first relay never wrote its PID into {}",
            lock.display()
        );
        assert!(
            first.try_wait().expect("wait").is_none(),
            "first relay exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = relay()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("second relay");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "second relay: {err}");
    assert!(
        err.contains(&queue.display().to_string()) && err.contains(&format!("PID {pid}")),
        "the message names neither the directory nor the holder: {err}"
    );
    let stats = support::run_ok(relay().args(["queue", "stats", "--dir"]).arg(&queue));
    let summary: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats json");
    assert_eq!(summary["bad_segments"], 0, "{summary}");
    assert!(
        first.try_wait().expect("wait").is_none(),
        "the first relay died"
    );
    let _ = first.kill();
    let _ = first.wait();
}
