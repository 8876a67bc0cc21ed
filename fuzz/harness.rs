// The fuzz harness, shared by the cargo-fuzz targets (fuzz/fuzz_targets/*.rs, nightly) and by
// the stable test that replays every kept crash (tests/fuzz_regressions.rs), so CI's plain
// `cargo test` covers the regressions without nightly. Each function takes arbitrary bytes,
// drives one input path through the library's pure stages and panics only on a broken
// property: a panic inside the library is exactly what the fuzzer is looking for.
//
// Each user (a fuzz target, a test file) calls only some of these functions.
#![allow(dead_code)]

// Uses only alert-relay's public API.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alert_relay::alert::{parse_frame, Alert, Frame, QueuedMessage, Via};
use alert_relay::config::{Config, OutputConfig};
use alert_relay::dedup::{missing_key_fields, KeyHasher};
use alert_relay::gpio::pattern::PatternCursor;
use alert_relay::rules::{LocalZone, RuleEngine};

/// Rules covering every time-dependent check: max_age, cooldown, quiet hours (all day, so the
/// local-time path always runs), globs, thresholds, rtstream filters.
const RULES: &str = r#"
[source]
url = "ws://127.0.0.1:9/"
[gpio]
backend = "sim"
[[gpio.outputs]]
name = "red"
pin = 17
[[gpio.outputs]]
name = "buzzer"
pin = 18
kind = "buzzer"
max_on = "2s"
[[gpio.outputs]]
name = "beep"
pin = 19
kind = "passive_buzzer"
[[gpio.rules]]
name = "porch"
labels = ["*"]
output = "red"
max_age = "30s"
cooldown = "10s"
[[gpio.rules]]
labels = ["intr?sion*", "fire"]
min_confidence = 0.5
outputs = ["red", "buzzer"]
max_age = "1000000000s"
quiet_hours = ["00:00-23:59"]
pattern = { kind = "blink", on = "1ms", off = "1ms", count = 4294967295 }
[[gpio.rules]]
labels = ["*"]
rtstream_id = "rts-*"
output = "beep"
pattern = { kind = "tone", frequency = 20000, duty = 0.99, duration = "1000000000s" }
"#;

fn rules_config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| Config::parse(RULES).expect("the harness config is valid"))
}

fn keys() -> &'static KeyHasher {
    static K: OnceLock<KeyHasher> = OnceLock::new();
    K.get_or_init(KeyHasher::default)
}

/// An output's pattern walked as the engine would (its first 100 000 edges): edges go forward,
/// none after `max_on`, and at most two per millisecond (steps are at least 1 ms).
fn run_pattern(p: &alert_relay::config::Pattern, out: &OutputConfig) {
    let mut c = PatternCursor::new(p.clone(), out.max_on);
    c.extend(Duration::from_millis(5));
    let mut last = Duration::ZERO;
    for n in 1..=100_000u128 {
        let Some((at, _)) = c.next_edge() else { return };
        assert!(at >= last, "edges go forward in time");
        assert!(at <= out.max_on, "no edge after max_on");
        assert!(
            n <= 2 * (at.as_millis() + 2),
            "more than two edges a millisecond"
        );
        last = at;
    }
}

/// An accepted alert through everything downstream of parsing: dedup key, rules at several
/// clocks (now, the alert's own time, the far future), the queued record and its payload.
pub fn downstream(alert: &Alert, via: Via) {
    let key = keys().key(alert);
    assert_eq!(key.is_none(), !missing_key_fields(alert).is_empty());
    let cfg = rules_config();
    let mut engine = RuleEngine::with_zone(cfg.gpio.rules.clone(), LocalZone::fixed(-5 * 3600));
    let t0 = Instant::now();
    let born = alert.timestamp.unwrap_or(UNIX_EPOCH);
    let walls = [
        SystemTime::now(),
        born,
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(253_402_300_799),
    ];
    for (i, &now) in walls.iter().enumerate() {
        let d = engine.decide(alert, now, now, t0 + Duration::from_secs(i as u64 * 7));
        for f in &d.fires {
            run_pattern(&f.pattern, &cfg.gpio.outputs[f.output]);
        }
    }
    let q = QueuedMessage::from_alert(alert, via);
    let bytes = q.encode();
    assert_eq!(
        QueuedMessage::decode(&bytes).as_ref(),
        Ok(&q),
        "record round trip"
    );
    for (seq, us) in [(1, 0), (u64::MAX, u64::MAX)] {
        let payload = q.render(seq, us);
        let v: serde_json::Value =
            serde_json::from_slice(&payload).expect("the MQTT payload is JSON");
        assert!(
            v.is_object() && v["relay"]["seq"] == seq,
            "payload has relay.seq"
        );
    }
    check_topic(&format!("alert-relay/{}", q.topic_suffix));
}

