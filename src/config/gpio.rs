//! `[gpio]`: the backend, outputs, `[[gpio.rules]]`, the ack button and named patterns.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::pattern::{validate_pattern, RawPattern};
use super::rule::{validate_rule, PrintedRule, RawRule, RuleConfig};
use super::units::{bounded, names, DurationStr};
use super::{checks, invalid, print, ConfigError, Pattern};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum GpioBackendKind {
    Rppal,
    Cdev,
    Sim,
    None,
}

names!(GpioBackendKind { "rppal" => Rppal, "cdev" => Cdev, "sim" => Sim, "none" => None });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum OutputKind {
    Light,
    Buzzer,
    PassiveBuzzer,
}

names!(OutputKind { "light" => Light, "buzzer" => Buzzer, "passive_buzzer" => PassiveBuzzer });

#[derive(Debug, Clone, Serialize)]
pub struct OutputConfig {
    pub name: String,
    /// BCM pin number (rppal).
    pub pin: Option<u8>,
    /// Line name such as `GPIO17` (cdev).
    pub line: Option<String>,
    /// Chip label or path plus offset (cdev).
    pub chip: Option<String>,
    pub offset: Option<u32>,
    pub active_low: bool,
    pub kind: OutputKind,
    #[serde(serialize_with = "print::duration")]
    pub max_on: Duration,
}

/// An input pin that silences every active pattern when pressed (an acknowledge button).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AckButton {
    /// BCM number (rppal).
    pub pin: Option<u8>,
    /// Line name (cdev).
    pub line: Option<String>,
    /// Chip label or path plus offset (cdev).
    pub chip: Option<String>,
    pub offset: Option<u32>,
    /// Pressed pulls the pin low (the usual button to ground with a pull-up).
    pub active_low: bool,
    /// Contact bounce shorter than this is ignored.
    #[serde(serialize_with = "print::duration")]
    pub debounce: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpioConfig {
    pub backend: GpioBackendKind,
    pub sim_trace: Option<PathBuf>,
    pub outputs: Vec<OutputConfig>,
    /// Shared, not copied, by the rule engine and the publisher: 10,000 rules are megabytes.
    /// Printed by [`print_gpio`], with their outputs by name.
    #[serde(skip)]
    pub rules: Arc<Vec<RuleConfig>>,
    pub ack_button: Option<AckButton>,
    /// Named patterns (`[gpio.patterns]`) that commands and Home Assistant (siren tones, light
    /// effects) pick by name, sorted by name.
    #[serde(serialize_with = "print::named")]
    pub patterns: Vec<(String, Pattern)>,
    /// Priority of manual commands (`outputs/{name}/set`) against rule patterns.
    pub manual_priority: i32,
    /// Whether a snooze also keeps lights dark (else only buzzers are snoozed).
    pub snooze_lights: bool,
}

