//! Whether the wall clock can be trusted, and a wall clock for ages that a clock jump cannot
//! age.
//!
//! Owns: the "synchronised" answer ([`synced`]) and the forward jumps the process has seen
//! ([`JumpGuard`]). Never does: set the clock, or decide what an age means (rules and the
//! queue do, with these answers).
//!
//! Boards without a real-time clock (every Raspberry Pi but the 5 with its battery) boot with
//! the time fake-hwclock saved at the last shutdown, or 1970, until NTP answers; then the clock
//! jumps. What depends on the wall clock, and what it does until the clock is known good:
//! - Cooldowns and pattern timing count on the monotonic clock already (`Instant`).
//! - A rule's `max_age` uses the alert's own timestamp only while the clock is synchronised;
//!   otherwise the age is counted from when the relay received the alert (the
//!   `gpio_age_by_receipt` counter says how often; `gpio_age_by_timestamp` the other case).
//! - Quiet hours while unsynchronised do not silence anything: the minute of day of a clock
//!   that may be hours off cannot be trusted to mute an alarm (`gpio_quiet_unsynced` counts
//!   the buzzers that sounded because of it).
//! - `queue.max_age` judges ages against a clock with the forward jumps this process saw
//!   taken out ([`queue_now_us`]), so the jump at NTP sync never ages a backlog. (A step back
//!   makes records look younger: nothing is dropped early. A record written with a wrong clock
//!   by an earlier run, read after a restart on a corrected one, is judged by the corrected
//!   clock: that case cannot be told apart without the writer's clock state in the record.)
//! - `{prefix}/stats` and `/healthz` carry `clock_synced`.
//!
//! "Synchronised" is what systemd-timesyncd says: `/run/systemd/timesync/synchronized` exists
//! once it has set the clock from NTP (systemd 239 and later; Raspberry Pi OS enables
//! timesyncd by default). The kernel's own flag (adjtimex `STA_UNSYNC`) needs a system call
//! that neither rustix (as built here) nor std offers without `unsafe`, which this crate
//! forbids; chrony or ntpd users get "unsynchronised" and the receipt-time behaviour above.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The file systemd-timesyncd creates once the clock is synchronised.
pub const SYNCED_MARKER: &str = "/run/systemd/timesync/synchronized";

/// How long an answer of [`synced`] is reused: a stat per alert would be cheap, but the answer
/// changes once per boot.
const RECHECK: Duration = Duration::from_secs(1);

static CACHE: Mutex<Option<(Instant, bool)>> = Mutex::new(None);

/// Whether the wall clock is known to be synchronised (see the module doc).
pub fn synced() -> bool {
    let now = Instant::now();
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, v)) = *cache {
        if now.duration_since(at) < RECHECK {
            return v;
        }
    }
    let v = Path::new(SYNCED_MARKER).exists();
    *cache = Some((now, v));
    v
}

/// Forward jumps of the wall clock, seen by comparing it with the monotonic clock between
/// samples. A step back needs no correction (records then look younger, which drops nothing).
#[derive(Debug, Default, Clone)]
pub struct JumpGuard {
    last: Option<(u64, Instant)>,
    /// Sum of forward jumps seen, in µs.
    jumped_us: u64,
}

/// Wall-clock drift between two samples that is not called a jump (NTP slews at most
/// 500 ppm; a sample is taken at least every few seconds while records are read).
const SLACK_US: u64 = 1_000_000;

impl JumpGuard {
    /// The wall clock `wall_us` (µs since the epoch) seen at `mono`, with every forward jump
    /// seen so far taken out: the "now" against which an age cannot grow by a jump.
    pub fn now_us(&mut self, wall_us: u64, mono: Instant) -> u64 {
        if let Some((last_wall, last_mono)) = self.last {
            let mono_us = mono.saturating_duration_since(last_mono).as_micros() as u64;
            let wall_delta = wall_us.saturating_sub(last_wall);
            if wall_delta > mono_us + SLACK_US {
                self.jumped_us += wall_delta - mono_us;
            }
        }
        self.last = Some((wall_us, mono));
        wall_us.saturating_sub(self.jumped_us)
    }
}

static QUEUE_CLOCK: Mutex<Option<JumpGuard>> = Mutex::new(None);

/// "Now" for `queue.max_age`, in µs since the epoch: the wall clock with the forward jumps
/// this process saw taken out. Not gated on [`synced`]: records written before a jump are
/// judged by the clock they were written with, so `max_age` keeps working on boards without
/// timesyncd, and the jump at NTP sync ages nothing.
pub fn queue_now_us() -> u64 {
    let wall = crate::clock::unix_micros(SystemTime::now());
    let mut g = QUEUE_CLOCK.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(JumpGuard::default)
        .now_us(wall, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh guard fed these (wall clock µs, seconds on the monotonic clock) samples in turn
    /// gives each wall clock reading back unchanged.
    fn assert_left_alone(samples: &[(u64, u64)]) {
        let t0 = Instant::now();
        let mut g = JumpGuard::default();
        for &(wall, secs) in samples {
            let at = t0 + Duration::from_secs(secs);
            assert_eq!(g.now_us(wall, at), wall, "at {secs} s");
        }
    }

    #[test]
    fn a_steady_clock_is_left_as_it_is() {
        // The third sample drifted within the slack: no jump.
        assert_left_alone(&[(1_000_000_000, 0), (1_005_000_000, 5), (1_010_500_000, 10)]);
    }

    #[test]
    fn a_forward_jump_is_taken_out_so_ages_do_not_grow_by_it() {
        let t0 = Instant::now();
        let mut g = JumpGuard::default();
        let boot = 1_600_000_000_000_000; // fake-hwclock's saved time
        assert_eq!(g.now_us(boot, t0), boot);
        // NTP: two days later on the wall, two seconds later on the monotonic clock.
        let two_days = 2 * 86_400 * 1_000_000;
        let after = g.now_us(boot + two_days + 2_000_000, t0 + Duration::from_secs(2));
        assert_eq!(after, boot + 2_000_000);
        // Later samples keep the correction; real time keeps counting.
        let later = g.now_us(boot + two_days + 62_000_000, t0 + Duration::from_secs(62));
        assert_eq!(later, boot + 62_000_000);
    }

    #[test]
    fn a_step_back_is_not_corrected() {
        assert_left_alone(&[(5_000_000_000, 0), (4_000_000_000, 1)]);
    }

    #[test]
    fn stats_and_healthz_say_whether_the_clock_is_synchronised() {
        let snap = crate::stats::Stats::default().snapshot(None);
        let want = Path::new(SYNCED_MARKER).exists();
        assert_eq!(snap["clock_synced"], want);
        assert_eq!(crate::http::health(&snap, 1).1["clock_synced"], want);
        let mut flipped = snap.clone();
        flipped["clock_synced"] = (!want).into();
        assert_eq!(crate::http::health(&flipped, 1).1["clock_synced"], !want);
    }
}
