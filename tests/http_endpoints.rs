//! The HTTP listener over real sockets: webhook status codes, /healthz against a real broker,
//! /metrics as strict Prometheus text, and the limits that keep slow or hostile clients from
//! exhausting the daemon.

mod http_support;
#[path = "../examples/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use http_support::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(30);

struct WebRelay {
    ws: WsServer,
    relay: Relay,
    http: SocketAddr,
    token: String,
    mqtt_port: u16,
    _dir: tempfile::TempDir,
}

/// A relay with `[http]` (token from a file plus `http_extra`), no broker on its MQTT port
/// unless the test starts one (`Broker::start(s.mqtt_port)`).
async fn start_relay(http_extra: &str) -> WebRelay {
    let Started {
        ws,
        relay,
        mqtt_port,
        dir,
        ..
    } = Setup::new()
        .broker_later()
        .file("webhook.token", &format!("{TOKEN}\n"))
        .config_extra(&http_section(
            0,
            std::path::Path::new("{dir}/webhook.token"),
            http_extra,
        ))
        .start()
        .await;
    let http = relay.http();
    WebRelay {
        ws,
        relay,
        http,
        token: TOKEN.to_string(),
        mqtt_port,
        _dir: dir,
    }
}

#[tokio::test]
async fn webhook_errors_give_the_documented_status_codes() {
    let s = start_relay("max_body_bytes = \"1KiB\"").await;
    let good = webhook_body("ev-1", "intrusion", &now_rfc3339());

    let none = exchange(s.http, &post("/webhook", &[], good.as_bytes())).await;
    assert_eq!(none.status, 401, "no token: {}", none.text());
    let wrong = post_webhook(s.http, "test-token-0123456789abcdeX", &good).await;
    assert_eq!(wrong.status, 401, "wrong token: {}", wrong.text());
    let prefix = post_webhook(s.http, "test-token", &good).await;
    assert_eq!(
        prefix.status,
        401,
        "a prefix of the token: {}",
        prefix.text()
    );

    let by_query = exchange(
        s.http,
        &post(&format!("/webhook?token={}", s.token), &[], good.as_bytes()),
    )
    .await;
    assert_eq!(
        by_query.status,
        200,
        "token as query parameter: {}",
        by_query.text()
    );
    assert_eq!(by_query.json()["status"], "queued");

    let bad_json = post_webhook(s.http, &s.token, "{\"label\": ").await;
    assert_eq!(bad_json.status, 400);
    assert!(
        bad_json.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("not valid JSON")),
        "{}",
        bad_json.text()
    );
    let no_label = post_webhook(s.http, &s.token, r#"{"event_id":"ev-2","confidence":0.9}"#).await;
    assert_eq!(no_label.status, 400);
    assert!(
        no_label.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("no label")),
        "{}",
        no_label.text()
    );
    // Issue 13 item 10: without event_id and timestamp a retried copy cannot be recognised.
    let no_key = post_webhook(s.http, &s.token, r#"{"label":"fire","confidence":0.9}"#).await;
    assert_eq!(no_key.status, 400, "{}", no_key.text());
    assert!(
        no_key.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("no event_id and timestamp")),
        "{}",
        no_key.text()
    );
    let not_object = post_webhook(s.http, &s.token, "[1,2]").await;
    assert_eq!(not_object.status, 400, "{}", not_object.text());

    let big = format!(r#"{{"label":"x","pad":"{}"}}"#, "x".repeat(2048));
    let declared = post_webhook(s.http, &s.token, &big).await;
    assert_eq!(declared.status, 413, "{}", declared.text());
    // Chunked, so the size is only known while reading.
    let mut chunked = format!(
        "POST /webhook HTTP/1.1\r\nHost: relay\r\nX-Relay-Token: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        s.token,
        big.len()
    )
    .into_bytes();
    chunked.extend_from_slice(big.as_bytes());
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let streamed = exchange(s.http, &chunked).await;
    assert_eq!(streamed.status, 413, "{}", streamed.text());

    assert_eq!(exchange(s.http, &get("/nope")).await.status, 404);
    let get_hook = exchange(s.http, &get("/webhook")).await;
    assert_eq!(get_hook.status, 405);
    assert_eq!(get_hook.header("allow"), Some("POST"));

    let st = &s.relay.stats;
    // Ten requests to /webhook (the no-key one included), all but the good one rejected.
    assert_eq!(count(&st.webhook_requests), 10);
    assert_eq!(count(&st.webhook_rejected), 9);
    assert_eq!(count(&st.queue_appended), 1, "only the good one was queued");
    s.relay.stop().await;
}

