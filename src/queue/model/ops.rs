//! The operations a model run is made of, and the queue setups it runs on, as proptest
//! strategies.

use super::*;

pub(super) const ERRNOS: [i32; 4] = [28, 5, 13, 30]; // ENOSPC, EIO, EACCES, EROFS

#[derive(Debug, Clone)]
pub(super) enum Op {
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

pub(super) fn op() -> impl Strategy<Value = Op> {
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

pub(super) fn faulty_op() -> impl Strategy<Value = Op> {
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
pub(super) struct Setup {
    pub(super) segment_bytes: u64,
    pub(super) max_bytes: u64,
    pub(super) max_records: Option<u64>,
    pub(super) on_full: OnFull,
    pub(super) fsync: FsyncPolicy,
}

pub(super) fn setup() -> impl Strategy<Value = Setup> {
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
