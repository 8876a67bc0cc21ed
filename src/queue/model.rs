//! Model-based test: the queue against a trivially correct in-memory model, under random
//! sequences of append (group commits), read, ack (in and out of order), rewind, clean restart,
//! crash (drop without close, with and without buffered records) and overflow, with segments
//! shrunk to a few records so every sequence crosses segment boundaries.
//!
//! The second property runs the same model through [`FaultFs`]: any operation may fail with
//! ENOSPC, EIO, EACCES or EROFS and later succeed, the disk may fill up, and a power cut drops
//! everything not fsynced (directory changes since the last directory fsync survive only up
//! to a random prefix, file contents only up to what was synced plus a random torn tail). It
//! checks that nothing acknowledged to a sender (fsync done) is lost, that no seq is ever
//! issued twice, that order holds, and that the queue accepts again once the faults stop.
//! [`nth_operation_fails_in_turn`] is the SQLite way: one fixed workload, failing its 1st,
//! 2nd, ... Nth filesystem operation in turn.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::fault_fs::{FaultFs, FaultPlan};
use super::*;
use crate::config::{FsyncPolicy, OnFull, QueueConfig};

const ERRNOS: [i32; 4] = [28, 5, 13, 30]; // ENOSPC, EIO, EACCES, EROFS

#[derive(Debug, Clone)]
enum Op {
    /// `lens.len()` records appended and committed together (one group commit).
    Append(Vec<usize>),
    Read(usize),
    /// Acks one outstanding (read, unacked) record, chosen by index.
    Ack(usize),
    /// Acks every outstanding record, newest first.
    AckAllReversed,
    Rewind,
    Restart,
    Crash,
    /// Buffers records without committing them, then crashes: they were never durable.
    CrashWithPending(usize),
    /// The next `n` filesystem operations fail with `ERRNOS[e]` (fault runs only).
    Fault(u64, usize),
    /// The disk fills up: `extra` more bytes fit (fault runs only).
    DiskFull(u64),
    DiskFreed,
    /// Power cut: drop everything not fsynced, keeping a prefix of the unsynced directory
    /// changes and a torn tail of appended bytes (fault runs only).
    PowerCut(usize, usize),
    /// A crash, then the restart itself meets `n` failing operations.
    FaultyReopen(u64, usize),
    /// Records appended and written (readable before their fsync, as the writer thread makes
    /// them), read and, when the flag says so, acknowledged by the broker; then the power
    /// goes before the fsync (fault runs only): keep/torn as in `PowerCut`.
    WrittenThenPowerCut(Vec<usize>, bool, usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..40, 1..5).prop_map(Op::Append),
        4 => (1usize..8).prop_map(Op::Read),
        4 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::AckAllReversed),
        1 => Just(Op::Rewind),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
        1 => (1usize..4).prop_map(Op::CrashWithPending),
    ]
}

fn faulty_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => op(),
        2 => (1u64..4, 0usize..4).prop_map(|(n, e)| Op::Fault(n, e)),
        1 => (0u64..300).prop_map(Op::DiskFull),
        1 => Just(Op::DiskFreed),
        2 => (0usize..6, 0usize..64).prop_map(|(k, t)| Op::PowerCut(k, t)),
        1 => (1u64..6, 0usize..4).prop_map(|(n, e)| Op::FaultyReopen(n, e)),
        2 => (
            prop::collection::vec(0usize..40, 1..5),
            any::<bool>(),
            0usize..6,
            0usize..64
        )
            .prop_map(|(l, a, k, t)| Op::WrittenThenPowerCut(l, a, k, t)),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    segment_bytes: u64,
    max_bytes: u64,
    max_records: Option<u64>,
    on_full: OnFull,
    fsync: FsyncPolicy,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(vec![128u64, 256, 1024]),
        prop::sample::select(vec![1u64 << 20, 2048, 4096]),
        prop::sample::select(vec![None, Some(16u64), Some(40)]),
        prop::sample::select(vec![OnFull::DropOldest, OnFull::DropNewest]),
        // Mostly `never`: a crash here is a process crash (the page cache survives), so the
        // policy does not change what must survive, and it keeps the test fast.
        prop::sample::select(vec![
            FsyncPolicy::Never,
            FsyncPolicy::Never,
            FsyncPolicy::Batch,
        ]),
    )
        .prop_map(
            |(segment_bytes, max_bytes, max_records, on_full, fsync)| Setup {
                segment_bytes,
                max_bytes,
                max_records,
                on_full,
                fsync,
            },
        )
}

