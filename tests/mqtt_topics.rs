//! Topics every broker accepts (issue 13, item 4): alerts whose label, and channel messages
//! whose rtstream id, are arbitrary strings (non-characters, NUL, controls, wildcards, very
//! long) all reach a real mosquitto through the relay, with MQTT 3.1.1 and 5 (whose user
//! properties carry the label too). A property test: the strings come from proptest, random
//! per run, with the known offenders always included; a failure prints the strings.
//! Mosquitto-only (it is the strict judge); prints SKIPPED otherwise.

#[path = "../examples/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use support::*;

const T: Duration = Duration::from_secs(90);
/// Random strings per run on top of the fixed offenders.
const CASES: usize = 150;

fn hostile_strings() -> Vec<String> {
    let nasty = prop_oneof![
        Just('\u{FFFF}'),
        Just('\u{FFFE}'),
        Just('\u{FDD0}'),
        Just('\u{FDEF}'),
        Just('\u{1FFFE}'),
        Just('\u{10FFFF}'),
        Just('\0'),
        Just('\u{1B}'),
        Just('\u{7F}'),
        Just('\u{85}'),
        Just('/'),
        Just('+'),
        Just('#'),
        Just('$'),
        Just('\u{FFFD}'),
    ];
    let ch = prop_oneof![3 => any::<char>(), 2 => nasty];
    let s = prop_oneof![
        9 => proptest::collection::vec(ch.clone(), 0..64),
        1 => proptest::collection::vec(ch, 100..3000),
    ]
    .prop_map(|v| v.into_iter().collect::<String>());
    let mut runner = TestRunner::default();
    let mut out: Vec<String> = [
        "\u{FFFF}",
        "fire\u{FDD0}",
        "\u{1FFFE}smoke",
        "\0",
        "",
        "a/b/+/#",
        "$SYS",
        "\u{FEFF}bom",
        "é",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    out.push("x".repeat(5000));
    for _ in 0..CASES {
        out.push(s.new_tree(&mut runner).expect("strategy").current());
    }
    out
}

async fn every_hostile_topic_arrives(extra: &str, test: &str) {
    let setup = Setup::new()
        .mosquitto(Mosquitto::new())
        .sub("alert-relay/#")
        .config_extra(extra)
        .replace(
            "max_frame_bytes = \"16KiB\"\n",
            "max_frame_bytes = \"64KiB\"\nchannels = [\"transcript\"]\ndurable_channels = [\"transcript\"]\n",
        )
        .start()
        .await;
    let (ws, sub, relay) = (&setup.ws, setup.sub(), &setup.relay);
    let strings = hostile_strings();
    // What each marker was made from, to print the offenders if one does not arrive.
    let mut sent: HashMap<String, String> = HashMap::new();
    for (i, s) in strings.iter().enumerate() {
        let id = format!("stream-{i}");
        ws.send_text(
            serde_json::json!({
                "channel": "transcript",
                "rtstream_id": s,
                "data": {"text": "hello", "is_final": true, "marker": id}
            })
            .to_string(),
        );
        sent.insert(id, s.clone());
        let id = format!("label-{i}");
        // An empty label is not an alert (counted invalid by the parser): no topic to test.
        if s.is_empty() {
            continue;
        }
        ws.send_text(
            serde_json::json!({
                "channel": "alert",
                "data": {"event_id": id, "label": s, "confidence": 0.9}
            })
            .to_string(),
        );
        sent.insert(id, s.clone());
    }
    let arrived = |sub: &Subscriber| -> HashMap<String, String> {
        sub.snapshot()
            .into_iter()
            .filter_map(|m| {
                let j = m.json();
                let id = j["event_id"].as_str().or(j["marker"].as_str())?.to_string();
                Some((id, m.topic))
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + T;
    while arrived(sub).len() < sent.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = arrived(sub);
    let missing: Vec<String> = sent
        .iter()
        .filter(|(id, _)| !got.contains_key(*id))
        .map(|(id, s)| format!("{id}: {s:?}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{test}: {} of {} never arrived (set aside: {}); their strings: {:?}",
        missing.len(),
        sent.len(),
        count(&relay.stats.mqtt_set_aside),
        missing.iter().take(10).collect::<Vec<_>>()
    );
    assert_eq!(count(&relay.stats.mqtt_set_aside), 0);
    assert_eq!(count(&relay.stats.mqtt_connect_failures), 0);
    // Every topic is what the sanitiser makes of the string, one level below its root.
    for (id, topic) in &got {
        let Some(s) = sent.get(id) else { continue };
        let level = alert_relay::alert::sanitize_topic_level(s);
        let want = if id.starts_with("label-") {
            format!("alert-relay/alerts/{level}")
        } else {
            format!("alert-relay/transcript/{level}")
        };
        assert_eq!(topic, &want, "{s:?}");
    }
    eprintln!(
        "{test}: {} hostile strings, {} messages, all arrived",
        strings.len(),
        sent.len()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_from_arbitrary_labels_and_stream_ids_reach_mosquitto() {
    let test = "topics_from_arbitrary_labels_and_stream_ids_reach_mosquitto";
    if !Mosquitto::available(test) {
        return;
    }
    every_hostile_topic_arrives("", test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_user_properties_from_arbitrary_labels_reach_mosquitto_with_mqtt5() {
    let test = "topics_and_user_properties_from_arbitrary_labels_reach_mosquitto_with_mqtt5";
    if !Mosquitto::available(test) {
        return;
    }
    every_hostile_topic_arrives("protocol = \"5\"", test).await;
}
