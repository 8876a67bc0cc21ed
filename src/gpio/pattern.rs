//! Pattern timing: a pattern becomes a sequence of (offset from start, level) edges.
//!
//! Pure: no clock, no pins. The engine peeks at the next edge, sleeps until then, applies it
//! and advances the cursor. Every pattern ends with the output inactive, and no pattern runs
//! past its output's `max_on` (measured from the pattern's start, extensions included).
//!
//! Extending ([`PatternCursor::extend`]) keeps the current phase: the cycle in progress
//! finishes undisturbed and a fresh run's worth of cycles (or time) follows it, so a rule that
//! re-triggers mid-blink never produces a short or doubled edge.

use std::time::Duration;

use crate::config::Pattern;

/// One level change, `at` after the pattern started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub at: Duration,
    pub on: bool,
    /// This "off" was forced by `max_on`: the pattern wanted the output on longer.
    pub capped: bool,
}

#[derive(Debug, Clone)]
enum Plan {
    /// Plays `steps` cyclically until `total` steps have run (blink by count, sequence).
    Steps {
        steps: Vec<(Duration, Duration)>,
        total: u64,
        fresh: u64,
    },
    /// Starts (on, off) cycles while before `until`; the last "on" ends at `until` at the
    /// latest (blink by duration; solid and tone are a single "on" lasting until `until`).
    Timed {
        on: Duration,
        off: Duration,
        until: Duration,
        fresh: Duration,
    },
}

/// Walks a pattern's edges lazily (a 1-hour blink is not materialised), capped at `max_on`.
#[derive(Debug, Clone)]
pub struct PatternCursor {
    plan: Plan,
    cap: Duration,
    /// Index of the current (on, off) step.
    step: u64,
    /// Offset at which the current step's "on" begins.
    step_start: Duration,
    /// Whether the next edge is the "off" of the current step.
    next_is_off: bool,
    done: bool,
}

impl PatternCursor {
    pub fn new(pattern: Pattern, max_on: Duration) -> PatternCursor {
        let plan = match pattern {
            Pattern::Solid { duration } | Pattern::Tone { duration, .. } => Plan::Timed {
                on: Duration::MAX,
                off: Duration::ZERO,
                until: duration,
                fresh: duration,
            },
            Pattern::Blink {
                on,
                off,
                count: Some(n),
                ..
            } => Plan::Steps {
                steps: vec![(on, off)],
                total: u64::from(n),
                fresh: u64::from(n),
            },
            Pattern::Blink {
                on,
                off,
                count: None,
                duration,
            } => {
                let d = duration.unwrap_or(on);
                Plan::Timed {
                    on,
                    off,
                    until: d,
                    fresh: d,
                }
            }
            Pattern::Sequence { steps } => {
                let n = steps.len() as u64;
                Plan::Steps {
                    steps,
                    total: n,
                    fresh: n,
                }
            }
        };
        PatternCursor {
            plan,
            cap: max_on,
            step: 0,
            step_start: Duration::ZERO,
            next_is_off: false,
            done: false,
        }
    }

    /// The (on, off) lengths of the current step, or None when the pattern has ended.
    fn current_step(&self) -> Option<(Duration, Duration)> {
        match &self.plan {
            Plan::Steps { steps, total, .. } => {
                if self.step >= *total || steps.is_empty() {
                    return None;
                }
                Some(steps[(self.step % steps.len() as u64) as usize])
            }
            Plan::Timed { on, off, until, .. } => {
                (self.step_start < *until).then(|| ((*on).min(*until - self.step_start), *off))
            }
        }
    }

    /// The next edge, without consuming it. `None` once the pattern has ended (its last edge
    /// is always an "off").
    pub fn peek(&self) -> Option<Edge> {
        if self.done {
            return None;
        }
        let (on, _) = self.current_step()?;
        if !self.next_is_off {
            if self.step_start >= self.cap {
                return None;
            }
            return Some(Edge {
                at: self.step_start,
                on: true,
                capped: false,
            });
        }
        let off_at = self.step_start.saturating_add(on);
        Some(Edge {
            at: off_at.min(self.cap),
            on: false,
            capped: off_at > self.cap,
        })
    }

    /// Consumes the edge [`peek`](Self::peek) returned.
    pub fn advance(&mut self) {
        let Some((on, off)) = self.current_step().filter(|_| !self.done) else {
            self.done = true;
            return;
        };
        if !self.next_is_off {
            if self.step_start >= self.cap {
                self.done = true;
            }
            self.next_is_off = true;
            return;
        }
        let off_at = self.step_start.saturating_add(on);
        if off_at >= self.cap {
            self.done = true;
            return;
        }
        self.next_is_off = false;
        self.step += 1;
        self.step_start = off_at.saturating_add(off);
    }

    /// The next edge, consumed.
    pub fn next_edge(&mut self) -> Option<(Duration, bool)> {
        let e = self.peek();
        match e {
            Some(e) => {
                self.advance();
                Some((e.at, e.on))
            }
            None => {
                self.done = true;
                None
            }
        }
    }

