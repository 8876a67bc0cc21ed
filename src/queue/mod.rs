//! The durable log: every accepted message is appended here and made durable before it is
//! published; it leaves only once the broker has acknowledged it.
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
//!   one `write` and hands back a [`SyncJob`] that the caller fsyncs *outside* any lock; only then
//!   does [`Queue::mark_durable`] make the records readable. With `fsync = "batch"` the window of
//!   data loss on power cut is zero for readable records; with `never`, whatever the kernel had
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
//!   buffered records are reported failed and counted; the next append tries again in a fresh
//!   segment. A failed ack persist is logged and retried later.
//!
//! The queue knows nothing of MQTT, WebSockets or JSON: payloads are opaque bytes.

mod inspect;
mod writer;

pub use inspect::{inspect_dir, DirSummary, DumpedRecord};
pub use writer::{spawn_writer, OnOutcome, QueueHandle, Then, WriteOutcome};

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{FsyncPolicy, OnFull, QueueConfig};

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

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot create queue directory {path}: {source} (does the service user own it?)")]
    CreateDir { path: PathBuf, source: io::Error },
    /// Disk full (ENOSPC), read-only filesystem (EROFS) or a failing card: the record was not
    /// stored; the relay keeps running and tries again with the next one.
    #[error("queue I/O failed on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
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

