//! Output patterns (`solid`, `blink`, `sequence`, `tone`): in rules, `[gpio.patterns]`,
//! `test-output --pattern` and the MQTT `cmd/test` payload.

use std::ops::Bound;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{bounded, names, DurationStr};
use super::{invalid, print, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pattern {
    Solid {
        #[serde(serialize_with = "print::duration")]
        duration: Duration,
    },
    Blink {
        #[serde(serialize_with = "print::duration")]
        on: Duration,
        #[serde(serialize_with = "print::duration")]
        off: Duration,
        /// Either a count or a total duration.
        count: Option<u32>,
        #[serde(serialize_with = "print::opt_duration")]
        duration: Option<Duration>,
    },
    Sequence {
        #[serde(serialize_with = "print::duration_pairs")]
        steps: Vec<(Duration, Duration)>,
    },
    Tone {
        frequency: u32,
        duty: f64,
        #[serde(serialize_with = "print::duration")]
        duration: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(super) enum PatternKind {
    Solid,
    Blink,
    Sequence,
    Tone,
}

names!(PatternKind { "solid" => Solid, "blink" => Blink, "sequence" => Sequence, "tone" => Tone });

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPattern {
    kind: PatternKind,
    duration: Option<DurationStr>,
    on: Option<DurationStr>,
    off: Option<DurationStr>,
    count: Option<u32>,
    steps: Option<Vec<(DurationStr, DurationStr)>>,
    frequency: Option<u32>,
    duty: Option<f64>,
}

/// Parses a pattern written as JSON in the config's pattern syntax (the MQTT `cmd/test`
/// payload), with the same checks as `gpio.rules[].pattern`; errors name the field.
pub fn pattern_from_json(value: &serde_json::Value) -> Result<Pattern, ConfigError> {
    let raw: RawPattern = serde_path_to_error::deserialize(value)
        .map_err(|e| invalid(format!("pattern.{}", e.path()), e.inner().to_string()))?;
    validate_pattern(raw, "pattern")
}

/// Parses one pattern written as a TOML inline table (`alert-relay test-output --pattern`),
/// e.g. `{ kind = "blink", on = "200ms", off = "200ms", count = 3 }`. Errors name `key`.
pub fn parse_pattern(text: &str, key: &str) -> Result<Pattern, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct One {
        pattern: RawPattern,
    }
    let one: One = toml::from_str(&format!("pattern = {text}"))
        .map_err(|e| invalid(key, e.message().to_string()))?;
    validate_pattern(one.pattern, key)
}

/// Shortest "on" (and blink "off") a pattern may have. The engine applies every edge that is
/// due at once, so a pattern of nanosecond steps (which `cmd/test` takes from the network)
/// would keep it toggling flat out for the whole `max_on`; at 1 ms an output changes at most
/// a thousand times a second, which the engine keeps up with (README, GPIO timing).
pub const MIN_PATTERN_STEP: Duration = Duration::from_millis(1);

pub(super) fn validate_pattern(p: RawPattern, key: &str) -> Result<Pattern, ConfigError> {
    let need = |v: Option<DurationStr>, field: &str| {
        v.map(|d| d.0)
            .filter(|d| *d >= MIN_PATTERN_STEP)
            .ok_or_else(|| invalid(format!("{key}.{field}"), "is required and at least 1ms"))
    };
    let unexpected = |present: bool, field: &str| {
        if present {
            Err(invalid(
                format!("{key}.{field}"),
                format!("does not apply to kind = {:?}", p.kind.name()),
            ))
        } else {
            Ok(())
        }
    };
    match p.kind {
        PatternKind::Solid => {
            unexpected(p.on.is_some() || p.off.is_some(), "on")?;
            unexpected(p.count.is_some(), "count")?;
            unexpected(p.steps.is_some(), "steps")?;
            unexpected(p.frequency.is_some() || p.duty.is_some(), "frequency")?;
            Ok(Pattern::Solid {
                duration: need(p.duration, "duration")?,
            })
        }
        PatternKind::Blink => {
            unexpected(p.steps.is_some(), "steps")?;
            unexpected(p.frequency.is_some() || p.duty.is_some(), "frequency")?;
            let on = need(p.on, "on")?;
            let off = need(p.off, "off")?;
            let duration = p.duration.map(|d| d.0);
            match (p.count, duration) {
                (Some(0), _) => Err(invalid(format!("{key}.count"), "must be at least 1")),
                (Some(_), Some(_)) => Err(invalid(
                    format!("{key}.count"),
                    "give either count or duration, not both",
                )),
                (None, None) => Err(invalid(
                    format!("{key}.count"),
                    "blink needs count or duration",
                )),
                (count, duration) => Ok(Pattern::Blink {
                    on,
                    off,
                    count,
                    duration,
                }),
            }
        }
        PatternKind::Sequence => {
            unexpected(p.on.is_some() || p.off.is_some(), "on")?;
            unexpected(p.count.is_some(), "count")?;
            unexpected(p.duration.is_some(), "duration")?;
            let steps: Vec<(Duration, Duration)> = p
                .steps
                .unwrap_or_default()
                .into_iter()
                .map(|(a, b)| (a.0, b.0))
                .collect();
            if steps.is_empty() || steps.iter().any(|(on, _)| *on < MIN_PATTERN_STEP) {
                return Err(invalid(
                    format!("{key}.steps"),
                    "needs at least one [on, off] pair, each on at least 1ms",
                ));
            }
            Ok(Pattern::Sequence { steps })
        }
        PatternKind::Tone => {
            unexpected(p.on.is_some() || p.off.is_some(), "on")?;
            unexpected(p.count.is_some(), "count")?;
            unexpected(p.steps.is_some(), "steps")?;
            let frequency = p
                .frequency
                .filter(|f| (20..=20_000).contains(f))
                .ok_or_else(|| {
                    invalid(format!("{key}.frequency"), "is required, 20 to 20000 Hz")
                })?;
            let duty = bounded(
                &format!("{key}.duty"),
                p.duty,
                0.5,
                (Bound::Excluded(0.0), Bound::Excluded(1.0)),
                "must be between 0 and 1 (exclusive)",
            )?;
            Ok(Pattern::Tone {
                frequency,
                duty,
                duration: need(p.duration, "duration")?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_patterns_parse_from_json_with_config_checks() {
        let p = pattern_from_json(
            &serde_json::json!({"kind": "blink", "on": "100ms", "off": "100ms", "count": 2}),
        )
        .expect("blink");
        assert_eq!(
            p,
            Pattern::Blink {
                on: Duration::from_millis(100),
                off: Duration::from_millis(100),
                count: Some(2),
                duration: None
            }
        );
        let e = pattern_from_json(&serde_json::json!({"kind": "blink", "on": "1s", "off": "1s"}))
            .expect_err("no count");
        assert!(e.to_string().contains("pattern.count"), "{e}");
        let e =
            pattern_from_json(&serde_json::json!({"kind": "solid", "duration": "1s", "colour": 1}))
                .expect_err("unknown field");
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
