//! The trivially correct queue the real one is checked against, and the record of which
//! senders were told "safe".

use super::*;

/// Seqs whose sender was answered "safe", in the order they were answered.
#[derive(Default)]
pub(super) struct Told(pub(super) std::sync::Mutex<Vec<u64>>);

impl super::writer::OnOutcome for Told {
    fn on_outcome(&self, tag: u64, outcome: Option<u64>) {
        if outcome.is_some() {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(tag);
        }
    }
}

/// The trivially correct queue.
#[derive(Default)]
pub(super) struct Model {
    /// Durable and unacknowledged: must be delivered.
    pub(super) present: BTreeMap<u64, Vec<u8>>,
    /// Acknowledged: may come back after a restart (duplicates), never required.
    pub(super) acked: BTreeMap<u64, Vec<u8>>,
    /// Acknowledged and not brought back by a reopen (their segment was deleted): a power cut
    /// that undoes the unlink may still bring them back, but no reopen must.
    pub(super) acked_gone: BTreeMap<u64, Vec<u8>>,
    /// Told "failed" (their fsync failed or never ran), then delivered all the same: kept
    /// like any other record, but a power cut before the next start may take them.
    pub(super) fragile: std::collections::BTreeSet<u64>,
    /// Next sequence number a read may return.
    pub(super) cursor: u64,
    /// Read and not yet acknowledged, in read order.
    pub(super) outstanding: Vec<u64>,
    /// Appended but never committed before a crash: they survive only if a segment roll
    /// happened to write them.
    pub(super) maybe: BTreeMap<u64, Vec<u8>>,
    /// Makes every payload unique.
    serial: u64,
    /// Highest seq ever handed out by `append` (durable or not): no later one may be lower.
    pub(super) issued_max: u64,
}

impl Model {
    pub(super) fn payload(&mut self, len: usize) -> Vec<u8> {
        self.serial += 1;
        let mut p = format!("p{}-", self.serial).into_bytes();
        p.resize(len.max(p.len()).min(40), b'x');
        p
    }

    /// Records below `first` are gone (dropped segments): they may come back after a crash
    /// if the ack position was not persisted, like acknowledged ones.
    pub(super) fn dropped_below(&mut self, first: u64) {
        let keep = self.present.split_off(&first);
        let gone = std::mem::replace(&mut self.present, keep);
        self.outstanding.retain(|&s| s >= first);
        self.acked.extend(gone);
        let keep = self.maybe.split_off(&first);
        self.maybe = keep;
    }

    /// A failed write that the queue cut back hands its records' seqs out again (none of
    /// them was written): they are no longer issued, and not "maybe" either.
    pub(super) fn rolled_back(&mut self, next_seq: u64, added: &mut Vec<(u64, Vec<u8>)>) {
        if next_seq <= self.issued_max {
            self.issued_max = next_seq - 1;
            added.retain(|(s, _)| *s < next_seq);
        }
    }

    /// [`rolled_back`](Model::rolled_back) for records the model holds as "maybe" (buffered,
    /// never reported durable): those at or above `next_seq` were never written.
    pub(super) fn rolled_back_maybe(&mut self, next_seq: u64) {
        self.rolled_back(next_seq, &mut Vec::new());
        self.maybe.retain(|s, _| *s < next_seq);
    }

    /// The power went: records delivered although told "failed" may be gone with it.
    pub(super) fn power_cut(&mut self) {
        for seq in std::mem::take(&mut self.fragile) {
            if let Some(p) = self.present.remove(&seq) {
                self.maybe.insert(seq, p);
            }
        }
    }

    pub(super) fn issued(&mut self, seq: u64) -> Result<(), TestCaseError> {
        prop_assert!(
            seq > self.issued_max,
            "seq {seq} issued again (highest so far {})",
            self.issued_max
        );
        self.issued_max = seq;
        Ok(())
    }
}
