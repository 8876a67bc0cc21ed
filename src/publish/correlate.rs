//! Which queue record a broker acknowledgement belongs to, and which record keeps killing the
//! connection. Pure state machines: no I/O, no clock; the session feeds them events in the order
//! rumqttc reports them.
//!
//! rumqttc gives no per-publish completion handle. It does take requests in the order they are
//! sent and reports each as `Outgoing::Publish(pkid)` in that order (a publish that collides
//! with an unacknowledged packet id is held back and reported later, still before any newer
//! request is taken), so a FIFO of what we sent, popped on each `Outgoing::Publish`, tells which
//! record got which packet id.

use std::collections::{HashMap, VecDeque};

/// Maps packet ids to queue sequence numbers for one connection.
#[derive(Debug, Default)]
pub struct Correlator {
    /// Handed to the client, not yet reported as `Outgoing::Publish`: a queue seq, or `None`
    /// for the relay's own messages (status, stats, outputs, command results, discovery).
    unassigned: VecDeque<Option<u64>>,
    /// pkid -> seqs awaiting PUBACK/PUBCOMP, oldest first. More than one only if a pkid were
    /// reused before its acknowledgement (rumqttc prevents that for QoS 1); the oldest is
    /// acknowledged first, as MQTT requires brokers to acknowledge in order per pkid.
    awaiting: HashMap<u16, VecDeque<u64>>,
    /// Records that are acknowledged as soon as they are written (QoS 0).
    at_most_once: bool,
    /// Records (not own messages) in `unassigned` and `awaiting`: asked once per loop turn,
    /// so kept rather than counted.
    in_flight: usize,
}

/// What an event meant for the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do (own message, unknown pkid).
    None,
    /// This record is done: acknowledge it in the queue.
    Done(u64),
}

impl Correlator {
    pub fn new(at_most_once: bool) -> Correlator {
        Correlator {
            at_most_once,
            ..Correlator::default()
        }
    }

    /// A publish was handed to the client: `Some(seq)` for a record, `None` for our own.
    pub fn sent(&mut self, seq: Option<u64>) {
        self.in_flight += usize::from(seq.is_some());
        self.unassigned.push_back(seq);
    }

    /// rumqttc wrote the next publish with packet id `pkid` (0 at QoS 0).
    pub fn written(&mut self, pkid: u16) -> Outcome {
        match self.unassigned.pop_front() {
            Some(Some(seq)) if self.at_most_once => {
                self.in_flight -= 1;
                Outcome::Done(seq)
            }
            Some(Some(seq)) => {
                self.awaiting.entry(pkid).or_default().push_back(seq);
                Outcome::None
            }
            _ => Outcome::None,
        }
    }

    /// The broker acknowledged (or, with MQTT 5, refused) packet id `pkid`.
    pub fn acknowledged(&mut self, pkid: u16) -> Outcome {
        let Some(seqs) = self.awaiting.get_mut(&pkid) else {
            return Outcome::None;
        };
        let seq = seqs.pop_front();
        if seqs.is_empty() {
            self.awaiting.remove(&pkid);
        }
        self.in_flight -= usize::from(seq.is_some());
        seq.map_or(Outcome::None, Outcome::Done)
    }

    /// Records handed to the client and not yet acknowledged: the in-flight window's use.
    pub fn records_in_flight(&self) -> usize {
        debug_assert_eq!(
            self.in_flight,
            self.unassigned.iter().filter(|s| s.is_some()).count()
                + self.awaiting.values().map(VecDeque::len).sum::<usize>()
        );
        self.in_flight
    }

    /// Own messages handed to the client and not yet written: what of ours waits in its
    /// request channel.
    pub fn own_unwritten(&self) -> usize {
        self.unassigned.iter().filter(|s| s.is_none()).count()
    }

    /// The oldest record written to the wire and not yet acknowledged.
    pub fn oldest_written(&self) -> Option<u64> {
        self.awaiting
            .values()
            .filter_map(|s| s.front())
            .min()
            .copied()
    }
}

/// How many connections in a row may die while the suspect record is the only one in flight
/// before it is set aside. Two: after the first loss with nothing acknowledged the record is
/// sent alone ("probing"), so a loss then points at it and not at its neighbours; a second such
/// loss rules out a coincidental broker restart. (MQTT 3.1.1 has no way to refuse a single
/// publish: mosquitto disconnects a client whose packet exceeds `max_packet_size`.)
pub const POISON_STRIKES: u32 = 2;