    /// The same pattern was asked for again `now` after it started: keep the current phase,
    /// let the cycle in progress finish, and run a fresh run's worth after it (count-based
    /// patterns), or end no earlier than `now` + the pattern's duration (time-based ones).
    /// Never shortens the pattern; `max_on` still counts from the original start.
    pub fn extend(&mut self, now: Duration) {
        if self.done {
            return;
        }
        // Steps whose "on" has begun (the current one too, when it is on now).
        let begun = self.step + u64::from(self.next_is_off);
        match &mut self.plan {
            Plan::Steps { total, fresh, .. } => *total = (*total).max(begun + *fresh),
            Plan::Timed { until, fresh, .. } => *until = (*until).max(now + *fresh),
        }
    }

    /// Whether the pattern has ended.
    pub fn is_done(&self) -> bool {
        self.done || self.peek().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn edges(p: Pattern, cap: Duration) -> Vec<(u64, bool)> {
        let mut c = PatternCursor::new(p, cap);
        let mut out = Vec::new();
        while let Some((t, l)) = c.next_edge() {
            out.push((t.as_millis() as u64, l));
            assert!(out.len() < 10_000, "pattern does not end");
        }
        out
    }

    #[test]
    fn solid_is_one_pulse() {
        assert_eq!(
            edges(Pattern::Solid { duration: ms(300) }, ms(30_000)),
            vec![(0, true), (300, false)]
        );
    }

    #[test]
    fn blink_by_count() {
        let p = blink(100, 50, 3);
        assert_eq!(
            edges(p, ms(30_000)),
            vec![
                (0, true),
                (100, false),
                (150, true),
                (250, false),
                (300, true),
                (400, false)
            ]
        );
    }

    #[test]
    fn blink_by_duration_ends_on_time() {
        let p = blink_for(200, 200, 700);
        assert_eq!(
            edges(p, ms(30_000)),
            vec![(0, true), (200, false), (400, true), (600, false)]
        );
        let p = blink_for(200, 100, 700);
        assert_eq!(
            edges(p, ms(30_000)),
            vec![
                (0, true),
                (200, false),
                (300, true),
                (500, false),
                (600, true),
                (700, false)
            ]
        );
    }

    #[test]
    fn sequence_follows_its_steps() {
        let p = Pattern::Sequence {
            steps: vec![(ms(200), ms(100)), (ms(600), ms(100))],
        };
        assert_eq!(
            edges(p, ms(30_000)),
            vec![(0, true), (200, false), (300, true), (900, false)]
        );
    }

    #[test]
    fn max_on_caps_any_pattern() {
        assert_eq!(
            edges(
                Pattern::Solid {
                    duration: ms(60_000)
                },
                ms(1000)
            ),
            vec![(0, true), (1000, false)]
        );
        let p = blink(100, 100, 100);
        let e = edges(p, ms(450));
        assert_eq!(e.last(), Some(&(450, false)));
        assert!(e.iter().all(|(t, _)| *t <= 450));
    }

    /// A blink of `count` cycles (times in ms).
    fn blink(on: u64, off: u64, count: u32) -> Pattern {
        Pattern::Blink {
            on: ms(on),
            off: ms(off),
            count: Some(count),
            duration: None,
        }
    }

    /// A blink that lasts `duration` ms.
    fn blink_for(on: u64, off: u64, duration: u64) -> Pattern {
        Pattern::Blink {
            on: ms(on),
            off: ms(off),
            count: None,
            duration: Some(ms(duration)),
        }
    }

    /// Runs the cursor until `at_ms`, extends there, and returns every edge.
    fn edges_extended_at(p: Pattern, cap: Duration, at_ms: u64) -> Vec<(u64, bool)> {
        let mut c = PatternCursor::new(p, cap);
        let mut out = Vec::new();
        let mut extended = false;
        while let Some(e) = c.peek() {
            if !extended && e.at > ms(at_ms) {
                c.extend(ms(at_ms));
                extended = true;
                continue;
            }
            c.advance();
            out.push((e.at.as_millis() as u64, e.on));
            assert!(out.len() < 10_000, "pattern does not end");
        }
        out
    }

    #[test]
    fn extending_a_blink_mid_on_or_mid_off_keeps_the_phase_and_runs_a_fresh_count() {
        // count 2: on 0-100, on 200-300. Extended at 50 (mid-on of cycle 0): cycle 0 finishes,
        // then two more cycles. Extended at 150 (off after cycle 0): two full cycles follow,
        // on the same grid.
        for at in [50, 150] {
            assert_eq!(
                edges_extended_at(blink(100, 100, 2), ms(30_000), at),
                vec![
                    (0, true),
                    (100, false),
                    (200, true),
                    (300, false),
                    (400, true),
                    (500, false)
                ],
                "extended at {at} ms"
            );
        }
    }

    #[test]
    fn extending_a_solid_moves_its_end() {
        assert_eq!(
            edges_extended_at(Pattern::Solid { duration: ms(300) }, ms(30_000), 200),
            vec![(0, true), (500, false)]
        );
    }

    #[test]
    fn extension_never_passes_max_on() {
        let e = edges_extended_at(Pattern::Solid { duration: ms(300) }, ms(400), 200);
        assert_eq!(e, vec![(0, true), (400, false)]);
        let mut c = PatternCursor::new(Pattern::Solid { duration: ms(300) }, ms(400));
        c.advance();
        c.extend(ms(200));
        assert_eq!(
            c.peek(),
            Some(Edge {
                at: ms(400),
                on: false,
                capped: true
            })
        );
    }
}
