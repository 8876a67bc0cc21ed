//! `[[gpio.rules]]`: one rule's raw table, its validation ([`validate_rule`]), the typed
//! [`RuleConfig`] the rule engine reads, and its printed form. A rule is held compactly
//! (10,000 rules within +5 MB of one, issue 13): its labels in one block, its pattern shared
//! with the rules that play the same one, its rarely set keys behind one pointer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::gpio::{above_zero_or_30s, OutputConfig, OutputKind};
use super::pattern::{validate_pattern, RawPattern};
use super::units::{bounded, names, DurationStr};
use super::{invalid, print, ConfigError, Pattern};

#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// Optional name: a named rule can be armed and disarmed over MQTT (`rules/{name}/set`).
    pub name: Option<Box<str>>,
    pub labels: Labels,
    pub min_confidence: f64,
    /// `missing_confidence = "fire"`: an alert with no `confidence` at all (VideoDB's real-time
    /// alert shape, `{"event_label", "timestamp", "text"}`) passes `min_confidence`. Default
    /// false ("skip"). A garbled confidence never passes.
    pub fire_without_confidence: bool,
    /// Indexes into `GpioConfig::outputs`.
    pub outputs: Box<[usize]>,
    /// Shared by the rules that play the same pattern (and by their fires).
    pub pattern: Arc<Pattern>,
    pub priority: i32,
    pub cooldown: Duration,
    pub max_age: Duration,
    /// The stream filter and quiet hours, which few rules have: one pointer for the others
    /// (10,000 rules).
    pub limits: Option<Box<RuleLimits>>,
}

/// A rule's labels and globs in one allocation, each ended by U+0000 (which validation keeps
/// out of them): 10,000 rules hold one block each instead of one per label plus the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<str>);

impl Labels {
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split_terminator('\0')
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        self.iter().nth(i)
    }
}

impl<'a> FromIterator<&'a str> for Labels {
    fn from_iter<I: IntoIterator<Item = &'a str>>(labels: I) -> Labels {
        let mut all = String::new();
        for l in labels {
            all.push_str(l);
            all.push('\0');
        }
        Labels(all.into_boxed_str())
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// What a rule may add to label and confidence: see [`RuleConfig::limits`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleLimits {
    /// Fires only for alerts from this stream (exact or glob); `None` = any stream.
    pub rtstream_id: Option<Box<str>>,
    /// Local-time windows in which this rule's buzzer outputs stay silent (lights still fire).
    pub quiet_hours: Box<[QuietWindow]>,
    /// Which of `outputs` are audible (`buzzer`, `passive_buzzer`): those quiet hours mute.
    /// Empty without quiet hours (boxed slices: 10,000 rules hold no spare capacity).
    pub audible: Box<[bool]>,
}

impl RuleConfig {
    pub fn rtstream_id(&self) -> Option<&str> {
        self.limits.as_ref()?.rtstream_id.as_deref()
    }

    pub fn quiet_hours(&self) -> &[QuietWindow] {
        self.limits.as_ref().map_or(&[], |l| &l.quiet_hours)
    }

    pub fn audible(&self) -> &[bool] {
        self.limits.as_ref().map_or(&[], |l| &l.audible)
    }

    /// [`RuleConfig::limits`], made if the rule had none (tests build rules with it).
    #[cfg(test)]
    pub fn limits_mut(&mut self) -> &mut RuleLimits {
        self.limits.get_or_insert_with(Box::default)
    }
}

/// `pattern` as one `Arc` with the equal patterns of earlier rules (of the last
/// [`SHARED_PATTERNS`] different ones): 10,000 rules mostly play a handful of patterns.
fn shared(seen: &mut Vec<Arc<Pattern>>, pattern: Pattern) -> Arc<Pattern> {
    if let Some(p) = seen.iter().find(|p| ***p == pattern) {
        return p.clone();
    }
    if seen.len() == SHARED_PATTERNS {
        seen.remove(0);
    }
    let p = Arc::new(pattern);
    seen.push(p.clone());
    p
}

const SHARED_PATTERNS: usize = 16;

/// A daily local-time window `start..end` in minutes after midnight; wraps midnight when
/// `end < start` (`22:00-07:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietWindow {
    pub start_min: u16,
    pub end_min: u16,
}

impl QuietWindow {
    /// Whether `minute` (0..1440, local time) lies in the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute)
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

impl fmt::Display for QuietWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

/// `missing_confidence`: whether an alert without a confidence passes `min_confidence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub(super) enum MissingConfidence {
    Skip,
    Fire,
}

names!(MissingConfidence { "skip" => Skip, "fire" => Fire });

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Option<String>,
    labels: Vec<String>,
    min_confidence: Option<f64>,
    missing_confidence: Option<MissingConfidence>,
    output: Option<String>,
    outputs: Option<Vec<String>>,
    pattern: Option<RawPattern>,
    priority: Option<i32>,
    cooldown: Option<DurationStr>,
    max_age: Option<DurationStr>,
    rtstream_id: Option<String>,
    #[serde(default)]
    quiet_hours: Vec<String>,
}