/// Spots a record that kills every connection it is sent on.
///
/// A connection lost with nothing acknowledged makes its oldest unacknowledged record the
/// suspect; while there is a suspect the window shrinks to one record, so the next connections
/// carry the suspect alone. [`POISON_STRIKES`] such connections lost in a row convict it. Any
/// acknowledgement, or a connection attempt the broker refuses (the broker was away), clears
/// the suspicion.
#[derive(Debug, Default)]
pub struct PoisonWatch {
    suspect: Option<u64>,
    strikes: u32,
}

impl PoisonWatch {
    /// How many records may be in flight on the next connection.
    pub fn window(&self, max_inflight: usize) -> usize {
        if self.suspect.is_some() {
            1
        } else {
            max_inflight
        }
    }

    /// A connection was lost after the CONNACK. `head` is the oldest record written and not
    /// acknowledged; `acked_any` whether the broker acknowledged any record on it. Returns the
    /// record to set aside when it is convicted.
    pub fn lost(&mut self, head: Option<u64>, acked_any: bool) -> Option<u64> {
        let Some(head) = head.filter(|_| !acked_any) else {
            self.clear();
            return None;
        };
        if self.suspect != Some(head) {
            // First suspicion (or the queue moved on): probe this record alone next time.
            self.suspect = Some(head);
            self.strikes = 0;
            return None;
        }
        self.strikes += 1;
        if self.strikes >= POISON_STRIKES {
            self.clear();
            Some(head)
        } else {
            None
        }
    }

    /// A connection attempt failed before the CONNACK: the broker itself is away, which says
    /// nothing against the record.
    pub fn connect_failed(&mut self) {
        self.clear();
    }

