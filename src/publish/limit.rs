//! The broker's packet size limit, known or learned, and what to do about a packet above it.
//! Pure: no I/O, no clock (the session passes instants in).
//!
//! Where the limit comes from, in order of trust:
//! - `mqtt.max_message_bytes` (payload bytes, configured: the user knows the broker);
//! - with MQTT 5, the CONNACK's Maximum Packet Size;
//! - with MQTT 3.1.1 nothing says it: mosquitto just closes the connection of a client whose
//!   packet exceeds `max_packet_size`. So it is learned: [`Wire`] remembers the size of every
//!   packet written on a connection until a later acknowledgement proves the broker read past
//!   it (the broker reads in order: an ack for packet n means packets before n were taken).
//!   When a connection drops soon after writes, the largest packet written and not proven is
//!   the culprit if the drop was about size at all: the packet that broke the limit is above
//!   it, and the largest unproven one is at least as large. [`SizeWatch`] then acts:
//!   - a record is suspected at the first such drop and set aside at the second (a broker
//!     restart or network blip in between clears the suspicion: the next connect fails, or an
//!     ack proves a packet as large), and the limit is then known to be below its size, so any
//!     later record that large is set aside without being sent;
//!   - an own message (stats, discovery) is not worth a second drop: the budget for own
//!     messages is halved towards the largest proven size at once, and stats are trimmed to it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A drop this long after a packet was written is not blamed on it: mosquitto closes the
/// connection as soon as it reads the oversize header, so the drop follows within a round trip.
pub const BLAME_WINDOW: Duration = Duration::from_secs(10);
/// Unproven packets remembered per connection (a QoS 0 stream is never acknowledged; the
/// oldest are forgotten rather than kept forever).
const WIRE_MEMORY: usize = 512;
/// Own messages are never trimmed below this: a stats object that small says nothing.
const MIN_OWN_BUDGET: usize = 128;

/// Bytes of a PUBLISH packet on the wire: fixed header, topic, packet id at QoS 1/2, MQTT 5
/// properties (`props`, without their length prefix), payload.
pub fn packet_size(topic: usize, payload: usize, qos_acked: bool, props: Option<usize>) -> usize {
    let props = props.map_or(0, |p| varint_len(p) + p);
    let remaining = 2 + topic + if qos_acked { 2 } else { 0 } + props + payload;
    1 + varint_len(remaining) + remaining
}

/// Bytes of MQTT 5 publish properties as client.rs sets them.
pub fn props_size(json: bool, expiry: bool, user: &[(String, String)]) -> usize {
    let mut n = 0;
    if json {
        // payload format indicator (1 + 1), content type (1 + 2 + "application/json")
        n += 2 + 3 + "application/json".len();
    }
    if expiry {
        n += 5;
    }
    n + user
        .iter()
        .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
        .sum::<usize>()
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// What went on the wire on one connection and is not proven taken yet.
#[derive(Debug, Default)]
pub struct Wire {
    /// Handed to the client, not yet reported written: (packet bytes, record seq).
    handed: VecDeque<(usize, Option<u64>)>,
    /// Written, not proven: packet id (0 at QoS 0), bytes, seq, when.
    written: VecDeque<(u16, usize, Option<u64>, Instant)>,
}

impl Wire {
    /// A publish of `size` bytes was handed to the client (`seq` for a record).
    pub fn sent(&mut self, size: usize, seq: Option<u64>) {
        self.handed.push_back((size, seq));
    }

    /// The next handed publish was written with packet id `pkid`.
    pub fn written(&mut self, pkid: u16, now: Instant) {
        if let Some((size, seq)) = self.handed.pop_front() {
            if self.written.len() == WIRE_MEMORY {
                self.written.pop_front();
            }
            self.written.push_back((pkid, size, seq, now));
        }
    }

    /// The broker acknowledged `pkid`: it read every packet up to that one. Returns the
    /// largest size so proven.
    pub fn acknowledged(&mut self, pkid: u16) -> Option<usize> {
        if pkid == 0 {
            return None;
        }
        let pos = self.written.iter().position(|w| w.0 == pkid)?;
        self.written.drain(..=pos).map(|w| w.1).max()
    }

    /// The largest packet written within [`BLAME_WINDOW`] before `now` and not proven, if it
    /// is larger than `accepted`: the packet to blame for a drop.
    pub fn culprit(&self, accepted: usize, now: Instant) -> Option<(usize, Option<u64>)> {
        self.written
            .iter()
            .filter(|w| w.1 > accepted && now.saturating_duration_since(w.3) <= BLAME_WINDOW)
            .max_by_key(|w| w.1)
            .map(|w| (w.1, w.2))
    }
}

/// What a connection drop meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No packet to blame: the drop was not about size.
    NotSize,
    /// This record is suspected; it goes again on the next connection.
    Suspect(u64),
    /// This record broke the limit twice: set it aside.
    SetAside { seq: u64, size: usize },
    /// An own message broke the limit: own messages now fit in this many bytes.
    OwnBudget(usize),
}