/// Counters the queue keeps; exported through `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    pub fsync_us_total: u64,
    pub fsync_us_max: u64,
    pub bytes_written: u64,
    pub payload_bytes: u64,
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
    pub file: Option<Arc<File>>,
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
    dir: PathBuf,
    max_bytes: u64,
    max_records: Option<u64>,
    max_age_us: Option<u64>,
    segment_bytes: u64,
    on_full: OnFull,
    fsync: FsyncPolicy,
    segments: VecDeque<Segment>,
    /// Append handle of the newest segment (None until the first append after start/roll).
    active: Option<Arc<File>>,
    /// Bytes appended but not yet written to `active`.
    pending: Vec<u8>,
    pending_first_seq: u64,
    next_seq: u64,
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
    pub fn open(cfg: &QueueConfig) -> Result<(Queue, RecoveryReport), QueueError> {
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(|source| QueueError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let mut q = Queue {
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
        };
        let report = q.recover()?;
        Ok((q, report))
    }

    fn path_of(&self, first_seq: u64) -> PathBuf {
        self.dir.join(Segment::file_name(first_seq))
    }

    fn recover(&mut self) -> Result<RecoveryReport, QueueError> {
        self.acked_upto = read_ack_file(&self.dir.join("ack")).unwrap_or(1).max(1);
        self.persisted_ack = self.acked_upto;
        let firsts = list_segments(&self.dir).map_err(io_err(&self.dir))?;
        let count = firsts.len();
        for (i, &first) in firsts.iter().enumerate() {
            let path = self.path_of(first);
            let successor = firsts.get(i + 1).copied();
            // A segment whose successor starts at or below the ack position is fully acked.
            if successor.is_some_and(|s| s <= self.acked_upto) {
                if let Err(e) = fs::remove_file(&path) {
                    log::warn!("queue: cannot delete acked {}: {e}", path.display());
                }
                continue;
            }
            let magic_ok = match segment_magic_ok(&path) {
                Ok(ok) => ok,
                Err(e) => {
                    log::error!(
                        "queue: cannot read segment {}: {e}; quarantining it",
                        path.display()
                    );
                    self.quarantine(first);
                    continue;
                }
            };
            if !magic_ok {
                log::error!(
                    "queue: segment {} has no valid header (power cut before it was written?); quarantining it",
                    path.display()
                );
                self.quarantine(first);
                continue;
            }
            if let Some(next) = successor {
                // Trusted by size; every record is CRC-checked when it is read.
                let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(MAGIC_LEN);
                self.segments.push_back(Segment {
                    first_seq: first,
                    next_seq: next.max(first),
                    bytes,
                    durable_bytes: bytes,
                    corrupt: false,
                });
                continue;
            }
            debug_assert_eq!(i + 1, count);
            self.recover_newest(first, &path);
        }
        if let Some(last) = self.segments.back() {
            self.next_seq = last.next_seq.max(self.acked_upto);
        } else {
            self.next_seq = self.acked_upto;
        }
        self.durable_seq = self.next_seq;
        self.pending_first_seq = self.next_seq;
        self.skip_ack_gaps();
        self.read_seq = self.acked_upto;
        let report = RecoveryReport {
            segments: self.segments.len(),
            unacked_records: self.depth_records(),
            torn_tail_bytes: self.counters.torn_tail_bytes,
            corrupt_regions: self.counters.corrupt_regions,
            quarantined_segments: self.counters.quarantined_segments,
        };
        Ok(report)
    }

    /// Scans the newest segment record by record: skips corrupt records (resync), truncates a
    /// torn tail.
    fn recover_newest(&mut self, first: u64, path: &Path) {
        let scan = match scan_segment(path, first, None) {
            Ok(s) => s,
            Err(e) => {
                log::error!(
                    "queue: cannot read segment {}: {e}; quarantining it",
                    path.display()
                );
                self.quarantine(first);
                return;
            }
        };
        for &(start, end) in &scan.holes {
            let lost = self.unacked_in(start.max(self.acked_upto), end);
            self.counters.corrupt_regions += 1;
            self.counters.corrupt_records += lost;
            log::error!(
                "queue: records seq {start}..{end} in {} fail their checksum; skipped (intact records after them are kept); the segment will be quarantined",
                path.display()
            );
            self.add_hole(start, end);
        }
        if scan.valid_bytes < scan.file_bytes {
            let bad = scan.file_bytes - scan.valid_bytes;
            log::warn!(
                "queue: truncating torn tail of {} ({bad} bytes after {} intact records)",
                path.display(),
                scan.next_seq - first
            );
            let cut = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(scan.valid_bytes).and_then(|()| f.sync_all()));
            if let Err(e) = cut {
                // Read-only filesystem, say: the tail stays on disk but is never read (reads
                // stop at the valid length), and new records go to a new segment.
                log::error!("queue: cannot truncate {}: {e}", path.display());
            }
            self.counters.torn_tail_bytes += bad;
        }
        self.segments.push_back(Segment {
            first_seq: first,
            next_seq: scan.next_seq,
            bytes: scan.valid_bytes,
            durable_bytes: scan.valid_bytes,
            corrupt: !scan.holes.is_empty(),
        });
    }

    fn quarantine(&mut self, first_seq: u64) {
        let from = self.path_of(first_seq);
        let base = format!("{}.corrupt", Segment::file_name(first_seq));
        // Never overwrite an earlier quarantined file of the same name.
        let mut to = self.dir.join(&base);
        let mut n = 1;
        while to.exists() {
            to = self.dir.join(format!("{base}.{n}"));
            n += 1;
        }
        match fs::rename(&from, &to) {
            Ok(()) => {
                self.counters.quarantined_segments += 1;
                log::warn!("queue: quarantined {} as {}", from.display(), to.display());
            }
            Err(e) => log::error!("queue: cannot quarantine {}: {e}", from.display()),
        }
    }

    /// Closes the cached reader if it reads segment `first_seq`.
    fn drop_reader_of(&mut self, first_seq: u64) {
        if self
            .reader
            .as_ref()
            .is_some_and(|r| r.first_seq == first_seq)
        {
            self.reader = None;
        }
    }

    fn quarantine_or_delete(&mut self, first_seq: u64, corrupt: bool) {
        self.drop_reader_of(first_seq);
        if corrupt {
            self.quarantine(first_seq);
        } else {
            let path = self.path_of(first_seq);
            if let Err(e) = fs::remove_file(&path) {
                log::warn!("queue: cannot delete {}: {e}", path.display());
            }
        }
    }

    /// Buffers one record. Returns its sequence number. Call [`Queue::commit`] to write it.
    pub fn append(&mut self, payload: &[u8], accepted_us: u64) -> Result<u64, QueueError> {
        let largest = MAX_RECORD_BYTES.min((self.segment_bytes / 2) as usize - HEADER_LEN);
        if payload.len() > largest {
            return Err(QueueError::TooLarge {
                len: payload.len(),
                max: largest,
            });
        }
        let size = (HEADER_LEN + payload.len()) as u64;
        let need_roll = match self.segments.back() {
            None => true,
            Some(s) => {
                self.active.is_none() && s.bytes > MAGIC_LEN
                    || s.corrupt
                    || s.bytes + self.pending.len() as u64 + size > self.segment_bytes
                    || self
                        .segment_records_cap()
                        .is_some_and(|cap| self.next_seq - s.first_seq >= cap)
            }
        };
        if need_roll && !self.retired.is_empty() {
            // Acknowledged segments go at the latest when a new one is made (on this, the
            // writer's thread): the disk never holds more than one segment's worth of them
            // for long, and a full disk gets its room back before the new segment is created.
            self.persist_ack_or_log();
        }
        // A new segment costs its magic too. Dropping old segments never touches the newest,
        // so `need_roll` stays true while making room.
        let need = size + if need_roll { MAGIC_LEN } else { 0 };
        while let Some(what) = self.over_bound(need) {
            if !self.retired.is_empty() {
                // Acknowledged segments awaiting deletion come first: delete them now.
                self.persist_ack_or_log();
                continue;
            }
            let dropped = match self.on_full {
                OnFull::DropNewest => false,
                OnFull::DropOldest => self.drop_oldest_segment(),
            };
            if !dropped {
                self.counters.dropped_newest += 1;
                return Err(QueueError::Full { what });
            }
        }
        let ready = if need_roll {
            self.roll()
        } else if self.active.is_none() {
            self.open_active()
        } else {
            Ok(())
        };
        if let Err(e) = ready {
            self.counters.dropped_io_error += 1;
            return Err(e);
        }
        let seq = self.next_seq;
        if self.pending.is_empty() {
            self.pending_first_seq = seq;
        }
        let len = payload.len() as u32;
        let mut crc = crc32c::crc32c(&len.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &seq.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &accepted_us.to_le_bytes());
        crc = crc32c::crc32c_append(crc, payload);
        self.pending.extend_from_slice(&len.to_le_bytes());
        self.pending.extend_from_slice(&crc.to_le_bytes());
        self.pending.extend_from_slice(&seq.to_le_bytes());
        self.pending.extend_from_slice(&accepted_us.to_le_bytes());
        self.pending.extend_from_slice(payload);
        self.next_seq += 1;
        self.counters.appended += 1;
        self.counters.payload_bytes += payload.len() as u64;
        Ok(seq)
    }

    /// Which bound one more record of `size` bytes would break, if any.
    fn over_bound(&self, size: u64) -> Option<String> {
        let retired: u64 = self.retired.iter().map(|&(_, b)| b).sum();
        if self.total_bytes() + retired + self.pending.len() as u64 + size > self.max_bytes {
            return Some(format!("max_bytes = {}", self.max_bytes));
        }
        match self.max_records {
            Some(max) if self.depth_records() + 1 > max => Some(format!("max_records = {max}")),
            _ => None,
        }
    }

    fn segment_records_cap(&self) -> Option<u64> {
        self.max_records
            .map(|m| (m / SEGMENTS_PER_RECORD_BOUND).max(1))
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Deletes the oldest segment to make room; false if only the active segment is left.
    fn drop_oldest_segment(&mut self) -> bool {
        if self.segments.len() < 2 {
            return false;
        }
        let Some(seg) = self.segments.pop_front() else {
            return false;
        };
        let from = seg.first_seq.max(self.acked_upto);
        let lost = self.unacked_in(from, seg.next_seq);
        if lost > 0 {
            log::warn!(
                "queue: full; dropped {lost} unpublished records (seq {from}..{})",
                seg.next_seq
            );
        }
        self.counters.dropped_oldest += lost;
        self.quarantine_or_delete(seg.first_seq, seg.corrupt);
        if self.acked_upto < seg.next_seq {
            self.acked_upto = seg.next_seq;
        }
        self.skip_ack_gaps();
        if self
            .read
            .is_some_and(|p| p.segment_first_seq == seg.first_seq)
        {
            self.read = None;
        }
        self.read_seq = self.read_seq.max(self.acked_upto);
        self.persist_ack_or_log();
        true
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

    fn open_active(&mut self) -> Result<(), QueueError> {
        if let Some(seg) = self.segments.back() {
            let path = self.path_of(seg.first_seq);
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.active = Some(Arc::new(f));
        }
        Ok(())
    }

    /// Closes the active segment (writing and syncing what it has) and starts a new one.
    fn roll(&mut self) -> Result<(), QueueError> {
        if !self.pending.is_empty() {
            if let Some(job) = self.commit()? {
                job.sync(self.fsync)?;
                self.mark_durable(&job);
            }
        }
        self.active = None;
        let first = self.next_seq;
        let path = self.path_of(first);
        let t0 = Instant::now();
        let created = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(SEGMENT_MAGIC)?;
                if self.fsync != FsyncPolicy::Never {
                    f.sync_all()?;
                    // The new file's directory entry must be durable too, or a power cut
                    // loses it.
                    File::open(&self.dir)?.sync_all()?;
                }
                Ok(f)
            });
        let f = match created {
            Ok(f) => f,
            Err(source) => {
                // Disk full or read-only: leave no half-made segment behind.
                let _ = fs::remove_file(&path);
                return Err(QueueError::Io { path, source });
            }
        };
        if self.fsync != FsyncPolicy::Never {
            self.count_fsync(2, t0.elapsed().as_micros() as u64);
        }
        self.counters.bytes_written += MAGIC_LEN;
        self.segments.push_back(Segment {
            first_seq: first,
            next_seq: first,
            bytes: MAGIC_LEN,
            durable_bytes: MAGIC_LEN,
            corrupt: false,
        });
        self.active = Some(Arc::new(f));
        Ok(())
    }

    fn count_fsync(&mut self, n: u64, took_us: u64) {
        self.counters.fsyncs += n;
        self.counters.fsync_us_total += took_us;
        self.counters.fsync_us_max = self.counters.fsync_us_max.max(took_us);
    }

    /// Writes buffered records to the active segment with one `write`. On failure the file is
    /// cut back to its last good length and the buffered records are dropped and counted (the
    /// caller reports them as not accepted), so a full disk never leaves a torn record behind.
    pub fn commit(&mut self) -> Result<Option<SyncJob>, QueueError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let (Some(seg), Some(file)) = (self.segments.back_mut(), self.active.as_ref()) else {
            return Ok(None);
        };
        let path = self.dir.join(Segment::file_name(seg.first_seq));
        if let Err(source) = (&**file).write_all(&self.pending) {
            let _ = file.set_len(seg.bytes);
            let n = self.next_seq - self.pending_first_seq;
            self.counters.dropped_io_error += n;
            self.counters.appended -= n;
            self.next_seq = self.pending_first_seq;
            self.pending.clear();
            // The next append starts a fresh segment (a failed write may have left the
            // file's tail in any state).
            self.active = None;
            return Err(QueueError::Io { path, source });
        }
        seg.bytes += self.pending.len() as u64;
        seg.next_seq = self.next_seq;
        self.counters.bytes_written += self.pending.len() as u64;
        self.pending.clear();
        // The writer fsyncs through a second reference to the same open file: no dup(2).
        let file = match self.fsync {
            FsyncPolicy::Never => None,
            _ => Some(file.clone()),
        };
        Ok(Some(SyncJob {
            file,
            upto_seq: self.next_seq,
            segment_first_seq: seg.first_seq,
            segment_bytes: seg.bytes,
            took_us: Cell::new(None),
        }))
    }

    /// Records that everything covered by `job` is durable, making it readable.
    pub fn mark_durable(&mut self, job: &SyncJob) {
        if let Some(us) = job.took_us.get() {
            self.count_fsync(1, us);
        }
        if job.upto_seq > self.durable_seq {
            self.durable_seq = job.upto_seq;
        }
        for seg in self.segments.iter_mut() {
            if seg.first_seq == job.segment_first_seq {
                seg.durable_bytes = seg.durable_bytes.max(job.segment_bytes);
            } else if seg.first_seq < job.segment_first_seq {
                seg.durable_bytes = seg.bytes;
            }
        }
    }

    /// Appends, writes and syncs in one call (for tools and tests; the daemon uses the
    /// split form through the writer thread).
    pub fn append_durable(&mut self, payload: &[u8], accepted_us: u64) -> Result<u64, QueueError> {
        let seq = self.append(payload, accepted_us)?;
        if let Some(job) = self.commit()? {
            job.sync(self.fsync)?;
            self.mark_durable(&job);
        }
        Ok(seq)
    }

    /// Reads durable records from the read position, at most `max_records` or about
    /// `max_bytes` of payload, and advances the read position past them. Records older than
    /// `max_age` are dropped (acknowledged and counted) instead of returned, judged by a clock
    /// that a forward jump cannot age them by ([`crate::timesync::queue_now_us`]).
    pub fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        let now = crate::timesync::queue_now_us();
        self.read_batch_at(max_records, max_bytes, now)
    }

    /// [`Queue::read_batch`] with the clock passed in (`now_us`, µs since the epoch).
    pub fn read_batch_at(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        now_us: u64,
    ) -> Result<Vec<Record>, QueueError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut expired = Vec::new();
        let cutoff = self.max_age_us.map(|a| now_us.saturating_sub(a));
        while out.len() < max_records && bytes < max_bytes {
            self.skip_read_gaps();
            if self.read_seq >= self.durable_seq {
                break;
            }
            let pos = self.seek();
            let Some(idx) = self
                .segments
                .iter()
                .position(|s| s.first_seq == pos.segment_first_seq)
            else {
                self.read = None;
                break;
            };
            let seg = &self.segments[idx];
            let (seg_next, end) = (seg.next_seq, seg.durable_bytes);
            if pos.seq >= seg_next {
                // This segment is read to its end: go on with the next one, if any.
                match self.segments.get(idx + 1) {
                    Some(n) => {
                        self.read_seq = self.read_seq.max(n.first_seq);
                        self.read = None;
                        continue;
                    }
                    None => break,
                }
            }
            let limit = seg_next.min(self.durable_seq);
            if pos.seq >= limit {
                break;
            }
            let path = self.path_of(pos.segment_first_seq);
            let decoded = self
                .reader_for(pos.segment_first_seq)
                .and_then(|r| decode_at(r, pos.offset, pos.seq, end));
            match decoded {
                Ok(Decoded::Record(rec, used)) => {
                    self.read = Some(ReadPos {
                        offset: pos.offset + used as u64,
                        seq: pos.seq + 1,
                        ..pos
                    });
                    if rec.seq < self.read_seq {
                        continue; // walking up to the read position
                    }
                    self.read_seq = rec.seq + 1;
                    if self.acked_ahead.contains(&rec.seq) {
                        continue;
                    }
                    if cutoff.is_some_and(|c| rec.accepted_us < c) {
                        expired.push(rec.seq);
                        continue;
                    }
                    bytes += rec.payload.len();
                    out.push(rec);
                }
                Ok(bad) => {
                    let resynced = match bad {
                        Decoded::Truncated if pos.offset >= end => Ok(None),
                        _ => self
                            .reader_for(pos.segment_first_seq)
                            .and_then(|r| resync(r, pos.offset + 1, end, pos.seq + 1, limit)),
                    };
                    let found = resynced.unwrap_or_else(|e| {
                        log::error!("queue: reading {} failed: {e}", path.display());
                        None
                    });
                    let (to_off, to_seq) = found.unwrap_or((end, limit));
                    // Counted once: when it was first found (at recovery or an earlier read).
                    if !self.in_hole(pos.seq) {
                        self.lose(idx, pos.seq, to_seq, &path);
                    }
                    self.read = Some(ReadPos {
                        offset: to_off,
                        seq: to_seq,
                        ..pos
                    });
                    self.read_seq = self.read_seq.max(to_seq);
                }
                Err(e) => {
                    // The file vanished or the card fails: what is left of this segment is
                    // unreadable. Skip it rather than stall the publisher on it forever.
                    log::error!("queue: reading {} failed: {e}", path.display());
                    self.reader = None;
                    if !self.in_hole(pos.seq) {
                        self.lose(idx, pos.seq, limit, &path);
                    }
                    self.read = Some(ReadPos {
                        offset: end,
                        seq: limit,
                        ..pos
                    });
                    self.read_seq = self.read_seq.max(limit);
                }
            }
        }
        if !expired.is_empty() {
            log::warn!(
                "queue: dropped {} unpublished records older than max_age (seq {}..={})",
                expired.len(),
                expired[0],
                expired[expired.len() - 1]
            );
            self.counters.dropped_max_age += expired.len() as u64;
            for seq in expired {
                self.ack(seq)?;
            }
        }
        self.skip_ack_gaps();
        Ok(out)
    }

    /// Marks `start..end` of segment `idx` unreadable: counted, logged, quarantined later.
    fn lose(&mut self, idx: usize, start: u64, end: u64, path: &Path) {
        let lost = self.unacked_in(start.max(self.acked_upto), end);
        log::error!(
            "queue: records seq {start}..{end} in {} are unreadable ({lost} unacknowledged lost); skipping to the next intact record; the segment will be quarantined",
            path.display()
        );
        self.counters.corrupt_regions += 1;
        self.counters.corrupt_records += lost;
        if let Some(seg) = self.segments.get_mut(idx) {
            seg.corrupt = true;
        }
        self.add_hole(start, end);
    }

    fn in_hole(&self, seq: u64) -> bool {
        self.holes
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &e)| e > seq)
    }

    fn add_hole(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let inside: Vec<u64> = self.acked_ahead.range(start..end).copied().collect();
        for s in inside {
            self.acked_ahead.remove(&s);
        }
        self.holes.insert(start, end);
        self.skip_ack_gaps();
    }

    fn reader_for(&mut self, first_seq: u64) -> io::Result<&mut SegReader> {
        if self
            .reader
            .as_ref()
            .is_none_or(|r| r.first_seq != first_seq)
        {
            self.reader = Some(SegReader::open(&self.path_of(first_seq), first_seq)?);
        }
        self.reader
            .as_mut()
            .ok_or_else(|| io::Error::other("segment reader missing"))
    }

    /// Moves the read position over acknowledged and unreadable sequence numbers.
    fn skip_read_gaps(&mut self) {
        self.read_seq = self.read_seq.max(self.acked_upto);
        loop {
            let before = self.read_seq;
            if let Some((_, &e)) = self.holes.range(..=self.read_seq).next_back() {
                self.read_seq = self.read_seq.max(e);
            }
            while self.acked_ahead.contains(&self.read_seq) {
                self.read_seq += 1;
            }
            if self.read_seq == before {
                break;
            }
        }
    }

    /// The position to read `read_seq` from: the current one if it is on the way, else the
    /// start of the segment that holds it (records before it are read and skipped).
    fn seek(&mut self) -> ReadPos {
        let target = self.read_seq;
        if let Some(p) = self.read {
            let same = self.segments.iter().any(|s| {
                s.first_seq == p.segment_first_seq && p.seq <= target && target < s.next_seq
            });
            if same {
                return p;
            }
        }
        // The segment holding `target`, or the next one after a gap.
        let seg = self
            .segments
            .iter()
            .find(|s| target < s.next_seq)
            .or_else(|| self.segments.back());
        let first = seg.map_or(target, |s| s.first_seq);
        let p = ReadPos {
            segment_first_seq: first,
            offset: MAGIC_LEN,
            seq: first,
        };
        self.read = Some(p);
        p
    }

    /// Moves the read position back to the oldest unacknowledged record (after a broker
    /// reconnect everything unacknowledged is sent again, in queue order).
    pub fn rewind(&mut self) {
        self.read_seq = self.acked_upto;
    }

    /// Marks `seq` acknowledged. Deletes segments that become fully acknowledged.
    pub fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        if seq < self.acked_upto || seq >= self.next_seq {
            return Ok(());
        }
        if seq == self.acked_upto {
            self.acked_upto += 1;
        } else {
            self.acked_ahead.insert(seq);
        }
        self.skip_ack_gaps();
        self.delete_acked_segments();
        Ok(())
    }

    /// Jumps the ack position over sequence numbers that no longer exist (dropped or
    /// quarantined segments, unreadable records) and over records acked out of order.
    fn skip_ack_gaps(&mut self) {
        loop {
            let before = self.acked_upto;
            for seg in &self.segments {
                if self.acked_upto < seg.first_seq {
                    self.acked_upto = seg.first_seq;
                    break;
                }
                if self.acked_upto < seg.next_seq {
                    break;
                }
            }
            if let Some((_, &e)) = self.holes.range(..=self.acked_upto).next_back() {
                self.acked_upto = self.acked_upto.max(e);
            }
            while self.acked_ahead.remove(&self.acked_upto) {
                self.acked_upto += 1;
            }
            if self.acked_upto == before {
                break;
            }
        }
        if self
            .acked_ahead
            .first()
            .is_some_and(|&s| s < self.acked_upto)
        {
            self.acked_ahead = self.acked_ahead.split_off(&self.acked_upto);
        }
        // Holes are kept while their segment exists, so a reader walking over one again (after
        // a rewind) recognises it instead of counting it twice.
        let oldest = self
            .segments
            .front()
            .map_or(self.acked_upto, |s| s.first_seq);
        while let Some((&s, &e)) = self.holes.first_key_value() {
            if e > oldest {
                break;
            }
            self.holes.remove(&s);
        }
    }

    fn delete_acked_segments(&mut self) {
        let mut deleted = false;
        while self.segments.len() > 1 {
            let (first, next, corrupt, bytes) = match self.segments.front() {
                Some(s) => (s.first_seq, s.next_seq, s.corrupt, s.bytes),
                None => break,
            };
            if next > self.acked_upto {
                break;
            }
            self.segments.pop_front();
            if corrupt {
                // Rare; a rename, no fsync: quarantined at once.
                self.quarantine_or_delete(first, true);
            } else {
                self.drop_reader_of(first);
                self.retired.push((first, bytes));
            }
            if self.read.is_some_and(|p| p.segment_first_seq == first) {
                self.read = None;
            }
            deleted = true;
        }
        if deleted {
            self.skip_ack_gaps();
            self.read_seq = self.read_seq.max(self.acked_upto);
        }
    }

    /// Under the lock: what [`QueueHandle::flush_acks`] must write and delete, or `None` when
    /// nothing is due. Retired segments are handed over; their files are the flush's to delete.
    fn begin_flush(&mut self) -> Option<AckFlush> {
        if !self.ack_dirty() {
            return None;
        }
        Some(AckFlush {
            dir: self.dir.clone(),
            position: self.acked_upto,
            write: self.acked_upto != self.persisted_ack,
            fsync: self.fsync,
            delete: std::mem::take(&mut self.retired)
                .into_iter()
                .map(|(first, _)| self.path_of(first))
                .collect(),
        })
    }

    /// Under the lock again: records what the flush achieved (`written`: the ack file was).
    fn end_flush(&mut self, flush: &AckFlush, fsync_us: Option<u64>, written: bool) {
        if written {
            self.counters.bytes_written += ACK_FILE_LEN as u64;
            self.persisted_ack = self.persisted_ack.max(flush.position);
        }
        if let Some(us) = fsync_us {
            self.count_fsync(1, us);
        }
    }

    fn persist_ack_or_log(&mut self) {
        if let Err(e) = self.persist_ack() {
            // Not fatal: the position is kept in memory and persisted on the next attempt;
            // a crash before then only replays acked records (duplicates).
            log::error!("queue: cannot persist the ack position: {e}");
        }
    }

    /// True when the in-memory ack position is ahead of the persisted one, or acknowledged
    /// segments wait to be deleted.
    pub fn ack_dirty(&self) -> bool {
        self.acked_upto != self.persisted_ack || !self.retired.is_empty()
    }

    /// Persists the ack position (write, fsync, rename) and deletes fully acknowledged
    /// segments, holding the queue. The daemon's publisher uses [`QueueHandle::flush_acks`]
    /// instead, about once a second, which does the I/O without the lock; this is for close,
    /// for `drop_oldest` on the writer thread, and for tools and tests.
    pub fn persist_ack(&mut self) -> Result<(), QueueError> {
        let Some(flush) = self.begin_flush() else {
            return Ok(());
        };
        let (took, result) = flush.run(AckFlush::LOCKED_TMP);
        self.end_flush(&flush, took, flush.write && result.is_ok());
        result
    }

    /// Writes and syncs anything buffered and persists the ack position.
    pub fn close(&mut self) -> Result<(), QueueError> {
        if let Some(job) = self.commit()? {
            job.sync(self.fsync)?;
            self.mark_durable(&job);
        }
        self.persist_ack()
    }

    pub fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    /// Unacknowledged records held (buffered ones included).
    fn depth_records(&self) -> u64 {
        let mut gaps = 0u64;
        let mut prev_end: Option<u64> = None;
        for s in &self.segments {
            if let Some(end) = prev_end {
                if s.first_seq > end {
                    gaps += s.first_seq.saturating_sub(end.max(self.acked_upto));
                }
            }
            prev_end = Some(s.next_seq);
        }
        self.unacked_in(self.acked_upto, self.next_seq)
            .saturating_sub(gaps)
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
        let file = File::open(self.path_of(seg.first_seq)).ok()?;
        let mut h = [0u8; HEADER_LEN];
        loop {
            file.read_exact_at(&mut h, pos.offset).ok()?;
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
        if let Some(f) = &self.file {
            let t0 = Instant::now();
            f.sync_data().map_err(|source| QueueError::Io {
                path: PathBuf::from(Segment::file_name(self.segment_first_seq)),
                source,
            })?;
            self.took_us.set(Some(t0.elapsed().as_micros() as u64));
        }
        Ok(())
    }
}

