//! The durable log: every accepted message is appended here; it may be published once written,
//! while its fsync runs, and leaves only once the broker has acknowledged it.
//!
//! # Design constraints
//! - **Segmented, append-only.** Records go to segment files `{first_seq:020}.seg` of at most
//!   `segment_bytes` (and at most `max_records / 8` records). A segment is created (and the
//!   directory fsynced) by the writer, and deleted whole, only once every record in it is
//!   acknowledged. Nothing is rewritten in place; a restarted queue starts a new segment.
//! - **Checksummed records.** Each record is `[len u32][crc32c u32][seq u64][accepted_at µs u64]`
//!   then `len` payload bytes, all little-endian; the CRC covers `len`, `seq`, the time and the
//!   payload. Sequence numbers are contiguous inside a segment and increase across segments.
//! - **Group commit.** [`Queue::append`] only buffers; [`Queue::commit`] writes the buffer with
//!   one `write` and hands back a [`SyncJob`] that the caller fsyncs *outside* any lock.
//!   [`Queue::mark_written`] makes the records readable right after the write, so they may be
//!   published while the fsync runs; [`Queue::mark_durable`] records the fsync. A lone record
//!   may also be appended, written and made readable by its caller under the lock (the writer's
//!   handle, only when that needs no fsync or other file operation), its fsync then owed to
//!   the writer. Under `batch` that fsync waits [`SYNC_GRACE`](ahead::SYNC_GRACE) from each
//!   write for the broker's PUBACK and is not made for a sender when the PUBACK came first
//!   (written records
//!   are still fsynced within [`SYNC_AT_LEAST_EVERY`](ahead::SYNC_AT_LEAST_EVERY), for health).
//!   A sender is told
//!   "accepted" once its record is *safe*: synced, or acknowledged by the broker
//!   ([`Queue::ack`] answers the receipt the writer left with the queue), whichever comes first.
//!   With `fsync = "batch"` nothing a sender was told is accepted is lost on a power cut (an
//!   acknowledged record may be, but the broker has it); a record published but neither synced
//!   nor acknowledged is (it would be lost waiting too); with `never`, whatever the kernel had
//!   not written back.
//! - **Cheap acknowledgement.** The ack position lives in memory and is persisted to `ack`
//!   (write + fsync + rename) at most about once a second and on close — never once per
//!   PUBACK. Fully acknowledged segments are deleted with that persist, after it. The
//!   publisher's persist ([`QueueHandle::flush_acks`]) does its I/O without holding the queue,
//!   on a blocking thread, so an SD card's slow fsync never stalls the event loop (GPIO
//!   timing, socket reads). After a crash, records acked since the last persist are published
//!   again (duplicates, identified by `relay.seq`), never lost.
//! - **Recovery is fast and never refuses to start.** Only the newest segment is scanned
//!   (CRC-checked record by record) at start: its torn tail is truncated at the first bad record
//!   after which no intact record follows. Older segments are trusted by size at start (a segment
//!   without the magic header is quarantined at once) and validated as they are read, from the
//!   ack position on — every record is CRC-checked before it is handed out — so recovering a
//!   256 MiB backlog reads one segment, not 256 MiB.
//! - **Only the bad record is lost.** A record that fails its checksum (anywhere, at start or
//!   while reading) is skipped by a resync scan: the reader looks for the next offset holding a
//!   header with a plausible sequence number (above the bad one, below the segment's end) whose
//!   CRC matches, and carries on from there. The unreadable sequence numbers are counted
//!   (`corrupt_records`, `corrupt_regions`), logged, and the segment is renamed to `*.corrupt`
//!   (quarantined) instead of deleted when it is done. The relay's payloads are JSON text after
//!   a 4-byte prefix, so they never hold three NUL bytes in a row and cannot contain a fake
//!   header (a sequence number's high bytes are zero): resync cannot mistake payload for a record.
//! - **Bounded.** Total segment bytes stay within `max_bytes` and unacknowledged records within
//!   `max_records`: `drop_oldest` deletes the oldest segment (counting its unacknowledged
//!   records), `drop_newest` refuses the new record. With `max_age`, a record older than that
//!   when it comes up for publishing is dropped and counted instead of handed out. Memory does
//!   not grow with the backlog: only per-segment metadata (and the rare corrupt ranges) is kept.
//! - **Disk errors are not fatal.** A failed write is cut back to the last good length and the
//!   buffered records are reported failed and counted (their seqs are burned, never issued
//!   again); the next append tries again in a fresh segment, as after a failed fsync (the
//!   kernel may have dropped the pages). A failed ack persist is logged and retried later.
//!   While appends fail, [`Queue::append_failure`] names the error (`/healthz` answers 503,
//!   stats carry `appends_failing` and `append_io_errors`).
//! - **Space is reclaimed without new space.** The `ack` file (and the `seq` file) is 12 bytes
//!   overwritten in place with `pwrite` + fdatasync: no temp file, no rename, no new block, so
//!   persisting the ack position works on a full disk. Fully acknowledged segments are deleted
//!   after that persist (or even when it failed): a crash between the two only replays them
//!   (the older position on disk is below the oldest remaining segment, which recovery skips
//!   to), and a crash before the unlink reaches the disk brings back only acknowledged
//!   records. Before every roll, a fully acknowledged *newest* segment is retired too, so when
//!   an append hits ENOSPC and the drain then acknowledges everything, the next append deletes
//!   that segment before it creates the new one. An append is refused only while unacknowledged
//!   records hold the space; it succeeds again with the first alert after space returns.
//! - **A seq is never issued twice.** The `seq` file holds a durable reservation: before seq
//!   `n` is issued at or beyond it, `n + SEQ_BLOCK` is written and synced (hi/lo blocks, one
//!   small in-place write per 65 536 records). Recovery starts above the reservation, so seqs
//!   lost with a segment (power cut, quarantine, deletion by hand) are never handed out again;
//!   a clean close gives the unused rest back, so a clean restart has no gap. This is also what
//!   makes publishing a record before its fsync safe (issue 18). The writer thread renews the
//!   reservation before it runs out (less than half a block left), without holding the queue,
//!   and the new value counts only once synced.
//! - **No fsync under the lock with `batch`.** Besides the group commit's own fsync, the fsyncs
//!   an append would make (a new segment's magic and directory entry, the ack persist a roll
//!   makes first, the seq reservation) are made by the writer before the group commit without
//!   holding the queue (a group commit ends before the record that starts a new segment), so reads and
//!   acks never wait on the disk. Appending under the lock still does them itself when those
//!   failed (the error is then reported as before), and for tools and tests.
//! - **I/O errors are not corruption.** An EACCES/EIO reading a segment at start is retried
//!   with backoff and then refuses the start naming the file (never quarantined, never
//!   skipped); while running, a failed read keeps its position and is retried with doubling
//!   backoff (`read_errors`). Only CRC or format damage quarantines. An unreadable ack file is
//!   logged as an error (replay from the oldest record: duplicates, never loss).
//! - **One relay per directory.** [`Queue::open`] proves the directory writable (a probe file
//!   created and fsynced) and holds an exclusive `flock` on `lock` (with the holder's PID) for
//!   the queue's life; `queue stats|dump` take no lock.
//! - **All I/O goes through [`fs::Filesystem`]**, so tests inject faults and power cuts.
//!
//! The queue knows nothing of MQTT, WebSockets or JSON: payloads are opaque bytes.

