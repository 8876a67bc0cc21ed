//! Pacing of queue records towards the broker (`mqtt.max_publish_rate`).
//!
//! After an outage the backlog drains as fast as the broker acknowledges, tens of thousands of
//! alerts a second. The broker takes them, but a slow consumer does not: mosquitto drops QoS 1
//! messages for a subscriber more than `max_queued_messages` (1000 by default) behind, so Home
//! Assistant or a Node-RED flow would miss most of a large drain. A rate limit keeps the drain
//! at a pace consumers follow. Live alerts are paced too (they are queue records like any other),
//! but a burst of up to a tenth of a second's worth goes out at once.
//!
//! A token bucket, pure: the time is passed in.

use std::time::Duration;

use tokio::time::Instant;

/// One record's worth of credit. Credit is kept in units of a nanosecond times the rate, so
/// that time converts to credit exactly, whatever the rate.
const RECORD: u128 = 1_000_000_000;

pub struct Pacer {
    /// Records per second.
    rate: u128,
    /// Most credit saved up: the largest burst.
    burst: u128,
    credit: u128,
    at: Instant,
}

impl Pacer {
    /// `rate` records per second (at least 1); bursts of a tenth of a second's worth (at
    /// least 1 record). Starts with a full bucket.
    pub fn new(rate: u32, now: Instant) -> Pacer {
        let rate = u128::from(rate.max(1));
        let burst = (rate / 10).max(1) * RECORD;
        Pacer {
            rate,
            burst,
            credit: burst,
            at: now,
        }
    }

    /// How many records may be sent now.
    pub fn allowance(&mut self, now: Instant) -> usize {
        let dt = now.saturating_duration_since(self.at).as_nanos();
        self.credit = (self.credit + dt.min(u64::MAX as u128) * self.rate).min(self.burst);
        self.at = now;
        (self.credit / RECORD) as usize
    }

    /// Counts `n` records sent.
    pub fn spend(&mut self, n: usize) {
        self.credit = self.credit.saturating_sub(n as u128 * RECORD);
    }

    /// When the next record may be sent, if not now.
    pub fn next_at(&self) -> Option<Instant> {
        let missing = RECORD.checked_sub(self.credit).filter(|&m| m > 0)?;
        let ns = missing.div_ceil(self.rate);
        Some(self.at + Duration::from_nanos(ns as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_allows_a_tenth_of_a_second_then_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100, t0);
        assert_eq!(p.allowance(t0), 10);
        p.spend(10);
        assert_eq!(p.allowance(t0), 0);
        assert_eq!(p.next_at(), Some(t0 + ms(10)));
        assert_eq!(p.allowance(t0 + ms(9)), 0);
        assert_eq!(p.allowance(t0 + ms(10)), 1);
        p.spend(1);
        assert_eq!(p.allowance(t0 + ms(55)), 4);
    }

    #[test]
    fn idle_time_saves_up_no_more_than_one_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100, t0);
        p.spend(10);
        assert_eq!(p.allowance(t0 + Duration::from_secs(3600)), 10);
        assert_eq!(p.next_at(), None);
    }

    #[test]
    fn a_slow_rate_still_sends_one_at_a_time() {
        let t0 = Instant::now();
        let mut p = Pacer::new(2, t0);
        assert_eq!(p.allowance(t0), 1);
        p.spend(1);
        assert_eq!(p.next_at(), Some(t0 + ms(500)));
        assert_eq!(p.allowance(t0 + ms(499)), 0);
        assert_eq!(p.allowance(t0 + ms(500)), 1);
    }

    #[test]
    fn over_a_second_the_rate_holds() {
        // Sending whenever allowed for 1 s: the burst plus one second's worth, no more.
        let t0 = Instant::now();
        let mut p = Pacer::new(1000, t0);
        let mut sent = 0;
        for step in 0..=1000u64 {
            let n = p.allowance(t0 + ms(step));
            p.spend(n);
            sent += n;
        }
        assert!((1099..=1100).contains(&sent), "sent {sent}");
    }
}
