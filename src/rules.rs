//! Rules: label + confidence + time decide which outputs run which pattern.
//!
//! Pure: no I/O and no clock. The caller passes the wall-clock time (to judge an alert's age)
//! and a monotonic instant (for cooldowns). Rules know nothing of pins: they name outputs by
//! index into the configured list.
//!
//! Confidence: a rule with `min_confidence = 0` (the default) fires whatever the confidence,
//! even when it is missing; a rule with a threshold above zero fires only for a valid
//! confidence (a number in 0..=1) at or above it, so a missing or garbled confidence never
//! sounds a threshold-guarded buzzer. Unless the rule says `missing_confidence = "fire"`: then
//! an alert with no confidence at all (VideoDB's real-time shape `{"event_label", "timestamp",
//! "text"}`: the service's own model already decided the event happened) passes the threshold;
//! a garbled one still never does.
//!
//! Quiet hours: a rule's `quiet_hours` windows are local wall-clock times. During one, the
//! rule's buzzer outputs are skipped (counted) while its lights still fire. Local time needs
//! the time zone: [`RuleEngine::new`] reads it once (the `TZ` variable, else /etc/localtime,
//! else UTC, via the small `tz-rs` crate that reads the system's TZif files rather than
//! embedding a zone database) and only when some rule has quiet hours; `decide` stays pure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::alert::{Alert, Confidence};
use crate::config::{Pattern, RuleConfig};

/// The time zone quiet hours are read in.
#[derive(Debug, Clone)]
pub struct LocalZone(Option<tz::TimeZone>);

impl LocalZone {
    /// The system's zone: `TZ`, else /etc/localtime; UTC (logged) when neither is readable.
    pub fn system() -> LocalZone {
        match crate::clock::system_zone() {
            Ok(z) => LocalZone(Some(z)),
            Err(e) => {
                log::warn!("rules: cannot read the local time zone ({e}); quiet_hours use UTC");
                LocalZone(None)
            }
        }
    }

    /// A fixed offset east of UTC (tests, and boards without zone files).
    pub fn fixed(offset_secs: i32) -> LocalZone {
        LocalZone(tz::TimeZone::fixed(offset_secs).ok())
    }

    /// Minutes after local midnight at `t`.
    pub fn minute_of_day(&self, t: SystemTime) -> u16 {
        // Below 2^64 µs, so the quotient fits an i64.
        let secs = (crate::clock::unix_micros(t) / 1_000_000) as i64;
        let offset = self
            .0
            .as_ref()
            .and_then(|z| z.find_local_time_type(secs).ok())
            .map(|l| i64::from(l.ut_offset()))
            .unwrap_or(0);
        ((secs + offset).rem_euclid(86_400) / 60) as u16
    }
}

/// One output to drive, from one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire {
    pub output: usize,
    pub rule: usize,
    /// The rule's own (shared, not copied per fire).
    pub pattern: Arc<Pattern>,
    pub priority: i32,
}

/// What the rules made of one alert.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decision {
    pub fires: Vec<Fire>,
    /// Rules that matched but were skipped because the alert was older than their `max_age`.
    pub stale: u32,
    /// Rules that matched but were still cooling down.
    pub cooling_down: u32,
    /// Outputs (indexes) a matching rule left silent because of its quiet hours.
    pub quiet: Vec<usize>,
    /// Rules that matched but are disarmed.
    pub disarmed: u32,
    /// Whether `max_age` was judged by the alert's own timestamp (clock synchronised, the
    /// alert has one) rather than by when the relay received it.
    pub age_by_timestamp: bool,
    /// Outputs (indexes) that sounded although the (unsynchronised) clock read inside their
    /// rule's quiet hours: an untrusted clock silences nothing.
    pub quiet_unsynced: Vec<usize>,
}

pub struct RuleEngine {
    rules: Arc<Vec<RuleConfig>>,
    /// When each rule that has fired last fired, by index: only those (10,000 rules that never
    /// fire hold nothing).
    last_fired: HashMap<usize, Instant>,
    /// Disarmed rules match but never fire (Home Assistant's rule switch, `rules/{name}/set`).
    armed: Vec<bool>,
    zone: LocalZone,
}

