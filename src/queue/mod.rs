//! The durable log: every accepted message is appended here and made durable before it is
//! published; it leaves only once the broker has acknowledged it.
//!
//! # Design constraints
//! - **Segmented, append-only.** Records go to segment files `{first_seq:020}.seg` of at most
//!   `segment_bytes`. A segment is created (and the directory fsynced) by the writer, and deleted
//!   whole, only once every record in it is acknowledged. Nothing is rewritten in place.
//! - **Checksummed records.** Each record is `[len u32][crc32c u32][seq u64][accepted_at µs u64]`
//!   then `len` payload bytes, all little-endian; the CRC covers `len`, `seq`, the time and the
//!   payload. Sequence numbers are contiguous inside a segment and increase across segments.
//! - **Group commit.** [`Queue::append`] only buffers; [`Queue::commit`] writes the buffer with
//!   one `write` and hands back a [`SyncJob`] that the caller fsyncs *outside* any lock; only then
//!   does [`Queue::mark_durable`] make the records readable. With `fsync = "batch"` the window of
//!   data loss on power cut is zero for readable records; with `never`, whatever the kernel had
//!   not written back.
//! - **Cheap acknowledgement.** The ack position lives in memory and is persisted to `ack`
//!   (write + fsync + rename) at most about once a second, when a segment is deleted, and on
//!   close — never once per PUBACK. After a crash, records acked since the last persist are
//!   published again (duplicates, identified by `relay.seq`), never lost.
//! - **Recovery never refuses to start.** A torn tail of the newest segment is truncated at the
//!   first bad record; corruption in an older segment ends that segment's readable part, is
//!   counted and logged once, and the segment is renamed to `*.corrupt` (quarantined) instead of
//!   deleted when it is done; a segment without a valid header is quarantined at once.
//! - **Bounded.** Total segment bytes stay within `max_bytes`: `drop_oldest` deletes the oldest
//!   segment (counting its unacknowledged records), `drop_newest` refuses the new record.
//!   Memory does not grow with the backlog: only per-segment metadata is kept.
//!
//! The queue knows nothing of MQTT, WebSockets or JSON: payloads are opaque bytes.

mod writer;

pub use writer::{spawn_writer, QueueHandle, WriteOutcome};

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::{FsyncPolicy, OnFull, QueueConfig};

/// Every segment starts with this, so an all-NUL or foreign file is recognised at once.
const SEGMENT_MAGIC: &[u8; 8] = b"ARQSEG01";
const HEADER_LEN: usize = 24;
/// No single record may exceed this; it also bounds what a corrupt length field can make us read.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// How much a reader pulls from a segment in one `pread`.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot create queue directory {path}: {source} (does the service user own it?)")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("queue I/O failed on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("queue is full ({max_bytes} bytes) and on_full = \"drop_newest\"")]
    Full { max_bytes: u64 },
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
    pub dropped_oldest: u64,
    pub dropped_newest: u64,
    pub dropped_io_error: u64,
    pub corrupt_regions: u64,
    pub torn_tail_bytes: u64,
    pub quarantined_segments: u64,
    pub fsyncs: u64,
    pub bytes_written: u64,
    pub payload_bytes: u64,
}

