//! The command parser against the payloads the network may send.

#[test]
fn reply_topics_with_wildcards_nul_or_dollar_are_refused() {
    use super::valid_reply_topic as ok;
    assert!(ok("app/replies/42"));
    assert!(ok("a"));
    for bad in ["", "app/+/x", "app/#", "$SYS/x", "a\0b"] {
        assert!(!ok(bad), "{bad:?}");
    }
    assert!(!ok(&"x".repeat(65_536)));
}

use super::*;
use crate::config::Config;

fn gpio() -> GpioConfig {
    Config::parse(
        r#"
[source]
url = "ws://127.0.0.1:1/"
[gpio]
backend = "sim"
[gpio.patterns]
alarm = { kind = "blink", on = "100ms", off = "100ms", count = 5 }
beep = { kind = "tone", frequency = 880, duration = "1s" }
walk = { kind = "sequence", steps = [["100ms", "100ms"]] }
[[gpio.outputs]]
name = "red"
max_on = "30s"
[[gpio.outputs]]
name = "beep"
kind = "passive_buzzer"
max_on = "10s"
[[gpio.rules]]
name = "porch"
labels = ["person"]
output = "red"
"#,
    )
    .expect("config")
    .gpio
}

fn run(topic: &str, payload: &str) -> Option<(String, Result<Command, String>)> {
    parse("ar", topic, payload.as_bytes(), &gpio()).map(|p| (p.name, p.command))
}

fn ok(topic: &str, payload: &str) -> Command {
    run(topic, payload)
        .expect("a command topic")
        .1
        .unwrap_or_else(|e| panic!("{topic} {payload}: {e}"))
}

#[test]
fn good_commands_become_gpio_commands() {
    assert_eq!(
        run("ar/cmd/silence", ""),
        Some(("silence".into(), Ok(Command::Gpio(GpioCommand::Silence))))
    );
    assert_eq!(
        ok("ar/cmd/silence", " {} "),
        Command::Gpio(GpioCommand::Silence)
    );
    assert_eq!(
        ok("ar/cmd/test/red", ""),
        Command::Gpio(GpioCommand::Test {
            output: 0,
            pattern: default_test_pattern(OutputKind::Light)
        })
    );
    assert_eq!(
        ok(
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "solid", "duration": "1s"}}"#
        ),
        Command::Gpio(GpioCommand::Test {
            output: 0,
            pattern: Pattern::Solid {
                duration: Duration::from_secs(1)
            }
        })
    );
    assert!(matches!(
        ok("ar/cmd/test/beep", ""),
        Command::Gpio(GpioCommand::Test {
            output: 1,
            pattern: Pattern::Tone { .. }
        })
    ));
}