/// What MQTT (3.1.1 §4.7, 5 §4.7) and mosquitto refuse in a PUBLISH topic, as far as the relay
/// promises it today. Non-characters (U+FFFF, U+FDD0, ...) are issue 13 item 4, owned by the
/// label sanitiser's engineer: not asserted here until that lands.
pub fn check_topic(topic: &str) {
    assert!(!topic.is_empty() && topic.len() <= 65_535, "topic length");
    for c in topic.chars() {
        assert!(!matches!(c, '+' | '#'), "wildcard in topic {topic:?}");
        assert!(!c.is_control(), "control character in topic {topic:?}");
    }
}

/// One WebSocket text frame: frame -> envelope -> alert -> downstream.
pub fn frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Frame::Envelope(env)) = parse_frame(text) {
        if env.channel == "alert" {
            if let Ok(alert) = Alert::from_envelope(env) {
                downstream(&alert, Via::Websocket);
            }
        }
    }
}

/// One webhook body.
pub fn webhook(data: &[u8]) {
    if let Ok(alert) = alert_relay::webhook::parse_payload(data) {
        assert!(
            missing_key_fields(&alert).is_empty(),
            "webhook alerts have a key"
        );
        downstream(&alert, Via::Webhook);
    }
    if let Ok(q) = std::str::from_utf8(data) {
        let _ = alert_relay::webhook::token_from_query(q);
    }
}

/// A config file: TOML text -> validated Config -> rules engine -> printed and parsed again.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = alert_relay::config::parse_pattern(text, "pattern");
    let Ok(cfg) = Config::parse(text) else {
        return;
    };
    for r in cfg.gpio.rules.iter() {
        for &o in &r.outputs {
            run_pattern(&r.pattern, &cfg.gpio.outputs[o]);
        }
    }
    let mut engine = RuleEngine::with_zone(cfg.gpio.rules.clone(), LocalZone::fixed(3600));
    let alert = Alert::from_envelope(alert_relay::alert::Envelope {
        channel: "alert".into(),
        rtstream_id: Some("rts-1".into()),
        rtstream_name: None,
        data: serde_json::json!({"label": "intrusion", "confidence": 0.9})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    })
    .expect("a labelled alert");
    let now = SystemTime::now();
    let _ = engine.decide(&alert, now, now, Instant::now());
    let _ = cfg.redacted_toml();
}

/// A queued record's payload as read back from disk: decode -> render.
pub fn queue_record(data: &[u8]) {
    if let Ok(q) = QueuedMessage::decode(data) {
        assert_eq!(q.encode(), data, "decode then encode gives the record back");
        let _ = q.render(u64::MAX, u64::MAX);
        check_topic_bytes(&q.topic_suffix);
    }
}

fn check_topic_bytes(t: &str) {
    // A record's topic came from our own encoder; only its length is bounded here.
    assert!(t.len() <= usize::from(u16::MAX));
}

/// An MQTT command: the first byte picks a topic, the rest is the payload.
pub fn mqtt_command(data: &[u8]) {
    let cfg = rules_config();
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let topics = [
        "alert-relay/cmd/silence",
        "alert-relay/cmd/test/red",
        "alert-relay/cmd/test/buzzer",
        "alert-relay/cmd/test/beep",
        "alert-relay/cmd/test/",
        "alert-relay/cmd/result",
        "alert-relay/cmd/snooze",
        "alert-relay/outputs/red/set",
        "alert-relay/outputs/buzzer/set",
        "alert-relay/outputs/beep/set",
        "alert-relay/rules/porch/set",
    ];
    let topic = topics[usize::from(pick) % topics.len()];
    use alert_relay::publish::commands::{parse, Command};
    let Some(parsed) = parse("alert-relay", topic, payload, &cfg.gpio) else {
        return;
    };
    let run = match parsed.command {
        Ok(Command::Gpio(alert_relay::gpio::GpioCommand::Test { output, pattern })) => {
            Some((output, pattern))
        }
        Ok(Command::Output {
            output,
            pattern: Some(pattern),
            ..
        }) => Some((output, pattern)),
        _ => None,
    };
    if let Some((output, pattern)) = run {
        run_pattern(&pattern, &cfg.gpio.outputs[output]);
    }
}
