//! Commands: parsing a topic and payload into what the relay should do, and the JSON answer
//! published on `{prefix}/cmd/result`. Pure: the session does the sending.
//!
//! - `{prefix}/cmd/silence`, empty payload or `{}`: stop every active pattern.
//! - `{prefix}/cmd/test/{output}`, empty payload: the output's default test pattern (3 blinks of
//!   200 ms; a 600 ms tone on a passive buzzer); or `{"pattern": {...}}` in the config's
//!   pattern syntax (`{"pattern": {"kind": "solid", "duration": "1s"}}`).
//! - `{prefix}/cmd/snooze`, `{"for": "30m"}` (or a number of seconds): silence now and let no
//!   rule sound until then; `{"for": "0s"}` ends a snooze.
//! - `{prefix}/outputs/{name}/set`: `ON`, `OFF`, or JSON `{"state": "ON", "pattern": "<name>",
//!   "duration": 10}` (`effect` and `tone`, as Home Assistant's light and siren send them, are
//!   other names for `pattern`; a duration is a number of seconds or a string such as `"10s"`).
//! - `{prefix}/rules/{name}/set`: `ON` (armed) or `OFF` (disarmed), or `{"state": ...}`.
//!
//! Every JSON command may carry a `transaction` (any JSON value), echoed in its answer.
//! A bad command is answered with `"status": "error"` and a reason; it never ends the session.
//! Numbers come from the network: a duration that is negative, not finite or zero is refused,
//! one above the output's `max_on` is cut there (the hard cap), a snooze above
//! [`MAX_SNOOZE`] is refused.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::{parse_duration, pattern_from_json, GpioConfig, OutputKind, Pattern};
use crate::gpio::GpioCommand;

/// Largest command payload looked at; a pattern is well under 1 KiB.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Longest snooze: a week. Longer is more likely a typo (`"30d"` for `"30m"`) than a wish.
pub const MAX_SNOOZE: Duration = Duration::from_secs(7 * 86_400);

/// The topic answers go to; it sits below `cmd/` but is never a command itself.
pub fn result_topic(prefix: &str) -> String {
    format!("{prefix}/cmd/result")
}

/// An MQTT 5 response topic we may publish an answer to: a topic name (no wildcards, no NUL,
/// not empty, at most 65 535 bytes: MQTT 5 §3.3.2.3.5), and not a broker's `$` topic.
pub fn valid_reply_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 65_535
        && !topic.starts_with('$')
        && !topic.contains(['+', '#', '\0'])
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// For the GPIO engine as it is (silence, test).
    Gpio(GpioCommand),
    /// `outputs/{name}/set`: `pattern` on output `output` (`None`: off); `effect` is the named
    /// pattern it runs, shown in the output's state.
    Output {
        output: usize,
        pattern: Option<Pattern>,
        effect: Option<String>,
    },
    /// `rules/{name}/set`.
    Arm { rule: usize, armed: bool },
    /// `cmd/snooze` for this long (zero ends a snooze).
    Snooze(Duration),
}

/// One parsed command message.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The command's name in answers:
    /// `silence`, `snooze`, `test/{output}` for `cmd/...` (as before), else the topic below
    /// the prefix (`outputs/red/set`).
    pub name: String,
    /// Echoed in the answer.
    pub transaction: Option<Value>,
    pub command: Result<Command, String>,
}

/// What one message on a command topic asks for. `None` when the topic is not a command
/// (our own answers on `cmd/result`, state topics, topics outside the prefix).
pub fn parse(prefix: &str, topic: &str, payload: &[u8], gpio: &GpioConfig) -> Option<Parsed> {
    let name = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    enum Kind<'a> {
        Cmd(&'a str),
        Output(&'a str),
        Rule(&'a str),
    }
    let kind = if let Some(c) = name.strip_prefix("cmd/") {
        if c == "result" {
            return None;
        }
        Kind::Cmd(c)
    } else if let Some(o) = name
        .strip_prefix("outputs/")
        .and_then(|r| r.strip_suffix("/set"))
    {
        Kind::Output(o)
    } else if let Some(r) = name
        .strip_prefix("rules/")
        .and_then(|r| r.strip_suffix("/set"))
    {
        Kind::Rule(r)
    } else {
        return None;
    };
    let name = match kind {
        Kind::Cmd(c) => c,
        _ => name,
    };
    if payload.len() > MAX_COMMAND_BYTES {
        return Some(Parsed {
            name: name.to_string(),
            transaction: None,
            command: Err(format!(
                "payload of {} bytes is above the {MAX_COMMAND_BYTES} byte limit",
                payload.len()
            )),
        });
    }
    let mut transaction = None;
    let command = match json_payload(payload) {
        Err(e) => match kind {
            // Plain ON / OFF are not JSON.
            Kind::Output(o) => plain_state(payload)
                .ok_or(e)
                .and_then(|on| parse_output(o, on_off_map(on), gpio)),
            Kind::Rule(r) => plain_state(payload)
                .ok_or(e)
                .and_then(|on| parse_rule(r, on_off_map(on), gpio)),
            Kind::Cmd(_) => Err(e),
        },
        Ok(mut m) => {
            if let Some(map) = &mut m {
                transaction = map.remove("transaction");
            }
            match kind {
                Kind::Cmd("silence") => parse_silence(m),
                Kind::Cmd("snooze") => parse_snooze(m),
                Kind::Cmd(c) => match c.strip_prefix("test/") {
                    Some(output) => parse_test(output, m, gpio),
                    None => Err("unknown command (silence, snooze, test/{output})".to_string()),
                },
                Kind::Output(o) => m
                    .ok_or_else(|| "payload must be ON, OFF or a JSON object".to_string())
                    .and_then(|m| parse_output(o, m, gpio)),
                Kind::Rule(r) => m
                    .ok_or_else(|| "payload must be ON, OFF or a JSON object".to_string())
                    .and_then(|m| parse_rule(r, m, gpio)),
            }
        }
    };
    Some(Parsed {
        name: name.to_string(),
        transaction,
        command,
    })
}

fn json_payload(payload: &[u8]) -> Result<Option<Map<String, Value>>, String> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err("payload must be empty or a JSON object".into()),
        Err(e) => Err(format!("payload is not JSON: {e}")),
    }
}