#[tokio::test]
async fn webhook_is_off_without_a_token_but_health_and_metrics_answer() {
    let s = Setup::new()
        .broker_later()
        .config_extra("[http]\nlisten = \"127.0.0.1:0\"\n")
        .start()
        .await;
    let (relay, http) = (&s.relay, s.relay.http());
    let r = post_webhook(
        http,
        "anything-at-all-0123456",
        &webhook_body("e", "x", &now_rfc3339()),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(exchange(http, &get("/metrics")).await.status, 200);
    assert_eq!(count(&relay.stats.queue_appended), 0);
    relay.stop().await;
}

async fn health(addr: SocketAddr) -> Reply {
    exchange(addr, &get("/healthz")).await
}

fn reasons(r: &Reply) -> Vec<String> {
    r.json()["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn healthz_flips_to_503_when_the_broker_is_unreachable() {
    let s = start_relay("").await;
    wait_until("the source connected", T, || {
        count(&s.relay.stats.source_connects) >= 1
    })
    .await;
    // No broker on the relay's MQTT port yet.
    let down = health(s.http).await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(reasons(&down), vec!["broker disconnected".to_string()]);
    assert_eq!(down.json()["broker_connected"], false);
    assert_eq!(down.json()["source_connected"], true);
    assert!(down.json()["queue"]["max_bytes"].as_u64().is_some());

    let mut broker = Broker::start(s.mqtt_port);
    wait_until("the broker connected", T, || {
        count(&s.relay.stats.mqtt_connects) >= 1
    })
    .await;
    let up = health(s.http).await;
    assert_eq!(up.status, 200, "{}", up.text());
    assert_eq!(up.json()["status"], "ok");
    assert!(reasons(&up).is_empty());
    assert_eq!(up.json()["queue"]["depth_records"], 0);

    if !broker.stop() {
        skipped(
            "healthz_flips_to_503_when_the_broker_is_unreachable",
            "the broker-stop step (the embedded broker cannot be stopped; it runs with ALERT_RELAY_TEST_BROKER=mosquitto)",
        );
        s.relay.stop().await;
        return;
    }
    let before = count(&s.relay.stats.mqtt_connect_failures);
    wait_until("the relay noticed the broker is gone", T, || {
        count(&s.relay.stats.mqtt_connect_failures) > before
    })
    .await;
    let gone = health(s.http).await;
    assert_eq!(gone.status, 503, "{}", gone.text());
    assert!(
        reasons(&gone).contains(&"broker disconnected".to_string()),
        "{}",
        gone.text()
    );
    s.relay.stop().await;
}

/// A strict reader of the Prometheus text exposition format (0.0.4) as /metrics writes it:
/// every sample is preceded by its own HELP and TYPE lines, names are valid, values are
/// numbers, counters end in `_total` and are not negative, no name appears twice.
fn parse_prometheus(text: &str) -> Vec<(String, String, f64)> {
    let valid_name = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut samples = Vec::new();
    let mut names = HashSet::new();
    let mut help: Option<String> = None;
    let mut kind: Option<(String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap_or_else(|| panic!("{at}"));
            assert!(valid_name(name) && !doc.is_empty(), "{at}");
            assert!(
                help.is_none() && kind.is_none(),
                "HELP without a sample: {at}"
            );
            help = Some(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap_or_else(|| panic!("{at}"));
            assert!(["counter", "gauge"].contains(&t), "{at}");
            assert_eq!(help.as_deref(), Some(name), "TYPE follows its HELP: {at}");
            kind = Some((name.to_string(), t.to_string()));
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{at}");
            let (name, value) = line.split_once(' ').unwrap_or_else(|| panic!("{at}"));
            assert!(valid_name(name), "{at}");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {at}"));
            let (k_name, t) = kind
                .take()
                .unwrap_or_else(|| panic!("sample without TYPE: {at}"));
            assert_eq!(k_name, name, "{at}");
            help = None;
            if t == "counter" {
                assert!(name.ends_with("_total") && value >= 0.0, "{at}");
            }
            assert!(names.insert(name.to_string()), "duplicate {at}");
            samples.push((name.to_string(), t, value));
        }
    }
    assert!(help.is_none() && kind.is_none(), "dangling HELP/TYPE");
    samples
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_the_stats_counters() {
    let s = start_relay("").await;
    wait_until("the source connected", T, || {
        count(&s.relay.stats.source_connects) >= 1
    })
    .await;
    let ts = now_rfc3339();
    let body = webhook_body("ev-m", "intrusion", &ts);
    assert_eq!(post_webhook(s.http, &s.token, &body).await.status, 200);
    assert_eq!(post_webhook(s.http, &s.token, &body).await.status, 200);
    s.ws.send_text(socket_frame("ev-m", "intrusion", &ts));
    wait_until("three copies seen", T, || {
        count(&s.relay.stats.alerts_duplicate) == 2
    })
    .await;

    let r = exchange(s.http, &get("/metrics")).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let samples = parse_prometheus(&r.text());
    let value = |n: &str| {
        samples
            .iter()
            .find(|(name, _, _)| name == n)
            .map(|(_, t, v)| (t.as_str(), *v))
            .unwrap_or_else(|| panic!("{n} missing from:\n{}", r.text()))
    };
    assert_eq!(value("alert_relay_alerts_received_total"), ("counter", 3.0));
    assert_eq!(
        value("alert_relay_alerts_duplicate_total"),
        ("counter", 2.0)
    );
    assert_eq!(
        value("alert_relay_webhook_requests_total"),
        ("counter", 2.0)
    );
    assert_eq!(value("alert_relay_queue_appended_total"), ("counter", 1.0));
    assert_eq!(value("alert_relay_source_connected"), ("gauge", 1.0));
    assert_eq!(value("alert_relay_broker_connected"), ("gauge", 0.0));
    assert_eq!(value("alert_relay_queue_log_depth_records"), ("gauge", 1.0));
    // Every counter of {prefix}/stats is there.
    for (name, _) in alert_relay::stats::COUNTER_DOCS {
        value(&format!("alert_relay_{name}_total"));
    }
    s.relay.stop().await;
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(T, async {
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    buf
}

#[tokio::test]
async fn slow_and_excess_clients_are_cut_off_and_the_server_recovers() {
    let s = start_relay("max_connections = 2\nrequest_timeout = \"2s\"").await;

    // Two clients connect and say nothing, holding both slots.
    let mut idle1 = TcpStream::connect(s.http).await.expect("connect");
    let mut idle2 = TcpStream::connect(s.http).await.expect("connect");
    let mut third = TcpStream::connect(s.http).await.expect("connect");
    let busy = parse_reply(&read_until_closed(&mut third).await).expect("a response");
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert_eq!(count(&s.relay.stats.http_connections_refused), 1);

    // The silent ones are cut off after request_timeout, freeing the slots.
    read_until_closed(&mut idle1).await;
    read_until_closed(&mut idle2).await;

    // Slowloris: a header trickled a byte at a time is cut off too.
    let mut slow = TcpStream::connect(s.http).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
        .await
        .expect("write");
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await; // the client's pace, not a sync
            if slow.write_all(b"a").await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(T, trickle)
        .await
        .expect("the trickling client was cut off");

    // A body that never comes: 408.
    let mut stalled = TcpStream::connect(s.http).await.expect("connect");
    stalled
        .write_all(
            format!(
                "POST /webhook HTTP/1.1\r\nHost: relay\r\nX-Relay-Token: {}\r\nContent-Length: 100\r\n\r\n{{\"label\"",
                s.token
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let timed_out = parse_reply(&read_until_closed(&mut stalled).await).expect("a response");
    assert_eq!(timed_out.status, 408, "{}", timed_out.text());

    // Oversized headers: 431.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: relay\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(16 * 1024)
    );
    assert_eq!(exchange(s.http, huge.as_bytes()).await.status, 431);

    // Still serving, with every slot back.
    for _ in 0..3 {
        assert_eq!(exchange(s.http, &get("/metrics")).await.status, 200);
    }
    s.relay.stop().await;
}

#[tokio::test]
async fn keep_alive_connections_serve_several_requests_then_idle_out() {
    let s = start_relay("request_timeout = \"2s\"").await;
    let mut c = TcpStream::connect(s.http).await.expect("connect");
    for _ in 0..3 {
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .expect("write");
        // Read one response: head, then content-length bytes.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let reply = tokio::time::timeout(T, async {
            loop {
                let n = c.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed early");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse_reply(&buf) {
                    let len: usize = r
                        .header("content-length")
                        .and_then(|v| v.parse().ok())
                        .expect("length");
                    if r.body.len() >= len {
                        return r;
                    }
                }
            }
        })
        .await
        .expect("response");
        assert_eq!(reply.status, 200);
    }
    // An idle keep-alive connection is closed after request_timeout, freeing its slot.
    read_until_closed(&mut c).await;
    s.relay.stop().await;
}

#[tokio::test]
async fn webhook_answers_503_when_the_queue_is_full_and_the_retry_succeeds_later() {
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (token_path, token) = token_file(dir.path());
    // Started late, on the port the relay was given.
    let mqtt_port = free_port();
    // A small queue that refuses new records when full, and no broker to drain it.
    let cfg = format!(
        r#"
[source]
url = "{}"
[queue]
dir = "{}"
max_bytes = "64KiB"
on_full = "drop_newest"
[mqtt]
port = {mqtt_port}
client_id = "relay-503-{}"
backoff_initial = "50ms"
backoff_max = "200ms"
{}"#,
        ws.url(),
        dir.path().join("q").display(),
        unique_id(),
        http_section(0, &token_path, "")
    );
    let relay = Relay::start(&cfg);
    let http = relay.http();

    let pad = "p".repeat(4096);
    let body = |i: usize| {
        serde_json::json!({"event_id": format!("ev-{i}"), "label": "intrusion",
            "timestamp": "2026-01-10T08:15:30Z", "pad": pad})
        .to_string()
    };
    let mut refused = None;
    for i in 0..64 {
        let r = post_webhook(http, &token, &body(i)).await;
        match r.status {
            200 => assert_eq!(r.json()["status"], "queued"),
            503 => {
                assert_eq!(r.header("retry-after"), Some("5"));
                assert!(
                    r.json()["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("full")),
                    "{}",
                    r.text()
                );
                refused = Some(i);
                break;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let refused = refused.expect("the 64 KiB queue refused an alert");
    assert_eq!(count(&relay.stats.webhook_refused), 1);
    // The refused alert was not remembered as seen: its retry is tried again, not acknowledged.
    let retry = post_webhook(http, &token, &body(refused)).await;
    assert_eq!(retry.status, 503, "{}", retry.text());

    // Once a broker drains the queue, the retry is queued (not a "duplicate" of the failure).
    let broker = Broker::start(mqtt_port);
    let sub = Subscriber::start(broker.port(), "alert-relay/alerts/#").await;
    wait_until("the backlog acknowledged", T, || {
        count(&relay.stats.mqtt_acked) >= refused as u64
    })
    .await;
    let answer = post_until_accepted(http, &token, &body(refused)).await;
    assert_eq!(answer.json()["status"], "queued", "{}", answer.text());
    wait_until("the retried alert on MQTT", T, || {
        sub.snapshot()
            .iter()
            .any(|m| m.json()["event_id"] == format!("ev-{refused}").as_str())
    })
    .await;
    relay.stop().await;
}

/// Posts until the answer is 200 (the queue frees space as acks delete whole segments),
/// polling like `wait_until`, with the same deadline.
async fn post_until_accepted(http: SocketAddr, token: &str, body: &str) -> Reply {
    let deadline = std::time::Instant::now() + T;
    loop {
        let r = post_webhook(http, token, body).await;
        if r.status == 200 {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {}: {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
