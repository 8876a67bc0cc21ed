//! Acknowledgement: the in-memory ack position, the `ack` and `seq` word files overwritten in
//! place, and the deletion of fully acknowledged segments after the persist.

use super::*;

impl Queue {
    /// Marks `seq` acknowledged. Deletes segments that become fully acknowledged. A sender
    /// still waiting for the record's fsync is answered now: the broker has it, so it is safe
    /// (issue 18).
    pub fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        if seq < self.acked_upto || seq >= self.next_seq {
            return Ok(());
        }
        if let Some(receipt) = self.receipts.remove(&seq) {
            receipt.answer(Ok(seq));
        }
        let due = self.sync_due();
        if seq == self.acked_upto {
            self.acked_upto += 1;
        } else {
            self.acked_ahead.insert(seq);
        }
        self.skip_ack_gaps();
        self.delete_acked_segments();
        if self.pop_acked_writes(std::time::Instant::now()) {
            // A write was acknowledged within its grace: PUBACKs come in time.
            self.late_graces = 0;
        }
        if self.sync_due() != due {
            // Later now (a later write's grace, or only the disk-proving fsync once none is
            // left unacknowledged): the timer re-arms instead of waking for nothing.
            self.wake_syncer();
        }
        Ok(())
    }

    /// The writer: `receipt` is owed once `seq` (written, its fsync about to run) is safe.
    pub(super) fn await_safe(&mut self, seq: u64, receipt: Receipt) {
        self.receipts.insert(seq, receipt);
    }

    /// The writer, after the fsync: the receipts the broker did not answer first (the model
    /// test's; the writer takes those below its fsync's end, `take_receipts_below`).
    #[cfg(test)]
    pub(super) fn take_receipts(&mut self) -> BTreeMap<u64, Receipt> {
        std::mem::take(&mut self.receipts)
    }

    /// Jumps the ack position over sequence numbers that no longer exist (dropped or
    /// quarantined segments, unreadable records) and over records acked out of order.
    pub(super) fn skip_ack_gaps(&mut self) {
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
            self.acked_upto = self.past_hole(self.acked_upto);
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

    pub(super) fn delete_acked_segments(&mut self) {
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
    pub(super) fn begin_flush(&mut self) -> Option<AckFlush> {
        if !self.ack_dirty() {
            return None;
        }
        Some(AckFlush {
            fs: self.fs.clone(),
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
    pub(super) fn end_flush(&mut self, flush: &AckFlush, fsync_us: Option<u64>, written: bool) {
        if written {
            self.counters.bytes_written += ACK_FILE_LEN as u64;
            self.persisted_ack = self.persisted_ack.max(flush.position);
        }
        if let Some(us) = fsync_us {
            self.count_fsync(1, us);
        }
    }

    pub(super) fn persist_ack_or_log(&mut self) {
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
        let (took, result) = flush.run();
        self.end_flush(&flush, took, flush.write && result.is_ok());
        result
    }
}

/// Bytes of the `ack` and `seq` files: one u64 and its CRC32C.
pub(super) const WORD_FILE_LEN: usize = 12;

pub(super) const ACK_FILE_LEN: usize = WORD_FILE_LEN;

/// Writes `value` into the word file `path` in place (`pwrite` at offset 0 of a file that
/// already has its 12 bytes, then fdatasync unless `never`): no new block, no temp file, no
/// rename, so it works on a full disk. The 12 bytes sit in the first sector; a torn write
/// fails the CRC and reads as "no value" (see the callers for what that means). Creates the
/// file (and fsyncs the directory) when it is missing. Returns how long the fsync took.
pub(super) fn write_word_file(
    fs: &dyn Filesystem,
    path: &Path,
    value: u64,
    fsync: FsyncPolicy,
) -> Result<Option<u64>, QueueError> {
    let mut buf = [0u8; WORD_FILE_LEN];
    buf[..8].copy_from_slice(&value.to_le_bytes());
    let crc = crc32c::crc32c(&buf[..8]);
    buf[8..].copy_from_slice(&crc.to_le_bytes());
    let f = match fs.open_rw(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let f = fs.create(path).map_err(io_err(path))?;
            f.write_at(&buf, 0).map_err(io_err(path))?;
            if fsync != FsyncPolicy::Never {
                f.sync_data().map_err(io_err(path))?;
                let dir = path.parent().unwrap_or(Path::new("."));
                fs.sync_dir(dir).map_err(io_err(dir))?;
            }
            return Ok(None);
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    f.write_at(&buf, 0).map_err(io_err(path))?;
    let mut took = None;
    if fsync != FsyncPolicy::Never {
        let t0 = Instant::now();
        f.sync_data().map_err(io_err(path))?;
        took = Some(t0.elapsed().as_micros() as u64);
    }
    Ok(took)
}

/// Reads a word file: `Ok(None)` when it is missing or damaged (torn write, wrong size; logged),
/// `Err` when it cannot be read (permissions, I/O error).
pub(super) fn read_word_file(fs: &dyn Filesystem, path: &Path) -> io::Result<Option<u64>> {
    let data = match fs.read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if data.len() != WORD_FILE_LEN {
        log::warn!(
            "queue: {} is malformed ({} bytes)",
            path.display(),
            data.len()
        );
        return Ok(None);
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&data[..8]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&data[8..]);
    if crc32c::crc32c(&word) != u32::from_le_bytes(crc) {
        log::warn!("queue: {} fails its checksum", path.display());
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(word)))
}

/// An ack persist and segment deletions to do without holding the queue
/// ([`QueueHandle::flush_acks`]).
pub(super) struct AckFlush {
    pub(super) fs: Arc<dyn Filesystem>,
    pub(super) dir: PathBuf,
    pub(super) position: u64,
    /// The position moved since the last persist.
    pub(super) write: bool,
    pub(super) fsync: FsyncPolicy,
    pub(super) delete: Vec<PathBuf>,
}

impl AckFlush {
    /// The I/O: the ack file (in place), then the deletions. Their readers were closed when
    /// the segments were retired. A flush under the lock (`drop_oldest`, close) and one
    /// without it may overlap: the worst interleaving leaves the older of two positions on
    /// disk, which only means more duplicates after a crash, never a skipped record.
    pub(super) fn run(&self) -> (Option<u64>, Result<(), QueueError>) {
        let mut took = None;
        let mut result = Ok(());
        if self.write {
            let path = self.dir.join("ack");
            match write_word_file(&*self.fs, &path, self.position, self.fsync) {
                Ok(t) => took = t,
                Err(e) => result = Err(e),
            }
        }
        // Deleted even when the write failed (a full disk needs the room): they are fully
        // acknowledged, and recovery skips an ack position below the oldest segment. A crash
        // before this only replays them; no seq is reused (the `seq` file).
        for path in &self.delete {
            if let Err(e) = self.fs.remove_file(path) {
                log::warn!("queue: cannot delete {}: {e}", path.display());
            }
        }
        (took, result)
    }
}

/// The persisted ack position: `None` when there is none or it is damaged (replay from the
/// oldest record: duplicates, never loss). An unreadable file is logged as an error.
pub(super) fn read_ack_file(fs: &dyn Filesystem, path: &Path) -> Option<u64> {
    match read_word_file(fs, path) {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            if fs.exists(path) {
                log::warn!(
                    "queue: ack file {} is damaged; replaying from the oldest record",
                    path.display()
                );
            }
            None
        }
        Err(e) => {
            log::error!(
                "queue: cannot read the ack file {}: {e}; replaying from the oldest record (fix its permissions)",
                path.display()
            );
            None
        }
    }
}