/// Seqs whose sender was answered "safe", in the order they were answered.
#[derive(Default)]
struct Told(std::sync::Mutex<Vec<u64>>);

impl super::writer::OnOutcome for Told {
    fn on_outcome(&self, tag: u64, outcome: Option<u64>) {
        if outcome.is_some() {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(tag);
        }
    }
}

/// The trivially correct queue.
#[derive(Default)]
struct Model {
    /// Durable and unacknowledged: must be delivered.
    present: BTreeMap<u64, Vec<u8>>,
    /// Acknowledged: may come back after a restart (duplicates), never required.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Acknowledged and not brought back by a reopen (their segment was deleted): a power cut
    /// that undoes the unlink may still bring them back, but no reopen must.
    acked_gone: BTreeMap<u64, Vec<u8>>,
    /// Told "failed" (their fsync failed or never ran), then delivered all the same: kept
    /// like any other record, but a power cut before the next start may take them.
    fragile: std::collections::BTreeSet<u64>,
    /// Next sequence number a read may return.
    cursor: u64,
    /// Read and not yet acknowledged, in read order.
    outstanding: Vec<u64>,
    /// Appended but never committed before a crash: they survive only if a segment roll
    /// happened to write them.
    maybe: BTreeMap<u64, Vec<u8>>,
    /// Makes every payload unique.
    serial: u64,
    /// Highest seq ever handed out by `append` (durable or not): no later one may be lower.
    issued_max: u64,
}

impl Model {
    fn payload(&mut self, len: usize) -> Vec<u8> {
        self.serial += 1;
        let mut p = format!("p{}-", self.serial).into_bytes();
        p.resize(len.max(p.len()).min(40), b'x');
        p
    }

    /// Records below `first` are gone (dropped segments): they may come back after a crash
    /// if the ack position was not persisted, like acknowledged ones.
    fn dropped_below(&mut self, first: u64) {
        let keep = self.present.split_off(&first);
        let gone = std::mem::replace(&mut self.present, keep);
        self.outstanding.retain(|&s| s >= first);
        self.acked.extend(gone);
        let keep = self.maybe.split_off(&first);
        self.maybe = keep;
    }

    /// A failed write that the queue cut back hands its records' seqs out again (none of
    /// them was written): they are no longer issued, and not "maybe" either.
    fn rolled_back(&mut self, next_seq: u64, added: &mut Vec<(u64, Vec<u8>)>) {
        if next_seq <= self.issued_max {
            self.issued_max = next_seq - 1;
            added.retain(|(s, _)| *s < next_seq);
        }
    }

    /// [`rolled_back`](Model::rolled_back) for records the model holds as "maybe" (buffered,
    /// never reported durable): those at or above `next_seq` were never written.
    fn rolled_back_maybe(&mut self, next_seq: u64) {
        self.rolled_back(next_seq, &mut Vec::new());
        self.maybe.retain(|s, _| *s < next_seq);
    }

    /// The power went: records delivered although told "failed" may be gone with it.
    fn power_cut(&mut self) {
        for seq in std::mem::take(&mut self.fragile) {
            if let Some(p) = self.present.remove(&seq) {
                self.maybe.insert(seq, p);
            }
        }
    }

    fn issued(&mut self, seq: u64) -> Result<(), TestCaseError> {
        prop_assert!(
            seq > self.issued_max,
            "seq {seq} issued again (highest so far {})",
            self.issued_max
        );
        self.issued_max = seq;
        Ok(())
    }
}

