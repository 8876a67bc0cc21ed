//! When to ping and when silence means the connection is dead: a pure state machine (the
//! caller passes the time and the bytes read so far; no socket, no clock, no timer).
//!
//! A ping goes out every `ping_interval`. After one, the next deadline is `pong_timeout` later:
//! if nothing at all arrived by then (no message, not even bytes of a frame still streaming
//! in, like an oversize one being skipped), the connection is presumed dead; half-open TCP
//! after a Wi-Fi drop never reports an error on its own. While a pong is awaited no further
//! ping is sent.

use std::time::Duration;

use tokio::time::Instant;

/// What is due at the deadline the caller slept until.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a ping now (a send stuck longer than `pong_timeout` counts as dead too).
    Ping,
    /// Nothing arrived within `pong_timeout` of the last ping.
    PongOverdue,
    /// Nothing to do yet: sleep until [`Liveness::deadline`] again.
    Idle,
}

/// The liveness of one connection.
#[derive(Debug)]
pub struct Liveness {
    ping_interval: Duration,
    pong_timeout: Duration,
    next_ping: Instant,
    /// A ping is out: when its answer is overdue, and the bytes read when it was sent.
    awaiting: Option<(Instant, u64)>,
}

impl Liveness {
    /// A connection that came up at `now`: the first ping is one `ping_interval` later.
    pub fn new(now: Instant, ping_interval: Duration, pong_timeout: Duration) -> Liveness {
        Liveness {
            ping_interval,
            pong_timeout,
            next_ping: now + ping_interval,
            awaiting: None,
        }
    }

    /// When [`Liveness::poll`] has something to decide next.
    pub fn deadline(&self) -> Instant {
        match self.awaiting {
            Some((overdue, _)) => overdue,
            None => self.next_ping,
        }
    }

    /// A message (of any kind) arrived: the path is alive.
    pub fn on_message(&mut self) {
        self.awaiting = None;
    }

    /// What is due at `now`, `bytes_read` being every byte read from the peer so far.
    pub fn poll(&mut self, now: Instant, bytes_read: u64) -> Due {
        match self.awaiting {
            Some((overdue, _)) if now < overdue => Due::Idle,
            Some((_, at_ping)) if bytes_read == at_ping => Due::PongOverdue,
            Some(_) => {
                // Bytes arrived though no message came out of them: alive.
                self.awaiting = None;
                Due::Idle
            }
            None if now < self.next_ping => Due::Idle,
            None => {
                self.awaiting = Some((now + self.pong_timeout, bytes_read));
                self.next_ping = now + self.ping_interval;
                Due::Ping
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: Duration = Duration::from_secs(20);
    const PONG: Duration = Duration::from_secs(5);

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn silence_after_a_ping_is_overdue_at_pong_timeout_and_not_before() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, PING, PONG);
        assert_eq!(l.deadline(), t0 + PING);
        assert_eq!(l.poll(t0 + s(19), 0), Due::Idle);
        assert_eq!(l.poll(t0 + PING, 0), Due::Ping);
        assert_eq!(l.deadline(), t0 + PING + PONG);
        assert_eq!(l.poll(t0 + s(24), 0), Due::Idle);
        assert_eq!(l.poll(t0 + s(25), 0), Due::PongOverdue);
    }

    #[test]
    fn a_message_after_the_ping_keeps_the_connection_and_the_ping_rhythm() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, PING, PONG);
        assert_eq!(l.poll(t0 + PING, 100), Due::Ping);
        l.on_message();
        assert_eq!(
            l.deadline(),
            t0 + s(40),
            "the next ping, one interval after the last"
        );
        assert_eq!(l.poll(t0 + s(39), 100), Due::Idle);
        assert_eq!(l.poll(t0 + s(40), 100), Due::Ping);
    }

    /// An oversize frame being skipped yields no message for a long time, but its bytes
    /// prove the peer alive.
    #[test]
    fn bytes_without_a_message_count_as_life() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, PING, PONG);
        assert_eq!(l.poll(t0 + PING, 10), Due::Ping);
        assert_eq!(l.poll(t0 + s(25), 11), Due::Idle);
        assert_eq!(l.deadline(), t0 + s(40));
        assert_eq!(l.poll(t0 + s(40), 11), Due::Ping);
        assert_eq!(l.poll(t0 + s(45), 11), Due::PongOverdue);
    }

    #[test]
    fn no_second_ping_while_one_is_unanswered_and_a_late_wakeup_pings_once() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, PING, Duration::from_secs(60));
        // The runtime woke late (a loaded Pi): one ping, counted from when it went out.
        assert_eq!(l.poll(t0 + s(50), 0), Due::Ping);
        assert_eq!(l.poll(t0 + s(70), 0), Due::Idle, "awaiting the pong");
        assert_eq!(l.deadline(), t0 + s(110));
        l.on_message();
        assert_eq!(l.deadline(), t0 + s(70));
        assert_eq!(l.poll(t0 + s(70), 0), Due::Ping);
    }
}