/// `[gpio]` as `check-config` prints it: its keys, and the rules with their outputs by name.
pub(super) fn print_gpio<S: Serializer>(g: &GpioConfig, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Printed<'a> {
        #[serde(flatten)]
        gpio: &'a GpioConfig,
        rules: Vec<PrintedRule<'a>>,
    }
    let rules = g.rules.iter().map(|r| PrintedRule::new(r, &g.outputs));
    Printed {
        gpio: g,
        rules: rules.collect(),
    }
    .serialize(s)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGpio {
    backend: Option<GpioBackendKind>,
    sim_trace: Option<PathBuf>,
    #[serde(default)]
    outputs: Vec<RawOutput>,
    /// `None` when absent: the `[[gpio.rules]]` tables may be parsed apart (see `sections`).
    pub(super) rules: Option<Vec<RawRule>>,
    ack_button: Option<RawAckButton>,
    #[serde(default)]
    patterns: std::collections::BTreeMap<String, RawPattern>,
    manual_priority: Option<i32>,
    snooze_lights: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAckButton {
    pin: Option<u8>,
    line: Option<String>,
    chip: Option<String>,
    offset: Option<u32>,
    active_low: Option<bool>,
    debounce: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutput {
    name: String,
    pin: Option<u8>,
    line: Option<String>,
    chip: Option<String>,
    offset: Option<u32>,
    #[serde(default)]
    active_low: bool,
    kind: Option<OutputKind>,
    max_on: Option<DurationStr>,
}

pub(super) fn validate_gpio(
    g: RawGpio,
    raw_rules: impl ExactSizeIterator<Item = Result<RawRule, ConfigError>>,
) -> Result<GpioConfig, ConfigError> {
    let backend = g.backend.unwrap_or(GpioBackendKind::None);
    if g.sim_trace.is_some() && backend != GpioBackendKind::Sim {
        return Err(invalid(
            "gpio.sim_trace",
            "only applies to backend = \"sim\"",
        ));
    }
    let mut names = HashSet::new();
    let mut outputs = Vec::new();
    for (i, o) in g.outputs.into_iter().enumerate() {
        let key = |k: &str| format!("gpio.outputs[{i}].{k}");
        if o.name.is_empty()
            || !o
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                key("name"),
                "must be non-empty letters, digits, _ or -",
            ));
        }
        if !names.insert(o.name.clone()) {
            return Err(invalid(key("name"), format!("{:?} is used twice", o.name)));
        }
        match backend {
            GpioBackendKind::Rppal if o.pin.is_none() => {
                return Err(invalid(
                    key("pin"),
                    "is required with backend = \"rppal\" (BCM number)",
                ))
            }
            GpioBackendKind::Cdev
                if o.line.is_none() && (o.chip.is_none() || o.offset.is_none()) =>
            {
                return Err(invalid(
                    key("line"),
                    "backend = \"cdev\" needs line = \"GPIO17\" or chip + offset",
                ))
            }
            _ => {}
        }
        if let Some(p) = o.pin {
            if p > 53 {
                return Err(invalid(
                    key("pin"),
                    format!("{p} is not a BCM GPIO number (0-53)"),
                ));
            }
        }
        let kind = o.kind.unwrap_or(OutputKind::Light);
        let max_on = above_zero_or_30s(&key("max_on"), o.max_on, "must be above zero")?;
        outputs.push(OutputConfig {
            name: o.name,
            pin: o.pin,
            line: o.line,
            chip: o.chip,
            offset: o.offset,
            active_low: o.active_low,
            kind,
            max_on,
        });
    }
    let mut rules = Vec::with_capacity(raw_rules.len());
    let mut patterns_seen = Vec::new();
    // Hashes, not copies, of the names seen: 10,000 names are cloned for nothing otherwise.
    let mut rule_names = HashSet::new();
    for (i, r) in raw_rules.enumerate() {
        let r = r?;
        let key = |k: &str| format!("gpio.rules[{i}].{k}");
        if let Some(n) = &r.name {
            if !is_entity_name(n) {
                return Err(invalid(
                    key("name"),
                    "must be non-empty letters, digits, _ or - (64 at most)",
                ));
            }
            let seen = !rule_names.insert(name_hash(n))
                && rules
                    .iter()
                    .any(|o: &RuleConfig| o.name.as_deref() == Some(n.as_str()));
            if seen {
                return Err(invalid(key("name"), format!("{n:?} is used twice")));
            }
        }
        rules.push(validate_rule(i, r, &outputs, &mut patterns_seen)?);
    }
    let ack_button = g
        .ack_button
        .map(|b| validate_ack_button(b, backend))
        .transpose()?;
    if let Some((key, why)) = checks::duplicate_hardware(&outputs, ack_button.as_ref()) {
        return Err(invalid(key, why));
    }
    let mut patterns = Vec::new();
    for (name, p) in g.patterns {
        let key = format!("gpio.patterns.{name}");
        if !is_entity_name(&name) {
            return Err(invalid(
                key,
                "a pattern name must be letters, digits, _ or - (64 at most)",
            ));
        }
        patterns.push((name, validate_pattern(p, &key)?));
    }
    Ok(GpioConfig {
        backend,
        sim_trace: g.sim_trace,
        outputs,
        // Into an Arc without a copy (`Arc<[T]>` from a Vec copies: 2.5 MB more at the peak).
        rules: std::sync::Arc::new(rules),
        ack_button,
        patterns,
        manual_priority: g.manual_priority.unwrap_or(100),
        snooze_lights: g.snooze_lights.unwrap_or(true),
    })
}

fn name_hash(n: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(n)
}

/// Names that end up in MQTT topics and Home Assistant ids (rules, patterns).
pub(super) fn is_entity_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// An output's `max_on` or a rule's `max_age`: above zero, 30 s when absent.
pub(super) fn above_zero_or_30s(
    key: &str,
    value: Option<impl Into<Duration>>,
    why: &str,
) -> Result<Duration, ConfigError> {
    bounded(
        key,
        value,
        Duration::from_secs(30),
        Duration::from_nanos(1)..,
        why,
    )
}

/// Default acknowledge-button debounce: longer than the bounce of common tactile switches
/// (a few ms), far shorter than a deliberate press.
pub const DEFAULT_ACK_DEBOUNCE: Duration = Duration::from_millis(50);

pub(super) fn validate_ack_button(
    b: RawAckButton,
    backend: GpioBackendKind,
) -> Result<AckButton, ConfigError> {
    match backend {
        GpioBackendKind::Rppal if b.pin.is_none() => {
            return Err(invalid(
                "gpio.ack_button.pin",
                "is required with backend = \"rppal\" (BCM number)",
            ))
        }
        GpioBackendKind::Cdev if b.line.is_none() && (b.chip.is_none() || b.offset.is_none()) => {
            return Err(invalid(
                "gpio.ack_button.line",
                "backend = \"cdev\" needs line = \"GPIO5\" or chip + offset",
            ))
        }
        _ => {}
    }
    if let Some(p) = b.pin.filter(|p| *p > 53) {
        return Err(invalid(
            "gpio.ack_button.pin",
            format!("{p} is not a BCM GPIO number (0-53)"),
        ));
    }
    let debounce = bounded(
        "gpio.ack_button.debounce",
        b.debounce,
        DEFAULT_ACK_DEBOUNCE,
        ..=Duration::from_secs(1),
        "must be at most 1s",
    )?;
    Ok(AckButton {
        pin: b.pin,
        line: b.line,
        chip: b.chip,
        offset: b.offset,
        active_low: b.active_low.unwrap_or(true),
        debounce,
    })
}

#[cfg(test)]
mod tests;