/// The learned limit, kept across connections.
#[derive(Debug, Default)]
pub struct SizeWatch {
    /// Largest packet the broker is known to have taken.
    accepted: usize,
    /// Smallest record packet convicted: nothing this large is sent again.
    refused: Option<usize>,
    /// Largest own packet to send.
    own_budget: Option<usize>,
    /// The record blamed for the last drop, and its size.
    suspect: Option<(u64, usize)>,
}

impl SizeWatch {
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    /// The broker took a packet this large.
    pub fn proven(&mut self, size: usize) {
        self.accepted = self.accepted.max(size);
        if self.suspect.is_some_and(|(_, s)| s <= self.accepted) {
            self.suspect = None;
        }
    }

    /// Records whose packet is this large or larger are set aside unsent.
    pub fn record_limit(&self) -> Option<usize> {
        self.refused
    }

    /// Own packets must be at most this large.
    pub fn own_limit(&self) -> Option<usize> {
        match (self.refused.map(|r| r - 1), self.own_budget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A connection was lost after its CONNACK; `culprit` is [`Wire::culprit`].
    pub fn lost(&mut self, culprit: Option<(usize, Option<u64>)>) -> Verdict {
        match culprit {
            None => {
                self.suspect = None;
                Verdict::NotSize
            }
            Some((size, None)) => {
                let budget = (self.accepted + size) / 2;
                let budget = budget.max(MIN_OWN_BUDGET).min(size.saturating_sub(1));
                self.own_budget = Some(self.own_budget.map_or(budget, |b| b.min(budget)));
                Verdict::OwnBudget(budget)
            }
            Some((size, Some(seq))) => {
                if self.suspect.is_some_and(|(s, _)| s == seq) {
                    self.suspect = None;
                    self.refused = Some(self.refused.map_or(size, |r| r.min(size)));
                    Verdict::SetAside { seq, size }
                } else {
                    self.suspect = Some((seq, size));
                    Verdict::Suspect(seq)
                }
            }
        }
    }

    /// A connection attempt failed before its CONNACK: the broker was away, the suspect is
    /// not to blame.
    pub fn connect_failed(&mut self) {
        self.suspect = None;
    }
}

/// The stats snapshot as JSON that fits `max` bytes, or `None` when not even a stub does.
/// Trimming drops the nested objects first (per output, source and queue details), then
/// counters that are zero, then the rest from the end, and says so: `"trimmed": true`.
pub fn fit_stats(snapshot: serde_json::Value, max: usize) -> Option<Vec<u8>> {
    let full = snapshot.to_string().into_bytes();
    if full.len() <= max {
        return Some(full);
    }
    let serde_json::Value::Object(mut m) = snapshot else {
        return None;
    };
    m.insert("trimmed".into(), serde_json::Value::Bool(true));
    let fits = |m: &serde_json::Map<String, serde_json::Value>| {
        let v = serde_json::to_vec(m).unwrap_or_default();
        (v.len() <= max && !v.is_empty()).then_some(v)
    };
    for key in ["gpio_outputs", "source", "queue"] {
        m.remove(key);
        if let Some(v) = fits(&m) {
            return Some(v);
        }
    }
    m.retain(|k, v| k == "trimmed" || !(v.as_u64() == Some(0) || v.as_bool() == Some(false)));
    if let Some(v) = fits(&m) {
        return Some(v);
    }
    let keys: Vec<String> = m.keys().filter(|k| *k != "trimmed").cloned().collect();
    for k in keys.iter().rev() {
        m.remove(k);
        if let Some(v) = fits(&m) {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_sizes_match_the_mqtt_encoding() {
        // 3.1.1 QoS 1, topic "a/b" (3), payload 10: 1 + 1 + (2 + 3 + 2 + 10)
        assert_eq!(packet_size(3, 10, true, None), 19);
        assert_eq!(packet_size(3, 10, false, None), 17);
        // Remaining length 128 takes two bytes.
        assert_eq!(packet_size(0, 124, true, None), 1 + 2 + 128);
        // MQTT 5 with empty properties: one byte of property length.
        assert_eq!(packet_size(3, 10, true, Some(0)), 20);
        assert_eq!(
            props_size(true, true, &[("k".into(), "vv".into())]),
            21 + 5 + 8
        );
    }

    #[test]
    fn the_largest_unproven_packet_is_blamed_and_acks_prove_everything_before_them() {
        let t = Instant::now();
        let mut w = Wire::default();
        w.sent(40, None); // status, QoS 1
        w.sent(300, Some(1));
        w.sent(1600, None); // stats, QoS 0
        w.sent(280, Some(2));
        w.written(1, t);
        w.written(2, t);
        w.written(0, t);
        w.written(3, t);
        assert_eq!(w.culprit(0, t), Some((1600, None)));
        assert_eq!(w.acknowledged(2), Some(300));
        assert_eq!(w.culprit(300, t), Some((1600, None)));
        // Record 2's ack proves the stats before it.
        assert_eq!(w.acknowledged(3), Some(1600));
        assert_eq!(w.culprit(0, t), None);
        // Old writes are not blamed.
        w.sent(5000, Some(3));
        w.written(4, t);
        assert_eq!(w.culprit(0, t + BLAME_WINDOW * 2), None);
        assert_eq!(w.culprit(5000, t), None);
        assert_eq!(w.culprit(4999, t), Some((5000, Some(3))));
    }

    #[test]
    fn an_oversize_record_is_set_aside_at_the_second_drop_and_bounds_later_ones() {
        let mut s = SizeWatch::default();
        s.proven(300);
        assert_eq!(s.lost(Some((2500, Some(7)))), Verdict::Suspect(7));
        assert_eq!(
            s.lost(Some((2500, Some(7)))),
            Verdict::SetAside { seq: 7, size: 2500 }
        );
        assert_eq!(s.record_limit(), Some(2500));
        assert_eq!(s.lost(Some((1800, Some(9)))), Verdict::Suspect(9));
        // A drop not about size in between clears the suspicion.
        assert_eq!(s.lost(None), Verdict::NotSize);
        assert_eq!(s.lost(Some((1800, Some(9)))), Verdict::Suspect(9));
        s.connect_failed();
        assert_eq!(s.lost(Some((1800, Some(9)))), Verdict::Suspect(9));
        // Proof that the broker takes 1800 acquits it.
        s.proven(1800);
        assert_eq!(s.lost(Some((2000, Some(9)))), Verdict::Suspect(9));
        assert_eq!(s.record_limit(), Some(2500));
        assert_eq!(s.own_limit(), Some(2499));
    }

    #[test]
    fn an_oversize_own_message_halves_the_own_budget_at_once() {
        let mut s = SizeWatch::default();
        s.proven(300);
        assert_eq!(s.lost(Some((1700, None))), Verdict::OwnBudget(1000));
        assert_eq!(s.own_limit(), Some(1000));
        assert_eq!(s.lost(Some((1000, None))), Verdict::OwnBudget(650));
        assert_eq!(s.own_limit(), Some(650));
        assert_eq!(s.record_limit(), None);
    }

    #[test]
    fn stats_are_trimmed_to_fit_and_never_exceed_the_limit() {
        let snap = serde_json::json!({
            "alerts_received": 12, "mqtt_acked": 0, "broker_connected": true,
            "source": {"a": "x".repeat(300)},
            "queue": {"depth_records": 3, "pad": "y".repeat(500)},
            "gpio_outputs": {"red": {"on": 1}},
        });
        let full = snap.to_string().len();
        assert_eq!(fit_stats(snap.clone(), full).map(|v| v.len()), Some(full));
        for max in [full - 1, 700, 300, 80, 40, 17] {
            let v = fit_stats(snap.clone(), max).expect("fits");
            assert!(v.len() <= max, "{} > {max}", v.len());
            let j: serde_json::Value = serde_json::from_slice(&v).expect("json");
            assert_eq!(j["trimmed"], true);
        }
        let v = fit_stats(snap.clone(), 300).expect("fits");
        let j: serde_json::Value = serde_json::from_slice(&v).expect("json");
        assert_eq!(j["alerts_received"], 12);
        assert_eq!(fit_stats(snap, 10), None);
    }
}