mod ack;
mod ahead;
mod append;
#[cfg(test)]
pub mod fault_fs;
pub mod fs;
mod inspect;
mod lock;
mod read;
mod recover;
mod segment;
mod snapshot;
mod writer;

pub use inspect::{inspect_dir, DirSummary, DumpedRecord};
pub use snapshot::QueueSnapshot;
pub use writer::{spawn_writer, OnOutcome, QueueHandle, Then, WriteOutcome};

use self::ack::*;
use self::fs::{Filesystem, FsFile, OsFs};
use self::recover::probe_writable;
use self::segment::*;
use self::writer::Receipt;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{FsyncPolicy, OnFull, QueueConfig};

/// The first seq of the block after the one holding `seq`: seqs skip ahead only to such a
/// boundary (see [`SEQ_BLOCK`]), so recovery tells a gap made on purpose from lost records.
fn next_block(seq: u64) -> u64 {
    (seq / SEQ_BLOCK + 1) * SEQ_BLOCK
}

/// The reservation taken when `seq` is about to be issued: at least a block ahead, ending on
/// a block boundary, so a restart above it starts on one.
fn block_after(seq: u64) -> u64 {
    next_block(seq + SEQ_BLOCK - 1)
}

/// Every segment starts with this, so an all-NUL or foreign file is recognised at once.
const SEGMENT_MAGIC: &[u8; 8] = b"ARQSEG01";
const MAGIC_LEN: u64 = SEGMENT_MAGIC.len() as u64;
/// Bytes of framing before each payload.
pub const HEADER_LEN: usize = 24;
/// No single record may exceed this; it also bounds what a corrupt length field can make us read.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// How much a reader pulls from a segment in one `pread`: a few hundred alerts, small enough
/// to keep per-reader memory trivial on a Pi Zero.
const READ_CHUNK: usize = 64 * 1024;
/// `drop_oldest` frees a whole segment; capping a segment at `max_records / 8` records keeps at
/// least eight segments under that bound, so one drop frees about an eighth, not everything.
const SEGMENTS_PER_RECORD_BOUND: u64 = 8;
/// Sequence numbers reserved durably in the `seq` file at a time (hi/lo blocks): one small
/// in-place write and fdatasync per this many records.
pub const SEQ_BLOCK: u64 = 1 << 16;
/// A segment that cannot be read at start (EACCES, EIO) is tried this often, with doubling
/// waits from [`RECOVERY_READ_BACKOFF`], before the start is refused.
const RECOVERY_READ_ATTEMPTS: u32 = 4;
const RECOVERY_READ_BACKOFF: std::time::Duration = std::time::Duration::from_millis(25);
/// While running, a read that fails with an I/O error is tried again after this (doubling up
/// to [`READ_RETRY_MAX`]); the read position stays where it was.
const READ_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const READ_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot create queue directory {path}: {source} (does the service user own it?)")]
    CreateDir { path: PathBuf, source: io::Error },
    /// Disk full (ENOSPC), read-only filesystem (EROFS) or a failing card: the record was not
    /// stored; the relay keeps running and tries again with the next one.
    #[error("queue I/O failed on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The start-up probe (create + fsync a file in the queue directory) failed.
    #[error("queue directory {path} is not writable by user {user}: {source}; fix: give it to that user (`chown -R {user} {path}`) or point queue.dir at a directory it owns")]
    NotWritable {
        path: PathBuf,
        user: String,
        source: io::Error,
    },
    /// Another relay holds the queue directory's lock file.
    #[error("queue directory {path} is in use by another alert-relay (PID {pid}); stop it, or give each relay its own queue.dir")]
    Locked { path: PathBuf, pid: String },
    /// A segment could not be read at start even after retries: never quarantined or skipped
    /// for an I/O error (that is not corruption); the relay refuses to start instead.
    #[error("cannot read {path}: {source}; it is left as it is (an I/O or permission error is not corruption): fix its permissions or the disk and start again")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("queue is full ({what}) and on_full = \"drop_newest\"")]
    Full { what: String },
    #[error("record of {len} bytes exceeds the largest allowed ({max} bytes)")]
    TooLarge { len: usize, max: usize },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub accepted_us: u64,
    pub payload: Vec<u8>,
}

