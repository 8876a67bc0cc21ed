//! Commands on `{prefix}/cmd/...`: parsing a topic and payload into a GPIO command, and the JSON
//! answer published on `{prefix}/cmd/result`. Pure: the session does the sending.
//!
//! - `{prefix}/cmd/silence`, empty payload or `{}`: stop every active pattern.
//! - `{prefix}/cmd/test/{output}`, empty payload: the output's default test pattern (3 blinks of
//!   200 ms; a 600 ms tone on a passive buzzer); or `{"pattern": {...}}` in the config's
//!   pattern syntax (`{"pattern": {"kind": "solid", "duration": "1s"}}`).
//!
//! A bad command is answered with `"status": "error"` and a reason; it never ends the session.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{pattern_from_json, OutputConfig, OutputKind, Pattern};
use crate::gpio::GpioCommand;

/// Largest command payload looked at; a pattern is well under 1 KiB.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// The topic answers go to; it sits below `cmd/` but is never a command itself.
pub fn result_topic(prefix: &str) -> String {
    format!("{prefix}/cmd/result")
}

/// What one message on a command topic asks for. `None` when the topic is not a command
/// (our own answers on `cmd/result`, topics outside `{prefix}/cmd/`).
pub fn parse(
    prefix: &str,
    topic: &str,
    payload: &[u8],
    outputs: &[OutputConfig],
) -> Option<(String, Result<GpioCommand, String>)> {
    let name = topic.strip_prefix(prefix)?.strip_prefix("/cmd/")?;
    if name == "result" {
        return None;
    }
    let result = if payload.len() > MAX_COMMAND_BYTES {
        Err(format!(
            "payload of {} bytes is above the {MAX_COMMAND_BYTES} byte limit",
            payload.len()
        ))
    } else if name == "silence" {
        parse_silence(payload)
    } else if let Some(output) = name.strip_prefix("test/") {
        parse_test(output, payload, outputs)
    } else {
        Err("unknown command (silence, test/{output})".to_string())
    };
    Some((name.to_string(), result))
}

fn json_payload(payload: &[u8]) -> Result<Option<serde_json::Map<String, Value>>, String> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err("payload must be empty or a JSON object".into()),
        Err(e) => Err(format!("payload is not JSON: {e}")),
    }
}

fn parse_silence(payload: &[u8]) -> Result<GpioCommand, String> {
    match json_payload(payload)? {
        Some(m) if !m.is_empty() => Err("silence takes an empty payload or {}".into()),
        _ => Ok(GpioCommand::Silence),
    }
}

fn parse_test(name: &str, payload: &[u8], outputs: &[OutputConfig]) -> Result<GpioCommand, String> {
    let Some(index) = outputs.iter().position(|o| o.name == name) else {
        let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
        return Err(format!("no output named {name:?} (outputs: {names:?})"));
    };
    let out = &outputs[index];
    let pattern = match json_payload(payload)? {
        None => default_test_pattern(out.kind),
        Some(mut m) => {
            let p = m
                .remove("pattern")
                .ok_or("payload must be empty or {\"pattern\": {...}}")?;
            if let Some(k) = m.keys().next() {
                return Err(format!("unknown key {k:?} (only \"pattern\")"));
            }
            pattern_from_json(&p).map_err(|e| e.to_string())?
        }
    };
    if matches!(pattern, Pattern::Tone { .. }) && out.kind != OutputKind::PassiveBuzzer {
        return Err(format!(
            "a tone needs a passive_buzzer output, {name:?} is not"
        ));
    }
    Ok(GpioCommand::Test {
        output: index,
        pattern,
    })
}

/// What `cmd/test/{output}` runs without a payload: short, and obviously a test.
pub fn default_test_pattern(kind: OutputKind) -> Pattern {
    match kind {
        OutputKind::PassiveBuzzer => Pattern::Tone {
            frequency: 2000,
            duty: 0.5,
            duration: Duration::from_millis(600),
        },
        OutputKind::Light | OutputKind::Buzzer => Pattern::Blink {
            on: Duration::from_millis(200),
            off: Duration::from_millis(200),
            count: Some(3),
            duration: None,
        },
    }
}

/// The answer's JSON: `{"command", "status": "ok"}` or `{"command", "status": "error", "error"}`.
pub fn answer(command: &str, result: &Result<(), String>) -> Vec<u8> {
    let v = match result {
        Ok(()) => json!({"command": command, "status": "ok"}),
        Err(e) => json!({"command": command, "status": "error", "error": e}),
    };
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs() -> Vec<OutputConfig> {
        let o = |name: &str, kind| OutputConfig {
            name: name.into(),
            pin: None,
            line: None,
            chip: None,
            offset: None,
            active_low: false,
            kind,
            max_on: Duration::from_secs(30),
        };
        vec![
            o("red", OutputKind::Light),
            o("beep", OutputKind::PassiveBuzzer),
        ]
    }

    fn run(topic: &str, payload: &str) -> Option<(String, Result<GpioCommand, String>)> {
        parse("ar", topic, payload.as_bytes(), &outputs())
    }

    #[test]
    fn good_commands_become_gpio_commands() {
        assert_eq!(
            run("ar/cmd/silence", ""),
            Some(("silence".into(), Ok(GpioCommand::Silence)))
        );
        assert_eq!(
            run("ar/cmd/silence", " {} ").map(|r| r.1),
            Some(Ok(GpioCommand::Silence))
        );
        assert_eq!(
            run("ar/cmd/test/red", "").map(|r| r.1),
            Some(Ok(GpioCommand::Test {
                output: 0,
                pattern: default_test_pattern(OutputKind::Light)
            }))
        );
        assert_eq!(
            run(
                "ar/cmd/test/red",
                r#"{"pattern": {"kind": "solid", "duration": "1s"}}"#
            )
            .map(|r| r.1),
            Some(Ok(GpioCommand::Test {
                output: 0,
                pattern: Pattern::Solid {
                    duration: Duration::from_secs(1)
                }
            }))
        );
        assert!(matches!(
            run("ar/cmd/test/beep", "").map(|r| r.1),
            Some(Ok(GpioCommand::Test {
                output: 1,
                pattern: Pattern::Tone { .. }
            }))
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
    }

    #[test]
    fn answers_are_json_with_status_and_error() {
        let ok: Value = serde_json::from_slice(&answer("silence", &Ok(()))).expect("json");
        assert_eq!(ok, json!({"command": "silence", "status": "ok"}));
        let err: Value =
            serde_json::from_slice(&answer("test/x", &Err("no".into()))).expect("json");
        assert_eq!(
            err,
            json!({"command": "test/x", "status": "error", "error": "no"})
        );
    }
}