/// `ON` / `OFF` (any case, surrounding blanks ignored).
fn plain_state(payload: &[u8]) -> Option<bool> {
    let s = std::str::from_utf8(payload).ok()?.trim();
    if s.eq_ignore_ascii_case("on") {
        Some(true)
    } else if s.eq_ignore_ascii_case("off") {
        Some(false)
    } else {
        None
    }
}

fn on_off_map(on: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("state".into(), json!(if on { "ON" } else { "OFF" }));
    m
}

fn state_of(m: &mut Map<String, Value>) -> Result<bool, String> {
    match m.remove("state") {
        None => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("on") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("off") => Ok(false),
        Some(v) => Err(format!("state must be \"ON\" or \"OFF\", not {v}")),
    }
}

fn no_more_keys(m: &Map<String, Value>, allowed: &str) -> Result<(), String> {
    match m.keys().next() {
        Some(k) => Err(format!("unknown key {k:?} ({allowed})")),
        None => Ok(()),
    }
}

/// A duration from the network: a number of seconds or a string with a unit. Zero, negative,
/// not finite or past what a `Duration` holds is refused.
pub fn duration_of(v: &Value, key: &str, zero_ok: bool) -> Result<Duration, String> {
    let d = match v {
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            Duration::try_from_secs_f64(secs)
                .map_err(|_| format!("{key} must be a positive number of seconds, not {n}"))?
        }
        Value::String(s) => parse_duration(s).map_err(|e| format!("{key}: {e}"))?,
        other => {
            return Err(format!(
                "{key} must be seconds or a string like \"30s\", not {other}"
            ))
        }
    };
    if d.is_zero() && !zero_ok {
        return Err(format!("{key} must be above zero"));
    }
    Ok(d)
}

fn parse_silence(m: Option<Map<String, Value>>) -> Result<Command, String> {
    match m {
        Some(m) if !m.is_empty() => Err("silence takes an empty payload or {}".into()),
        _ => Ok(Command::Gpio(GpioCommand::Silence)),
    }
}

fn parse_snooze(m: Option<Map<String, Value>>) -> Result<Command, String> {
    let mut m = m.ok_or("snooze needs {\"for\": \"30m\"}")?;
    let v = m.remove("for").ok_or("snooze needs {\"for\": \"30m\"}")?;
    no_more_keys(&m, "only \"for\" and \"transaction\"")?;
    let d = duration_of(&v, "for", true)?;
    if d > MAX_SNOOZE {
        return Err(format!(
            "for: {d:?} is above the longest snooze ({MAX_SNOOZE:?})"
        ));
    }
    Ok(Command::Snooze(d))
}

fn output_index(name: &str, gpio: &GpioConfig) -> Result<usize, String> {
    gpio.outputs
        .iter()
        .position(|o| o.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = gpio.outputs.iter().map(|o| o.name.as_str()).collect();
            format!("no output named {name:?} (outputs: {names:?})")
        })
}

fn check_tone(pattern: &Pattern, kind: OutputKind, name: &str) -> Result<(), String> {
    if matches!(pattern, Pattern::Tone { .. }) && kind != OutputKind::PassiveBuzzer {
        return Err(format!(
            "a tone needs a passive_buzzer output, {name:?} is not"
        ));
    }
    Ok(())
}