/// Counters the queue keeps; exported through `stats` as they are, inside [`QueueSnapshot`]
/// (field names are the JSON keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounters {
    pub appended: u64,
    /// Unpublished records deleted to make room (`on_full = "drop_oldest"`).
    pub dropped_oldest: u64,
    /// Records refused because the queue was full (`on_full = "drop_newest"`, or nothing left
    /// to drop).
    pub dropped_newest: u64,
    /// Unpublished records older than `max_age` when they came up for publishing.
    pub dropped_max_age: u64,
    /// Records that could not be written (disk full, read-only filesystem, I/O error).
    pub dropped_io_error: u64,
    /// Places where records failed their checksum (each counted once).
    pub corrupt_regions: u64,
    /// Unacknowledged records lost to corruption (unreadable sequence numbers).
    pub corrupt_records: u64,
    pub torn_tail_bytes: u64,
    pub quarantined_segments: u64,
    pub fsyncs: u64,
    /// Shown as the average, `fsync_latency_us_avg`.
    #[serde(skip)]
    pub fsync_us_total: u64,
    #[serde(rename = "fsync_latency_us_max")]
    pub fsync_us_max: u64,
    pub bytes_written: u64,
    pub payload_bytes: u64,
    /// Reads that failed with an I/O error (EACCES, EIO) and were retried.
    pub read_errors: u64,
    /// Appends (group commits) that failed with an I/O error: ENOSPC, EROFS, EACCES, EIO.
    pub append_io_errors: u64,
}