impl RuleEngine {
    /// Reads the local time zone when (and only when) some rule has quiet hours.
    /// `rules` may be the config's own (`Arc`, shared) or a `Vec`.
    pub fn new(rules: impl Into<Arc<Vec<RuleConfig>>>) -> RuleEngine {
        let rules = rules.into();
        let zone = if rules.iter().any(|r| !r.quiet_hours().is_empty()) {
            LocalZone::system()
        } else {
            LocalZone(None)
        };
        RuleEngine::with_zone(rules, zone)
    }

    pub fn with_zone(rules: impl Into<Arc<Vec<RuleConfig>>>, zone: LocalZone) -> RuleEngine {
        let rules = rules.into();
        let n = rules.len();
        RuleEngine {
            rules,
            last_fired: HashMap::new(),
            armed: vec![true; n],
            zone,
        }
    }

    /// Arms (`true`) or disarms rule `rule`; an index out of range is ignored.
    pub fn set_armed(&mut self, rule: usize, armed: bool) {
        if let Some(a) = self.armed.get_mut(rule) {
            *a = armed;
        }
    }

    pub fn is_armed(&self, rule: usize) -> bool {
        self.armed.get(rule).copied().unwrap_or(false)
    }

    /// The engine for `rules` after a config reload. What a rule carries over is keyed by its
    /// name (unnamed rules carry nothing): a disarmed rule stays disarmed, and a rule whose
    /// definition did not change keeps its cooldown (a reload must not let a cooling-down
    /// rule fire again at once). A changed rule starts afresh.
    pub fn reloaded(&self, rules: impl Into<Arc<Vec<RuleConfig>>>) -> RuleEngine {
        let rules = rules.into();
        let zone = if rules.iter().any(|r| !r.quiet_hours().is_empty()) && self.zone.0.is_none() {
            LocalZone::system()
        } else {
            self.zone.clone()
        };
        let mut next = RuleEngine::with_zone(rules, zone);
        // By name, not by a scan per rule: 10,000 rules would be 10^8 comparisons.
        let old: HashMap<&str, usize> = self
            .rules
            .iter()
            .enumerate()
            .filter_map(|(j, r)| Some((r.name.as_deref()?, j)))
            .collect();
        for (i, rule) in next.rules.iter().enumerate() {
            let Some(name) = &rule.name else { continue };
            let Some(&j) = old.get(&**name) else {
                continue;
            };
            next.armed[i] = self.armed[j];
            // RuleConfig has no PartialEq (config owns it); its Debug form shows every field.
            if format!("{rule:?}") == format!("{:?}", self.rules[j]) {
                if let Some(&t) = self.last_fired.get(&j) {
                    next.last_fired.insert(i, t);
                }
            }
        }
        next
    }

    /// Decides what `alert` triggers, with the wall clock synchronised. `received` is when
    /// the relay read it, used as its age when the alert carries no readable timestamp.
    pub fn decide(
        &mut self,
        alert: &Alert,
        received: SystemTime,
        now_wall: SystemTime,
        now: Instant,
    ) -> Decision {
        self.decide_at(alert, received, now_wall, now, true)
    }

