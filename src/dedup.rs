//! Cross-path deduplication: the same alert arriving over the WebSocket and the webhook, or a
//! webhook retried, is relayed once.
//!
//! Owns: the dedup key (VideoDB documents `event_id` + `timestamp` as the identity of one
//! alert occurrence) and a fixed-memory window of the most recent keys with the state of the
//! alert each key first admitted (queued, durable with its seq, or failed). Never does: I/O,
//! clocks, waiting; [`crate::ingest`] drives it.
//!
//! Design constraints:
//! - Bounded memory whatever the traffic: at most [`WINDOW`] keys, oldest evicted, in tables
//!   reserved for the whole window up front (so admitting never allocates); their pages are
//!   touched as keys arrive, not at start.
//!   A key is a 64-bit keyed SipHash of (`event_id`, `timestamp`), so memory does not grow with
//!   hostile field lengths and nobody outside the process can craft colliding keys.
//! - Alerts without an `event_id` or without a `timestamp` are never deduplicated: `event_id`
//!   names the *event* (a rule), every occurrence of it shares the id, so the id alone would
//!   swallow distinct alerts; without an id there is nothing stable to compare. One exception:
//!   VideoDB's real-time shape (`event_label` + `timestamp` + `text`, no `event_id`) is keyed
//!   on label, instant and text ([`KeyHasher::key`]).
//! - A failed append (queue full with `drop_newest`, disk error) is remembered as failed, so
//!   the next copy (a webhook retry) is admitted as new rather than acknowledged as a duplicate.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use crate::alert::Alert;

/// Keys remembered. At VideoDB's alert rates (a few per minute per stream, bursts of tens) this
/// covers hours, far longer than webhook retries and socket/webhook skew (seconds to minutes);
/// a full window holds about 170 KiB (a 136 KiB table of 8192 slots, at most half full, and the
/// 32 KiB admission order).
pub const WINDOW: usize = 4096;

/// The 64-bit identity of one alert occurrence.
pub type Key = u64;

/// What the window knows about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Admitted; its append has not been answered yet.
    Pending,
    /// Durable in the queue under this seq.
    Durable(u64),
    /// Its append failed; the next copy is admitted as new.
    Failed,
}

/// The outcome of [`Window::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// First sighting (or the earlier copy failed): relay it.
    New,
    /// Seen before: do not relay; the first copy is in this state.
    Duplicate(State),
}

// Stored states: 0 = pending, u64::MAX = failed, anything else = the durable seq (queue
// sequence numbers start at 1 and never reach u64::MAX).
const PENDING: u64 = 0;
const FAILED: u64 = u64::MAX;

fn decode(v: u64) -> State {
    match v {
        PENDING => State::Pending,
        FAILED => State::Failed,
        seq => State::Durable(seq),
    }
}

/// Computes dedup keys. The hasher is seeded randomly once per process.
#[derive(Clone, Default)]
pub struct KeyHasher(RandomState);

impl KeyHasher {
    /// The key of `alert`, or `None` when it lacks an `event_id` or a `timestamp` (never
    /// deduplicated). A timestamp that parses is compared as an instant (so `Z` and `+00:00`
    /// agree); one that does not is compared as its raw JSON text.
    pub fn key(&self, alert: &Alert) -> Option<Key> {
        let ts = alert.data.get("timestamp").filter(|v| !v.is_null())?;
        let Some(event_id) = alert.event_id.as_deref() else {
            return self.label_key(alert, ts);
        };
        Some(match alert.timestamp {
            Some(t) => self
                .0
                .hash_one((event_id, 0u8, crate::clock::unix_micros(t))),
            None => self.0.hash_one((event_id, 1u8, ts.to_string())),
        })
    }
}

impl KeyHasher {
    /// VideoDB's real-time alert shape, `{"event_label", "timestamp": <ms>, "text"}` with no
    /// `event_id`: one occurrence is its label at its instant, with its `text` (the model's
    /// description, identical in the socket and webhook copies) so that two streams whose
    /// event shares a label and fires in the same millisecond are not merged. Alerts without an
    /// `event_id` in any other shape stay undeduplicated.
    fn label_key(&self, alert: &Alert, ts: &serde_json::Value) -> Option<Key> {
        if alert.data.contains_key("label") || !alert.data.contains_key("event_label") {
            return None;
        }
        let text = alert.data.get("text").and_then(serde_json::Value::as_str);
        let label = alert.label.as_str();
        Some(match alert.timestamp {
            Some(t) => self
                .0
                .hash_one((label, 2u8, crate::clock::unix_micros(t), text)),
            None => self.0.hash_one((label, 3u8, ts.to_string(), text)),
        })
    }
}

