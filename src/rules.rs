//! Rules: label + confidence + time decide which outputs run which pattern.
//!
//! Pure: no I/O and no clock. The caller passes the wall-clock time (to judge an alert's age)
//! and a monotonic instant (for cooldowns). Rules know nothing of pins: they name outputs by
//! index into the configured list.
//!
//! Confidence: a rule with `min_confidence = 0` (the default) fires whatever the confidence,
//! even when it is missing; a rule with a threshold above zero fires only for a valid
//! confidence (a number in 0..=1) at or above it, so a missing or garbled confidence never
//! sounds a threshold-guarded buzzer.

use std::time::{Duration, Instant, SystemTime};

use crate::alert::{Alert, Confidence};
use crate::config::{Pattern, RuleConfig};

/// One output to drive, from one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire {
    pub output: usize,
    pub rule: usize,
    pub pattern: Pattern,
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
}

pub struct RuleEngine {
    rules: Vec<RuleConfig>,
    last_fired: Vec<Option<Instant>>,
}

impl RuleEngine {
    pub fn new(rules: Vec<RuleConfig>) -> RuleEngine {
        let n = rules.len();
        RuleEngine {
            rules,
            last_fired: vec![None; n],
        }
    }

    /// Decides what `alert` triggers. `received` is when the relay read it, used as its age
    /// when the alert carries no readable timestamp.
    pub fn decide(
        &mut self,
        alert: &Alert,
        received: SystemTime,
        now_wall: SystemTime,
        now: Instant,
    ) -> Decision {
        let mut d = Decision::default();
        let born = alert.timestamp.unwrap_or(received);
        // A timestamp in the future (clock skew between camera cloud and device) counts as new.
        let age = now_wall.duration_since(born).unwrap_or(Duration::ZERO);
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.labels.iter().any(|g| glob_match(g, &alert.label)) {
                continue;
            }
            let confident = match alert.confidence {
                Confidence::Valid(c) => c >= rule.min_confidence,
                Confidence::Missing | Confidence::Invalid => rule.min_confidence <= 0.0,
            };
            if !confident {
                continue;
            }
            if age > rule.max_age {
                d.stale += 1;
                continue;
            }
            if let Some(last) = self.last_fired[i] {
                if now.duration_since(last) < rule.cooldown {
                    d.cooling_down += 1;
                    continue;
                }
            }
            self.last_fired[i] = Some(now);
            for &output in &rule.outputs {
                d.fires.push(Fire {
                    output,
                    rule: i,
                    pattern: rule.pattern.clone(),
                    priority: rule.priority,
                });
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
            labels: labels.iter().map(|s| s.to_string()).collect(),
            min_confidence: min_conf,
            outputs: vec![0],
            pattern: Pattern::Solid {
                duration: Duration::from_millis(300),
            },
            priority: 1,
            cooldown: Duration::from_millis(cooldown_ms),
            max_age: Duration::from_secs(max_age_s),
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
}