/// The fixed part of a record.
struct Header {
    len: usize,
    crc: u32,
    seq: u64,
    accepted_us: u64,
}

impl Header {
    fn parse(b: &[u8]) -> Header {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Header {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            seq: word(8),
            accepted_us: word(16),
        }
    }
}

/// Buffered positional reads from one segment file.
struct SegReader {
    first_seq: u64,
    file: File,
    /// Only grows (zero-filled once), so refills do not clear it again.
    buf: Vec<u8>,
    /// Bytes of `buf` read from the file.
    filled: usize,
    /// File offset of `buf[0]`.
    at: u64,
}

impl SegReader {
    fn open(path: &Path, first_seq: u64) -> io::Result<SegReader> {
        Ok(SegReader {
            first_seq,
            file: File::open(path)?,
            buf: Vec::new(),
            filled: 0,
            at: 0,
        })
    }

    /// `len` bytes at `off`, or None when they would reach past `end` or the file's end.
    fn get(&mut self, off: u64, len: usize, end: u64) -> io::Result<Option<&[u8]>> {
        if off + len as u64 > end {
            return Ok(None);
        }
        let have = off >= self.at && off + len as u64 <= self.at + self.filled as u64;
        if !have {
            let want = ((end - off) as usize).min(READ_CHUNK.max(len));
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let mut got = 0;
            while got < want {
                match self
                    .file
                    .read_at(&mut self.buf[got..want], off + got as u64)
                {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.filled = 0;
                        return Err(e);
                    }
                }
            }
            self.filled = got;
            self.at = off;
            if got < len {
                return Ok(None);
            }
        }
        let s = (off - self.at) as usize;
        Ok(Some(&self.buf[s..s + len]))
    }
}

