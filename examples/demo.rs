//! One-command demo of the real pipeline on one machine:
//!
//!   cargo run --example demo [-- --keep-running]
//!
//! A local WebSocket source replays `config/sample-alerts.jsonl` (VideoDB's envelope format;
//! timestamps are refreshed so `max_age` rules fire) -> the relay (the real library, with its
//! on-disk queue in a temp dir) -> an embedded MQTT broker (rumqttd; the release binary carries
//! none) -> a subscriber that prints what arrives, while the `sim` GPIO backend logs which light
//! or buzzer is on. It ends by itself once every sample alert has arrived.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const SAMPLES: &str = include_str!("../config/sample-alerts.jsonl");

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keep_running = std::env::args().any(|a| a == "--keep-running");
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("alert_relay=info,demo=info"),
    )
    .format_timestamp_millis()
    .init();

    let gpio = r#"
[gpio]
backend = "sim"
sim_trace = "{dir}/gpio-trace.jsonl"
[[gpio.outputs]]
name = "red"
pin = 17
[[gpio.outputs]]
name = "amber"
pin = 22
[[gpio.outputs]]
name = "buzzer"
pin = 27
kind = "buzzer"
max_on = "2s"
[[gpio.rules]]
labels = ["intrusion*"]
min_confidence = 0.8
outputs = ["red", "buzzer"]
pattern = { kind = "blink", on = "150ms", off = "150ms", count = 3 }
priority = 10
[[gpio.rules]]
labels = ["traffic_violation"]
min_confidence = 0.8
output = "amber"
pattern = { kind = "solid", duration = "500ms" }
[[gpio.rules]]
labels = ["smoke*", "fire*"]
min_confidence = 0.6
outputs = ["red", "buzzer"]
pattern = { kind = "sequence", steps = [["400ms", "100ms"], ["400ms", "100ms"]] }
priority = 20
"#;
    let s = Setup::new()
        .sub("alert-relay/#")
        .config_extra(gpio)
        .start()
        .await;
    let (ws, sub, relay) = (&s.ws, s.sub(), &s.relay);
    let trace = s.dir.path().join("gpio-trace.jsonl");
    wait_until("the relay to come online", Duration::from_secs(20), || {
        sub.on("alert-relay/status")
            .iter()
            .any(|m| m.payload == b"online")
    })
    .await;

    // Print what the subscriber receives as it arrives.
    let received = sub.messages.clone();
    let printer = tokio::spawn(async move {
        let mut printed = 0;
        loop {
            let new: Vec<Received> = received.lock().expect("lock")[printed..].to_vec();
            printed += new.len();
            for m in new
                .iter()
                .filter(|m| m.topic.starts_with("alert-relay/alerts/"))
            {
                let j = m.json();
                println!(
                    "mqtt     <- {}  seq={} event_id={} confidence={}",
                    m.topic, j["relay"]["seq"], j["event_id"], j["confidence"]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let mut expected = 0;
    for line in SAMPLES.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: Value = serde_json::from_str(line).expect("sample line is JSON");
        let is_alert = ["channel", "type", "event_type"]
            .iter()
            .any(|k| v.get(*k).and_then(Value::as_str) == Some("alert"));
        if is_alert {
            expected += 1;
            if let Some(d) = v.get_mut("data").and_then(Value::as_object_mut) {
                d.insert("timestamp".into(), Value::from(now_rfc3339()));
            }
        }
        println!("source   -> {}", short(&v));
        ws.send_text(v.to_string());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sub.on("alert-relay/alerts/").len() < expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let printed = sub.on("alert-relay/alerts/").len();
    // Let the last patterns finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if keep_running {
        println!(
            "demo: running; send more frames to {} or press Ctrl-C",
            ws.url()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    relay.stop().await;
    printer.abort();

    let edges: Vec<Value> = std::fs::read_to_string(&trace)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let ons = |name: &str| {
        edges
            .iter()
            .filter(|e| e["output"] == name && e["on"] == true)
            .count()
    };
    println!(
        "demo: sent {expected} alerts, received {printed} on MQTT; GPIO switched on: red {}x, amber {}x, buzzer {}x; all outputs off at exit",
        ons("red"),
        ons("amber"),
        ons("buzzer")
    );
    drop(s);
    if printed != expected {
        eprintln!("demo: FAILED: {} alerts missing", expected - printed);
        std::process::exit(1);
    }
}

fn short(v: &Value) -> String {
    let ch = ["channel", "type", "event_type"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .unwrap_or("?");
    let d = &v["data"];
    let label = d
        .get("label")
        .or_else(|| d.get("event_label"))
        .cloned()
        .unwrap_or(Value::Null);
    format!(
        "{ch} label={label} confidence={}",
        d.get("confidence").cloned().unwrap_or(Value::Null)
    )
}