    /// [`RuleEngine::decide`], saying whether the wall clock is synchronised. Unsynchronised,
    /// the alert's own timestamp is not compared with a clock that may be days off (the age
    /// counts from `received`), and quiet hours silence nothing ([`crate::timesync`]).
    pub fn decide_at(
        &mut self,
        alert: &Alert,
        received: SystemTime,
        now_wall: SystemTime,
        now: Instant,
        synced: bool,
    ) -> Decision {
        let mut d = Decision::default();
        let born = match alert.timestamp {
            Some(t) if synced => {
                d.age_by_timestamp = true;
                t
            }
            _ => received,
        };
        // A timestamp in the future (clock skew between camera cloud and device) counts as new.
        let age = now_wall.duration_since(born).unwrap_or(Duration::ZERO);
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.labels.iter().any(|g| glob_match(g, &alert.label)) {
                continue;
            }
            let confident = match alert.confidence {
                Confidence::Valid(c) => c >= rule.min_confidence,
                Confidence::Missing => rule.min_confidence <= 0.0 || rule.fire_without_confidence,
                Confidence::Invalid => rule.min_confidence <= 0.0,
            };
            if !confident {
                continue;
            }
            if !self.armed[i] {
                d.disarmed += 1;
                continue;
            }
            if let Some(want) = rule.rtstream_id() {
                if !alert
                    .rtstream_id
                    .as_deref()
                    .is_some_and(|id| glob_match(want, id))
                {
                    continue;
                }
            }
            if age > rule.max_age {
                d.stale += 1;
                continue;
            }
            if let Some(&last) = self.last_fired.get(&i) {
                if now.duration_since(last) < rule.cooldown {
                    d.cooling_down += 1;
                    continue;
                }
            }
            let quiet = !rule.quiet_hours().is_empty() && {
                let m = self.zone.minute_of_day(now_wall);
                rule.quiet_hours().iter().any(|w| w.contains(m))
            };
            let mut fired = false;
            for (j, &output) in rule.outputs.iter().enumerate() {
                if quiet && rule.audible().get(j).copied().unwrap_or(true) {
                    if !synced {
                        d.quiet_unsynced.push(output);
                    } else {
                        d.quiet.push(output);
                        continue;
                    }
                }
                fired = true;
                d.fires.push(Fire {
                    output,
                    rule: i,
                    pattern: rule.pattern.clone(),
                    priority: rule.priority,
                });
            }
            // A rule that only muted buzzers did nothing a user noticed: no cooldown.
            if fired {
                self.last_fired.insert(i, now);
            }
        }
        d
    }
}