/// The filesystem a run uses: the real one, or a fault-injecting one.
#[derive(Clone)]
enum Disk {
    Real,
    Faulty(FaultFs),
}

impl Disk {
    fn failed(&self) -> u64 {
        match self {
            Disk::Real => 0,
            Disk::Faulty(f) => f.failed(),
        }
    }
}

/// Opens the queue; under faults, an open that fails is retried once the faults are cleared
/// (a restart after the disk recovered), and must then succeed.
fn open_on(c: &QueueConfig, disk: &Disk) -> Queue {
    match disk {
        Disk::Real => Queue::open(c).expect("open").0,
        Disk::Faulty(f) => match Queue::open_with(c, Arc::new(f.clone())) {
            Ok((q, _)) => q,
            Err(_) => {
                f.set_plan(FaultPlan::None);
                Queue::open_with(c, Arc::new(f.clone()))
                    .expect("open once faults stop")
                    .0
            }
        },
    }
}

fn read_everything(q: &mut Queue) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        q.expire_read_backoff();
        let b = q.read_batch_at(7, 1 << 20, 0).expect("read");
        if b.is_empty() {
            return out;
        }
        out.extend(b);
    }
}

/// After a reopen: reads everything, checks it against the model, and makes the model's
/// present set what the queue holds. `clean` = the queue was closed (ack position persisted).
fn check_reopen(q: &mut Queue, m: &mut Model, clean: bool) -> Result<(), TestCaseError> {
    prop_assert!(
        q.next_seq > m.issued_max,
        "after reopen the next seq {} would reuse one (highest issued {})",
        q.next_seq,
        m.issued_max
    );
    let depth = q.gauges().depth_records;
    let regions = q.counters().corrupt_regions;
    let got = read_everything(q);
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    prop_assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seqs:?}"
    );
    if q.counters().corrupt_regions == regions {
        prop_assert_eq!(depth, got.len() as u64, "depth gauge after reopen");
    } else {
        // A torn record in an older segment (a power cut after a roll) is found, counted
        // and dropped from the gauge by the read.
        prop_assert!(depth >= got.len() as u64, "depth gauge after reopen");
    }
    prop_assert_eq!(
        q.gauges().depth_records,
        got.len() as u64,
        "depth gauge after reading everything"
    );
    let min_present = m.present.keys().next().copied().unwrap_or(u64::MAX);
    let mut now_present = BTreeMap::new();
    for r in got {
        if let Some(p) = m.present.get(&r.seq) {
            prop_assert_eq!(&r.payload, p, "payload of seq {}", r.seq);
        } else if let Some(p) = m.acked.get(&r.seq).or_else(|| m.acked_gone.get(&r.seq)) {
            prop_assert_eq!(&r.payload, p, "payload of replayed seq {}", r.seq);
        } else if let Some(p) = m.maybe.get(&r.seq) {
            prop_assert_eq!(&r.payload, p, "payload of uncommitted seq {}", r.seq);
        } else {
            prop_assert!(false, "seq {} was never durable or was dropped", r.seq);
        }
        now_present.insert(r.seq, r.payload);
    }
    for seq in m.present.keys() {
        prop_assert!(
            now_present.contains_key(seq),
            "durable unacked seq {seq} lost"
        );
    }
    // Acked records above the oldest unacked one are still on disk and above the persisted
    // ack position: they come back. Below it, only after a crash (ack persisted late).
    for seq in m.acked.keys().filter(|&&s| s > min_present) {
        prop_assert!(
            now_present.contains_key(seq),
            "acked seq {seq} expected as replay"
        );
    }
    if clean {
        for seq in now_present.keys() {
            prop_assert!(
                m.present.contains_key(seq) || m.maybe.contains_key(seq) || *seq > min_present,
                "seq {seq} replayed after a clean close"
            );
        }
    }
    // What this reopen replayed is unacknowledged again; acknowledged records it did not
    // bring back (their segment was deleted, or they are below the ack position on disk)
    // need not come back later.
    for seq in now_present.keys() {
        m.acked.remove(seq);
        m.acked_gone.remove(seq);
    }
    m.acked_gone.append(&mut m.acked);
    // Recovery synced what it found before handing it out.
    m.fragile.clear();
    m.present = now_present;
    m.maybe.clear();
    m.outstanding.clear();
    m.cursor = 0;
    q.rewind();
    Ok(())
}

