//! Appending: bounds, seq reservation, group commit, segment rolls and what a failed write
//! or fsync leaves behind.

use super::*;

impl Queue {
    /// Buffers one record. Returns its sequence number. Call [`Queue::commit`] to write it.
    pub fn append(&mut self, payload: &[u8], accepted_us: u64) -> Result<u64, QueueError> {
        let largest = self.largest_payload();
        if payload.len() > largest {
            return Err(QueueError::TooLarge {
                len: payload.len(),
                max: largest,
            });
        }
        let size = (HEADER_LEN + payload.len()) as u64;
        let need_roll = self.needs_roll(payload.len());
        if need_roll {
            self.retire_acked_tail();
        }
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
            self.append_failed(&e);
            return Err(e);
        }
        // After the roll, which may have freed space: the reservation is the one write here
        // that may need a new block (the first time, when the `seq` file is created).
        if self.next_seq >= self.reserved_upto {
            if let Err(e) = self.reserve(block_after(self.next_seq)) {
                self.counters.dropped_io_error += 1;
                self.append_failed(&e);
                return Err(e);
            }
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

    /// The largest payload one record may carry.
    pub(super) fn largest_payload(&self) -> usize {
        MAX_RECORD_BYTES.min((self.segment_bytes / 2) as usize - HEADER_LEN)
    }

    /// True when appending a payload of `len` bytes next starts a new segment.
    pub(super) fn needs_roll(&self, len: usize) -> bool {
        let size = (HEADER_LEN + len) as u64;
        match self.segments.back() {
            None => true,
            Some(s) => {
                // Seqs jumped (the reservation after a crash): records in a segment are
                // contiguous, so a new one starts.
                self.pending.is_empty() && s.next_seq != self.next_seq
                    || self.active.is_none() && s.bytes > MAGIC_LEN
                    || s.corrupt
                    || s.bytes + self.pending.len() as u64 + size > self.segment_bytes
                    || self
                        .segment_records_cap()
                        .is_some_and(|cap| self.next_seq - s.first_seq >= cap)
            }
        }
    }

    pub(super) fn install_segment(&mut self, first: u64, f: Arc<dyn FsFile>) {
        self.counters.bytes_written += MAGIC_LEN;
        self.segments.push_back(Segment {
            first_seq: first,
            next_seq: first,
            bytes: MAGIC_LEN,
            durable_bytes: MAGIC_LEN,
            corrupt: false,
        });
        self.active = Some(f);
    }

    /// Durably reserves every seq below `upto` (written in place and synced before any of
    /// them is issued).
    pub(super) fn reserve(&mut self, upto: u64) -> Result<(), QueueError> {
        let t0 = Instant::now();
        let took = write_word_file(&*self.fs, &self.dir.join("seq"), upto, self.fsync)?;
        if took.is_some() {
            self.count_fsync(1, t0.elapsed().as_micros() as u64);
        }
        self.counters.bytes_written += WORD_FILE_LEN as u64;
        self.reserved_upto = upto;
        Ok(())
    }

    /// Before a roll: a fully acknowledged newest segment is retired too (deleted with the
    /// next ack persist, which the roll makes first), so a full disk whose space is held
    /// only by acknowledged records gets it back before the new segment needs any.
    pub(super) fn retire_acked_tail(&mut self) {
        let Some(s) = self.segments.back() else {
            return;
        };
        // An empty newest segment (its first write failed) is replaced by the new one.
        let empty = s.bytes <= MAGIC_LEN;
        if !self.pending.is_empty() || !empty && s.next_seq > self.acked_upto {
            return;
        }
        let (first, bytes, corrupt) = (s.first_seq, s.bytes, s.corrupt);
        self.segments.pop_back();
        self.active = None;
        if self.read.is_some_and(|p| p.segment_first_seq == first) {
            self.read = None;
        }
        if corrupt {
            self.quarantine_or_delete(first, true);
        } else {
            self.drop_reader_of(first);
            self.retired.push((first, bytes));
        }
    }

    /// Which bound one more record of `size` bytes would break, if any.
    pub(super) fn over_bound(&self, size: u64) -> Option<String> {
        let retired: u64 = self.retired.iter().map(|&(_, b)| b).sum();
        if self.total_bytes() + retired + self.pending.len() as u64 + size > self.max_bytes {
            return Some(format!("max_bytes = {}", self.max_bytes));
        }
        match self.max_records {
            Some(max) if self.depth_records() + 1 > max => Some(format!("max_records = {max}")),
            _ => None,
        }
    }

    pub(super) fn segment_records_cap(&self) -> Option<u64> {
        self.max_records
            .map(|m| (m / SEGMENTS_PER_RECORD_BOUND).max(1))
    }

    /// Deletes the oldest segment to make room; false if only the active segment is left.
    pub(super) fn drop_oldest_segment(&mut self) -> bool {
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

    pub(super) fn open_active(&mut self) -> Result<(), QueueError> {
        if let Some(seg) = self.segments.back() {
            let path = self.path_of(seg.first_seq);
            let f = self.fs.open_append(&path).map_err(io_err(&path))?;
            self.active = Some(f);
        }
        Ok(())
    }

    /// Closes the active segment (writing and syncing what it has) and starts a new one.
    pub(super) fn roll(&mut self) -> Result<(), QueueError> {
        if !self.pending.is_empty() {
            // Written now, fsynced by the next group commit's job outside the lock, and
            // readable only once that has succeeded.
            match self.commit() {
                // With `never` nothing is synced: written is readable, now (the next commit
                // may have nothing to hand back, if this roll fails).
                Ok(Some(job)) if self.fsync == FsyncPolicy::Never => self.mark_durable(&job),
                Ok(Some(job)) => {
                    self.unsynced.extend(job.extra);
                    self.unsynced.extend(job.file);
                }
                Ok(None) => {}
                Err(e) => {
                    // The records buffered before this one are lost too, but their appends
                    // returned Ok: the next commit reports them failed.
                    self.roll_failure = Some(match &e {
                        QueueError::Io { path, source } => QueueError::Io {
                            path: path.clone(),
                            source: source.raw_os_error().map_or_else(
                                || io::Error::new(source.kind(), source.to_string()),
                                io::Error::from_raw_os_error,
                            ),
                        },
                        other => QueueError::Io {
                            path: self.dir.clone(),
                            source: io::Error::other(other.to_string()),
                        },
                    });
                    return Err(e);
                }
            }
        }
        self.active = None;
        let first = self.next_seq;
        let path = self.path_of(first);
        let (f, took) = create_segment(&*self.fs, &self.dir, &path, self.fsync)
            .map_err(|source| QueueError::Io { path, source })?;
        if let Some(us) = took {
            self.count_fsync(2, us);
        }
        self.install_segment(first, f);
        Ok(())
    }

    pub(super) fn count_fsync(&mut self, n: u64, took_us: u64) {
        self.counters.fsyncs += n;
        self.counters.fsync_us_total += took_us;
        self.counters.fsync_us_max = self.counters.fsync_us_max.max(took_us);
    }

    /// Writes buffered records to the active segment with one `write`. On failure the file is
    /// cut back to its last good length and the buffered records are dropped and counted (the
    /// caller reports them as not accepted), so a full disk never leaves a torn record behind.
    pub fn commit(&mut self) -> Result<Option<SyncJob>, QueueError> {
        if let Some(e) = self.roll_failure.take() {
            // Records buffered before a failed roll were dropped with its write; any buffered
            // after it go with them, so the caller reports everything since the last commit
            // as not accepted, and that is true.
            let n = self.next_seq - self.pending_first_seq;
            self.counters.dropped_io_error += n;
            self.counters.appended -= n;
            // None of them was written.
            self.next_seq = self.pending_first_seq;
            self.pending.clear();
            return Err(e);
        }
        if self.pending.is_empty() && self.unsynced.is_empty() {
            return Ok(None);
        }
        let Some(seg) = self.segments.back_mut() else {
            return Ok(None);
        };
        let mut file = None;
        if !self.pending.is_empty() {
            let Some(active) = self.active.as_ref() else {
                return Ok(None);
            };
            if let Err(source) = active.append(&self.pending) {
                let cut = active.set_len(seg.bytes).is_ok();
                let n = self.next_seq - self.pending_first_seq;
                self.counters.dropped_io_error += n;
                self.counters.appended -= n;
                if cut {
                    // Nothing of them is left in the file: their seqs are issued again (none
                    // was ever readable, so none was published), and the sequence has no gap.
                    self.next_seq = self.pending_first_seq;
                } else {
                    // A short write that could not be cut back may have left some of them in
                    // the file: their seqs are burned, never issued again. The sequence goes
                    // on at the next block boundary, the one mark of a gap made on purpose.
                    self.next_seq = next_block(self.next_seq);
                    self.pending_first_seq = self.next_seq;
                }
                self.pending.clear();
                // `unsynced` stays: older segments a roll wrote still need their fsync before
                // `mark_durable` makes them readable (they were reported failed, so delivering
                // them later is a duplicate at worst, never a lie about durability).
                // The next append starts a fresh segment (a failed write may have left the
                // file's tail in any state).
                self.active = None;
                let path = self.dir.join(Segment::file_name(seg.first_seq));
                let e = QueueError::Io { path, source };
                self.append_failed(&e);
                return Err(e);
            }
            seg.bytes += self.pending.len() as u64;
            seg.next_seq = self.next_seq;
            // Writes work again (a full disk has room): under `batch` the fsync that would
            // clear the failure may be skipped for a PUBACK, so a write clears a write's
            // failure. One left by a failed fsync stays until an fsync succeeds.
            if !self.sync_failing {
                self.append_failure = None;
            }
            self.counters.bytes_written += self.pending.len() as u64;
            self.pending.clear();
            // The writer fsyncs through a second reference to the same open file: no dup(2).
            file = Some(active.clone());
        }
        let extra = std::mem::take(&mut self.unsynced);
        let (file, extra) = match self.fsync {
            FsyncPolicy::Never => (None, Vec::new()),
            _ => (file, extra),
        };
        Ok(Some(SyncJob {
            file,
            extra,
            upto_seq: self.next_seq,
            segment_first_seq: seg.first_seq,
            segment_bytes: seg.bytes,
            took_us: Cell::new(None),
        }))
    }

    /// An fsync failed: what it covered may or may not be on disk (the kernel may have
    /// dropped the dirty pages), so nothing more is appended to that file: the next append
    /// starts a new segment.
    pub fn sync_failed(&mut self, e: &QueueError) {
        self.active = None;
        self.append_failed(e);
        self.sync_failing = true;
    }

    pub(super) fn append_failed(&mut self, e: &QueueError) {
        self.counters.append_io_errors += 1;
        self.append_failure = Some(e.to_string());
        self.sync_failing = false;
    }

    /// While appends fail with an I/O error: the last one (for `/healthz` and stats).
    pub fn append_failure(&self) -> Option<&str> {
        self.append_failure.as_deref()
    }

    /// Records that everything covered by `job` is durable (readable, if it was not yet).
    pub fn mark_durable(&mut self, job: &SyncJob) {
        self.append_failure = None;
        self.sync_failing = false;
        if let Some(us) = job.took_us.get() {
            self.count_fsync(1, us);
        }
        self.mark_written(job);
    }

    /// Makes what `job` wrote readable before its fsync (issue 18): the publisher may send it
    /// while the writer syncs. Safe because a record is kept until the broker acknowledged it
    /// *or* it is synced, and seqs are reserved durably ahead (a record taken back by a power
    /// cut never has its seq handed out again). Senders are told when the fsync is done
    /// ([`mark_durable`](Queue::mark_durable)) or the broker acknowledged the record
    /// ([`Queue::ack`]), whichever comes first.
    pub fn mark_written(&mut self, job: &SyncJob) {
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
}

/// Creates segment `path` with its magic, synced with its directory entry unless `never`
/// (two fsyncs: how long they took). On failure (disk full, read-only) no half-made segment
/// is left behind.
pub(super) fn create_segment(
    fs: &dyn Filesystem,
    dir: &Path,
    path: &Path,
    fsync: FsyncPolicy,
) -> io::Result<(Arc<dyn FsFile>, Option<u64>)> {
    let t0 = Instant::now();
    let created = fs.create(path).and_then(|f| {
        f.append(SEGMENT_MAGIC)?;
        if fsync != FsyncPolicy::Never {
            f.sync_data()?;
            // The new file's directory entry must be durable too, or a power cut loses it.
            fs.sync_dir(dir)?;
        }
        Ok(f)
    });
    match created {
        Ok(f) => Ok((
            f,
            (fsync != FsyncPolicy::Never).then(|| t0.elapsed().as_micros() as u64),
        )),
        Err(e) => {
            let _ = fs.remove_file(path);
            Err(e)
        }
    }
}