fn parse_test(
    name: &str,
    m: Option<Map<String, Value>>,
    gpio: &GpioConfig,
) -> Result<Command, String> {
    let index = output_index(name, gpio)?;
    let out = &gpio.outputs[index];
    let pattern = match m {
        None => default_test_pattern(out.kind),
        Some(m) if m.is_empty() => default_test_pattern(out.kind),
        Some(mut m) => {
            let p = m
                .remove("pattern")
                .ok_or("payload must be empty or {\"pattern\": {...}}")?;
            no_more_keys(&m, "only \"pattern\" and \"transaction\"")?;
            match &p {
                Value::String(n) => named_pattern(n, gpio)?,
                _ => pattern_from_json(&p).map_err(|e| e.to_string())?,
            }
        }
    };
    check_tone(&pattern, out.kind, name)?;
    Ok(Command::Gpio(GpioCommand::Test {
        output: index,
        pattern,
    }))
}

fn named_pattern(name: &str, gpio: &GpioConfig) -> Result<Pattern, String> {
    gpio.patterns
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            let names: Vec<&str> = gpio.patterns.iter().map(|(n, _)| n.as_str()).collect();
            format!("no pattern named {name:?} (gpio.patterns: {names:?})")
        })
}

fn parse_output(
    name: &str,
    mut m: Map<String, Value>,
    gpio: &GpioConfig,
) -> Result<Command, String> {
    let output = output_index(name, gpio)?;
    let out = &gpio.outputs[output];
    let on = state_of(&mut m)?;
    let mut chosen = None;
    for key in ["pattern", "effect", "tone"] {
        match m.remove(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(n)) => {
                if chosen.replace(n).is_some() {
                    return Err("give one of pattern, effect or tone".into());
                }
            }
            Some(v) => {
                return Err(format!(
                    "{key} must name a pattern of gpio.patterns, not {v}"
                ))
            }
        }
    }
    let duration = m
        .remove("duration")
        .filter(|v| !v.is_null())
        .map(|v| duration_of(&v, "duration", false))
        .transpose()?;
    // Home Assistant sends what the entity supports; a volume we cannot set is ignored.
    m.remove("volume_level");
    no_more_keys(&m, "state, pattern, effect, tone, duration, transaction")?;
    if !on {
        return Ok(Command::Output {
            output,
            pattern: None,
            effect: None,
        });
    }
    // `max_on` is the hard cap: no command outlasts it.
    let length = duration.unwrap_or(out.max_on).min(out.max_on);
    let pattern = match &chosen {
        None => match out.kind {
            OutputKind::PassiveBuzzer => Pattern::Tone {
                frequency: 2000,
                duty: 0.5,
                duration: length,
            },
            OutputKind::Light | OutputKind::Buzzer => Pattern::Solid { duration: length },
        },
        Some(n) => {
            let p = named_pattern(n, gpio)?;
            match duration {
                None => p,
                Some(_) => with_length(p, length)?,
            }
        }
    };
    check_tone(&pattern, out.kind, name)?;
    Ok(Command::Output {
        output,
        pattern: Some(pattern),
        effect: chosen,
    })
}

/// `p` lasting `d`: a solid or a tone for `d`, a blink repeated for `d`.
fn with_length(p: Pattern, d: Duration) -> Result<Pattern, String> {
    Ok(match p {
        Pattern::Solid { .. } => Pattern::Solid { duration: d },
        Pattern::Tone {
            frequency, duty, ..
        } => Pattern::Tone {
            frequency,
            duty,
            duration: d,
        },
        Pattern::Blink { on, off, .. } => Pattern::Blink {
            on,
            off,
            count: None,
            duration: Some(d),
        },
        Pattern::Sequence { .. } => {
            return Err("a sequence has its own length; give no duration".into())
        }
    })
}

fn parse_rule(name: &str, mut m: Map<String, Value>, gpio: &GpioConfig) -> Result<Command, String> {
    let rule = gpio
        .rules
        .iter()
        .position(|r| r.name.as_deref() == Some(name))
        .ok_or_else(|| {
            let names: Vec<&str> = gpio
                .rules
                .iter()
                .filter_map(|r| r.name.as_deref())
                .collect();
            format!("no rule named {name:?} (named rules: {names:?})")
        })?;
    if !m.contains_key("state") {
        return Err("payload must be ON, OFF or {\"state\": \"ON\"}".into());
    }
    let armed = state_of(&mut m)?;
    no_more_keys(&m, "state, transaction")?;
    Ok(Command::Arm { rule, armed })
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

/// The answer's JSON: `{"command", "status": "ok"}` or `{"command", "status": "error", "error"}`,
/// with the command's `transaction` when it had one.
pub fn answer(command: &str, transaction: Option<&Value>, result: &Result<(), String>) -> Vec<u8> {
    let mut v = match result {
        Ok(()) => json!({"command": command, "status": "ok"}),
        Err(e) => json!({"command": command, "status": "error", "error": e}),
    };
    if let (Some(t), Value::Object(m)) = (transaction, &mut v) {
        m.insert("transaction".into(), t.clone());
    }
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
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
        let err: Value =
            serde_json::from_slice(&answer("test/x", None, &Err("no".into()))).expect("json");
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
        let t: Value = serde_json::from_slice(&answer(&p.name, p.transaction.as_ref(), &Ok(())))
            .expect("json");
        assert_eq!(t["transaction"], json!({"id": "abc"}));
    }
}