fn run(s: Setup, ops: Vec<Op>, disk: Disk) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = QueueConfig {
        dir: match disk {
            Disk::Real => dir.path().to_owned(),
            Disk::Faulty(_) => PathBuf::from("/q"),
        },
        max_bytes: s.max_bytes,
        on_full: s.on_full,
        fsync: s.fsync,
        segment_bytes: s.segment_bytes,
        max_records: s.max_records,
        max_age: None,
    };
    let faulty = matches!(disk, Disk::Faulty(_));
    let fault_fs = match &disk {
        Disk::Faulty(f) => Some(f.clone()),
        Disk::Real => None,
    };
    let mut full = false;
    let mut q = open_on(&c, &disk);
    let mut m = Model::default();
    // QUEUE_MODEL_TRACE=1 prints every operation with the queue's segments (to debug a
    // minimal failing input).
    let trace = std::env::var_os("QUEUE_MODEL_TRACE").is_some();
    let mut reopened_over = false;
    for op in ops {
        let issued_before = m.issued_max;
        let reopening = matches!(
            op,
            Op::Restart
                | Op::Crash
                | Op::CrashWithPending(_)
                | Op::PowerCut(..)
                | Op::FaultyReopen(..)
                | Op::WrittenThenPowerCut(..)
        );
        if trace {
            eprintln!(
                "{op:?}: next_seq {} acked_upto {} segments {:?} model present {:?} maybe {:?}",
                q.next_seq,
                q.acked_upto,
                q.segments
                    .iter()
                    .map(|s| (s.first_seq, s.next_seq, s.bytes, s.durable_bytes))
                    .collect::<Vec<_>>(),
                m.present.keys().collect::<Vec<_>>(),
                m.maybe.keys().collect::<Vec<_>>()
            );
        }
        match op {
            Op::Append(lens) => {
                let mut added = Vec::new();
                let failed_before = disk.failed();
                for len in lens {
                    let p = m.payload(len);
                    let r = q.append(&p, 0);
                    // `drop_oldest` may have made room before the append failed for another
                    // reason (a failed roll): those records are gone (counted) either way.
                    m.dropped_below(q.first_unacked());
                    match r {
                        Ok(seq) => {
                            m.issued(seq)?;
                            // Enforced at append (a crash may replay acked records above it).
                            if let Some(max) = s.max_records {
                                prop_assert!(q.depth_records() <= max, "over max_records");
                            }
                            m.dropped_below(q.first_unacked());
                            added.push((seq, p));
                        }
                        Err(QueueError::Full { .. }) => {
                            prop_assert_eq!(s.on_full, OnFull::DropNewest, "full with drop_oldest");
                        }
                        Err(e) => {
                            prop_assert!(
                                full || disk.failed() > failed_before,
                                "append failed without a fault: {e}"
                            );
                            m.rolled_back(q.next_seq, &mut added);
                        }
                    }
                }
                let durable = match q.commit() {
                    Ok(Some(job)) => match job.sync(s.fsync) {
                        Ok(()) => {
                            q.mark_durable(&job);
                            true
                        }
                        Err(e) => {
                            q.sync_failed(&e);
                            false
                        }
                    },
                    Ok(None) => true,
                    Err(_) => {
                        m.rolled_back(q.next_seq, &mut added);
                        false
                    }
                };
                prop_assert!(
                    durable || full || disk.failed() > failed_before,
                    "commit failed without a fault"
                );
                for (seq, p) in added {
                    prop_assert!(
                        m.present.keys().all(|&k| k < seq),
                        "seq {seq} not increasing"
                    );
                    if durable {
                        m.present.insert(seq, p);
                    } else {
                        // Told "failed"; may still turn up (written, fsync unknown).
                        m.maybe.insert(seq, p);
                    }
                }
            }
            Op::Read(n) => {
                // Time enough has passed for a read that failed to be tried again.
                q.expire_read_backoff();
                let failed_before = disk.failed();
                let got = match q.read_batch_at(n, 1 << 20, 0) {
                    Ok(got) => got,
                    Err(e) => {
                        prop_assert!(disk.failed() > failed_before, "read failed: {e}");
                        Vec::new()
                    }
                };
                // A record told "failed" whose write did land is delivered like any other.
                for r in &got {
                    if let Some(p) = m.maybe.remove(&r.seq) {
                        m.present.insert(r.seq, p);
                        m.fragile.insert(r.seq);
                    }
                }
                let want: Vec<(u64, Vec<u8>)> = m
                    .present
                    .range(m.cursor..)
                    .filter(|(s, _)| !m.outstanding.contains(s))
                    .take(n)
                    .map(|(s, p)| (*s, p.clone()))
                    .collect();
                let got: Vec<(u64, Vec<u8>)> =
                    got.into_iter().map(|r| (r.seq, r.payload)).collect();
                if disk.failed() > failed_before {
                    // A read that met a fault stops early and resumes later: a prefix.
                    prop_assert_eq!(&got[..], &want[..got.len()]);
                } else {
                    prop_assert_eq!(&got, &want);
                }
                if let Some((last, _)) = got.last() {
                    m.cursor = last + 1;
                }
                m.outstanding.extend(got.iter().map(|(s, _)| *s));
            }
            Op::Ack(i) => {
                if !m.outstanding.is_empty() {
                    let seq = m.outstanding.remove(i % m.outstanding.len());
                    q.ack(seq).expect("ack");
                    if let Some(p) = m.present.remove(&seq) {
                        m.acked.insert(seq, p);
                    }
                }
            }
            Op::AckAllReversed => {
                for seq in std::mem::take(&mut m.outstanding).into_iter().rev() {
                    q.ack(seq).expect("ack");
                    if let Some(p) = m.present.remove(&seq) {
                        m.acked.insert(seq, p);
                    }
                }
            }
            Op::Rewind => {
                q.rewind();
                m.cursor = 0;
                m.outstanding.clear();
            }
            Op::Restart => {
                let failed_before = disk.failed();
                let closed = q.close();
                prop_assert!(
                    closed.is_ok() || full || disk.failed() > failed_before,
                    "close failed without a fault"
                );
                drop(q);
                q = open_on(&c, &disk);
                let clean = closed.is_ok() && disk.failed() == failed_before;
                check_reopen(&mut q, &mut m, clean)?;
            }
            Op::Crash => {
                drop(q);
                q = open_on(&c, &disk);
                check_reopen(&mut q, &mut m, false)?;
            }
            Op::Fault(n, e) => {
                if let Some(f) = &fault_fs {
                    f.set_plan(FaultPlan::Next(n, ERRNOS[e]));
                }
            }
            Op::DiskFull(extra) => {
                if let Some(f) = &fault_fs {
                    f.set_capacity(Some(f.used_bytes() + extra));
                    full = true;
                }
            }
            Op::DiskFreed => {
                if let Some(f) = &fault_fs {
                    f.set_capacity(None);
                    full = false;
                }
            }
            Op::PowerCut(keep, torn) => {
                drop(q);
                if let Some(f) = &fault_fs {
                    // Under `never` a power cut may lose anything: only a crash is modelled.
                    if s.fsync != FsyncPolicy::Never {
                        f.power_cut(keep, torn);
                        m.power_cut();
                        // Unsynced records are gone, came back torn, or (a torn tail long
                        // enough) came back whole: they stay "maybe".
                    }
                }
                q = open_on(&c, &disk);
                check_reopen(&mut q, &mut m, false)?;
            }
            Op::WrittenThenPowerCut(lens, ack, keep, torn) => {
                let failed_before = disk.failed();
                let issued_before_op = m.issued_max;
                for len in lens {
                    let p = m.payload(len);
                    let r = q.append(&p, 0);
                    m.dropped_below(q.first_unacked());
                    match r {
                        Ok(seq) => {
                            m.issued(seq)?;
                            m.maybe.insert(seq, p);
                        }
                        Err(QueueError::Full { .. }) => {}
                        Err(e) => {
                            prop_assert!(
                                full || disk.failed() > failed_before,
                                "append failed without a fault: {e}"
                            );
                            m.rolled_back_maybe(q.next_seq);
                        }
                    }
                }
                // Senders wait for each written record, as the writer thread registers them.
                let told = Arc::new(Told::default());
                let mut waiting = Vec::new();
                match q.commit() {
                    Ok(Some(job)) => {
                        for &seq in m.maybe.keys().filter(|&&s| s > issued_before_op) {
                            q.await_safe(seq, Receipt::for_test(told.clone(), seq));
                            waiting.push(seq);
                        }
                        q.mark_written(&job)
                    }
                    Ok(None) => {}
                    Err(_) => {
                        m.rolled_back_maybe(q.next_seq);
                    }
                }
                // Published before the fsync; the broker may acknowledge them.
                q.expire_read_backoff();
                let got = q.read_batch_at(1000, 1 << 20, 0).unwrap_or_default();
                let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
                prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order: {seqs:?}");
                for r in &got {
                    let known = m.present.get(&r.seq).or_else(|| m.maybe.get(&r.seq));
                    prop_assert_eq!(known, Some(&r.payload), "read seq {}", r.seq);
                    if ack {
                        q.ack(r.seq).expect("ack");
                        if let Some(p) = m.present.remove(&r.seq) {
                            m.acked.insert(r.seq, p);
                        } else if let Some(p) = m.maybe.remove(&r.seq) {
                            // Delivered, never synced: a power cut may take it (that loses
                            // nothing: the broker has it), or a crash bring it back.
                            m.acked_gone.insert(r.seq, p);
                        }
                    }
                }
                // The power goes before the fsync: the writer never answers the rest. Exactly
                // the records the broker acknowledged were answered "safe" (and those may be
                // lost now: the broker has them).
                let unanswered = q.take_receipts();
                let answered = told.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let acked: Vec<u64> = match ack {
                    true => got
                        .iter()
                        .map(|r| r.seq)
                        .filter(|s| waiting.contains(s))
                        .collect(),
                    false => Vec::new(),
                };
                prop_assert_eq!(&answered, &acked, "answered before the fsync");
                for seq in &waiting {
                    prop_assert!(
                        answered.contains(seq) != unanswered.contains_key(seq),
                        "seq {} answered twice or never",
                        seq
                    );
                }
                drop(unanswered);
                drop(q);
                if let Some(f) = &fault_fs {
                    if s.fsync != FsyncPolicy::Never {
                        f.power_cut(keep, torn);
                        m.power_cut();
                    }
                }
                q = open_on(&c, &disk);
                check_reopen(&mut q, &mut m, false)?;
            }
            Op::FaultyReopen(n, e) => {
                drop(q);
                if let Some(f) = &fault_fs {
                    f.set_plan(FaultPlan::Next(n, ERRNOS[e]));
                }
                q = open_on(&c, &disk);
                check_reopen(&mut q, &mut m, false)?;
            }
            Op::CrashWithPending(n) => {
                for _ in 0..n {
                    let p = m.payload(10);
                    let r = q.append(&p, 0);
                    m.dropped_below(q.first_unacked());
                    match r {
                        Ok(seq) => {
                            m.issued(seq)?;
                            m.maybe.insert(seq, p);
                        }
                        // A failed roll took the buffered records with it, before any was
                        // written: their seqs are handed out again.
                        Err(_) => m.rolled_back_maybe(q.next_seq),
                    }
                }
                drop(q);
                q = open_on(&c, &disk);
                check_reopen(&mut q, &mut m, false)?;
            }
        }
        let g = q.gauges();
        if faulty {
            // Records told "failed" may still sit in a segment until read.
            let (lo, hi) = (m.present.len(), m.present.len() + m.maybe.len());
            prop_assert!(
                (lo as u64..=hi as u64).contains(&g.depth_records),
                "depth gauge {} outside {lo}..={hi}",
                g.depth_records
            );
        } else {
            prop_assert_eq!(g.depth_records, m.present.len() as u64, "depth gauge");
        }
        // Under faults an unlink that failed leaves a dropped segment on disk, and a restart
        // finds it again: the bound is then restored by the next append (which drops or
        // refuses), not by the reopen itself.
        if faulty && reopening {
            reopened_over = true;
        } else if m.issued_max > issued_before {
            reopened_over = false;
        }
        reopened_over &= g.depth_bytes > s.max_bytes;
        prop_assert!(
            reopened_over || g.depth_bytes <= s.max_bytes,
            "over max_bytes: {}",
            g.depth_bytes
        );
    }
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=5000 for a longer hunt.
    #![proptest_config(ProptestConfig::default())]
    #[test]
    fn queue_behaves_like_the_model(s in setup(), ops in prop::collection::vec(op(), 1..80)) {
        run(s, ops, Disk::Real)?;
    }

    #[test]
    fn queue_behaves_like_the_model_under_faults_and_power_cuts(
        s in setup(),
        ops in prop::collection::vec(faulty_op(), 1..80),
    ) {
        let fs = FaultFs::new();
        run(s, ops.clone(), Disk::Faulty(fs.clone()))?;
        accepts_again(&fs)?;
    }
}