/// A point-in-time view of the queue, for stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueGauges {
    pub depth_records: u64,
    pub depth_bytes: u64,
    pub segments: usize,
    pub oldest_unacked_us: Option<u64>,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    /// One past the last record written (buffered records excluded).
    next_seq: u64,
    /// Bytes written to the file (magic included).
    bytes: u64,
    /// Bytes known durable and readable.
    durable_bytes: u64,
    /// Readable part ended early because of corruption: quarantine instead of delete.
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
    pub file: Option<File>,
    pub upto_seq: u64,
    segment_first_seq: u64,
    segment_bytes: u64,
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
    segment_bytes: u64,
    on_full: OnFull,
    fsync: FsyncPolicy,
    segments: VecDeque<Segment>,
    /// Append handle of the newest segment (None until the first append after start/roll).
    active: Option<File>,
    /// Bytes appended but not yet written to `active`.
    pending: Vec<u8>,
    pending_first_seq: u64,
    next_seq: u64,
    durable_seq: u64,
    /// Every seq below this is acknowledged (or was dropped).
    acked_upto: u64,
    acked_ahead: BTreeSet<u64>,
    persisted_ack: u64,
    read: Option<ReadPos>,
    read_seq: u64,
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
            persisted_ack: 1,
            read: None,
            read_seq: 1,
            counters: QueueCounters::default(),
        };
        let report = q.recover()?;
        Ok((q, report))
    }

    fn path_of(&self, first_seq: u64) -> PathBuf {
        self.dir.join(Segment::file_name(first_seq))
    }

    fn recover(&mut self) -> Result<RecoveryReport, QueueError> {
        let mut report = RecoveryReport::default();
        self.acked_upto = read_ack_file(&self.dir.join("ack")).unwrap_or(1).max(1);
        self.persisted_ack = self.acked_upto;
        let mut firsts: Vec<u64> = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(num) = name.strip_suffix(".seg") {
                if let Ok(n) = num.parse::<u64>() {
                    firsts.push(n);
                }
            }
        }
        firsts.sort_unstable();
        let count = firsts.len();
        for (i, &first) in firsts.iter().enumerate() {
            let path = self.path_of(first);
            let is_last = i + 1 == count;
            // A segment whose successor starts at or below the ack position is fully acked.
            if !is_last && firsts[i + 1] <= self.acked_upto {
                let _ = fs::remove_file(&path);
                continue;
            }
            let scan = match scan_segment(&path, first) {
                Ok(s) => s,
                Err(e) => {
                    log::error!(
                        "queue: cannot read segment {}: {e}; quarantining it",
                        path.display()
                    );
                    self.quarantine(first);
                    report.quarantined_segments += 1;
                    continue;
                }
            };
            if !scan.magic_ok {
                log::error!(
                    "queue: segment {} has no valid header (power cut before it was written?); quarantining it",
                    path.display()
                );
                self.quarantine(first);
                report.quarantined_segments += 1;
                continue;
            }
            let mut corrupt = false;
            if scan.valid_bytes < scan.file_bytes {
                let bad = scan.file_bytes - scan.valid_bytes;
                if is_last {
                    log::warn!(
                        "queue: truncating torn tail of {} ({bad} bytes after {} intact records)",
                        path.display(),
                        scan.next_seq - first
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(scan.valid_bytes).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    report.torn_tail_bytes += bad;
                } else {
                    log::error!(
                        "queue: corrupt record in {} after {} intact records; the rest of that segment ({bad} bytes) is skipped and the file will be quarantined",
                        path.display(),
                        scan.next_seq - first
                    );
                    report.corrupt_regions += 1;
                    corrupt = true;
                }
            }
            if scan.next_seq == first && !is_last {
                // Nothing readable in it.
                self.quarantine_or_delete(first, corrupt);
                if corrupt {
                    report.quarantined_segments += 1;
                }
                continue;
            }
            self.segments.push_back(Segment {
                first_seq: first,
                next_seq: scan.next_seq,
                bytes: scan.valid_bytes,
                durable_bytes: scan.valid_bytes,
                corrupt,
            });
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
        self.counters.torn_tail_bytes = report.torn_tail_bytes;
        self.counters.corrupt_regions = report.corrupt_regions;
        self.counters.quarantined_segments = report.quarantined_segments;
        report.segments = self.segments.len();
        report.unacked_records = self.gauges().depth_records;
        Ok(report)
    }

    fn quarantine(&mut self, first_seq: u64) {
        let from = self.path_of(first_seq);
        let to = self
            .dir
            .join(format!("{}.corrupt", Segment::file_name(first_seq)));
        if let Err(e) = fs::rename(&from, &to) {
            log::error!("queue: cannot quarantine {}: {e}", from.display());
        }
    }

    fn quarantine_or_delete(&mut self, first_seq: u64, corrupt: bool) {
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
        if payload.len() > MAX_RECORD_BYTES
            || (HEADER_LEN + payload.len()) as u64 > self.segment_bytes / 2
        {
            return Err(QueueError::TooLarge {
                len: payload.len(),
                max: MAX_RECORD_BYTES.min(self.segment_bytes as usize / 2 - HEADER_LEN),
            });
        }
        let size = (HEADER_LEN + payload.len()) as u64;
        while self.total_bytes() + self.pending.len() as u64 + size > self.max_bytes {
            match self.on_full {
                OnFull::DropNewest => {
                    self.counters.dropped_newest += 1;
                    return Err(QueueError::Full {
                        max_bytes: self.max_bytes,
                    });
                }
                OnFull::DropOldest => {
                    if !self.drop_oldest_segment()? {
                        self.counters.dropped_newest += 1;
                        return Err(QueueError::Full {
                            max_bytes: self.max_bytes,
                        });
                    }
                }
            }
        }
        let need_roll = match self.segments.back() {
            None => true,
            Some(s) => {
                self.active.is_none() && s.bytes > SEGMENT_MAGIC.len() as u64
                    || s.corrupt
                    || s.bytes + self.pending.len() as u64 + size > self.segment_bytes
            }
        };
        if need_roll {
            self.roll()?;
        } else if self.active.is_none() {
            self.open_active()?;
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

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Deletes the oldest segment to make room; false if only the active segment is left.
    fn drop_oldest_segment(&mut self) -> Result<bool, QueueError> {
        if self.segments.len() < 2 {
            return Ok(false);
        }
        let Some(seg) = self.segments.pop_front() else {
            return Ok(false);
        };
        let unacked_from = seg.first_seq.max(self.acked_upto);
        let lost = seg.next_seq.saturating_sub(unacked_from)
            - self.acked_ahead.range(unacked_from..seg.next_seq).count() as u64;
        if lost > 0 {
            log::warn!(
                "queue: full ({} bytes); dropped {lost} unpublished records (seq {}..{})",
                self.max_bytes,
                unacked_from,
                seg.next_seq
            );
        }
        self.counters.dropped_oldest += lost;
        self.quarantine_or_delete(seg.first_seq, seg.corrupt);
        if self.acked_upto < seg.next_seq {
            self.acked_upto = seg.next_seq;
        }
        self.skip_ack_gaps();
        if self.read_seq < self.acked_upto {
            self.read_seq = self.acked_upto;
            self.read = None;
        }
        self.persist_ack()?;
        Ok(true)
    }

    fn open_active(&mut self) -> Result<(), QueueError> {
        if let Some(seg) = self.segments.back() {
            let path = self.path_of(seg.first_seq);
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.active = Some(f);
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
        let first = self.next_seq;
        let path = self.path_of(first);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(SEGMENT_MAGIC).map_err(io_err(&path))?;
        if self.fsync != FsyncPolicy::Never {
            f.sync_all().map_err(io_err(&path))?;
            // The new file's directory entry must be durable too, or a power cut loses it.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            self.counters.fsyncs += 2;
        }
        self.counters.bytes_written += SEGMENT_MAGIC.len() as u64;
        let magic = SEGMENT_MAGIC.len() as u64;
        self.segments.push_back(Segment {
            first_seq: first,
            next_seq: first,
            bytes: magic,
            durable_bytes: magic,
            corrupt: false,
        });
        self.active = Some(f);
        Ok(())
    }

    /// Writes buffered records to the active segment with one `write`. On failure the file is
    /// cut back to its last good length and the buffered records are dropped and counted (the
    /// caller reports them as not accepted), so a full disk never leaves a torn record behind.
    pub fn commit(&mut self) -> Result<Option<SyncJob>, QueueError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let (Some(seg), Some(file)) = (self.segments.back_mut(), self.active.as_mut()) else {
            return Ok(None);
        };
        let path = self.dir.join(Segment::file_name(seg.first_seq));
        if let Err(source) = file.write_all(&self.pending) {
            let _ = file.set_len(seg.bytes);
            let n = self.next_seq - self.pending_first_seq;
            self.counters.dropped_io_error += n;
            self.counters.appended -= n;
            self.next_seq = self.pending_first_seq;
            self.pending.clear();
            // Reopen on the next append, positioned at the cut.
            self.active = None;
            return Err(QueueError::Io { path, source });
        }
        seg.bytes += self.pending.len() as u64;
        seg.next_seq = self.next_seq;
        self.counters.bytes_written += self.pending.len() as u64;
        self.pending.clear();
        let file = match self.fsync {
            FsyncPolicy::Never => None,
            _ => Some(file.try_clone().map_err(io_err(&path))?),
        };
        Ok(Some(SyncJob {
            file,
            upto_seq: self.next_seq,
            segment_first_seq: seg.first_seq,
            segment_bytes: seg.bytes,
        }))
    }

    /// Records that everything covered by `job` is durable, making it readable.
    pub fn mark_durable(&mut self, job: &SyncJob) {
        if job.file.is_some() {
            self.counters.fsyncs += 1;
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
    /// `max_bytes` of payload, and advances the read position past them.
    pub fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_records && bytes < max_bytes && self.read_seq < self.durable_seq {
            let Some(pos) = self.locate_read()? else {
                break;
            };
            let Some(idx) = self
                .segments
                .iter()
                .position(|s| s.first_seq == pos.segment_first_seq)
            else {
                self.read = None;
                break;
            };
            let end = self.segments[idx].durable_bytes;
            if pos.offset >= end || pos.seq >= self.segments[idx].next_seq {
                // This segment is read to its durable end: go on with the next one, if any.
                match self.segments.get(idx + 1) {
                    Some(n) => {
                        self.read_seq = self.read_seq.max(n.first_seq);
                        self.read = None;
                        continue;
                    }
                    None => break,
                }
            }
            let path = self.path_of(pos.segment_first_seq);
            let file = File::open(&path).map_err(io_err(&path))?;
            let mut buf = vec![0u8; ((end - pos.offset) as usize).min(READ_CHUNK)];
            file.read_exact_at(&mut buf, pos.offset)
                .map_err(io_err(&path))?;
            let (mut off, mut seq) = (0usize, pos.seq);
            let mut bad = false;
            while out.len() < max_records && bytes < max_bytes {
                match decode_record(&buf[off..], seq) {
                    Decoded::Record(rec, used) => {
                        bytes += rec.payload.len();
                        off += used;
                        seq += 1;
                        out.push(rec);
                    }
                    Decoded::NeedMore(n) if off == 0 && pos.offset + n as u64 <= end => {
                        // One record larger than a chunk: read exactly it.
                        buf = vec![0u8; n];
                        file.read_exact_at(&mut buf, pos.offset)
                            .map_err(io_err(&path))?;
                    }
                    Decoded::NeedMore(_) => break,
                    Decoded::Bad => {
                        bad = true;
                        break;
                    }
                }
            }
            if bad {
                // Went bad after recovery (bit rot, tampering): the rest of the segment is
                // unreadable. Skip it, count it, and quarantine the file when it is done.
                log::error!(
                    "queue: record seq {seq} in {} fails its checksum; skipping the rest of the segment",
                    path.display()
                );
                self.counters.corrupt_regions += 1;
                let seg = &mut self.segments[idx];
                seg.corrupt = true;
                seg.durable_bytes = pos.offset + off as u64;
                seg.next_seq = seq;
            }
            self.read_seq = seq;
            self.read = Some(ReadPos {
                segment_first_seq: pos.segment_first_seq,
                offset: pos.offset + off as u64,
                seq,
            });
        }
        self.skip_ack_gaps();
        Ok(out)
    }

    /// Finds the file position of `read_seq`, scanning its segment's headers if needed.
    fn locate_read(&mut self) -> Result<Option<ReadPos>, QueueError> {
        if let Some(p) = self.read {
            if p.seq == self.read_seq {
                return Ok(Some(p));
            }
        }
        let target = self.read_seq;
        let Some(seg) = self
            .segments
            .iter()
            .rev()
            .find(|s| s.first_seq <= target)
            .or_else(|| self.segments.front())
        else {
            return Ok(None);
        };
        let target = target.max(seg.first_seq);
        let path = self.path_of(seg.first_seq);
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut offset = SEGMENT_MAGIC.len() as u64;
        let mut seq = seg.first_seq;
        let mut header = [0u8; HEADER_LEN];
        while seq < target && seq < seg.next_seq && offset < seg.durable_bytes {
            file.read_exact_at(&mut header, offset)
                .map_err(io_err(&path))?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
            offset += HEADER_LEN as u64 + len;
            seq += 1;
        }
        let pos = ReadPos {
            segment_first_seq: seg.first_seq,
            offset,
            seq,
        };
        self.read_seq = seq;
        self.read = Some(pos);
        Ok(Some(pos))
    }

    /// Moves the read position back to the oldest unacknowledged record (after a broker
    /// reconnect everything unacknowledged is sent again, in queue order).
    pub fn rewind(&mut self) {
        self.read_seq = self.acked_upto;
        self.read = None;
    }

    /// Marks `seq` acknowledged. Deletes segments that become fully acknowledged.
    pub fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        if seq < self.acked_upto || seq >= self.next_seq {
            return Ok(());
        }
        if seq == self.acked_upto {
            self.acked_upto += 1;
            while self.acked_ahead.remove(&self.acked_upto) {
                self.acked_upto += 1;
            }
        } else {
            self.acked_ahead.insert(seq);
        }
        self.skip_ack_gaps();
        self.delete_acked_segments()
    }

    /// Jumps the ack position over sequence numbers that no longer exist (dropped or
    /// quarantined segments, a corrupt segment's unreadable end).
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
            while self.acked_ahead.remove(&self.acked_upto) {
                self.acked_upto += 1;
            }
            let stale: Vec<u64> = self.acked_ahead.range(..self.acked_upto).copied().collect();
            for s in stale {
                self.acked_ahead.remove(&s);
            }
            if self.acked_upto == before {
                break;
            }
        }
    }

    fn delete_acked_segments(&mut self) -> Result<(), QueueError> {
        let mut deleted = false;
        while self.segments.len() > 1 {
            let (first, next, corrupt) = match self.segments.front() {
                Some(s) => (s.first_seq, s.next_seq, s.corrupt),
                None => break,
            };
            if next > self.acked_upto {
                break;
            }
            self.segments.pop_front();
            self.quarantine_or_delete(first, corrupt);
            if corrupt {
                self.counters.quarantined_segments += 1;
            }
            if self.read.is_some_and(|p| p.segment_first_seq == first) {
                self.read = None;
            }
            deleted = true;
        }
        if deleted {
            self.skip_ack_gaps();
            self.read_seq = self.read_seq.max(self.acked_upto);
            self.persist_ack()?;
        }
        Ok(())
    }

    /// True when the in-memory ack position is ahead of the persisted one.
    pub fn ack_dirty(&self) -> bool {
        self.acked_upto != self.persisted_ack
    }

    /// Persists the ack position (write, fsync, rename). Callers do this about once a second
    /// and on close; it is also done whenever a segment is deleted.
    pub fn persist_ack(&mut self) -> Result<(), QueueError> {
        if self.acked_upto == self.persisted_ack {
            return Ok(());
        }
        let tmp = self.dir.join("ack.tmp");
        let mut buf = [0u8; 12];
        buf[..8].copy_from_slice(&self.acked_upto.to_le_bytes());
        let crc = crc32c::crc32c(&buf[..8]);
        buf[8..].copy_from_slice(&crc.to_le_bytes());
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&buf).map_err(io_err(&tmp))?;
        if self.fsync != FsyncPolicy::Never {
            f.sync_all().map_err(io_err(&tmp))?;
            self.counters.fsyncs += 1;
        }
        let dest = self.dir.join("ack");
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        self.counters.bytes_written += buf.len() as u64;
        self.persisted_ack = self.acked_upto;
        Ok(())
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

    pub fn gauges(&self) -> QueueGauges {
        let unacked = self.durable_seq.saturating_sub(self.acked_upto);
        let ahead = self.acked_ahead.len() as u64;
        // Sequence gaps inside the unacked range (dropped or quarantined segments).
        let mut gaps = 0u64;
        let mut prev_end: Option<u64> = None;
        for s in &self.segments {
            if let Some(end) = prev_end {
                if s.first_seq > end && s.first_seq > self.acked_upto {
                    gaps += s.first_seq - end.max(self.acked_upto);
                }
            }
            prev_end = Some(s.next_seq);
        }
        QueueGauges {
            depth_records: unacked.saturating_sub(ahead).saturating_sub(gaps),
            depth_bytes: self.total_bytes(),
            segments: self.segments.len(),
            oldest_unacked_us: None,
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
            f.sync_data().map_err(|source| QueueError::Io {
                path: PathBuf::from(Segment::file_name(self.segment_first_seq)),
                source,
            })?;
        }
        Ok(())
    }
}

