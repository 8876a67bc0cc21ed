//! Spots another client using our client id: the broker allows one session per id, so two
//! relays sharing one (cards cloned from one image with an explicit or hostname-only
//! `client_id`) take turns kicking each other off right after their CONNACK. MQTT 3.1.1 says
//! nothing about why a connection closed (the log only shows "connection closed by peer"), so
//! the pattern is the evidence: connections that succeed and are then closed soon after,
//! several times in a row. Pure: the session reports each ending with its duration.

use std::time::Duration;

/// Losses in a row, each soon after its CONNACK, before the likely cause is named.
pub const TAKEOVER_STREAK: u32 = 3;
/// A connection closed within this long after its CONNACK counts as "right after". A
/// swapping pair lives about one reconnect backoff each, which is at most `backoff_max`.
pub fn short_session(backoff_max: Duration) -> Duration {
    backoff_max.max(Duration::from_secs(10)) + Duration::from_secs(5)
}

#[derive(Debug, Default)]
pub struct TakeoverWatch {
    streak: u32,
}

impl TakeoverWatch {
    /// A connection that had its CONNACK ended after `lived`; `suspect_packet` is whether one
    /// of our own packets is suspected of it (then it is no evidence of a twin);
    /// `taken_over` whether the broker said so (MQTT 5 DISCONNECT 0x8E). Returns the log line
    /// naming the likely cause, once per streak (and every 20 losses while it lasts).
    pub fn lost(
        &mut self,
        lived: Duration,
        short: Duration,
        suspect_packet: bool,
        taken_over: bool,
        client_id: &str,
    ) -> Option<String> {
        if taken_over {
            self.streak += 1;
            return (self.streak == 1 || self.streak % 20 == 0).then(|| {
                format!(
                    "mqtt: the broker closed this session because another client connected with \
                     the same client_id {client_id:?} (session taken over); give each relay its \
                     own mqtt.client_id (cloned cards: see README, \"Cloned cards\")"
                )
            });
        }
        if suspect_packet || lived >= short {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        (self.streak == TAKEOVER_STREAK || (self.streak > TAKEOVER_STREAK && self.streak % 20 == 0))
            .then(|| {
                format!(
                    "mqtt: the broker closed the session right after CONNACK {} times in a row: \
                     most likely another client uses the same client_id {client_id:?} (two \
                     relays from one cloned card?); give each relay its own mqtt.client_id \
                     (see README, \"Cloned cards\")",
                    self.streak
                )
            })
    }

    /// A connection attempt failed, or a session lived long: not a swapping twin.
    pub fn clear(&mut self) {
        self.streak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(15);

    #[test]
    fn three_short_sessions_in_a_row_name_a_duplicate_client_id() {
        let mut w = TakeoverWatch::default();
        let s = Duration::from_secs(2);
        assert_eq!(w.lost(s, SHORT, false, false, "id"), None);
        assert_eq!(w.lost(s, SHORT, false, false, "id"), None);
        let line = w.lost(s, SHORT, false, false, "id").expect("named");
        assert!(line.contains("same client_id \"id\""), "{line}");
        // Not repeated on every loss.
        assert_eq!(w.lost(s, SHORT, false, false, "id"), None);
    }

    #[test]
    fn broker_restarts_long_sessions_and_poison_packets_are_not_twins() {
        let mut w = TakeoverWatch::default();
        let s = Duration::from_secs(2);
        for _ in 0..10 {
            assert_eq!(w.lost(s, SHORT, false, false, "id"), None);
            assert_eq!(w.lost(s, SHORT, true, false, "id"), None);
            assert_eq!(w.lost(s, SHORT, false, false, "id"), None);
            w.clear();
            assert_eq!(
                w.lost(Duration::from_secs(60), SHORT, false, false, "id"),
                None
            );
        }
    }

    #[test]
    fn an_mqtt5_session_taken_over_is_named_at_once() {
        let mut w = TakeoverWatch::default();
        let line = w
            .lost(Duration::from_secs(100), SHORT, false, true, "x")
            .expect("named");
        assert!(line.contains("session taken over"), "{line}");
    }
}