/// Glob match with `*` (any run, also empty) and `?` (one character); everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn rule(labels: &[&str], min_conf: f64, cooldown_ms: u64, max_age_s: u64) -> RuleConfig {
        RuleConfig {
            name: None,
            labels: labels.iter().copied().collect(),
            min_confidence: min_conf,
            fire_without_confidence: false,
            outputs: vec![0].into(),
            pattern: Pattern::Solid {
                duration: Duration::from_millis(300),
            }
            .into(),
            priority: 1,
            cooldown: Duration::from_millis(cooldown_ms),
            max_age: Duration::from_secs(max_age_s),
            limits: None,
        }
    }

    fn alert(label: &str, confidence: Confidence, ts: Option<SystemTime>) -> Alert {
        Alert {
            label: label.into(),
            confidence,
            event_id: Some("e".into()),
            timestamp: ts,
            rtstream_id: None,
            data: Map::new(),
        }
    }

    #[test]
    fn globs_match_like_shells() {
        assert!(glob_match("intrusion*", "intrusion_north"));
        assert!(glob_match("intrusion*", "intrusion"));
        assert!(glob_match("*fire*", "wildfire_smoke"));
        assert!(glob_match("car_?", "car_1"));
        assert!(!glob_match("car_?", "car_12"));
        assert!(!glob_match("traffic_violation", "traffic"));
    }

    #[test]
    fn threshold_guards_missing_and_invalid_confidence() {
        let now = SystemTime::now();
        let t = Instant::now();
        let mut e = RuleEngine::new(vec![rule(&["x"], 0.8, 0, 30)]);
        assert!(e
            .decide(&alert("x", Confidence::Valid(0.79), None), now, now, t)
            .fires
            .is_empty());
        assert!(e
            .decide(&alert("x", Confidence::Missing, None), now, now, t)
            .fires
            .is_empty());
        assert!(e
            .decide(&alert("x", Confidence::Invalid, None), now, now, t)
            .fires
            .is_empty());
        assert_eq!(
            e.decide(&alert("x", Confidence::Valid(0.8), None), now, now, t)
                .fires
                .len(),
            1
        );
        let mut any = RuleEngine::new(vec![rule(&["x"], 0.0, 0, 30)]);
        assert_eq!(
            any.decide(&alert("x", Confidence::Missing, None), now, now, t)
                .fires
                .len(),
            1
        );
    }

    #[test]
    fn missing_confidence_fire_passes_the_threshold_but_garbled_never_does() {
        let now = SystemTime::now();
        let t = Instant::now();
        let mut r = rule(&["x"], 0.8, 0, 30);
        r.fire_without_confidence = true;
        let mut e = RuleEngine::new(vec![r]);
        let fires = |e: &mut RuleEngine, c| e.decide(&alert("x", c, None), now, now, t).fires.len();
        assert_eq!(fires(&mut e, Confidence::Missing), 1);
        assert_eq!(fires(&mut e, Confidence::Invalid), 0);
        assert_eq!(
            fires(&mut e, Confidence::Valid(0.5)),
            0,
            "a low score still counts"
        );
        assert_eq!(fires(&mut e, Confidence::Valid(0.9)), 1);
    }

    #[test]
    fn disarmed_rules_match_but_never_fire_until_armed_again() {
        let now = SystemTime::now();
        let t = Instant::now();
        let mut e = RuleEngine::new(vec![rule(&["x"], 0.0, 0, 30), rule(&["x"], 0.0, 0, 30)]);
        let a = alert("x", Confidence::Valid(1.0), None);
        e.set_armed(0, false);
        e.set_armed(7, false);
        let d = e.decide(&a, now, now, t);
        assert_eq!(d.disarmed, 1);
        assert_eq!(d.fires.iter().map(|f| f.rule).collect::<Vec<_>>(), [1]);
        assert!(!e.is_armed(0) && e.is_armed(1) && !e.is_armed(7));
        e.set_armed(0, true);
        assert_eq!(e.decide(&a, now, now, t).fires.len(), 2);
    }

    #[test]
    fn stale_alerts_never_fire() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3600);
        let mut e = RuleEngine::new(vec![rule(&["x"], 0.0, 0, 30)]);
        let d = e.decide(
            &alert("x", Confidence::Valid(1.0), Some(old)),
            now,
            now,
            Instant::now(),
        );
        assert!(d.fires.is_empty());
        assert_eq!(d.stale, 1);
    }

    #[test]
    fn cooldown_suppresses_retriggers() {
        let now = SystemTime::now();
        let t0 = Instant::now();
        let mut e = RuleEngine::new(vec![rule(&["x"], 0.0, 10_000, 30)]);
        let a = alert("x", Confidence::Valid(1.0), None);
        assert_eq!(e.decide(&a, now, now, t0).fires.len(), 1);
        let d = e.decide(&a, now, now, t0 + Duration::from_secs(5));
        assert!(d.fires.is_empty());
        assert_eq!(d.cooling_down, 1);
        assert_eq!(
            e.decide(&a, now, now, t0 + Duration::from_secs(11))
                .fires
                .len(),
            1
        );
    }

    #[test]
    fn rtstream_filter_only_fires_for_its_stream() {
        let now = SystemTime::now();
        let mut r = rule(&["x"], 0.0, 0, 30);
        r.limits_mut().rtstream_id = Some("rts-gate*".into());
        let mut e = RuleEngine::new(vec![r]);
        let mut a = alert("x", Confidence::Valid(1.0), None);
        assert!(e.decide(&a, now, now, Instant::now()).fires.is_empty());
        a.rtstream_id = Some("rts-lobby".into());
        assert!(e.decide(&a, now, now, Instant::now()).fires.is_empty());
        a.rtstream_id = Some("rts-gate-2".into());
        assert_eq!(e.decide(&a, now, now, Instant::now()).fires.len(), 1);
    }

    #[test]
    fn quiet_hours_mute_buzzers_but_not_lights_in_local_time() {
        use crate::config::QuietWindow;
        // 2025-01-01T21:30:00Z is 23:30 at UTC+2: inside 22:00-07:00 there, outside in UTC.
        let t = crate::clock::parse_rfc3339("2025-01-01T21:30:00Z").expect("ts");
        let mut r = rule(&["x"], 0.0, 0, 30);
        r.outputs = vec![0, 1].into();
        r.limits_mut().audible = vec![false, true].into();
        r.limits_mut().quiet_hours = vec![QuietWindow {
            start_min: 22 * 60,
            end_min: 7 * 60,
        }]
        .into();
        let a = alert("x", Confidence::Valid(1.0), Some(t));
        let mut plus2 = RuleEngine::with_zone(vec![r.clone()], LocalZone::fixed(7200));
        let d = plus2.decide(&a, t, t, Instant::now());
        assert_eq!(
            d.fires.iter().map(|f| f.output).collect::<Vec<_>>(),
            vec![0]
        );
        assert_eq!(d.quiet, vec![1]);
        let mut utc = RuleEngine::with_zone(vec![r], LocalZone::fixed(0));
        let d = utc.decide(&a, t, t, Instant::now());
        assert_eq!(d.fires.len(), 2);
        assert!(d.quiet.is_empty());
    }

    #[test]
    fn quiet_windows_wrap_midnight() {
        use crate::config::QuietWindow;
        let w = QuietWindow {
            start_min: 22 * 60,
            end_min: 7 * 60,
        };
        assert!(w.contains(23 * 60) && w.contains(0) && w.contains(6 * 60 + 59));
        assert!(!w.contains(7 * 60) && !w.contains(12 * 60) && !w.contains(21 * 60 + 59));
        let day = QuietWindow {
            start_min: 12 * 60,
            end_min: 13 * 60,
        };
        assert!(day.contains(12 * 60 + 30) && !day.contains(13 * 60));
    }

    #[test]
    fn an_unsynchronised_clock_judges_max_age_by_receipt_and_says_so() {
        let mut e = RuleEngine::new(vec![rule(&["x"], 0.0, 0, 10)]);
        let now = SystemTime::now();
        // Stamped an hour ago by the sender (max_age 10 s): stale by a synchronised clock.
        let a = alert(
            "x",
            Confidence::Valid(0.9),
            Some(now - Duration::from_secs(3600)),
        );
        let synced = e.decide_at(&a, now, now, Instant::now(), true);
        assert_eq!((synced.stale, synced.fires.len()), (1, 0));
        assert!(synced.age_by_timestamp);
        // The same alert while the local clock is unsynchronised: its age is since receipt.
        let unsynced = e.decide_at(&a, now, now, Instant::now(), false);
        assert_eq!((unsynced.stale, unsynced.fires.len()), (0, 1));
        assert!(!unsynced.age_by_timestamp);
        // Received long ago (a replay) is stale either way.
        let mut e = RuleEngine::new(vec![rule(&["x"], 0.0, 0, 10)]);
        let old = now - Duration::from_secs(3600);
        let replay = e.decide_at(
            &alert("x", Confidence::Valid(0.9), None),
            old,
            now,
            Instant::now(),
            false,
        );
        assert_eq!(replay.stale, 1);
    }

    #[test]
    fn quiet_hours_silence_nothing_while_the_clock_is_unsynchronised() {
        let mut r = rule(&["x"], 0.0, 0, 10);
        r.limits_mut().quiet_hours = vec![crate::config::QuietWindow {
            start_min: 0,
            end_min: 24 * 60 - 1,
        }]
        .into();
        r.outputs = vec![0].into();
        r.limits_mut().audible = vec![true].into();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(12 * 3600);
        let a = alert("x", Confidence::Valid(0.9), None);
        let mut e = RuleEngine::with_zone(vec![r.clone()], LocalZone::fixed(0));
        let d = e.decide_at(&a, t, t, Instant::now(), true);
        assert_eq!((d.fires.len(), d.quiet.clone()), (0, vec![0]));
        let mut e = RuleEngine::with_zone(vec![r], LocalZone::fixed(0));
        let d = e.decide_at(&a, t, t, Instant::now(), false);
        assert_eq!(d.fires.len(), 1);
        assert!(d.quiet.is_empty());
        assert_eq!(d.quiet_unsynced, vec![0]);
    }
}
