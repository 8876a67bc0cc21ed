//! End to end over real sockets: a WebSocket server speaking the upstream protocol, the relay,
//! a real MQTT broker (embedded rumqttd, or mosquitto with ALERT_RELAY_TEST_BROKER=mosquitto)
//! and a subscriber.

#[path = "../examples/support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn alerts_arrive_on_their_topics_with_the_full_payload() {
    let s = Setup::new().sub("alert-relay/#").start().await;

    wait_until("status online", T, || {
        s.sub()
            .on("alert-relay/status")
            .iter()
            .any(|m| m.payload == b"online")
    })
    .await;
    s.ws.send_text(alert_frame("ev-1", "intrusion", 0.91));
    s.ws.send_text(
        serde_json::json!({"type": "alert", "rtstream_id": "rts-9", "data": {
            "event_id": "ev-2", "event_label": "car/+#\u{0}", "confidence": 0.5,
            "vendor_extra": {"nested": [1, 2, 3]}}})
        .to_string(),
    );
    wait_until("two alerts", T, || {
        s.sub().on("alert-relay/alerts/").len() >= 2
    })
    .await;

    let got = s.sub().on("alert-relay/alerts/");
    assert_eq!(got[0].topic, "alert-relay/alerts/intrusion");
    let a = got[0].json();
    assert_eq!(a["event_id"], "ev-1");
    assert_eq!(a["label"], "intrusion");
    assert_eq!(a["confidence"], 0.91);
    assert_eq!(a["explanation"], "intrusion detected");
    assert_eq!(a["start_time"], 12.5);
    assert_eq!(a["player_url"], "https://player.example/rts-demo-1");
    assert_eq!(a["rtstream_id"], "rts-demo-1");
    assert_eq!(a["relay"]["seq"], 1);
    assert_eq!(a["relay"]["via"], "websocket");
    assert!(a["relay"]["received_at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));

    // Hostile label: sanitised in the topic, verbatim in the payload; unknown fields kept.
    assert_eq!(got[1].topic, "alert-relay/alerts/car____");
    let b = got[1].json();
    assert_eq!(b["event_label"], "car/+#\u{0}");
    assert_eq!(b["vendor_extra"]["nested"], serde_json::json!([1, 2, 3]));
    assert_eq!(b["rtstream_id"], "rts-9");
    assert_eq!(b["relay"]["seq"], 2);

    // Retained stats show the counters.
    wait_until("stats", T, || {
        s.sub()
            .on("alert-relay/stats")
            .iter()
            .any(|m| m.json()["mqtt_acked"].as_u64() >= Some(2))
    })
    .await;
    s.relay.stop().await;
    wait_until("status offline", T, || {
        s.sub()
            .on("alert-relay/status")
            .iter()
            .any(|m| m.payload == b"offline")
    })
    .await;
}

#[tokio::test]
async fn broker_down_at_start_alerts_arrive_once_it_is_up() {
    let mut s = Setup::new()
        .broker_later()
        .sub("alert-relay/alerts/#")
        .start()
        .await;
    for i in 0..20 {
        s.ws.send_text(alert_frame(&format!("ev-{i}"), "intrusion", 0.9));
    }
    wait_until("20 alerts durable", T, || {
        count(&s.relay.stats.queue_appended) == 20
    })
    .await;
    // The first connection attempt can still be in flight when the alerts are durable.
    wait_until("a failed broker connection", T, || {
        count(&s.relay.stats.mqtt_connect_failures) >= 1
    })
    .await;

    s.start_broker().await;
    wait_until("20 alerts acked", T, || {
        count(&s.relay.stats.mqtt_acked) == 20
    })
    .await;
    // The subscriber may have joined after some were delivered; the broker acked all 20, in
    // order; every one it saw carries its queue seq.
    let seqs: Vec<u64> = s
        .sub()
        .snapshot()
        .iter()
        .filter_map(|m| m.json()["relay"]["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    s.relay.stop().await;
}

#[tokio::test]
async fn unacked_records_are_published_after_a_restart() {
    let mut s = Setup::new()
        .broker_later()
        .sub("alert-relay/alerts/#")
        .start()
        .await;
    for i in 0..10 {
        s.ws.send_text(alert_frame(&format!("ev-{i}"), "smoke", 0.7));
    }
    wait_until("10 alerts durable", T, || {
        count(&s.relay.stats.queue_appended) == 10
    })
    .await;
    s.relay.stop().await;

    s.start_broker().await;
    s.relay = Relay::start(&s.config);
    wait_until("10 replayed alerts", T, || s.sub().snapshot().len() >= 10).await;
    let got = s.sub().snapshot();
    let ids: Vec<String> = got
        .iter()
        .map(|m| m.json()["event_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids, (0..10).map(|i| format!("ev-{i}")).collect::<Vec<_>>());
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|m| m.json()["relay"]["seq"].as_u64())
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    // New alerts continue the sequence after the replayed ones.
    s.ws.send_text(alert_frame("ev-new", "smoke", 0.7));
    wait_until("the new alert", T, || s.sub().snapshot().len() >= 11).await;
    assert_eq!(s.sub().snapshot()[10].json()["relay"]["seq"], 11);
    s.relay.stop().await;
}

#[tokio::test]
async fn invalid_frames_are_counted_and_skipped_and_the_stream_goes_on() {
    let setup = Setup::new().sub("alert-relay/alerts/#").start().await;

    setup.ws.send_text("this is not json");
    setup.ws.send_text("[1,2,3]");
    setup.ws.send(Message::binary(vec![0u8, 159, 146, 150]));
    setup.ws.send_text(format!(
        "{{\"channel\":\"alert\",\"data\":{{\"label\":\"{}\"}}}}",
        "x".repeat(20_000)
    ));
    setup.ws.send_text(r#"{"data":{"label":"no channel"}}"#);
    setup
        .ws
        .send_text(r#"{"channel":"alert","data":{"event_id":"no-label"}}"#);
    setup.ws.send_text(
        r#"{"channel":"alert","data":{"event_id":"e-nan","label":"weird","confidence":"NaN"}}"#,
    );
    setup
        .ws
        .send_text(alert_frame("ev-good", "intrusion", 0.95));

    wait_until("the good alerts", T, || setup.sub().snapshot().len() >= 2).await;
    let s = &setup.relay.stats;
    assert_eq!(count(&s.frames_invalid_json), 2);
    assert_eq!(count(&s.frames_binary), 1);
    assert_eq!(count(&s.frames_oversize), 1);
    assert_eq!(count(&s.frames_no_channel), 1);
    assert_eq!(count(&s.alerts_invalid), 1);
    assert_eq!(count(&s.alerts_bad_confidence), 1);
    assert_eq!(
        count(&s.source_connects),
        1,
        "bad input never drops the connection"
    );
    let labels: Vec<Value> = setup
        .sub()
        .snapshot()
        .iter()
        .map(|m| m.json()["label"].clone())
        .collect();
    assert_eq!(labels, vec![Value::from("weird"), Value::from("intrusion")]);
    setup.relay.stop().await;
}

#[tokio::test]
async fn matching_alerts_drive_sim_outputs_and_end_in_the_safe_state() {
    let gpio = r#"
[gpio]
backend = "sim"
sim_trace = "{dir}/gpio.jsonl"
[[gpio.outputs]]
name = "red"
pin = 17
[[gpio.outputs]]
name = "buzzer"
pin = 27
kind = "buzzer"
[[gpio.rules]]
labels = ["intrusion*"]
min_confidence = 0.8
output = "red"
pattern = { kind = "blink", on = "30ms", off = "30ms", count = 2 }
"#;
    let s = Setup::new().config_extra(gpio).start().await;
    let (ws, relay) = (&s.ws, &s.relay);
    let trace = s.dir.path().join("gpio.jsonl");
    ws.send_text(alert_frame("low", "intrusion_north", 0.5)); // below threshold
    ws.send_text(alert_frame("hi", "intrusion_north", 0.9));
    let edges = || -> Vec<Value> {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    wait_until("the blink edges", T, || {
        edges().iter().filter(|e| e["output"] == "red").count() >= 5
    })
    .await;
    relay.stop().await;
    let e = edges();
    let red: Vec<bool> = e
        .iter()
        .filter(|e| e["output"] == "red")
        .map(|e| e["on"] == true)
        .collect();
    // Safe state at start (off), blink twice, safe state at shutdown (off).
    assert_eq!(red, vec![false, true, false, true, false, false]);
    let buzzer: Vec<bool> = e
        .iter()
        .filter(|e| e["output"] == "buzzer")
        .map(|e| e["on"] == true)
        .collect();
    assert!(
        buzzer.iter().all(|on| !on),
        "the buzzer never sounded: {buzzer:?}"
    );
    assert!(
        e.iter()
            .all(|e| e["at"].as_str().is_some_and(|s| s.len() == 27)),
        "RFC 3339 µs timestamps"
    );
}

#[tokio::test]
async fn max_publish_rate_paces_a_burst_for_slow_consumers() {
    // 300 alerts at once, at most 100 a second with bursts of 10: the last can reach the
    // broker no sooner than 2.9 s after the first; all arrive, in order.
    const N: usize = 300;
    let s = Setup::new()
        .sub("alert-relay/alerts/#")
        .config_extra("max_publish_rate = 100")
        .start()
        .await;
    wait_until("relay connected", T, || {
        count(&s.relay.stats.mqtt_connects) >= 1
    })
    .await;
    for i in 0..N {
        s.ws.send_text(alert_frame(&format!("ev-{i}"), "intrusion", 0.9));
    }
    wait_until("300 alerts durable", T, || {
        count(&s.relay.stats.queue_appended) == N as u64
    })
    .await;
    wait_until("300 alerts received", T, || s.sub().snapshot().len() >= N).await;
    let got = s.sub().snapshot();
    let events: Vec<String> = got
        .iter()
        .map(|m| m.json()["event_id"].as_str().unwrap_or("").to_string())
        .collect();
    let want: Vec<String> = (0..N).map(|i| format!("ev-{i}")).collect();
    assert_eq!(events, want, "every alert once, in order");
    let span = got[N - 1].at - got[0].at;
    assert!(
        span >= Duration::from_millis(2500),
        "300 alerts at 100/s took only {span:?}"
    );
    s.relay.stop().await;
}
