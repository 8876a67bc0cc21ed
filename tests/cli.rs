//! The binary's contract (SPEC §3): subcommands, exit codes, messages that name the key.

#[path = "../examples/support/mod.rs"]
mod support;

use std::process::Command;

fn relay() -> Command {
    support::command_for(env!("CARGO_BIN_EXE_alert-relay"))
}

fn write_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

#[test]
fn version_prints_the_crate_version() {
    let out = relay().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("alert-relay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_the_example_and_prints_it_resolved() {
    let out = support::run_ok(relay().args([
        "check-config",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"),
    ]));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("topic_prefix = \"alert-relay\""),
        "{printed}"
    );
    assert!(printed.contains("fsync = \"batch\""), "{printed}");
}

#[test]
fn check_config_never_prints_url_secrets() {
    let (_d, path) = write_config("[source]\nurl = \"wss://rt.example/ws?token=SECRET-123\"\n");
    let out = relay()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("SECRET-123"), "{all}");
}

#[test]
fn bad_config_exits_2_and_names_the_key() {
    let cases = [
        ("[source]\nurl = \"ws://x\"\n[queue]\nfsync = \"sometimes\"\n", "queue.fsync"),
        ("[source]\nurl = \"ws://x\"\n[mqtt]\nbogus = 1\n", "bogus"),
        ("[queue]\ndir = \"/tmp\"\n", "source"),
        ("[source]\nurl = \"ws://x\"\n[[gpio.outputs]]\nname = \"a\"\n[[gpio.outputs]]\nname = \"a\"\n", "gpio.outputs[1].name"),
    ];
    for (text, key) in cases {
        let (_d, path) = write_config(text);
        for cmd in ["check-config", "run"] {
            let out = relay()
                .args([cmd, "--config"])
                .arg(&path)
                .output()
                .expect("run");
            assert_eq!(out.status.code(), Some(2), "{cmd} with {text:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(key), "{cmd}: expected {key:?} in {err:?}");
        }
    }
}

#[test]
fn check_config_refuses_configs_that_cannot_work() {
    let cases = [
        (
            "[gpio]\nbackend = \"rppal\"\n[[gpio.outputs]]\nname = \"red\"\npin = 17\n[[gpio.outputs]]\nname = \"horn\"\npin = 17\n",
            &["gpio.outputs[1].pin", "\"red\"", "\"horn\""][..],
        ),
        ("[mqtt]\ntopic_prefix = \"$SYS/x\"\n", &["mqtt.topic_prefix"][..]),
        ("[mqtt]\nport = 0\n", &["mqtt.port"][..]),
        ("", &["source.url"][..]),
    ];
    for (tail, words) in cases {
        let url = if tail.is_empty() {
            "ws://"
        } else {
            "ws://127.0.0.1:1/"
        };
        let (_d, path) = write_config(&format!("[source]\nurl = \"{url}\"\n{tail}"));
        let out = relay()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{tail:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for w in words {
            assert!(err.contains(w), "expected {w:?} in {err:?}");
        }
    }
}

#[test]
fn missing_config_file_and_bad_usage_exit_2() {
    let out = relay()
        .args(["run", "--config", "/nonexistent/alert-relay.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/alert-relay.toml"));
    let out = relay()
        .args(["frobnicate", "--config", "x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = relay().arg("run").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    signal_stops_the_daemon_cleanly("TERM");
}

#[test]
fn sigint_stops_the_daemon_cleanly() {
    signal_stops_the_daemon_cleanly("INT");
}

#[test]
fn sigquit_stops_the_daemon_cleanly() {
    signal_stops_the_daemon_cleanly("QUIT");
}

fn signal_stops_the_daemon_cleanly(signal: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = format!(
        "[source]\nurl = \"ws://127.0.0.1:9/\"\n[queue]\ndir = \"{}\"\n[mqtt]\nport = 9\n",
        dir.path().join("q").display()
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, cfg).expect("write");
    let child = relay()
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the queue directory exists: the daemon is up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dir.path().join("q").exists() {
        assert!(std::time::Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let received = format!("SIG{signal} received");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&received));
}

#[test]
fn under_systemd_it_reports_ready_pings_the_watchdog_and_says_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let cfg = format!(
        "[source]\nurl = \"ws://127.0.0.1:9/\"\n[queue]\ndir = \"{}\"\n[mqtt]\nport = 9\n",
        dir.path().join("q").display()
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, cfg).expect("write");
    let child = relay()
        .args(["run", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    // READY=1 first, then WATCHDOG=1 every ~100 ms.
    while seen
        .iter()
        .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
        .count()
        < 3
    {
        let n = recv_within(&sock, &mut buf, 20).expect("a notification within 20s");
        seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("READY=1"),
        "{seen:?}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    loop {
        let n = recv_within(&sock, &mut buf, 20).expect("STOPPING=1 within 20s");
        if String::from_utf8_lossy(&buf[..n]).trim() == "STOPPING=1" {
            break;
        }
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One datagram within `secs`. A receive with `SO_RCVTIMEO` fails with
/// `EINTR` when the process is stopped and continued, even without a signal
/// handler (signal(7)); that is retried against the same deadline.
fn recv_within(
    sock: &std::os::unix::net::UnixDatagram,
    buf: &mut [u8],
    secs: u64,
) -> std::io::Result<usize> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
