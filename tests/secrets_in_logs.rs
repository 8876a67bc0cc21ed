//! Secrets never reach the log, at any level, library trace output included (SPEC §5): the
//! real binary runs at `RUST_LOG=trace` with every kind of secret configured and used (a
//! handshake header, a token in the WebSocket URL, VideoDB's API key and the token in its
//! pre-authenticated `websocket_url`, an MQTT password, the webhook token in the header and in
//! the query; REST and WebSocket over TLS in VideoDB mode), and its whole stdout and stderr are searched for them. The trace output must be
//! substantial, so the test cannot pass by logging nothing.

#[path = "http_support/mod.rs"]
mod http_support;
#[path = "../examples/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::videodb::VideoDb;
use support::*;

const T: Duration = Duration::from_secs(60);

/// Runs the relay binary at `RUST_LOG=trace` on `config` while `drive` runs, then stops it
/// with SIGTERM; returns stdout and stderr together.
async fn run_at_trace<F: std::future::Future<Output = ()>>(
    dir: &Path,
    config: &str,
    drive: impl FnOnce() -> F,
) -> String {
    let cfg = dir.join("relay.toml");
    std::fs::write(&cfg, config).expect("write config");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = command_for(env!("CARGO_BIN_EXE_alert-relay"))
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::from(std::fs::File::create(&out).expect("stdout")))
        .stderr(Stdio::from(std::fs::File::create(&err).expect("stderr")))
        .spawn()
        .expect("start the relay");
    drive().await;
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let waited = tokio::task::spawn_blocking(move || {
        let r = child.wait();
        (child, r)
    });
    let (mut child, status) = tokio::time::timeout(T, waited)
        .await
        .expect("the relay stops on SIGTERM")
        .expect("join");
    let _ = child.kill();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "relay exit: {status:?}"
    );
    let mut text = std::fs::read_to_string(&out).expect("read stdout");
    text.push_str(&std::fs::read_to_string(&err).expect("read stderr"));
    text
}

/// No secret appears, and the trace output is real: TRACE lines from the relay and the
/// WebSocket library, and lines from every target in `targets` (the capped
/// `tungstenite::handshake::client` still logs below its cap).
fn assert_clean(log: &str, secrets: &[&str], library_targets: &[&str]) {
    for s in secrets {
        if let Some(line) = log.lines().find(|l| l.contains(s)) {
            panic!("secret {s:?} in the log: {line}");
        }
    }
    let traces = |target: &str| {
        log.lines()
            .filter(|l| l.contains(&format!(" TRACE {target}")))
            .count()
    };
    let total = traces("");
    assert!(total >= 15, "only {total} TRACE lines:\n{log}");
    for t in ["tokio_tungstenite", "alert_relay::source::frames"] {
        assert!(traces(t) > 0, "no TRACE lines from {t}:\n{log}");
    }
    for t in library_targets {
        assert!(
            log.lines().any(|l| l.contains(&format!(" {t}"))),
            "no output from {t} at trace level:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_mode_header_url_token_mqtt_password_and_webhook_token_stay_out_of_the_trace_log() {
    const HEADER: &str = "hdr-secret-4410ab";
    const URL_TOKEN: &str = "url-secret-7731cd";
    const PASSWORD: &str = "mqtt-secret-9902ef";
    const WEBHOOK: &str = "webhook-secret-5523gh";
    let broker = Broker::start_any();
    let sub = Subscriber::start(broker.port(), "alert-relay/alerts/#").await;
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("mqtt-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).expect("write password");
    let tok = dir.path().join("webhook-token");
    std::fs::write(&tok, format!("{WEBHOOK}\n")).expect("write token");
    let http_port = free_port();
    let url = format!("{}?token={URL_TOKEN}", ws.url());
    let cfg = relay_config(&url, broker.port(), &dir.path().join("q"), "")
        .replace(
            "max_frame_bytes = \"16KiB\"",
            &format!(
                "max_frame_bytes = \"16KiB\"\nheaders = {{ Authorization = \"Bearer {HEADER}\" }}"
            ),
        )
        .replace(
            "stats_interval = \"1s\"",
            &format!(
                "stats_interval = \"1s\"\nusername = \"relay\"\npassword_file = \"{}\"",
                pw.display()
            ),
        )
        + &format!(
            "\n[http]\nlisten = \"127.0.0.1:{http_port}\"\ntoken_file = \"{}\"\n",
            tok.display()
        );
    let log = run_at_trace(dir.path(), &cfg, || async {
        wait_until("the relay connects", T, || {
            ws.connections.load(std::sync::atomic::Ordering::SeqCst) >= 1
        })
        .await;
        ws.send_text(alert_frame("g-1", "fire", 0.9));
        wait_until("the websocket alert", T, || {
            !sub.on("alert-relay/alerts/fire").is_empty()
        })
        .await;
        let addr = format!("127.0.0.1:{http_port}").parse().expect("addr");
        let body = http_support::webhook_body("g-2", "smoke", &now_rfc3339());
        let r = http_support::post_webhook(addr, WEBHOOK, &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let query = format!("/webhook?token={WEBHOOK}");
        let body = http_support::webhook_body("g-3", "smoke", &now_rfc3339());
        let r =
            http_support::exchange(addr, &http_support::post(&query, &[], body.as_bytes())).await;
        assert_eq!(r.status, 200, "{}", r.text());
        wait_until("both webhook alerts", T, || {
            sub.on("alert-relay/alerts/smoke").len() >= 2
        })
        .await;
    })
    .await;
    assert_clean(
        &log,
        &[HEADER, URL_TOKEN, PASSWORD, WEBHOOK],
        &[
            "rumqttc",
            "tungstenite::handshake::client",
            "alert_relay::source",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn videodb_api_key_and_websocket_url_token_stay_out_of_the_trace_log() {
    const KEY: &str = "vdb-api-secret-3141";
    let pki = support::videodb::Pki::new("secrets");
    let v = VideoDb::start_tls(KEY, &pki).await;
    let ws_token = v
        .ws_url
        .split("token=")
        .nth(1)
        .expect("the stand-in's websocket_url has a token")
        .to_string();
    let broker = Broker::start_any();
    let sub = Subscriber::start(broker.port(), "alert-relay/alerts/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki.write_ca(dir.path(), "ca.pem");
    let key = dir.path().join("api-key");
    std::fs::write(&key, format!("{KEY}\n")).expect("write key");
    let cfg = format!(
        r#"
[source]
api_url = "{api}"
api_key_file = "{key}"
ca_file = "{ca}"
collection_id = "default"
backoff_initial = "50ms"
backoff_max = "500ms"

[[source.alerts]]
rtstream_id = "rts-1"
index_id = "idx-1"
event_id = "event-fire"

[queue]
dir = "{q}"

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "secrets-{id}"
"#,
        api = v.api_url,
        key = key.display(),
        ca = ca.display(),
        q = dir.path().join("q").display(),
        port = broker.port(),
        id = unique_id(),
    );
    let log = run_at_trace(dir.path(), &cfg, || async {
        wait_until("the alert is bound", T, || !v.enabled_alerts().is_empty()).await;
        v.send_text(alert_frame("v-1", "fire", 0.9));
        wait_until("the websocket alert", T, || {
            !sub.on("alert-relay/alerts/fire").is_empty()
        })
        .await;
    })
    .await;
    assert_clean(
        &log,
        &[KEY, &ws_token],
        &[
            "rumqttc",
            "rustls",
            "tungstenite::handshake::client",
            "alert_relay::source",
        ],
    );
}
