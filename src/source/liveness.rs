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
    use Step::*;

    const PING: Duration = Duration::from_secs(20);
    const PONG: Duration = Duration::from_secs(5);

    /// One step of a script; times in seconds since the connection came up.
    enum Step {
        /// `poll(at, bytes_read)` answers this.
        At(u64, u64, Due),
        /// The next deadline is then.
        Next(u64),
        Message,
    }

    fn script(pong_timeout: Duration, steps: &[Step]) {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, PING, pong_timeout);
        for (i, step) in steps.iter().enumerate() {
            match *step {
                At(t, bytes, want) => {
                    let got = l.poll(t0 + Duration::from_secs(t), bytes);
                    assert_eq!(got, want, "step {i}: poll at {t}s, {bytes} bytes");
                }
                Next(t) => assert_eq!(l.deadline(), t0 + Duration::from_secs(t), "step {i}"),
                Message => l.on_message(),
            }
        }
    }

    #[test]
    fn silence_after_a_ping_is_overdue_at_pong_timeout_and_not_before() {
        let steps = [
            Next(20),
            At(19, 0, Due::Idle),
            At(20, 0, Due::Ping),
            Next(25),
        ];
        script(PONG, &steps);
        script(
            PONG,
            &[
                At(20, 0, Due::Ping),
                At(24, 0, Due::Idle),
                At(25, 0, Due::PongOverdue),
            ],
        );
    }

    /// The next ping is one interval after the last, whenever the answer came.
    #[test]
    fn a_message_after_the_ping_keeps_the_connection_and_the_ping_rhythm() {
        let steps = [
            At(20, 100, Due::Ping),
            Message,
            Next(40),
            At(39, 100, Due::Idle),
        ];
        script(PONG, &steps);
        script(
            PONG,
            &[At(20, 100, Due::Ping), Message, At(40, 100, Due::Ping)],
        );
    }

    /// An oversize frame being skipped yields no message for a long time, but its bytes
    /// prove the peer alive; silence after the next ping still ends it.
    #[test]
    fn bytes_without_a_message_count_as_life() {
        script(
            PONG,
            &[
                At(20, 10, Due::Ping),
                At(25, 11, Due::Idle),
                Next(40),
                At(40, 11, Due::Ping),
                At(45, 11, Due::PongOverdue),
            ],
        );
    }

    /// The runtime woke late (a loaded Pi): one ping, and the pong timeout counts from when
    /// it went out; no second ping while it is unanswered.
    #[test]
    fn no_second_ping_while_one_is_unanswered_and_a_late_wakeup_pings_once() {
        script(
            Duration::from_secs(60),
            &[
                At(50, 0, Due::Ping),
                At(70, 0, Due::Idle),
                Next(110),
                Message,
                Next(70),
                At(70, 0, Due::Ping),
            ],
        );
    }
}
