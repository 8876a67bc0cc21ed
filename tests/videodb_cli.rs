//! `alert-relay alerts ...` and `alert-relay events create` against the VideoDB stand-in, run as
//! the installer would: the real binary, the relay's own config, the key from the environment.

#[path = "../examples/support/mod.rs"]
mod support;

use std::path::Path;

use support::videodb::VideoDb;

const KEY: &str = "cli-key-0b1e";

fn config(v: &VideoDb, dir: &Path, bindings: &str) -> std::path::PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\napi_url = \"{}\"\n{bindings}\n[queue]\ndir = \"{}\"\n",
            v.api_url,
            dir.join("q").display()
        ),
    )
    .expect("write config");
    path
}

const ONE_BINDING: &str =
    "[[source.alerts]]\nrtstream_id = \"rts-1\"\nindex_id = \"idx-1\"\nevent_id = \"event-1\"\n";

/// Runs the binary; returns (exit code, stdout, stderr).
async fn cli(args: &[&str], config: &Path, key: &str) -> (i32, String, String) {
    let out = support::tokio_command_for(env!("CARGO_BIN_EXE_alert-relay"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("VIDEO_DB_API_KEY", key)
        .output()
        .await
        .expect("run alert-relay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn installer_manages_alerts_and_events_from_the_device() {
    let v = VideoDb::start(KEY).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&v, dir.path(), ONE_BINDING);

    let (code, out, err) = cli(
        &[
            "events",
            "create",
            "--label",
            "intrusion",
            "--prompt",
            "a person climbs the fence",
        ],
        &cfg,
        KEY,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "event-1");
    assert_eq!(
        v.events(),
        vec![(
            "event-1".to_string(),
            "intrusion".to_string(),
            "a person climbs the fence".to_string()
        )]
    );

    // The stream and index come from [[source.alerts]] when there is only one pair.
    let (code, out, err) = cli(
        &[
            "alerts",
            "create",
            "--event",
            "event-1",
            "--callback-url",
            "https://hooks.example/x",
        ],
        &cfg,
        KEY,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let a = &v.alerts()[0];
    assert_eq!(a.alert_id, id);
    assert_eq!(
        (a.rtstream_id.as_str(), a.index_id.as_str()),
        ("rts-1", "idx-1")
    );
    assert_eq!(a.callback_url.as_deref(), Some("https://hooks.example/x"));

    let (code, _, err) = cli(&["alerts", "disable", &id], &cfg, KEY).await;
    assert_eq!(code, 0, "{err}");
    assert!(!v.alerts()[0].enabled);
    let (code, out, err) = cli(&["alerts", "list"], &cfg, KEY).await;
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("the alert is listed");
    assert!(row.contains("disabled") && row.contains("event-1"), "{row}");

    let (code, _, err) = cli(&["alerts", "enable", &id], &cfg, KEY).await;
    assert_eq!(code, 0, "{err}");
    assert!(v.alerts()[0].enabled);

    // Explicit --rtstream/--index override the config.
    let (code, out, err) = cli(
        &["alerts", "list", "--rtstream", "rts-9", "--index", "idx-9"],
        &cfg,
        KEY,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
}

#[tokio::test]
async fn cli_errors_are_clear_and_never_show_the_key() {
    let v = VideoDb::start(KEY).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&v, dir.path(), ONE_BINDING);

    let (code, _, err) = cli(&["alerts", "list"], &cfg, "wrong-key-991").await;
    assert_eq!(code, 1);
    assert!(err.contains("rejected") && err.contains("401"), "{err}");
    assert!(!err.contains("wrong-key-991"), "{err}");

    let (code, _, err) = cli(&["alerts", "enable"], &cfg, KEY).await;
    assert_eq!(code, 2, "missing ID is a usage error: {err}");
    let (code, _, err) = cli(&["alerts", "disable", "bad/id"], &cfg, KEY).await;
    assert_eq!(code, 1);
    assert!(err.contains("bad/id"), "{err}");

    // Two stream/index pairs in the config: the command must say which.
    let two = format!(
        "{ONE_BINDING}[[source.alerts]]\nrtstream_id = \"rts-2\"\nindex_id = \"idx-2\"\nevent_id = \"event-1\"\n"
    );
    let cfg2 = config(&v, dir.path(), &two);
    let (code, _, err) = cli(&["alerts", "create", "--event", "event-1"], &cfg2, KEY).await;
    assert_eq!(code, 1);
    assert!(err.contains("--rtstream"), "{err}");
    assert!(v.alerts().is_empty());

    // Generic mode has no API to talk to.
    let generic = dir.path().join("generic.toml");
    std::fs::write(&generic, "[source]\nurl = \"ws://127.0.0.1:9/\"\n").expect("write");
    let (code, _, err) = cli(&["alerts", "list"], &generic, KEY).await;
    assert_eq!(code, 1);
    assert!(err.contains("VideoDB mode"), "{err}");
}

#[tokio::test]
async fn check_config_names_the_key_source_but_never_prints_the_key() {
    let v = VideoDb::start(KEY).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&v, dir.path(), ONE_BINDING);
    let (code, out, err) = cli(&["check-config"], &cfg, KEY).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("api_key_env = \"VIDEO_DB_API_KEY\""), "{out}");
    assert!(out.contains("event_id = \"event-1\""), "{out}");
    assert!(!out.contains(KEY) && !err.contains(KEY));
    // Without the key, VideoDB mode is a config error that names the key to set.
    let out = support::tokio_command_for(env!("CARGO_BIN_EXE_alert-relay"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env_remove("VIDEO_DB_API_KEY")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("source.api_key_env"), "{err}");
}
