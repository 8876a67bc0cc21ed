//! Commands on `{prefix}/cmd/...` and output state on `{prefix}/outputs/{name}`: every command
//! topic with good and bad payloads, against a relay driving simulated GPIO outputs.

#[path = "../examples/support/mod.rs"]
mod support;

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, QoS};
use serde_json::{json, Value};
use support::*;

const T: Duration = Duration::from_secs(30);

const GPIO: &str = r#"
[gpio]
backend = "sim"

[[gpio.outputs]]
name = "red"
kind = "light"

[[gpio.outputs]]
name = "horn"
kind = "buzzer"

[[gpio.rules]]
labels = ["intrusion"]
output = "red"
pattern = { kind = "solid", duration = "20s" }
"#;

/// Publishes one message and waits until it has left.
async fn publish(port: u16, topic: &str, payload: &[u8], retain: bool) {
    let mut opts = MqttOptions::new(format!("test-pub-{}", unique_id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(opts, 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .expect("queue publish");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(Event::Incoming(rumqttc::Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("test publisher: {e}"),
            Err(_) => panic!("test publisher timed out"),
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = el.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

fn results(sub: &Subscriber) -> Vec<Value> {
    sub.on("alert-relay/cmd/result")
        .iter()
        .map(Received::json)
        .collect()
}

/// Sends a command and returns its answer.
async fn command(port: u16, sub: &Subscriber, topic: &str, payload: &str) -> Value {
    let before = results(sub).len();
    publish(port, topic, payload.as_bytes(), false).await;
    wait_until(&format!("an answer to {topic} {payload:?}"), T, || {
        results(sub).len() > before
    })
    .await;
    let all = results(sub);
    assert_eq!(all.len(), before + 1, "one answer per command: {all:?}");
    all[before].clone()
}

/// The last `active` / `idle` on `{prefix}/outputs/{output}` (not its `/state` for HA).
fn last_state(sub: &Subscriber, output: &str) -> Option<String> {
    let topic = format!("alert-relay/outputs/{output}");
    sub.on(&topic)
        .into_iter()
        .rev()
        .find(|m| m.topic == topic)
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
}

#[tokio::test]
async fn commands_drive_outputs_and_bad_payloads_get_error_answers() {
    let s = Setup::new()
        .sub("alert-relay/#")
        .config_extra(GPIO)
        .start()
        .await;
    let (ws, sub, relay, port) = (&s.ws, s.sub(), &s.relay, s.mqtt_port);
    wait_until("both outputs idle", T, || {
        last_state(sub, "red").as_deref() == Some("idle")
            && last_state(sub, "horn").as_deref() == Some("idle")
    })
    .await;
    // Retained: a consumer joining later sees the state at once.
    let late = Subscriber::start(port, "alert-relay/outputs/#").await;
    wait_until("retained output states", T, || {
        let got: Vec<Received> = late
            .snapshot()
            .into_iter()
            .filter(|m| m.topic.matches('/').count() == 2)
            .collect();
        got.len() >= 2 && got.iter().all(|m| m.retain && m.payload == b"idle")
    })
    .await;

    // test/{output} with the default pattern: active, then idle when it ends.
    let a = command(port, sub, "alert-relay/cmd/test/horn", "").await;
    assert_eq!(a, json!({"command": "test/horn", "status": "ok"}));
    wait_until("horn active", T, || {
        sub.on("alert-relay/outputs/horn")
            .iter()
            .any(|m| m.payload == b"active")
    })
    .await;
    wait_until("horn idle again", T, || {
        last_state(sub, "horn").as_deref() == Some("idle")
    })
    .await;

    // test/{output} with a pattern in the config's syntax, then silence stops it.
    let a = command(
        port,
        sub,
        "alert-relay/cmd/test/red",
        r#"{"pattern": {"kind": "solid", "duration": "20s"}}"#,
    )
    .await;
    assert_eq!(a["status"], "ok", "{a}");
    wait_until("red active", T, || {
        last_state(sub, "red").as_deref() == Some("active")
    })
    .await;
    let a = command(port, sub, "alert-relay/cmd/silence", "").await;
    assert_eq!(a, json!({"command": "silence", "status": "ok"}));
    wait_until("red idle after silence", T, || {
        last_state(sub, "red").as_deref() == Some("idle")
    })
    .await;
    let a = command(port, sub, "alert-relay/cmd/silence", "{}").await;
    assert_eq!(a["status"], "ok", "{a}");

    // Bad payloads and topics: an error answer each, naming the problem.
    let bad = [
        ("alert-relay/cmd/silence", "please", "not JSON"),
        (
            "alert-relay/cmd/silence",
            r#"{"now": true}"#,
            "empty payload",
        ),
        ("alert-relay/cmd/test/blue", "", "no output named \"blue\""),
        ("alert-relay/cmd/test/red", "{\"pattern\":", "not JSON"),
        (
            "alert-relay/cmd/test/red",
            r#"{"pattern": {"kind": "strobe"}}"#,
            "strobe",
        ),
        (
            "alert-relay/cmd/test/red",
            r#"{"pattern": {"kind": "blink", "on": "1s", "off": "1s"}}"#,
            "count",
        ),
        (
            "alert-relay/cmd/test/red",
            r#"{"pattern": {"kind": "solid", "duration": "soon"}}"#,
            "duration",
        ),
        (
            "alert-relay/cmd/test/red",
            r#"{"colour": "red"}"#,
            "pattern",
        ),
        (
            "alert-relay/cmd/test/red",
            r#"{"pattern": {"kind": "tone", "frequency": 440, "duration": "1s"}}"#,
            "passive_buzzer",
        ),
        ("alert-relay/cmd/reboot", "", "unknown command"),
    ];
    for (topic, payload, want) in bad {
        let a = command(port, sub, topic, payload).await;
        assert_eq!(a["status"], "error", "{topic} {payload}: {a}");
        let e = a["error"].as_str().unwrap_or_default();
        assert!(e.contains(want), "{topic} {payload}: {e:?} lacks {want:?}");
        assert_eq!(
            a["command"],
            topic.trim_start_matches("alert-relay/cmd/"),
            "{a}"
        );
    }
    let huge = "x".repeat(5000);
    let a = command(port, sub, "alert-relay/cmd/silence", &huge).await;
    assert_eq!(a["status"], "error");

    // After all that, the relay still relays: an alert arrives and lights red.
    ws.send_text(alert_frame("ev-after", "intrusion", 0.95));
    wait_until("the alert after the commands", T, || {
        !sub.on("alert-relay/alerts/intrusion").is_empty()
    })
    .await;
    wait_until("red active from the rule", T, || {
        last_state(sub, "red").as_deref() == Some("active")
    })
    .await;
    assert_eq!(support::count(&relay.stats.mqtt_command_errors), 11);
    relay.stop().await;
}

#[tokio::test]
async fn a_retained_command_does_not_act_when_the_relay_connects() {
    let broker = Broker::start_any();
    let port = broker.port();
    // Left behind by some tool: it would act again on every reconnect if obeyed.
    publish(port, "alert-relay/cmd/test/red", b"", true).await;
    let sub = Subscriber::start(port, "alert-relay/#").await;
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = format!("{}{GPIO}", relay_config(&ws.url(), port, dir.path(), ""));
    let relay = Relay::start(&cfg);
    wait_until("red idle", T, || {
        last_state(&sub, "red").as_deref() == Some("idle")
    })
    .await;
    // A live command after it is answered; the retained one never was.
    let a = command(port, &sub, "alert-relay/cmd/silence", "").await;
    assert_eq!(a["command"], "silence", "{a}");
    assert!(results(&sub).iter().all(|r| r["command"] != "test/red"));
    assert_eq!(support::count(&relay.stats.mqtt_commands), 1);
    assert!(!sub
        .on("alert-relay/outputs/red")
        .iter()
        .any(|m| m.payload == b"active"));
    publish(port, "alert-relay/cmd/test/red", b"", true).await; // clears it (empty retained)
    relay.stop().await;
}

#[tokio::test]
async fn commands_without_gpio_are_answered_with_an_error() {
    let s = Setup::new().sub("alert-relay/#").start().await;
    let (sub, relay, port) = (s.sub(), &s.relay, s.mqtt_port);
    wait_until("online", T, || {
        sub.on("alert-relay/status")
            .iter()
            .any(|m| m.payload == b"online")
    })
    .await;
    let a = command(port, sub, "alert-relay/cmd/silence", "").await;
    assert_eq!(a["status"], "error");
    assert!(
        a["error"]
            .as_str()
            .unwrap_or_default()
            .contains("gpio is off"),
        "{a}"
    );
    let a = command(port, sub, "alert-relay/cmd/test/red", "").await;
    assert_eq!(a["status"], "error");
    relay.stop().await;
}

const HA_GPIO: &str = r#"
[gpio]
backend = "sim"
manual_priority = 50

[gpio.patterns]
alarm = { kind = "blink", on = "100ms", off = "100ms", duration = "20s" }

[[gpio.outputs]]
name = "red"
kind = "light"
max_on = "20s"

[[gpio.rules]]
name = "porch"
labels = ["person"]
output = "red"
pattern = { kind = "solid", duration = "20s" }
"#;

fn last_json(sub: &Subscriber, topic: &str) -> Option<Value> {
    sub.on(topic)
        .into_iter()
        .rev()
        .find(|m| m.topic == topic)
        .map(|m| m.json())
}

#[tokio::test]
async fn outputs_set_rules_arm_and_snooze_with_retained_states_that_survive_a_restart() {
    let s = Setup::new()
        .sub("alert-relay/#")
        .config_extra(HA_GPIO)
        .start()
        .await;
    let (ws, sub, relay, port) = (&s.ws, s.sub(), &s.relay, s.mqtt_port);
    let state = "alert-relay/outputs/red/state";
    wait_until("red state OFF", T, || {
        last_json(sub, state).is_some_and(|v| v["state"] == "OFF")
    })
    .await;
    // HA's JSON light: on with an effect; the state shows it; the answer echoes a transaction.
    let a = command(
        port,
        sub,
        "alert-relay/outputs/red/set",
        r#"{"state": "ON", "effect": "alarm", "transaction": "t-1"}"#,
    )
    .await;
    assert_eq!(
        a,
        json!({"command": "outputs/red/set", "status": "ok", "transaction": "t-1"})
    );
    wait_until("red ON with its effect", T, || {
        last_json(sub, state).is_some_and(|v| v == json!({"state": "ON", "effect": "alarm"}))
    })
    .await;
    let a = command(port, sub, "alert-relay/outputs/red/set", "OFF").await;
    assert_eq!(a["status"], "ok", "{a}");
    wait_until("red OFF, no effect", T, || {
        last_json(sub, state).is_some_and(|v| v == json!({"state": "OFF", "effect": null}))
    })
    .await;
    let a = command(
        port,
        sub,
        "alert-relay/outputs/red/set",
        r#"{"duration": -3}"#,
    )
    .await;
    assert_eq!(a["status"], "error", "{a}");

    // Disarm the rule: its state is retained OFF and the alert does not light red.
    let a = command(port, sub, "alert-relay/rules/porch/set", "OFF").await;
    assert_eq!(a["status"], "ok", "{a}");
    let rule = "alert-relay/rules/porch/state";
    wait_until("rule OFF", T, || {
        sub.on(rule).last().is_some_and(|m| m.payload == b"OFF")
    })
    .await;
    // Snooze: a retained until in the future.
    let a = command(port, sub, "alert-relay/cmd/snooze", r#"{"for": "10m"}"#).await;
    assert_eq!(a["status"], "ok", "{a}");
    wait_until("snoozed until", T, || {
        last_json(sub, "alert-relay/snooze").is_some_and(|v| v["until"].is_string())
    })
    .await;
    relay.stop().await;
    let saved: Value = serde_json::from_slice(
        &std::fs::read(s.queue().with_extension("state.json")).expect("state"),
    )
    .expect("state json");
    assert_eq!(saved["disarmed"], json!(["porch"]));
    assert!(saved["snoozed_until"].is_u64(), "{saved}");

    // After a restart the rule is still disarmed (retained OFF again), still snoozed; an
    // alert lights nothing. Ending the snooze and arming again brings the rule back.
    let late = Subscriber::start(port, "alert-relay/#").await;
    let relay = Relay::start(&s.config);
    wait_until("rule OFF after restart", T, || {
        late.on(rule).last().is_some_and(|m| m.payload == b"OFF")
    })
    .await;
    wait_until("still snoozed after restart", T, || {
        last_json(&late, "alert-relay/snooze").is_some_and(|v| v["until"].is_string())
    })
    .await;
    ws.send_text(alert_frame("ev-disarmed", "person", 0.9));
    wait_until("the alert went through", T, || {
        !late.on("alert-relay/alerts/").is_empty()
    })
    .await;
    let a = command(port, &late, "alert-relay/cmd/snooze", r#"{"for": 0}"#).await;
    assert_eq!(a["status"], "ok", "{a}");
    ws.send_text(alert_frame("ev-disarmed-2", "person", 0.9));
    wait_until("second alert through", T, || {
        late.on("alert-relay/alerts/").len() >= 2
    })
    .await;
    assert!(
        !late
            .on("alert-relay/outputs/red")
            .iter()
            .any(|m| m.payload == b"active"),
        "a disarmed rule lit red"
    );
    let a = command(
        port,
        &late,
        "alert-relay/rules/porch/set",
        r#"{"state": "ON"}"#,
    )
    .await;
    assert_eq!(a["status"], "ok", "{a}");
    ws.send_text(alert_frame("ev-armed", "person", 0.9));
    wait_until("armed again: red active", T, || {
        late.on("alert-relay/outputs/red")
            .iter()
            .any(|m| m.topic == "alert-relay/outputs/red" && m.payload == b"active")
    })
    .await;
    relay.stop().await;
}

/// A snooze ends by itself when its time is over, also without Home Assistant discovery (the
/// relay then does not look at its health every second: the snooze must still be looked at).
#[tokio::test]
async fn a_snooze_ends_by_itself_without_discovery() {
    let s = Setup::new()
        .sub("alert-relay/#")
        .config_extra(GPIO)
        .start()
        .await;
    let (sub, port) = (s.sub(), s.mqtt_port);
    let snooze = "alert-relay/snooze";
    wait_until("the outputs idle (the relay is subscribed)", T, || {
        last_state(sub, "red").as_deref() == Some("idle")
    })
    .await;
    let a = command(port, sub, "alert-relay/cmd/snooze", r#"{"for": "2s"}"#).await;
    assert_eq!(a["status"], "ok", "{a}");
    wait_until("snoozed until", T, || {
        last_json(sub, snooze).is_some_and(|v| v["until"].is_string())
    })
    .await;
    let snoozed = std::time::Instant::now();
    wait_until("the snooze over by itself", T, || {
        last_json(sub, snooze).is_some_and(|v| v["until"].is_null())
    })
    .await;
    let took = snoozed.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "the 2 s snooze ended after {took:?}"
    );
}