enum Decoded {
    Record(Record, usize),
    /// The record (or its header) reaches past the end.
    Truncated,
    Bad,
}

fn decode_at(r: &mut SegReader, off: u64, expect_seq: u64, end: u64) -> io::Result<Decoded> {
    let Some(h) = r.get(off, HEADER_LEN, end)? else {
        return Ok(Decoded::Truncated);
    };
    let hdr = Header::parse(h);
    if hdr.len > MAX_RECORD_BYTES || hdr.seq != expect_seq {
        return Ok(Decoded::Bad);
    }
    let Some(buf) = r.get(off, HEADER_LEN + hdr.len, end)? else {
        return Ok(Decoded::Truncated);
    };
    let mut c = crc32c::crc32c(&buf[0..4]);
    c = crc32c::crc32c_append(c, &buf[8..]);
    if c != hdr.crc {
        return Ok(Decoded::Bad);
    }
    Ok(Decoded::Record(
        Record {
            seq: hdr.seq,
            accepted_us: hdr.accepted_us,
            payload: buf[HEADER_LEN..].to_vec(),
        },
        HEADER_LEN + hdr.len,
    ))
}

/// Finds the first offset in `from..end` holding an intact record whose sequence number is in
/// `min_seq..max_seq`: where reading resumes after a corrupt record.
fn resync(
    r: &mut SegReader,
    from: u64,
    end: u64,
    min_seq: u64,
    max_seq: u64,
) -> io::Result<Option<(u64, u64)>> {
    let mut off = from;
    while off + HEADER_LEN as u64 <= end {
        let Some(h) = r.get(off, HEADER_LEN, end)? else {
            break;
        };
        let hdr = Header::parse(h);
        if hdr.seq >= min_seq && hdr.seq < max_seq && hdr.len <= MAX_RECORD_BYTES {
            if let Decoded::Record(..) = decode_at(r, off, hdr.seq, end)? {
                return Ok(Some((off, hdr.seq)));
            }
        }
        off += 1;
    }
    Ok(None)
}

