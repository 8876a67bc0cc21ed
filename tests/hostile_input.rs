//! Issue 13: no input reaches a panic, and no unit mistake makes an old alert fresh. Property
//! tests over arbitrary JSON trees with numbers at the edges of f64 and every Unicode class,
//! through the same harness the fuzz targets use (`fuzz/harness.rs`).

#[path = "../fuzz/harness.rs"]
mod harness;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alert_relay::alert::{Alert, Envelope};
use alert_relay::rules::{LocalZone, RuleEngine};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn extreme_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>().prop_map(|f| json!(f)), // NaN/inf serialise as null
        any::<u64>().prop_map(|u| json!(u)),
        any::<i64>().prop_map(|i| json!(i)),
        prop::sample::select(vec![
            1.7e22,
            1e25,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            -0.0,
            1e20,
            9.99e19,
            1e11,
            1e14,
            1e17,
        ])
        .prop_map(|f| json!(f)),
        // Numbers as text, and what is not quite a number.
        prop::sample::select(vec![
            "NaN",
            "inf",
            "-0",
            "1e308",
            "1e400",
            "1764236400000",
            " 1764236400 ",
            "1.5e9",
            "0x10",
            "2025-11-27T09:40:00",
            "2025-11-27T09:40:00+05:45",
            "9999-12-31T23:59:59Z",
        ])
        .prop_map(|s| json!(s)),
    ]
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\u{0}-\\u{1f}\\u{7f}-\\u{9f}/+#\\u{fffe}\\u{ffff}\\u{fdd0}\\u{1fffe}\\u{10ffff}\\u{202e}\\u{200b}é😀]{0,40}",
        "[a-z_*?]{1,12}",
    ]
}

fn json_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        extreme_number(),
        any_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((any_text(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Alert `data` objects: the known fields with hostile values, plus arbitrary extra fields.
fn alert_data() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop_oneof![any_text().prop_map(Value::String), json_tree()],
        prop_oneof![extreme_number(), json_tree()],
        prop_oneof![extreme_number(), json_tree()],
        prop_oneof![
            any_text().prop_map(Value::String),
            extreme_number(),
            Just(Value::Null)
        ],
        prop::collection::vec((any_text(), json_tree()), 0..4),
    )
        .prop_map(|(label, confidence, timestamp, event_id, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("label".into(), label);
            m.insert("confidence".into(), confidence);
            m.insert("timestamp".into(), timestamp);
            m.insert("event_id".into(), event_id);
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_frames_and_webhooks_never_panic(data in alert_data(), envelope in any::<bool>()) {
        let body = if envelope {
            json!({"channel": "alert", "rtstream_id": "rts-1", "data": data}).to_string()
        } else {
            Value::Object(data.clone()).to_string()
        };
        harness::frame(json!({"channel": "alert", "data": data}).to_string().as_bytes());
        harness::webhook(body.as_bytes());
    }

    #[test]
    fn arbitrary_json_trees_never_panic(tree in json_tree()) {
        let text = tree.to_string();
        harness::frame(text.as_bytes());
        harness::webhook(text.as_bytes());
        let mut cmd = vec![1u8];
        cmd.extend_from_slice(json!({"pattern": tree}).to_string().as_bytes());
        harness::mqtt_command(&cmd);
    }

    /// An alert older than `max_age`, written in any unit or shape the parser accepts, is stale
    /// (issue 13 item 3: an hour-old alert in µs or ns used to read as far future and fire).
    #[test]
    fn a_unit_can_never_make_an_old_alert_fresh(
        age_ms in 31_000u64..(50 * 365 * 86_400_000),
        unit in 0usize..4,
        shape in 0usize..3,
    ) {
        let now = SystemTime::now();
        let born = now - Duration::from_millis(age_ms);
        let ns = born.duration_since(UNIX_EPOCH).expect("after 1970").as_nanos();
        let scaled = ns / [1_000_000_000u128, 1_000_000, 1_000, 1][unit];
        let ts = match shape {
            0 => json!(scaled as u64),
            1 => json!(scaled as f64),
            _ => json!(scaled.to_string()),
        };
        let alert = Alert::from_envelope(Envelope {
            channel: "alert".into(),
            rtstream_id: None,
            rtstream_name: None,
            data: json!({"label": "x", "timestamp": ts}).as_object().cloned().unwrap_or_default(),
        }).expect("alert");
        prop_assert!(alert.timestamp.is_some(), "{ts} was not read");
        let cfg = alert_relay::config::Config::parse(
            "[source]\nurl = \"ws://h/\"\n[gpio]\nbackend = \"sim\"\n[[gpio.outputs]]\nname = \"b\"\npin = 1\nkind = \"buzzer\"\n[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"b\"\nmax_age = \"30s\"\n",
        ).expect("config");
        let mut rules = RuleEngine::with_zone(cfg.gpio.rules, LocalZone::fixed(0));
        let d = rules.decide(&alert, now, now, Instant::now());
        prop_assert!(d.fires.is_empty(), "{ts} ({age_ms} ms old) fired");
        prop_assert_eq!(d.stale, 1);
    }
}