/// A point-in-time view of the queue, for stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueGauges {
    pub depth_records: u64,
    pub depth_bytes: u64,
    pub segments: usize,
    /// When the oldest unacknowledged record was accepted (µs since the epoch).
    pub oldest_unacked_us: Option<u64>,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    /// One past the last record written (buffered records excluded). For an older segment
    /// trusted at recovery, the next segment's first sequence number.
    next_seq: u64,
    /// Bytes written to the file (magic included).
    bytes: u64,
    /// Bytes known durable and readable.
    durable_bytes: u64,
    /// Some records failed their checksum: quarantine instead of delete.
    corrupt: bool,
}

impl Segment {
    fn file_name(first_seq: u64) -> String {
        format!("{first_seq:020}.seg")
    }
}

/// What the caller must fsync (outside any lock) before calling [`Queue::mark_durable`].
#[derive(Debug)]
pub struct SyncJob {
    pub file: Option<Arc<dyn FsFile>>,
    /// Older segments written by a roll in this group commit: synced first.
    extra: Vec<Arc<dyn FsFile>>,
    pub upto_seq: u64,
    segment_first_seq: u64,
    segment_bytes: u64,
    /// How long [`SyncJob::sync`] took, for the fsync latency gauge.
    took_us: Cell<Option<u64>>,
}

#[derive(Debug, Clone, Copy)]
struct ReadPos {
    segment_first_seq: u64,
    offset: u64,
    seq: u64,
}

pub struct Queue {
    fs: Arc<dyn Filesystem>,
    dir: PathBuf,
    max_bytes: u64,
    max_records: Option<u64>,
    max_age_us: Option<u64>,
    segment_bytes: u64,
    on_full: OnFull,
    fsync: FsyncPolicy,
    segments: VecDeque<Segment>,
    /// Append handle of the newest segment (None until the first append after start/roll).
    active: Option<Arc<dyn FsFile>>,
    /// Bytes appended but not yet written to `active`.
    pending: Vec<u8>,
    pending_first_seq: u64,
    next_seq: u64,
    /// No seq at or above this was ever issued: the value in the `seq` file, written (and
    /// synced) before any seq at or above the old value is handed out.
    reserved_upto: u64,
    durable_seq: u64,
    /// Every seq below this is acknowledged (or was dropped, or is unreadable).
    acked_upto: u64,
    acked_ahead: BTreeSet<u64>,
    /// Unreadable sequence ranges inside segments, start -> end (exclusive). Rare and small.
    holes: BTreeMap<u64, u64>,
    persisted_ack: u64,
    /// Fully acknowledged segments, out of `segments`, whose files are deleted when the ack
    /// position is next persisted ([`Queue::persist_ack`] or [`QueueHandle::flush_acks`]), off
    /// the publisher's thread. A crash before then only replays them (duplicates). Their bytes
    /// still count against `max_bytes` (the files are on disk until then): (first seq, bytes).
    retired: Vec<(u64, u64)>,
    read: Option<ReadPos>,
    read_seq: u64,
    reader: Option<SegReader>,
    /// Where the oldest unacked record was last found, so the age gauge walks only forward.
    ack_hint: Cell<Option<ReadPos>>,
    counters: QueueCounters,
    /// The last append's I/O error while appends fail (cleared by the next durable one).
    append_failure: Option<String>,
    /// `append_failure` came from a failed fsync: only a successful one clears it.
    sync_failing: bool,
    /// A roll's write of the records buffered before it failed: the next commit says so.
    roll_failure: Option<QueueError>,
    /// After a read failed with an I/O error: when to try again, and the current backoff.
    read_retry: Option<(Instant, std::time::Duration)>,
    /// Older segments written by a roll but not yet fsynced: the next [`SyncJob`] syncs them.
    unsynced: Vec<Arc<dyn FsFile>>,
    /// Senders of records written and not yet synced (one group commit's), by seq: answered
    /// by [`Queue::ack`] when the broker acknowledges a record before its fsync ends; the
    /// writer takes the rest back after the fsync ([`Queue::take_receipts`]).
    receipts: BTreeMap<u64, Receipt>,
    /// The fsync owed for records a caller wrote directly ([`QueueHandle`]'s direct append),
    /// taken by the writer thread with its next group commit ([`Queue::take_owed`]).
    owed: Option<SyncJob>,
    /// When the oldest write in `owed` was made.
    owed_since: Option<Instant>,
    /// The writes in `owed` the broker has not acknowledged yet, oldest first: the seq each
    /// ends before, and when it was made. The owed fsync is due
    /// [`SYNC_GRACE`](ahead::SYNC_GRACE) after the first of them ([`Queue::sync_due`]); a
    /// PUBACK pops what it covers. At most [`GRACE_WRITES`](ahead::GRACE_WRITES) long
    /// (newer writes then join the last entry, keeping its older time).
    unacked_writes: VecDeque<(u64, Instant)>,
    /// The sync timer asked the writer for the owed fsync; cleared when it is taken.
    sync_asked: bool,
    /// Graces in a row that ended without the PUBACK (a broker with Nagle on delays each
    /// PUBACK until the next publish): from [`LATE_AFTER`](ahead::LATE_AFTER) on, a direct
    /// write asks for its fsync at once, except every [`PROBE_EVERY`](ahead::PROBE_EVERY)th.
    late_graces: u32,
    /// Direct writes owed while PUBACKs were late, for the probe.
    late_owes: u32,
    /// The writer's sync timer, told when [`Queue::sync_due`] moves (none: no timer).
    sync_wake: Option<Arc<tokio::sync::Notify>>,
    /// The exclusive `flock` on `lock`, held while the queue is open (real filesystem only).
    _lock: Option<std::fs::File>,
}