#[test]
fn outputs_take_on_off_and_named_patterns_capped_at_max_on() {
    assert_eq!(
        ok("ar/outputs/red/set", "ON"),
        Command::Output {
            output: 0,
            pattern: Some(Pattern::Solid {
                duration: Duration::from_secs(30)
            }),
            effect: None
        }
    );
    assert_eq!(
        ok("ar/outputs/red/set", " off "),
        Command::Output {
            output: 0,
            pattern: None,
            effect: None
        }
    );
    // Home Assistant's JSON light.
    assert_eq!(
        ok(
            "ar/outputs/red/set",
            r#"{"state": "ON", "effect": "alarm"}"#
        ),
        Command::Output {
            output: 0,
            pattern: Some(Pattern::Blink {
                on: Duration::from_millis(100),
                off: Duration::from_millis(100),
                count: Some(5),
                duration: None
            }),
            effect: Some("alarm".into())
        }
    );
    // Home Assistant's siren: tone and a duration in seconds; beyond max_on it is cut.
    assert_eq!(
        ok(
            "ar/outputs/beep/set",
            r#"{"state": "ON", "tone": "beep", "duration": 3600}"#
        ),
        Command::Output {
            output: 1,
            pattern: Some(Pattern::Tone {
                frequency: 880,
                duty: 0.5,
                duration: Duration::from_secs(10)
            }),
            effect: Some("beep".into())
        }
    );
    assert_eq!(
        ok(
            "ar/outputs/red/set",
            r#"{"pattern": "alarm", "duration": "2.5s"}"#
        ),
        Command::Output {
            output: 0,
            pattern: Some(Pattern::Blink {
                on: Duration::from_millis(100),
                off: Duration::from_millis(100),
                count: None,
                duration: Some(Duration::from_millis(2500))
            }),
            effect: Some("alarm".into())
        }
    );
    assert_eq!(
        ok("ar/rules/porch/set", "OFF"),
        Command::Arm {
            rule: 0,
            armed: false
        }
    );
    assert_eq!(
        ok("ar/rules/porch/set", r#"{"state": "ON", "transaction": 7}"#),
        Command::Arm {
            rule: 0,
            armed: true
        }
    );
    assert_eq!(
        ok("ar/cmd/snooze", r#"{"for": "30m"}"#),
        Command::Snooze(Duration::from_secs(1800))
    );
    assert_eq!(
        ok("ar/cmd/snooze", r#"{"for": 0}"#),
        Command::Snooze(Duration::ZERO)
    );
}

#[test]
fn numbers_from_the_network_are_refused_not_trusted() {
    for (topic, payload, want) in [
        ("ar/outputs/red/set", r#"{"duration": -1}"#, "positive"),
        ("ar/outputs/red/set", r#"{"duration": 0}"#, "above zero"),
        ("ar/outputs/red/set", r#"{"duration": 1e300}"#, "positive"),
        (
            "ar/outputs/red/set",
            r#"{"duration": "1e400s"}"#,
            "duration",
        ),
        ("ar/outputs/red/set", r#"{"duration": true}"#, "seconds"),
        ("ar/cmd/snooze", r#"{"for": "8d"}"#, "longest snooze"),
        (
            "ar/cmd/snooze",
            r#"{"for": 18446744073709551616}"#,
            "positive",
        ),
        ("ar/cmd/snooze", r#"{"for": -5}"#, "positive"),
    ] {
        let (_, r) = run(topic, payload).expect("a command topic");
        let e = r.expect_err(payload);
        assert!(e.contains(want), "{topic} {payload}: {e:?} lacks {want:?}");
    }
    // A finite huge duration saturates at max_on instead of overflowing.
    assert!(matches!(
        ok("ar/outputs/red/set", r#"{"duration": 1e18}"#),
        Command::Output { pattern: Some(Pattern::Solid { duration }), .. } if duration == Duration::from_secs(30)
    ));
}

#[test]
fn bad_commands_get_a_reason() {
    let cases = [
        ("ar/cmd/silence", "now!", "not JSON"),
        ("ar/cmd/silence", "[1]", "JSON object"),
        ("ar/cmd/silence", r#"{"x":1}"#, "empty payload"),
        ("ar/cmd/test/green", "", "no output named \"green\""),
        ("ar/cmd/test/red", "{", "not JSON"),
        ("ar/cmd/test/red", r#"{"patern": {}}"#, "pattern"),
        (
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "solid"}, "x": 1}"#,
            "unknown key",
        ),
        (
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "wobble"}}"#,
            "wobble",
        ),
        (
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "blink", "on": "1s"}}"#,
            "pattern.off",
        ),
        (
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "solid", "duration": 5}}"#,
            "pattern",
        ),
        (
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "tone", "frequency": 440, "duration": "1s"}}"#,
            "passive_buzzer",
        ),
        // Durations and counts come from the network: nanosecond steps would keep the
        // engine toggling flat out; numbers past their type are refused, not wrapped.
        (
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "blink", "on": "0.000001ms", "off": "1ms", "count": 4294967295}}"#,
            "at least 1ms",
        ),
        (
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "sequence", "steps": [["0.5ms", "0ms"]]}}"#,
            "at least 1ms",
        ),
        (
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "blink", "on": "1ms", "off": "1ms", "count": 4294967296}}"#,
            "pattern.count",
        ),
        (
            "ar/cmd/test/red",
            r#"{"pattern": {"kind": "solid", "duration": "1e300s"}}"#,
            "pattern.duration",
        ),
        (
            "ar/cmd/test/beep",
            r#"{"pattern": {"kind": "tone", "frequency": 1e300, "duration": "1s"}}"#,
            "pattern.frequency",
        ),
        (
            "ar/cmd/test/beep",
            r#"{"pattern": {"kind": "tone", "frequency": 440, "duty": 1e308, "duration": "1s"}}"#,
            "pattern.duty",
        ),
        ("ar/cmd/reboot", "", "unknown command"),
        ("ar/cmd/test/", "", "no output named"),
        ("ar/outputs/red/set", "maybe", "not JSON"),
        ("ar/outputs/red/set", "", "ON, OFF"),
        ("ar/outputs/red/set", r#"{"state": "DIM"}"#, "state must be"),
        (
            "ar/outputs/red/set",
            r#"{"effect": "nope"}"#,
            "no pattern named",
        ),
        (
            "ar/outputs/red/set",
            r#"{"tone": "beep"}"#,
            "passive_buzzer",
        ),
        (
            "ar/outputs/red/set",
            r#"{"effect": "alarm", "tone": "alarm"}"#,
            "one of",
        ),
        ("ar/outputs/red/set", r#"{"effect": 3}"#, "must name"),
        ("ar/outputs/red/set", r#"{"brightness": 3}"#, "unknown key"),
        (
            "ar/outputs/red/set",
            r#"{"effect": "walk", "duration": 2}"#,
            "sequence",
        ),
        ("ar/outputs/nope/set", "ON", "no output named"),
        ("ar/rules/nope/set", "ON", "no rule named"),
        ("ar/rules/porch/set", "{}", "state"),
        ("ar/cmd/snooze", "", "for"),
        ("ar/cmd/snooze", r#"{"for": "30m", "x": 1}"#, "unknown key"),
    ];
    for (topic, payload, want) in cases {
        let (_, r) = run(topic, payload).expect("a command topic");
        let e = r.expect_err(topic);
        assert!(e.contains(want), "{topic} {payload}: {e:?} lacks {want:?}");
    }
    let big = "x".repeat(MAX_COMMAND_BYTES + 1);
    let (_, r) = run("ar/cmd/silence", &big).expect("a command topic");
    assert!(r.expect_err("too big").contains("limit"));
}

#[test]
fn answers_and_foreign_topics_are_not_commands() {
    assert_eq!(run("ar/cmd/result", ""), None);
    assert_eq!(run("ar/status", ""), None);
    assert_eq!(run("arx/cmd/silence", ""), None);
    assert_eq!(run("ar/outputs/red", "ON"), None);
    assert_eq!(run("ar/outputs/red/state", "ON"), None);
    assert_eq!(run("ar/rules/porch/state", "ON"), None);
}

#[test]
fn answers_are_json_with_status_error_and_the_transaction() {
    let ok: Value = serde_json::from_slice(&answer("silence", None, &Ok(()))).expect("json");
    assert_eq!(ok, json!({"command": "silence", "status": "ok"}));
    let err: Value = serde_json::from_slice(&answer(
        "test/x",
        None,
        &Err(CommandError::Invalid("no".into())),
    ))
    .expect("json");
    assert_eq!(
        err,
        json!({"command": "test/x", "status": "error", "error": "no"})
    );
    let p = parse(
        "ar",
        "ar/cmd/silence",
        br#"{"transaction": {"id": "abc"}}"#,
        &gpio(),
    )
    .expect("command");
    assert_eq!(p.command, Ok(Command::Gpio(GpioCommand::Silence)));
    let t: Value =
        serde_json::from_slice(&answer(&p.name, p.transaction.as_ref(), &Ok(()))).expect("json");
    assert_eq!(t["transaction"], json!({"id": "abc"}));
}

#[test]
fn gpio_refusals_answer_with_the_documented_reasons() {
    for (e, text) in [
        (
            CommandError::GpioOff,
            "gpio is off (gpio.backend = \"none\" or no outputs)",
        ),
        (CommandError::GpioBusy, "the gpio engine is busy; try again"),
        (CommandError::GpioStopped, "the gpio engine has stopped"),
    ] {
        let v: Value = serde_json::from_slice(&answer("silence", None, &Err(e))).expect("json");
        assert_eq!(v["status"], "error");
        assert_eq!(v["error"], text);
    }
}