/// Once faults stop, the queue takes and delivers new records.
fn accepts_again(fs: &FaultFs) -> Result<(), TestCaseError> {
    fs.set_plan(FaultPlan::None);
    fs.set_capacity(None);
    let c = fault_cfg();
    let mut q = open_on(&c, &Disk::Faulty(fs.clone()));
    let seq = q.append_durable(b"after the faults", 0);
    prop_assert!(seq.is_ok(), "append after faults stopped: {:?}", seq.err());
    let all = read_everything(&mut q);
    prop_assert!(all.iter().any(|r| r.payload == b"after the faults"));
    Ok(())
}

fn fault_cfg() -> QueueConfig {
    QueueConfig {
        dir: PathBuf::from("/q"),
        max_bytes: 4096,
        on_full: OnFull::DropOldest,
        fsync: FsyncPolicy::Batch,
        segment_bytes: 256,
        max_records: None,
        max_age: None,
    }
}

/// The SQLite way: a fixed workload (appends across segment rolls, reads, acks, ack
/// persists, a clean restart) run once per filesystem operation it makes, failing that one
/// operation with each errno in turn, then a power cut and a restart: every record whose
/// commit and fsync succeeded is delivered, no seq is issued twice, and the queue accepts
/// again afterwards.
#[test]
fn nth_operation_fails_in_turn() {
    fn workload(
        q: &mut Queue,
        fs: &FaultFs,
        durable: &mut BTreeMap<u64, Vec<u8>>,
        issued: &mut Vec<u64>,
    ) {
        for round in 0..6u64 {
            for i in 0..3u64 {
                let p = format!(
                    "r{round}-{i}-{}",
                    "x".repeat(((round * 3 + i) % 20) as usize)
                );
                if let Ok(seq) = q.append(p.as_bytes(), 0) {
                    issued.push(seq);
                    match q.commit() {
                        Ok(Some(job)) => match job.sync(FsyncPolicy::Batch) {
                            Ok(()) => {
                                q.mark_durable(&job);
                                durable.insert(seq, p.into_bytes());
                            }
                            Err(e) => q.sync_failed(&e),
                        },
                        Ok(None) => {}
                        // A write cut back hands its seqs out again (nothing of it is left).
                        Err(_) => issued.retain(|&s| s < q.next_seq),
                    }
                }
            }
            if let Ok(batch) = q.read_batch_at(2, 1 << 20, 0) {
                for r in batch {
                    let _ = q.ack(r.seq);
                    durable.remove(&r.seq);
                }
            }
            let _ = q.persist_ack();
            let _ = fs.ops();
        }
    }
    let c = fault_cfg();
    // Count the operations of a fault-free run first.
    let total = {
        let fs = FaultFs::new();
        let mut q = Queue::open_with(&c, Arc::new(fs.clone())).expect("open").0;
        fs.set_plan(FaultPlan::None);
        workload(&mut q, &fs, &mut BTreeMap::new(), &mut Vec::new());
        fs.ops()
    };
    assert!(total > 50, "only {total} operations");
    for errno in ERRNOS {
        for n in 1..=total {
            let fs = FaultFs::new();
            let mut q = Queue::open_with(&c, Arc::new(fs.clone())).expect("open").0;
            fs.set_plan(FaultPlan::Nth(n, errno));
            let mut durable = BTreeMap::new();
            let mut issued = Vec::new();
            workload(&mut q, &fs, &mut durable, &mut issued);
            assert!(
                issued.windows(2).all(|w| w[0] < w[1]),
                "op {n} errno {errno}: seqs {issued:?}"
            );
            drop(q);
            fs.set_plan(FaultPlan::None);
            fs.power_cut(0, 0);
            let mut q = Queue::open_with(&c, Arc::new(fs.clone()))
                .expect("reopen")
                .0;
            let back: BTreeMap<u64, Vec<u8>> = read_everything(&mut q)
                .into_iter()
                .map(|r| (r.seq, r.payload))
                .collect();
            for (seq, p) in &durable {
                assert_eq!(
                    back.get(seq),
                    Some(p),
                    "op {n} errno {errno}: durable seq {seq} lost"
                );
            }
            let next = q.append_durable(b"again", 0).expect("accepts again");
            assert!(
                issued.last().is_none_or(|&l| next > l),
                "op {n} errno {errno}: seq {next} reused"
            );
        }
    }
}