/// What recovery found, for one log line at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub unacked_records: u64,
    pub torn_tail_bytes: u64,
    pub corrupt_regions: u64,
    pub quarantined_segments: u64,
}

impl Queue {
    /// Opens (or creates) the queue in `cfg.dir` and recovers it. Never fails on bad data,
    /// only when the directory itself cannot be used.
    /// Proves the directory writable (a probe file created and fsynced) and takes its lock
    /// first: a second relay on the same directory fails here.
    pub fn open(cfg: &QueueConfig) -> Result<(Queue, RecoveryReport), QueueError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| QueueError::CreateDir {
            path: cfg.dir.clone(),
            source,
        })?;
        probe_writable(&cfg.dir)?;
        let lock = lock::acquire(&cfg.dir)?;
        let (mut q, report) = Queue::open_with(cfg, Arc::new(OsFs))?;
        q._lock = Some(lock);
        Ok((q, report))
    }

    /// [`Queue::open`] through the filesystem `fs` (tests pass a fault-injecting one).
    pub fn open_with(
        cfg: &QueueConfig,
        fs: Arc<dyn Filesystem>,
    ) -> Result<(Queue, RecoveryReport), QueueError> {
        let dir = cfg.dir.clone();
        fs.create_dir_all(&dir)
            .map_err(|source| QueueError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        let mut q = Queue {
            fs,
            dir,
            max_bytes: cfg.max_bytes,
            max_records: cfg.max_records,
            max_age_us: cfg.max_age.map(|d| d.as_micros() as u64),
            segment_bytes: cfg.segment_bytes,
            on_full: cfg.on_full,
            fsync: cfg.fsync,
            segments: VecDeque::new(),
            active: None,
            pending: Vec::new(),
            pending_first_seq: 0,
            next_seq: 1,
            reserved_upto: 0,
            durable_seq: 1,
            acked_upto: 1,
            acked_ahead: BTreeSet::new(),
            holes: BTreeMap::new(),
            persisted_ack: 1,
            retired: Vec::new(),
            read: None,
            read_seq: 1,
            reader: None,
            ack_hint: Cell::new(None),
            counters: QueueCounters::default(),
            read_retry: None,
            append_failure: None,
            sync_failing: false,
            roll_failure: None,
            unsynced: Vec::new(),
            receipts: BTreeMap::new(),
            owed: None,
            owed_since: None,
            unacked_writes: VecDeque::with_capacity(ahead::GRACE_WRITES),
            sync_asked: false,
            late_graces: 0,
            late_owes: 0,
            sync_wake: None,
            _lock: None,
        };
        let report = q.recover()?;
        Ok((q, report))
    }

    fn path_of(&self, first_seq: u64) -> PathBuf {
        self.dir.join(Segment::file_name(first_seq))
    }

    /// The queue's filesystem cannot hold `max_bytes`: `Some((free, short))` when its free
    /// space plus what the queue already holds is `short` bytes below the bound (appends will
    /// fail with ENOSPC before the bound is reached). `None` when it fits or is unknown.
    pub fn space_short(&self) -> Option<(u64, u64)> {
        let free = self.fs.available_bytes(&self.dir).ok()?;
        let room = free.saturating_add(self.total_bytes());
        (room < self.max_bytes).then(|| (free, self.max_bytes - room))
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Records in `from..to` that are neither acknowledged nor unreadable.
    fn unacked_in(&self, from: u64, to: u64) -> u64 {
        if to <= from {
            return 0;
        }
        let acked = self.acked_ahead.range(from..to).count() as u64;
        let holes: u64 = self
            .holes
            .iter()
            .map(|(&s, &e)| e.min(to).saturating_sub(s.max(from)))
            .sum();
        (to - from).saturating_sub(acked + holes)
    }

    /// Writes and syncs anything buffered and persists the ack position.
    pub fn close(&mut self) -> Result<(), QueueError> {
        let job = self.commit()?;
        if let Some(job) = self.take_owed(job) {
            job.sync(self.fsync)?;
            self.mark_durable(&job);
        }
        self.persist_ack()?;
        // Nothing at or above `next_seq` was issued: give the rest of the reservation back,
        // so a clean restart carries on without a gap.
        if self.reserved_upto > self.next_seq {
            let next = self.next_seq;
            self.reserve(next)?;
        }
        Ok(())
    }

    pub fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    /// Unacknowledged records held (buffered ones included).
    fn depth_records(&self) -> u64 {
        let mut n: u64 = self
            .segments
            .iter()
            .map(|s| self.unacked_in(s.first_seq.max(self.acked_upto), s.next_seq))
            .sum();
        if !self.pending.is_empty() {
            n += self.unacked_in(self.pending_first_seq.max(self.acked_upto), self.next_seq);
        }
        n
    }

    pub fn gauges(&self) -> QueueGauges {
        QueueGauges {
            depth_records: self.depth_records(),
            depth_bytes: self.total_bytes(),
            segments: self.segments.len(),
            oldest_unacked_us: self.oldest_unacked_us(),
        }
    }

    /// When the oldest unacknowledged record was accepted: its header is found by walking the
    /// headers of its segment, from where the last call found it.
    fn oldest_unacked_us(&self) -> Option<u64> {
        let target = self.acked_upto;
        if target >= self.durable_seq {
            return None;
        }
        let seg = self
            .segments
            .iter()
            .find(|s| s.first_seq <= target && target < s.next_seq)?;
        let mut pos = match self.ack_hint.get() {
            Some(p) if p.segment_first_seq == seg.first_seq && p.seq <= target => p,
            _ => ReadPos {
                segment_first_seq: seg.first_seq,
                offset: MAGIC_LEN,
                seq: seg.first_seq,
            },
        };
        let file = self.fs.open_read(&self.path_of(seg.first_seq)).ok()?;
        let mut h = [0u8; HEADER_LEN];
        loop {
            read_exact_at(&*file, &mut h, pos.offset).ok()?;
            let hdr = Header::parse(&h);
            if hdr.seq != pos.seq || hdr.len > MAX_RECORD_BYTES {
                return None; // corrupt: the reader will deal with it
            }
            if pos.seq == target {
                self.ack_hint.set(Some(pos));
                return Some(hdr.accepted_us);
            }
            pos.offset += (HEADER_LEN + hdr.len) as u64;
            pos.seq += 1;
        }
    }

    /// Sequence number of the oldest unacknowledged record (the next to be published after a
    /// rewind).
    pub fn first_unacked(&self) -> u64 {
        self.acked_upto
    }

    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.fsync
    }
}

impl SyncJob {
    /// fsyncs the segment (a no-op under `fsync = "never"`).
    pub fn sync(&self, policy: FsyncPolicy) -> Result<(), QueueError> {
        if policy == FsyncPolicy::Never {
            return Ok(());
        }
        let t0 = Instant::now();
        for f in self.extra.iter().chain(self.file.iter()) {
            f.sync_data().map_err(|source| QueueError::Io {
                path: PathBuf::from(Segment::file_name(self.segment_first_seq)),
                source,
            })?;
        }
        if self.file.is_some() || !self.extra.is_empty() {
            self.took_us.set(Some(t0.elapsed().as_micros() as u64));
        }
        Ok(())
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
