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

/// Why a command was refused; `Display` is its answer's `error` text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// Not a valid command: [`parse`]'s reason (the payload, a name, a number).
    #[error("{0}")]
    Invalid(String),
    /// No GPIO engine runs (`gpio.backend = "none"`, or no outputs): nothing can carry it out.
    #[error("gpio is off (gpio.backend = \"none\" or no outputs)")]
    GpioOff,
    /// The GPIO engine's command channel is full; the sender may try again.
    #[error("the gpio engine is busy; try again")]
    GpioBusy,
    /// The GPIO engine has ended (shutdown, or a restart by a reload in progress).
    #[error("the gpio engine has stopped")]
    GpioStopped,
}

/// The answer's JSON: `{"command", "status": "ok"}` or `{"command", "status": "error", "error"}`,
/// with the command's `transaction` when it had one.
pub fn answer(
    command: &str,
    transaction: Option<&Value>,
    result: &Result<(), CommandError>,
) -> Vec<u8> {
    let mut v = match result {
        Ok(()) => json!({"command": command, "status": "ok"}),
        Err(e) => json!({"command": command, "status": "error", "error": e.to_string()}),
    };
    if let (Some(t), Value::Object(m)) = (transaction, &mut v) {
        m.insert("transaction".into(), t.clone());
    }
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests;