/// Found by the fault proptest: with `fsync = "never"`, a roll wrote the buffered records into
/// the old segment, then failed to create the new one (disk full); the records were written
/// but never made readable, so they were lost while the sender had been told "accepted".
#[test]
fn records_a_failed_roll_wrote_are_delivered_with_fsync_never() {
    let fs = FaultFs::new();
    let s = Setup {
        segment_bytes: 128,
        max_bytes: 1 << 20,
        max_records: Some(16),
        on_full: OnFull::DropOldest,
        fsync: FsyncPolicy::Never,
    };
    let ops = vec![
        Op::Append(vec![0, 0]),
        Op::DiskFull(76),
        Op::Append(vec![0, 18]),
        Op::Append(vec![0, 10, 0]),
        Op::Read(3),
    ];
    run(s, ops, Disk::Faulty(fs)).expect("the failing input found by the proptest");
}

#[test]
fn space_short_says_how_far_the_filesystem_falls_below_max_bytes() {
    let fs = FaultFs::new();
    let c = fault_cfg();
    let mut q = open_on(&c, &Disk::Faulty(fs.clone()));
    q.append_durable(b"one record", 0).expect("append");
    assert_eq!(q.space_short(), None, "no capacity limit: it fits");
    let held = q.gauges().depth_bytes.max(q.total_bytes());
    fs.set_capacity(Some(fs.used_bytes() + 1000));
    let (free, short) = q.space_short().expect("1000 bytes free cannot hold 4096");
    assert_eq!(free, 1000);
    assert_eq!(short, c.max_bytes - 1000 - held);
    fs.set_capacity(Some(fs.used_bytes() + c.max_bytes));
    assert_eq!(q.space_short(), None, "room for the whole bound");
}
