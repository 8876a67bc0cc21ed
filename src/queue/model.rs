//! Model-based test: the queue against a trivially correct in-memory model, under random
//! sequences of append (group commits), read, ack (in and out of order), rewind, clean restart,
//! crash (drop without close, with and without buffered records) and overflow, with segments
//! shrunk to a few records so every sequence crosses segment boundaries.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::config::{FsyncPolicy, OnFull, QueueConfig};

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

/// The trivially correct queue.
#[derive(Default)]
struct Model {
    /// Durable and unacknowledged: must be delivered.
    present: BTreeMap<u64, Vec<u8>>,
    /// Acknowledged: may come back after a restart (duplicates), never required.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Next sequence number a read may return.
    cursor: u64,
    /// Read and not yet acknowledged, in read order.
    outstanding: Vec<u64>,
    /// Appended but never committed before a crash: they survive only if a segment roll
    /// happened to write them.
    maybe: BTreeMap<u64, Vec<u8>>,
    /// Makes every payload unique, even when a crash lets a sequence number be reused.
    serial: u64,
}

impl Model {
    fn payload(&mut self, len: usize) -> Vec<u8> {
        self.serial += 1;
        let mut p = format!("p{}-", self.serial).into_bytes();
        p.resize(len.max(p.len()).min(40), b'x');
        p
    }

    /// Removes the `k` oldest present records (a dropped segment).
    fn drop_oldest(&mut self, k: u64) {
        for _ in 0..k {
            if let Some((seq, _)) = self.present.pop_first() {
                self.outstanding.retain(|&s| s != seq);
            }
        }
    }
}

fn open(c: &QueueConfig) -> Queue {
    Queue::open(c).expect("open").0
}

fn read_everything(q: &mut Queue) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
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
    let depth = q.gauges().depth_records;
    let got = read_everything(q);
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    prop_assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seqs:?}"
    );
    prop_assert_eq!(depth, got.len() as u64, "depth gauge after reopen");
    let min_present = m.present.keys().next().copied().unwrap_or(u64::MAX);
    let mut now_present = BTreeMap::new();
    for r in got {
        if let Some(p) = m.present.get(&r.seq) {
            prop_assert_eq!(&r.payload, p, "payload of seq {}", r.seq);
        } else if let Some(p) = m.acked.get(&r.seq) {
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
    for seq in now_present.keys() {
        m.acked.remove(seq);
    }
    m.present = now_present;
    m.maybe.clear();
    m.outstanding.clear();
    m.cursor = 0;
    q.rewind();
    Ok(())
}

fn run(s: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = QueueConfig {
        dir: dir.path().to_owned(),
        max_bytes: s.max_bytes,
        on_full: s.on_full,
        fsync: s.fsync,
        segment_bytes: s.segment_bytes,
        max_records: s.max_records,
        max_age: None,
    };
    let mut q = open(&c);
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Append(lens) => {
                let mut added = Vec::new();
                for len in lens {
                    let p = m.payload(len);
                    let dropped_before = q.counters().dropped_oldest;
                    match q.append(&p, 0) {
                        Ok(seq) => {
                            // Enforced at append (a crash may replay acked records above it).
                            if let Some(max) = s.max_records {
                                prop_assert!(q.depth_records() <= max, "over max_records");
                            }
                            m.drop_oldest(q.counters().dropped_oldest - dropped_before);
                            added.push((seq, p));
                        }
                        Err(QueueError::Full { .. }) => {
                            prop_assert_eq!(s.on_full, OnFull::DropNewest, "full with drop_oldest");
                        }
                        Err(e) => prop_assert!(false, "append failed: {e}"),
                    }
                }
                if let Some(job) = q.commit().expect("commit") {
                    job.sync(s.fsync).expect("sync");
                    q.mark_durable(&job);
                }
                for (seq, p) in added {
                    prop_assert!(
                        m.present.keys().all(|&k| k < seq),
                        "seq {seq} not increasing"
                    );
                    m.present.insert(seq, p);
                }
            }
            Op::Read(n) => {
                let got = q.read_batch_at(n, 1 << 20, 0).expect("read");
                let want: Vec<(u64, Vec<u8>)> = m
                    .present
                    .range(m.cursor..)
                    .filter(|(s, _)| !m.outstanding.contains(s))
                    .take(n)
                    .map(|(s, p)| (*s, p.clone()))
                    .collect();
                let got: Vec<(u64, Vec<u8>)> =
                    got.into_iter().map(|r| (r.seq, r.payload)).collect();
                prop_assert_eq!(&got, &want);
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
                q.close().expect("close");
                drop(q);
                q = open(&c);
                check_reopen(&mut q, &mut m, true)?;
            }
            Op::Crash => {
                drop(q);
                q = open(&c);
                check_reopen(&mut q, &mut m, false)?;
            }
            Op::CrashWithPending(n) => {
                for _ in 0..n {
                    let p = m.payload(10);
                    let before = q.counters().dropped_oldest;
                    if let Ok(seq) = q.append(&p, 0) {
                        m.drop_oldest(q.counters().dropped_oldest - before);
                        m.maybe.insert(seq, p);
                    }
                }
                drop(q);
                q = open(&c);
                check_reopen(&mut q, &mut m, false)?;
            }
        }
        let g = q.gauges();
        prop_assert_eq!(g.depth_records, m.present.len() as u64, "depth gauge");
        prop_assert!(
            g.depth_bytes <= s.max_bytes,
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
        run(s, ops)?;
    }
}