/// One `[[gpio.rules]]` table, but for its name's uniqueness (the caller checks that).
pub(super) fn validate_rule(
    i: usize,
    r: RawRule,
    outputs: &[OutputConfig],
    patterns_seen: &mut Vec<Arc<Pattern>>,
) -> Result<RuleConfig, ConfigError> {
    let key = |k: &str| format!("gpio.rules[{i}].{k}");
    if r.labels.is_empty() || r.labels.iter().any(|l| l.is_empty()) {
        return Err(invalid(
            key("labels"),
            "needs at least one non-empty label or glob",
        ));
    }
    if r.labels.iter().any(|l| l.contains('\0')) {
        return Err(invalid(
            key("labels"),
            "a label or glob must not contain U+0000",
        ));
    }
    let min_confidence = bounded(
        &key("min_confidence"),
        r.min_confidence,
        0.0,
        0.0..=1.0,
        "must be between 0 and 1",
    )?;
    let fire_without_confidence = r.missing_confidence == Some(MissingConfidence::Fire);
    let wanted: Vec<String> = match (r.output, r.outputs) {
        (Some(o), None) => vec![o],
        (None, Some(os)) if !os.is_empty() => os,
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("output"),
                "give either output or outputs, not both",
            ))
        }
        _ => return Err(invalid(key("output"), "is required (or outputs = [...])")),
    };
    let mut idx = Vec::with_capacity(wanted.len());
    for name in &wanted {
        let pos = outputs
            .iter()
            .position(|o| &o.name == name)
            .ok_or_else(|| invalid(key("output"), format!("no output named {name:?}")))?;
        idx.push(pos);
    }
    let pattern = match r.pattern {
        Some(p) => validate_pattern(p, &key("pattern"))?,
        None => Pattern::Solid {
            duration: Duration::from_secs(1),
        },
    };
    if let Pattern::Tone { .. } = pattern {
        if let Some(&o) = idx
            .iter()
            .find(|&&o| outputs[o].kind != OutputKind::PassiveBuzzer)
        {
            return Err(invalid(
                key("pattern"),
                format!(
                    "a tone needs a passive_buzzer output, {:?} is not",
                    outputs[o].name
                ),
            ));
        }
    }
    if r.rtstream_id.as_deref() == Some("") {
        return Err(invalid(key("rtstream_id"), "must not be empty"));
    }
    let quiet_hours = r
        .quiet_hours
        .iter()
        .enumerate()
        .map(|(j, w)| {
            parse_quiet_window(w)
                .map_err(|e| invalid(format!("gpio.rules[{i}].quiet_hours[{j}]"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_age = above_zero_or_30s(
        &key("max_age"),
        r.max_age,
        "must be above zero (a zero max_age would drop every alert)",
    )?;
    let audible = idx
        .iter()
        .filter(|_| !quiet_hours.is_empty())
        .map(|&o| outputs[o].kind != OutputKind::Light)
        .collect();
    Ok(RuleConfig {
        name: r.name.map(String::into_boxed_str),
        labels: r.labels.iter().map(String::as_str).collect(),
        min_confidence,
        fire_without_confidence,
        outputs: idx.into_boxed_slice(),
        pattern: shared(patterns_seen, pattern),
        priority: r.priority.unwrap_or(0),
        cooldown: r.cooldown.map_or(Duration::ZERO, Duration::from),
        max_age,
        limits: (r.rtstream_id.is_some() || !quiet_hours.is_empty()).then(|| {
            Box::new(RuleLimits {
                rtstream_id: r.rtstream_id.map(String::into_boxed_str),
                quiet_hours: quiet_hours.into_boxed_slice(),
                audible,
            })
        }),
    })
}

/// One `[[gpio.rules]]` table as written: a view of a [`RuleConfig`].
#[derive(Serialize)]
pub(super) struct PrintedRule<'a> {
    name: &'a Option<Box<str>>,
    labels: &'a Labels,
    min_confidence: f64,
    missing_confidence: Option<MissingConfidence>,
    outputs: Vec<&'a str>,
    pattern: &'a Pattern,
    priority: i32,
    #[serde(serialize_with = "print::duration")]
    cooldown: Duration,
    #[serde(serialize_with = "print::duration")]
    max_age: Duration,
    rtstream_id: Option<&'a str>,
    quiet_hours: Vec<String>,
}

impl<'a> PrintedRule<'a> {
    pub(super) fn new(r: &'a RuleConfig, outputs: &'a [OutputConfig]) -> PrintedRule<'a> {
        PrintedRule {
            name: &r.name,
            labels: &r.labels,
            min_confidence: r.min_confidence,
            missing_confidence: r.fire_without_confidence.then_some(MissingConfidence::Fire),
            outputs: r
                .outputs
                .iter()
                .map(|&i| outputs[i].name.as_str())
                .collect(),
            pattern: &r.pattern,
            priority: r.priority,
            cooldown: r.cooldown,
            max_age: r.max_age,
            rtstream_id: r.rtstream_id(),
            quiet_hours: r.quiet_hours().iter().map(|w| w.to_string()).collect(),
        }
    }
}

/// Parses `"22:00-07:00"` (local time, 24-hour clock).
fn parse_quiet_window(s: &str) -> Result<QuietWindow, String> {
    let hm = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
    };
    let bad = || format!("{s:?} is not a window like \"22:00-07:00\"");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (start_min, end_min) = (hm(a).ok_or_else(bad)?, hm(b).ok_or_else(bad)?);
    let (start_min, end_min) = (start_min % 1440, end_min % 1440);
    if start_min == end_min {
        return Err(format!("{s:?} is empty (start equals end)"));
    }
    Ok(QuietWindow { start_min, end_min })
}