enum Decoded {
    Record(Record, usize),
    /// Not enough bytes in the buffer; the record needs this many in total.
    NeedMore(usize),
    Bad,
}

fn decode_record(buf: &[u8], expect_seq: u64) -> Decoded {
    if buf.len() < HEADER_LEN {
        return Decoded::NeedMore(HEADER_LEN);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let mut seq_b = [0u8; 8];
    seq_b.copy_from_slice(&buf[8..16]);
    let seq = u64::from_le_bytes(seq_b);
    let mut ts_b = [0u8; 8];
    ts_b.copy_from_slice(&buf[16..24]);
    let accepted_us = u64::from_le_bytes(ts_b);
    if len > MAX_RECORD_BYTES || seq != expect_seq {
        return Decoded::Bad;
    }
    if buf.len() < HEADER_LEN + len {
        return Decoded::NeedMore(HEADER_LEN + len);
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    let mut c = crc32c::crc32c(&buf[0..4]);
    c = crc32c::crc32c_append(c, &buf[8..24]);
    c = crc32c::crc32c_append(c, payload);
    if c != crc {
        return Decoded::Bad;
    }
    Decoded::Record(
        Record {
            seq,
            accepted_us,
            payload: payload.to_vec(),
        },
        HEADER_LEN + len,
    )
}

struct Scan {
    magic_ok: bool,
    file_bytes: u64,
    valid_bytes: u64,
    next_seq: u64,
}

/// Reads a whole segment and finds where its intact records end.
fn scan_segment(path: &Path, first_seq: u64) -> io::Result<Scan> {
    let data = fs::read(path)?;
    let file_bytes = data.len() as u64;
    if data.len() < SEGMENT_MAGIC.len() || &data[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        return Ok(Scan {
            magic_ok: false,
            file_bytes,
            valid_bytes: 0,
            next_seq: first_seq,
        });
    }
    let mut off = SEGMENT_MAGIC.len();
    let mut seq = first_seq;
    while let Decoded::Record(_, used) = decode_record(&data[off..], seq) {
        off += used;
        seq += 1;
    }
    Ok(Scan {
        magic_ok: true,
        file_bytes,
        valid_bytes: off as u64,
        next_seq: seq,
    })
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
mod tests;
