//! Plays a sequence of operations on the queue (on the real filesystem or a faulty one) and
//! checks it against the model after each one.

use super::*;

/// The filesystem a run uses: the real one, or a fault-injecting one.
#[derive(Clone)]
pub(super) enum Disk {
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
pub(super) fn open_on(c: &QueueConfig, disk: &Disk) -> Queue {
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

pub(super) fn read_everything(q: &mut Queue) -> Vec<Record> {
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

/// Opens the queue again after a restart or crash (the old one dropped) and checks it
/// against the model with [`check_reopen`].
fn reopened(
    c: &QueueConfig,
    disk: &Disk,
    m: &mut Model,
    clean: bool,
) -> Result<Queue, TestCaseError> {
    let mut q = open_on(c, disk);
    check_reopen(&mut q, m, clean)?;
    Ok(q)
}

/// The power goes (fault runs): the disk keeps what was synced, `keep` of the unsynced
/// directory changes and a torn tail of `torn` bytes; the model lets go of what was delivered
/// although told "failed". Under `never` a power cut may lose anything: only a crash is
/// modelled.
fn power_cut(disk: &Disk, fsync: FsyncPolicy, m: &mut Model, keep: usize, torn: usize) {
    if let Disk::Faulty(f) = disk {
        if fsync != FsyncPolicy::Never {
            f.power_cut(keep, torn);
            m.power_cut();
            // Unsynced records are gone, came back torn, or (a torn tail long enough) came
            // back whole: they stay "maybe".
        }
    }
}

/// Appends a fresh payload of `len` bytes (buffered, not committed yet) and returns it with
/// what the append said. `drop_oldest` may have made room before the append failed for
/// another reason (a failed roll): those records are gone (counted) either way, and the model
/// follows. A seq handed out must never have been issued before.
fn append_one(
    q: &mut Queue,
    m: &mut Model,
    len: usize,
) -> Result<(Vec<u8>, Result<u64, QueueError>), TestCaseError> {
    let p = m.payload(len);
    let r = q.append(&p, 0);
    m.dropped_below(q.first_unacked());
    if let Ok(seq) = r {
        m.issued(seq)?;
    }
    Ok((p, r))
}

/// Appends records of these lengths without committing them, as the writer thread buffers
/// them: the model holds each as "maybe" (never reported durable). A refused append (full)
/// adds nothing; any other error is shown to `failed`, then the model follows the queue's cut
/// back (a failed roll took the buffered records with it, before any was written: their seqs
/// are handed out again).
fn append_uncommitted(
    q: &mut Queue,
    m: &mut Model,
    lens: impl IntoIterator<Item = usize>,
    mut failed: impl FnMut(&QueueError) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    for len in lens {
        let (p, r) = append_one(q, m, len)?;
        match r {
            Ok(seq) => {
                m.maybe.insert(seq, p);
            }
            Err(QueueError::Full { .. }) => {}
            Err(e) => {
                failed(&e)?;
                m.rolled_back_maybe(q.next_seq);
            }
        }
    }
    Ok(())
}

pub(super) fn run(s: Setup, ops: Vec<Op>, disk: Disk) -> Result<(), TestCaseError> {
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
                    let (p, r) = append_one(&mut q, &mut m, len)?;
                    match r {
                        Ok(seq) => {
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
                let clean = closed.is_ok() && disk.failed() == failed_before;
                q = reopened(&c, &disk, &mut m, clean)?;
            }
            Op::Crash => {
                drop(q);
                q = reopened(&c, &disk, &mut m, false)?;
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
                power_cut(&disk, s.fsync, &mut m, keep, torn);
                q = reopened(&c, &disk, &mut m, false)?;
            }
            Op::WrittenThenPowerCut(lens, ack, keep, torn) => {
                let failed_before = disk.failed();
                let issued_before_op = m.issued_max;
                append_uncommitted(&mut q, &mut m, lens, |e| {
                    prop_assert!(
                        full || disk.failed() > failed_before,
                        "append failed without a fault: {e}"
                    );
                    Ok(())
                })?;
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
                power_cut(&disk, s.fsync, &mut m, keep, torn);
                q = reopened(&c, &disk, &mut m, false)?;
            }
            Op::FaultyReopen(n, e) => {
                drop(q);
                if let Some(f) = &fault_fs {
                    f.set_plan(FaultPlan::Next(n, ERRNOS[e]));
                }
                q = reopened(&c, &disk, &mut m, false)?;
            }
            Op::CrashWithPending(n) => {
                append_uncommitted(&mut q, &mut m, std::iter::repeat_n(10, n), |_| Ok(()))?;
                drop(q);
                q = reopened(&c, &disk, &mut m, false)?;
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
