//! Pattern timing: a pattern becomes a sequence of (offset from start, level) edges.
//!
//! Pure: no clock, no pins. The engine asks the cursor for the next edge and sleeps until then.

use std::time::Duration;

use crate::config::Pattern;

/// Walks a pattern's edges lazily (a 1-hour blink is not materialised), capped at `max_on`.
#[derive(Debug, Clone)]
pub struct PatternCursor {
    pattern: Pattern,
    cap: Duration,
    /// Index of the current (on, off) step.
    step: u32,
    /// Offset at which the current step's "on" began.
    step_start: Duration,
    /// Whether the next edge to report is the "off" of the current step.
    next_is_off: bool,
    done: bool,
}

impl PatternCursor {
    pub fn new(pattern: Pattern, max_on: Duration) -> PatternCursor {
        PatternCursor {
            pattern,
            cap: max_on,
            step: 0,
            step_start: Duration::ZERO,
            next_is_off: false,
            done: false,
        }
    }

    /// The (on, off) durations of step `i`, or None when the pattern has no step `i`.
    fn step(&self, i: u32, start: Duration) -> Option<(Duration, Duration)> {
        match &self.pattern {
            Pattern::Solid { duration } | Pattern::Tone { duration, .. } => {
                (i == 0).then_some((*duration, Duration::ZERO))
            }
            Pattern::Blink {
                on,
                off,
                count: Some(n),
                ..
            } => (i < *n).then_some((*on, *off)),
            Pattern::Blink {
                on,
                off,
                count: None,
                duration,
            } => {
                let total = duration.unwrap_or(*on);
                // A blink "for 2s" starts cycles while within the duration and ends on time.
                (start < total).then(|| ((*on).min(total - start), *off))
            }
            Pattern::Sequence { steps } => steps.get(i as usize).copied(),
        }
    }

    /// The next edge: `(offset from the pattern start, level)`. `None` once the pattern has
    /// ended (its last edge is always `false`).
    pub fn next_edge(&mut self) -> Option<(Duration, bool)> {
        if self.done {
            return None;
        }
        let Some((on, off)) = self.step(self.step, self.step_start) else {
            self.done = true;
            return None;
        };
        if !self.next_is_off {
            if self.step_start >= self.cap {
                self.done = true;
                return None;
            }
            self.next_is_off = true;
            return Some((self.step_start, true));
        }
        let off_at = self.step_start + on;
        if off_at >= self.cap {
            self.done = true;
            return Some((self.cap, false));
        }
        self.next_is_off = false;
        self.step += 1;
        self.step_start = off_at + off;
        Some((off_at, false))
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
        let p = Pattern::Blink {
            on: ms(100),
            off: ms(50),
            count: Some(3),
            duration: None,
        };
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
        let p = Pattern::Blink {
            on: ms(200),
            off: ms(200),
            count: None,
            duration: Some(ms(700)),
        };
        assert_eq!(
            edges(p, ms(30_000)),
            vec![(0, true), (200, false), (400, true), (600, false)]
        );
        let p = Pattern::Blink {
            on: ms(200),
            off: ms(100),
            count: None,
            duration: Some(ms(700)),
        };
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
        let p = Pattern::Blink {
            on: ms(100),
            off: ms(100),
            count: Some(100),
            duration: None,
        };
        let e = edges(p, ms(450));
        assert_eq!(e.last(), Some(&(450, false)));
        assert!(e.iter().all(|(t, _)| *t <= 450));
    }
}