/// What a full scan of one segment found.
struct Scan {
    file_bytes: u64,
    /// End of the last intact record.
    valid_bytes: u64,
    next_seq: u64,
    /// Unreadable sequence ranges followed by intact records.
    holes: Vec<(u64, u64)>,
}

/// Reads a whole segment (magic already checked), CRC-checking every record, skipping corrupt
/// ones (resync) and finding where the intact records end. `visit` sees every intact record.
fn scan_segment(
    path: &Path,
    first_seq: u64,
    mut visit: Option<&mut dyn FnMut(Record)>,
) -> io::Result<Scan> {
    let mut r = SegReader::open(path, first_seq)?;
    let file_bytes = r.file.metadata()?.len();
    let (mut off, mut seq) = (MAGIC_LEN, first_seq);
    let mut valid_bytes = MAGIC_LEN.min(file_bytes);
    let mut holes = Vec::new();
    loop {
        match decode_at(&mut r, off, seq, file_bytes)? {
            Decoded::Record(rec, used) => {
                if let Some(v) = visit.as_mut() {
                    v(rec);
                }
                off += used as u64;
                seq += 1;
                valid_bytes = off;
            }
            Decoded::Truncated if off >= file_bytes => break,
            _ => {
                // Every record needs at least a header: an upper bound for the resync.
                let max_seq = seq + 1 + (file_bytes - off) / HEADER_LEN as u64;
                match resync(&mut r, off + 1, file_bytes, seq + 1, max_seq)? {
                    Some((o, s)) => {
                        holes.push((seq, s));
                        off = o;
                        seq = s;
                    }
                    None => break, // a torn tail
                }
            }
        }
    }
    Ok(Scan {
        file_bytes,
        valid_bytes,
        next_seq: seq,
        holes,
    })
}

