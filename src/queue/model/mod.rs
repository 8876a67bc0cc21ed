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
//!
//! The parts: the operations and setups proptest draws (`ops.rs`), the trivially correct model
//! (`expected.rs`), the runner that plays the operations on the queue and checks it against
//! the model after each (`run.rs`), and the test cases here.

mod expected;
mod ops;
mod run;

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::fault_fs::{FaultFs, FaultPlan};
use super::*;
use crate::config::{FsyncPolicy, OnFull, QueueConfig};
use expected::{Model, Told};
use ops::{faulty_op, op, setup, Op, Setup, ERRNOS};
use run::{open_on, read_everything, run, Disk};

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
