//! Capped exponential backoff with full jitter (AWS architecture blog's "full jitter"): the
//! delay is uniform in [0, min(cap, base * 2^n)], which spreads a fleet of relays reconnecting
//! after a shared outage instead of having them stampede in lockstep.

use std::time::Duration;

pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            ^ (u64::from(std::process::id()) << 32);
        Backoff {
            base,
            cap,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The ceiling of the next delay (without jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceil = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*: plenty for jitter, no crate needed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        // Never zero: a tight reconnect loop against a dead host helps nobody.
        ceil.mul_f64(frac).max(self.base / 4)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut seen = Vec::new();
        for _ in 0..30 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(
                d <= c && d >= Duration::from_millis(25),
                "{d:?} vs ceiling {c:?}"
            );
            seen.push(d);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(5));
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 20, "jitter should spread delays");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