fn segment_magic_ok(path: &Path) -> io::Result<bool> {
    let f = File::open(path)?;
    let mut m = [0u8; SEGMENT_MAGIC.len()];
    match f.read_exact_at(&mut m, 0) {
        Ok(()) => Ok(&m == SEGMENT_MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// First sequence numbers of the `*.seg` files in `dir`, sorted.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut firsts: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(num) = name.strip_suffix(".seg") {
            if let Ok(n) = num.parse::<u64>() {
                firsts.push(n);
            }
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Bytes of the `ack` file: the position and its CRC32C.
const ACK_FILE_LEN: usize = 12;

/// Writes `position` to `dir/ack` atomically: `tmp`, fsync (unless `never`), rename. Returns
/// how long the fsync took.
fn write_ack_file(
    dir: &Path,
    tmp: &str,
    position: u64,
    fsync: FsyncPolicy,
) -> Result<Option<u64>, QueueError> {
    let tmp = dir.join(tmp);
    let mut buf = [0u8; ACK_FILE_LEN];
    buf[..8].copy_from_slice(&position.to_le_bytes());
    let crc = crc32c::crc32c(&buf[..8]);
    buf[8..].copy_from_slice(&crc.to_le_bytes());
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&buf).map_err(io_err(&tmp))?;
    let mut took = None;
    if fsync != FsyncPolicy::Never {
        let t0 = Instant::now();
        f.sync_all().map_err(io_err(&tmp))?;
        took = Some(t0.elapsed().as_micros() as u64);
    }
    let dest = dir.join("ack");
    fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    Ok(took)
}

/// An ack persist and segment deletions to do without holding the queue
/// ([`QueueHandle::flush_acks`]).
struct AckFlush {
    dir: PathBuf,
    position: u64,
    /// The position moved since the last persist.
    write: bool,
    fsync: FsyncPolicy,
    delete: Vec<PathBuf>,
}

impl AckFlush {
    /// The temp file of [`Queue::persist_ack`], which runs the flush holding the queue.
    const LOCKED_TMP: &'static str = "ack.tmp";
    /// The temp file of [`QueueHandle::flush_acks`], which runs it without the lock: its own,
    /// so it never shares one with a persist made under the lock (`drop_oldest`). The worst
    /// interleaving leaves the older of two positions on disk, which only means more
    /// duplicates after a crash, never a skipped record.
    const UNLOCKED_TMP: &'static str = "ack.flush.tmp";

    /// The I/O: the ack file through `tmp`, then the deletions. Their readers were closed
    /// when the segments were retired.
    fn run(&self, tmp: &str) -> (Option<u64>, Result<(), QueueError>) {
        let mut took = None;
        let mut result = Ok(());
        if self.write {
            match write_ack_file(&self.dir, tmp, self.position, self.fsync) {
                Ok(t) => took = t,
                Err(e) => result = Err(e),
            }
        }
        // Deleted even when the write failed (a full disk needs the room): they are fully
        // acknowledged, and recovery skips an ack position below the oldest segment. A crash
        // before this only replays them.
        for path in &self.delete {
            if let Err(e) = fs::remove_file(path) {
                log::warn!("queue: cannot delete {}: {e}", path.display());
            }
        }
        (took, result)
    }
}

fn read_ack_file(path: &Path) -> Option<u64> {
    let data = fs::read(path).ok()?;
    if data.len() != 12 {
        log::warn!(
            "queue: ack file {} is malformed; replaying from the oldest record",
            path.display()
        );
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&data[..8]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&data[8..]);
    if crc32c::crc32c(&seq) != u32::from_le_bytes(crc) {
        log::warn!(
            "queue: ack file {} fails its checksum; replaying from the oldest record",
            path.display()
        );
        return None;
    }
    Some(u64::from_le_bytes(seq))
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
