//! The relay speaks VideoDB as its Python SDK 0.5.1 does (issue 14), against the strict
//! stand-in (examples/support/videodb.rs, itself proven against the real SDK by
//! `.ci/videodb-sdk.sh`): `callback_url` in every create body, v1 and v2 index routes found out
//! from the service and remembered, typed / numeric / binary first frames, deletes where the
//! service allows them, `x-videodb-client`, and the CLI's delete, `events list` and long lists.

#[path = "../examples/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::videodb::{Hello, VideoDb};
use support::*;

const T: Duration = Duration::from_secs(30);
const KEY: &str = "proto-key-77c1";

/// A VideoDB-mode relay bound to one v1 index (`scn-1`) and one v2 index (`idx-v2`), written
/// the same way: nothing in the config says which kind an index is.
fn config(v: &VideoDb, dir: &Path) -> String {
    let kf = dir.join("key");
    std::fs::write(&kf, KEY).expect("key file");
    format!(
        r#"
[source]
api_url = "{api}"
api_key_file = "{kf}"
backoff_initial = "50ms"
backoff_max = "500ms"
connect_timeout = "5s"

[[source.alerts]]
rtstream_id = "rts-1"
index_id = "scn-1"
event_id = "event-a"

[[source.alerts]]
rtstream_id = "rts-1"
index_id = "idx-v2"
event_id = "event-b"

[queue]
dir = "{q}"

[mqtt]
host = "127.0.0.1"
port = {port}
backoff_initial = "50ms"
backoff_max = "500ms"
"#,
        api = v.api_url,
        kf = kf.display(),
        q = dir.join("q").display(),
        port = free_port(),
    )
}

/// Enabled alerts as (index_id, event_id, ws_connection_id), sorted.
fn bound(v: &VideoDb) -> Vec<(String, String, String)> {
    let mut b: Vec<_> = v
        .enabled_alerts()
        .into_iter()
        .map(|a| {
            (
                a.index_id,
                a.event_id,
                a.ws_connection_id.unwrap_or_default(),
            )
        })
        .collect();
    b.sort();
    b
}

fn expected(conn: &str) -> Vec<(String, String, String)> {
    vec![
        ("idx-v2".into(), "event-b".into(), conn.into()),
        ("scn-1".into(), "event-a".into(), conn.into()),
    ]
}