    /// Forgets the suspicion: the drop was explained otherwise (a packet above the broker's
    /// size limit, see [`super::limit`]).
    pub fn clear(&mut self) {
        self.suspect = None;
        self.strikes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_puback_acks_exactly_the_record_sent_with_that_pkid() {
        let mut c = Correlator::new(false);
        // status (own), records 10, 11, stats (own), record 12
        c.sent(None);
        c.sent(Some(10));
        c.sent(Some(11));
        c.sent(None);
        c.sent(Some(12));
        assert_eq!(c.records_in_flight(), 3);
        assert_eq!(c.written(1), Outcome::None); // status
        assert_eq!(c.written(2), Outcome::None); // 10
        assert_eq!(c.written(3), Outcome::None); // 11
        assert_eq!(c.written(0), Outcome::None); // stats at QoS 0
        assert_eq!(c.written(4), Outcome::None); // 12
        assert_eq!(c.oldest_written(), Some(10));
        // Out of order acks, an ack for our own status, an unknown and a duplicate ack.
        assert_eq!(c.acknowledged(3), Outcome::Done(11));
        assert_eq!(c.acknowledged(1), Outcome::None);
        assert_eq!(c.acknowledged(9), Outcome::None);
        assert_eq!(c.acknowledged(3), Outcome::None);
        assert_eq!(c.oldest_written(), Some(10));
        assert_eq!(c.acknowledged(4), Outcome::Done(12));
        assert_eq!(c.acknowledged(2), Outcome::Done(10));
        assert_eq!(c.records_in_flight(), 0);
        assert_eq!(c.oldest_written(), None);
    }

    #[test]
    fn pkids_wrap_and_a_collided_publish_keeps_its_place() {
        // max_inflight 2 in rumqttc: pkids cycle 1, 2, 1, 2 ...; a publish that collides with
        // an unacknowledged pkid is reported only after that pkid's PUBACK.
        let mut c = Correlator::new(false);
        for seq in 1..=3 {
            c.sent(Some(seq));
        }
        assert_eq!(c.written(1), Outcome::None); // seq 1
        assert_eq!(c.written(2), Outcome::None); // seq 2
                                                 // seq 3 collides on pkid 1 (AwaitAck): nothing is reported until PUBACK 1.
        assert_eq!(c.acknowledged(1), Outcome::Done(1));
        assert_eq!(c.written(1), Outcome::None); // seq 3, now on pkid 1
        assert_eq!(c.acknowledged(2), Outcome::Done(2));
        assert_eq!(c.acknowledged(1), Outcome::Done(3));
    }

    #[test]
    fn a_long_scripted_run_acks_every_record_once_and_only_after_its_ack() {
        // 10_000 records through a window of 7 pkids with acks in a scrambled order.
        let mut c = Correlator::new(false);
        let window = 7u16;
        let mut next_pkid = 0u16;
        let mut written: VecDeque<(u16, u64)> = VecDeque::new();
        let mut done = Vec::new();
        let mut seq = 0u64;
        let mut rng = 0x2545F4914F6CDD1Du64;
        while done.len() < 10_000 {
            while written.len() < window as usize && seq < 10_000 {
                let pkid = next_pkid % window + 1;
                // rumqttc never hands out a pkid still awaiting its ack: it waits (collision).
                if written.iter().any(|(p, _)| *p == pkid) {
                    break;
                }
                next_pkid = pkid;
                seq += 1;
                c.sent(Some(seq));
                assert_eq!(c.written(pkid), Outcome::None);
                written.push_back((pkid, seq));
                if seq % 5 == 0 {
                    c.sent(None); // interleaved stats at QoS 0
                    assert_eq!(c.written(0), Outcome::None);
                }
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng % written.len() as u64) as usize;
            let Some((pkid, expect)) = written.remove(i) else {
                break;
            };
            assert_eq!(c.acknowledged(pkid), Outcome::Done(expect));
            done.push(expect);
        }
        done.sort_unstable();
        assert_eq!(done, (1..=10_000).collect::<Vec<_>>());
    }

    #[test]
    fn qos0_records_are_done_when_written() {
        let mut c = Correlator::new(true);
        c.sent(Some(5));
        c.sent(None);
        assert_eq!(c.records_in_flight(), 1);
        assert_eq!(c.written(0), Outcome::Done(5));
        assert_eq!(c.written(0), Outcome::None);
        assert_eq!(c.records_in_flight(), 0);
    }

    #[test]
    fn a_record_that_alone_kills_the_connection_twice_is_poison() {
        let mut p = PoisonWatch::default();
        assert_eq!(p.window(64), 64);
        // Lost with a full window, nothing acked: 7 is suspect, and is sent alone next.
        assert_eq!(p.lost(Some(7), false), None);
        assert_eq!(p.window(64), 1);
        assert_eq!(p.lost(Some(7), false), None);
        assert_eq!(p.window(64), 1);
        assert_eq!(p.lost(Some(7), false), Some(7));
        // Counting starts over after a verdict, with the full window.
        assert_eq!(p.window(64), 64);
        assert_eq!(p.lost(Some(8), false), None);
    }

    #[test]
    fn a_suspect_that_gets_acked_alone_is_cleared() {
        // The acks of a window were lost with the connection: the head is only suspect, and is
        // acquitted when it goes through alone.
        let mut p = PoisonWatch::default();
        assert_eq!(p.lost(Some(1), false), None);
        assert_eq!(p.window(64), 1);
        assert_eq!(p.lost(Some(1), true), None);
        assert_eq!(p.window(64), 64);
        assert_eq!(p.lost(Some(2), false), None);
        assert_eq!(p.lost(Some(2), true), None);
        assert_eq!(p.lost(Some(3), false), None);
        assert_eq!(p.lost(Some(3), false), None);
        assert_eq!(p.lost(Some(3), false), Some(3));
    }

    #[test]
    fn broker_restarts_do_not_make_a_record_poison() {
        let mut p = PoisonWatch::default();
        // A refused connect between losses: the broker was away.
        for _ in 0..10 {
            assert_eq!(p.lost(Some(7), false), None);
            p.connect_failed();
            assert_eq!(p.window(64), 64);
        }
        // Acks flowed on the connection: the broker takes our messages.
        for _ in 0..10 {
            assert_eq!(p.lost(Some(7), true), None);
        }
        // The head moved on.
        assert_eq!(p.lost(Some(7), false), None);
        assert_eq!(p.lost(Some(8), false), None);
        assert_eq!(p.lost(Some(8), false), None);
        assert_eq!(p.lost(None, false), None);
        assert_eq!(p.lost(Some(8), false), None);
    }
}