/// The fields `alert` lacks to have a dedup key ([`KeyHasher::key`] is `None` exactly when
/// this is not empty): what a webhook, which must be deduplicated, answers 400 with.
pub fn missing_key_fields(alert: &Alert) -> Vec<&'static str> {
    let mut missing = Vec::new();
    // VideoDB's real-time shape is keyed by its label instead (`KeyHasher::label_key`).
    let by_label = !alert.data.contains_key("label") && alert.data.contains_key("event_label");
    if alert.event_id.is_none() && !by_label {
        missing.push("event_id");
    }
    if alert
        .data
        .get("timestamp")
        .is_none_or(serde_json::Value::is_null)
    {
        missing.push("timestamp");
    }
    missing
}

/// A [`Key`] is already a keyed SipHash: the window's table uses it as its own hash.
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    /// Not reached for a `u64` key; FNV-1a, so it is a hash all the same.
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The window of recent keys, in bounded memory reserved at construction. (It was two
/// `heapless` containers inline, 256 KiB: built on the stack and copied whole into the heap,
/// they left 256 KiB of the main thread's stack and 256 KiB of heap resident before the first
/// alert.)
pub struct Window {
    states: HashMap<Key, u64, BuildHasherDefault<KeyIsHash>>,
    /// Admission order, for eviction. Holds each key in `states` exactly once.
    order: VecDeque<Key>,
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

impl Window {
    pub fn new() -> Window {
        Window {
            states: HashMap::with_capacity_and_hasher(WINDOW, BuildHasherDefault::default()),
            order: VecDeque::with_capacity(WINDOW),
        }
    }

    /// Records `key` as pending unless it is already known (and not failed).
    pub fn admit(&mut self, key: Key) -> Admit {
        if let Some(v) = self.states.get_mut(&key) {
            if *v != FAILED {
                return Admit::Duplicate(decode(*v));
            }
            *v = PENDING;
            return Admit::New;
        }
        if self.order.len() >= WINDOW {
            if let Some(oldest) = self.order.pop_front() {
                self.states.remove(&oldest);
            }
        }
        // Both stay within what was reserved: `order` lost one entry above, and `states` holds
        // exactly the keys in `order`.
        self.order.push_back(key);
        self.states.insert(key, PENDING);
        Admit::New
    }

    /// Records the answer to the append of `key`'s first copy: its seq, or `None` on failure.
    /// A key evicted meanwhile stays forgotten.
    pub fn settle(&mut self, key: Key, seq: Option<u64>) {
        if let Some(v) = self.states.get_mut(&key) {
            *v = match seq {
                Some(s) if s != PENDING && s != FAILED => s,
                _ => FAILED,
            };
        }
    }

    pub fn state(&self, key: Key) -> Option<State> {
        self.states.get(&key).copied().map(decode)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The alert an `alert`-channel envelope carrying these `data` fields (a JSON object) gives:
/// the tests' alerts, here and in `ingest`.
#[cfg(test)]
pub(crate) fn test_alert(data: serde_json::Value) -> Alert {
    let serde_json::Value::Object(data) = data else {
        panic!("alert data must be a JSON object: {data}")
    };
    Alert::from_envelope(crate::alert::Envelope {
        channel: "alert".into(),
        rtstream_id: None,
        rtstream_name: None,
        data,
    })
    .expect("alert")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_event_and_timestamp_is_one_key_whatever_else_differs() {
        let h = KeyHasher::default();
        let a = test_alert(
            json!({"event_id": "ev1", "label": "x", "timestamp": "2026-01-01T00:00:00Z", "confidence": 0.9}),
        );
        let b = test_alert(
            json!({"event_id": "ev1", "label": "x", "timestamp": "2026-01-01T00:00:00+00:00", "extra": 1}),
        );
        assert_eq!(h.key(&a), h.key(&b));
        assert!(h.key(&a).is_some());
    }

    #[test]
    fn another_occurrence_of_the_same_event_is_a_new_key() {
        let h = KeyHasher::default();
        let a = test_alert(
            json!({"event_id": "ev1", "label": "x", "timestamp": "2026-01-01T00:00:00Z"}),
        );
        let b = test_alert(
            json!({"event_id": "ev1", "label": "x", "timestamp": "2026-01-01T00:00:05Z"}),
        );
        let c = test_alert(
            json!({"event_id": "ev2", "label": "x", "timestamp": "2026-01-01T00:00:00Z"}),
        );
        assert_ne!(h.key(&a), h.key(&b));
        assert_ne!(h.key(&a), h.key(&c));
    }

    #[test]
    fn alerts_without_event_id_or_timestamp_are_never_deduplicated() {
        let h = KeyHasher::default();
        assert_eq!(
            h.key(&test_alert(
                json!({"label": "x", "timestamp": "2026-01-01T00:00:00Z"})
            )),
            None
        );
        assert_eq!(
            h.key(&test_alert(json!({"label": "x", "event_id": "ev1"}))),
            None
        );
        assert_eq!(
            h.key(&test_alert(
                json!({"label": "x", "event_id": "ev1", "timestamp": null})
            )),
            None
        );
    }

    #[test]
    fn missing_fields_are_named_exactly_when_there_is_no_key() {
        let h = KeyHasher::default();
        let cases = [
            (json!({"label": "x"}), vec!["event_id", "timestamp"]),
            (json!({"label": "x", "event_id": "e"}), vec!["timestamp"]),
            (json!({"label": "x", "timestamp": 5}), vec!["event_id"]),
            (
                json!({"label": "x", "event_id": 7, "timestamp": null}),
                vec!["timestamp"],
            ),
            (
                json!({"label": "x", "event_id": "e", "timestamp": "?"}),
                vec![],
            ),
        ];
        for (data, want) in cases {
            let a = test_alert(data.clone());
            assert_eq!(missing_key_fields(&a), want, "{data}");
            assert_eq!(h.key(&a).is_none(), !want.is_empty(), "{data}");
        }
        let realtime = test_alert(json!({"event_label": "x", "timestamp": 1, "text": "t"}));
        assert!(missing_key_fields(&realtime).is_empty() && h.key(&realtime).is_some());
    }

    #[test]
    fn realtime_shape_is_keyed_on_label_instant_and_text() {
        let h = KeyHasher::default();
        let k = |v| h.key(&test_alert(v));
        let one = json!({"event_label": "intrusion", "timestamp": 1_767_225_600_000u64, "text": "a person"});
        let key = k(one.clone()).expect("the real-time shape has a key");
        // The same instant written another way (ISO text, as a webhook might) is the same alert.
        let mut iso = one.clone();
        iso["timestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(k(iso), Some(key));
        // Another millisecond, another text, another label: another occurrence.
        let mut later = one.clone();
        later["timestamp"] = json!(1_767_225_600_001u64);
        assert_ne!(k(later), Some(key));
        let mut other_text = one.clone();
        other_text["text"] = json!("a car");
        assert_ne!(k(other_text), Some(key));
        let mut other_label = one.clone();
        other_label["event_label"] = json!("fire");
        assert_ne!(k(other_label), Some(key));
        // Without a timestamp, or in the `label` shape without event_id: never deduplicated.
        assert_eq!(
            k(json!({"event_label": "intrusion", "text": "a person"})),
            None
        );
        assert_eq!(
            k(json!({"label": "intrusion", "timestamp": 1_767_225_600_000u64})),
            None
        );
    }

    #[test]
    fn unparseable_timestamps_compare_as_text() {
        let h = KeyHasher::default();
        let a = test_alert(json!({"event_id": "e", "label": "x", "timestamp": "yesterday"}));
        let b = test_alert(json!({"event_id": "e", "label": "x", "timestamp": "yesterday"}));
        let c = test_alert(json!({"event_id": "e", "label": "x", "timestamp": "today"}));
        assert_eq!(h.key(&a), h.key(&b));
        assert_ne!(h.key(&a), h.key(&c));
    }

    #[test]
    fn second_copy_is_a_duplicate_carrying_the_first_copys_state() {
        let mut w = Window::new();
        assert_eq!(w.admit(7), Admit::New);
        assert_eq!(w.admit(7), Admit::Duplicate(State::Pending));
        w.settle(7, Some(42));
        assert_eq!(w.admit(7), Admit::Duplicate(State::Durable(42)));
    }

    #[test]
    fn a_failed_first_copy_lets_the_next_copy_through() {
        let mut w = Window::new();
        assert_eq!(w.admit(7), Admit::New);
        w.settle(7, None);
        assert_eq!(w.state(7), Some(State::Failed));
        assert_eq!(w.admit(7), Admit::New);
        assert_eq!(w.admit(7), Admit::Duplicate(State::Pending));
        assert_eq!(w.len(), 1, "a re-admitted key is not stored twice");
    }

    #[test]
    fn window_is_bounded_and_evicts_the_oldest() {
        let mut w = Window::new();
        for k in 0..(WINDOW as u64 + 10) {
            assert_eq!(w.admit(k), Admit::New);
        }
        assert_eq!(w.len(), WINDOW);
        for k in 0..10 {
            assert_eq!(w.state(k), None, "key {k} was evicted");
        }
        assert_eq!(w.admit(10), Admit::Duplicate(State::Pending));
        assert_eq!(w.admit(3), Admit::New, "an evicted key is new again");
    }

    #[test]
    fn the_window_stays_in_the_tables_reserved_at_construction() {
        let mut w = Window::new();
        let reserved = (w.states.capacity(), w.order.capacity());
        assert!(reserved.0 >= WINDOW && reserved.1 >= WINDOW);
        for k in 0..(20 * WINDOW as u64) {
            assert_eq!(w.admit(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)), Admit::New);
        }
        assert_eq!(w.len(), WINDOW);
        assert_eq!((w.states.capacity(), w.order.capacity()), reserved);
    }
}