#[tokio::test]
async fn bindings_work_on_v1_and_v2_indexes_with_callback_url_and_a_typed_first_frame() {
    let v = VideoDb::start(KEY).await;
    v.add_v2_index("rts-1", "idx-v2");
    v.set_hello(Hello::Typed);
    v.allow_delete(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&config(&v, dir.path()));

    wait_until("both bound to conn-1", T, || {
        bound(&v) == expected("conn-1")
    })
    .await;
    // Every create body carries callback_url ("" for WebSocket only), on the right route.
    let creates: Vec<_> = v
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/alert"))
        .collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
    for c in &creates {
        assert_eq!(c.body.get("callback_url"), Some(&Value::from("")), "{c:?}");
    }
    assert!(creates
        .iter()
        .any(|c| c.path == "/rtstream/rts-1/index/scn-1/alert"));
    assert!(creates
        .iter()
        .any(|c| c.path == "/rtstream/rts-1/indexes/idx-v2/alert"));
    // Every REST call names the client, as the SDK's does (`videodb-python/{version}`).
    for c in v.calls() {
        let client = c.client.unwrap_or_default();
        assert!(
            client.starts_with("alert-relay/") && client.len() > "alert-relay/".len(),
            "{} {}: x-videodb-client {client:?}",
            c.method,
            c.path
        );
    }
    // The kinds are remembered in the state file...
    let state: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("videodb-alerts.json")).expect("state file"),
    )
    .expect("state JSON");
    let kinds: Vec<(String, String)> = state["indexes"]
        .as_array()
        .expect("indexes")
        .iter()
        .map(|k| {
            (
                k["index_id"].as_str().unwrap_or_default().to_string(),
                k["kind"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(kinds.contains(&("scn-1".into(), "v1".into())), "{kinds:?}");
    assert!(kinds.contains(&("idx-v2".into(), "v2".into())), "{kinds:?}");
    let lookups = v.count_calls("GET", "/scn-1") + v.count_calls("GET", "/idx-v2");

    // ...so a reconnect asks no more, binds both again, and deletes the old ones (allowed here).
    v.drop_connections();
    wait_until("both bound to conn-2", T, || {
        bound(&v) == expected("conn-2")
    })
    .await;
    wait_until("old alerts deleted", T, || v.alerts().len() == 2).await;
    assert_eq!(
        v.count_calls("GET", "/scn-1") + v.count_calls("GET", "/idx-v2"),
        lookups,
        "the kinds were remembered"
    );
    assert_eq!(v.count_calls("DELETE", "/alert/alert-1"), 1);
    assert_eq!(
        v.count_calls("PATCH", "/status"),
        0,
        "deleted, not disabled"
    );
    relay.stop().await;
}

#[tokio::test]
async fn numeric_and_binary_first_frames_give_the_connection_id() {
    for (shape, conn) in [(Hello::Numeric, "1"), (Hello::Binary, "conn-1")] {
        let v = VideoDb::start(KEY).await;
        v.add_v2_index("rts-1", "idx-v2");
        v.set_hello(shape);
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = Relay::start(&config(&v, dir.path()));
        wait_until(&format!("{shape:?}: bound to {conn}"), T, || {
            bound(&v) == expected(conn)
        })
        .await;
        assert_eq!(
            alert_relay::stats::Stats::get(&relay.stats.source_connects),
            1,
            "{shape:?}"
        );
        relay.stop().await;
    }
}

#[tokio::test]
async fn without_delete_the_old_alerts_are_disabled_and_delete_is_not_retried() {
    let v = VideoDb::start(KEY).await;
    v.add_v2_index("rts-1", "idx-v2");
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&config(&v, dir.path()));
    wait_until("bound to conn-1", T, || bound(&v) == expected("conn-1")).await;
    v.drop_connections();
    wait_until("bound to conn-2", T, || bound(&v) == expected("conn-2")).await;
    wait_until("old ones disabled", T, || {
        v.alerts().iter().filter(|a| !a.enabled).count() == 2
    })
    .await;
    // The first 405 taught the relay: the second old alert was only disabled.
    assert_eq!(v.count_calls("DELETE", ""), 1);
    relay.stop().await;
}

/// Runs the binary; returns (exit code, stdout, stderr).
async fn cli(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = support::tokio_command_for(env!("CARGO_BIN_EXE_alert-relay"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("VIDEO_DB_API_KEY", KEY)
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
async fn cli_finds_the_index_kind_deletes_or_says_disable_lists_events_and_long_lists() {
    let v = VideoDb::start(KEY).await;
    v.add_v2_index("rts-1", "idx-v2");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\napi_url = \"{}\"\n[[source.alerts]]\nrtstream_id = \"rts-1\"\nindex_id = \"idx-v2\"\nevent_id = \"event-1\"\n[queue]\ndir = \"{}\"\n",
            v.api_url,
            dir.path().join("q").display()
        ),
    )
    .expect("config");

    let (code, out, err) = cli(
        &["events", "create", "--label", "intrusion", "--prompt", "p"],
        &cfg,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let event = out.trim().to_string();
    let (code, out, err) = cli(&["events", "list"], &cfg).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{event}\tintrusion\tp")), "{out}");

    // A v2 index, found out from the service; the body carries callback_url "".
    let (code, out, err) = cli(&["alerts", "create", "--event", &event], &cfg).await;
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let create = v
        .calls()
        .into_iter()
        .find(|c| c.method == "POST" && c.path.ends_with("/alert"))
        .expect("create call");
    assert_eq!(create.path, "/rtstream/rts-1/indexes/idx-v2/alert");
    assert_eq!(create.body["callback_url"], "");

    // No delete on this service: the CLI says to disable instead, and exits non-zero.
    let (code, _, err) = cli(&["alerts", "delete", &id], &cfg).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("HTTP 405") && err.contains(&format!("alert-relay alerts disable {id}")),
        "{err}"
    );
    v.allow_delete(true);
    let (code, out, err) = cli(&["alerts", "delete", &id], &cfg).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted"), "{out}");
    assert!(v.alerts().is_empty());

    // A list well past the old 1 MiB response cap.
    for _ in 0..12_000 {
        v.add_manual_alert(
            "rts-1",
            "idx-v2",
            "event-with-a-rather-long-identifier-0123456789",
        );
    }
    let (code, out, err) = cli(&["alerts", "list"], &cfg).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 12_001, "header + every alert");
}
