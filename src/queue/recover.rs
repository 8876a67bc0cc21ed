//! Recovery at open: the segments found, the newest one scanned, damaged ones quarantined,
//! unreadable ones retried (an I/O error is not corruption), and the start-up write probe.

use super::*;

impl Queue {
    pub(super) fn recover(&mut self) -> Result<RecoveryReport, QueueError> {
        self.acked_upto = read_ack_file(&*self.fs, &self.dir.join("ack"))
            .unwrap_or(1)
            .max(1);
        self.persisted_ack = self.acked_upto;
        let firsts = list_segments(&*self.fs, &self.dir).map_err(io_err(&self.dir))?;
        let count = firsts.len();
        for (i, &first) in firsts.iter().enumerate() {
            let path = self.path_of(first);
            let successor = firsts.get(i + 1).copied();
            // A segment whose successor starts at or below the ack position is fully acked.
            if successor.is_some_and(|s| s <= self.acked_upto) {
                if let Err(e) = self.fs.remove_file(&path) {
                    log::warn!("queue: cannot delete acked {}: {e}", path.display());
                }
                continue;
            }
            // An I/O error (EACCES, EIO) is not corruption: retried, then start is refused
            // with the file named, and the segment is left as it is.
            let fs = self.fs.clone();
            let magic_ok = self.retry_io(&path, || segment_magic_ok(&*fs, &path))?;
            if !magic_ok {
                log::error!(
                    "queue: segment {} has no valid header (power cut before it was written?); quarantining it",
                    path.display()
                );
                self.quarantine(first);
                continue;
            }
            if let Some(next) = successor {
                // Trusted by size; every record is CRC-checked when it is read. Its end is
                // found by walking the headers only: after a crash the successor starts
                // above the seq reservation, not where this one ends.
                let bytes = self
                    .fs
                    .open_read(&path)
                    .and_then(|f| f.len())
                    .unwrap_or(MAGIC_LEN);
                let walked = self.retry_io(&path, || walk_headers(&*fs, &path, first, bytes))?;
                // A torn or corrupt record: the reader finds, counts and skips it.
                let end = walked.unwrap_or(next);
                if end < next && next % SEQ_BLOCK != 0 {
                    // Seqs jump only to a block boundary (a restart above the reservation, a
                    // burned write): any other gap is records lost whole with this segment's
                    // tail (a power cut with `fsync = "never"` can cut exactly between two).
                    let lost = self.unacked_in(end.max(self.acked_upto), next);
                    if lost > 0 {
                        log::error!(
                            "queue: records seq {end}..{next} at the end of {} are missing ({lost} unacknowledged lost; power cut before they were synced?)",
                            path.display()
                        );
                        self.counters.corrupt_regions += 1;
                        self.counters.corrupt_records += lost;
                    }
                }
                self.segments.push_back(Segment {
                    first_seq: first,
                    next_seq: end.clamp(first, next.max(first)),
                    bytes,
                    durable_bytes: bytes,
                    corrupt: false,
                });
                continue;
            }
            debug_assert_eq!(i + 1, count);
            self.recover_newest(first, &path)?;
        }
        // What recovery found may still be only in the page cache (the process died before
        // its group commit's fsync): it is about to be published, so it is made durable first.
        if self.fsync != FsyncPolicy::Never {
            let firsts: Vec<u64> = self.segments.iter().map(|s| s.first_seq).collect();
            for first in firsts {
                let path = self.path_of(first);
                let fs = self.fs.clone();
                self.retry_io(&path, || fs.open_read(&path).and_then(|f| f.sync_data()))?;
            }
        }
        // Whatever was issued before a crash or power cut (even in a segment lost since) is
        // below the reservation: the next seq starts above all of them.
        let seq_path = self.dir.join("seq");
        let reserved = read_word_file(&*self.fs, &seq_path).map_err(io_err(&seq_path))?;
        if reserved.is_none() && self.fs.exists(&seq_path) {
            log::error!(
                "queue: {} is damaged; seqs continue after the newest segment and the ack position only",
                seq_path.display()
            );
        }
        self.reserved_upto = reserved.unwrap_or(0);
        let end = self.segments.back().map_or(1, |last| last.next_seq);
        self.next_seq = end.max(self.acked_upto).max(self.reserved_upto);
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
    pub(super) fn recover_newest(&mut self, first: u64, path: &Path) -> Result<(), QueueError> {
        let fs = self.fs.clone();
        let scan = self.retry_io(path, || scan_segment(&*fs, path, first, None))?;
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
            let cut = self
                .fs
                .open_rw(path)
                .and_then(|f| f.set_len(scan.valid_bytes).and_then(|()| f.sync_data()));
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
        Ok(())
    }

    /// Runs `op` (a read at recovery) up to [`RECOVERY_READ_ATTEMPTS`] times with doubling
    /// backoff while it fails with an I/O error; counts and logs each failure.
    pub(super) fn retry_io<T>(
        &mut self,
        path: &Path,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> Result<T, QueueError> {
        let mut wait = RECOVERY_READ_BACKOFF;
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.counters.read_errors += 1;
                    // Only an EIO/EACCES-class error may go away by itself: anything else
                    // (a vanished file, say) fails at once, without waiting.
                    if attempt >= RECOVERY_READ_ATTEMPTS || !transient(&e) {
                        return Err(QueueError::Unreadable {
                            path: path.to_owned(),
                            source: e,
                        });
                    }
                    log::warn!(
                        "queue: cannot read {} (attempt {attempt} of {RECOVERY_READ_ATTEMPTS}): {e}; retrying in {wait:?}",
                        path.display()
                    );
                    std::thread::sleep(wait);
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }

    pub(super) fn quarantine(&mut self, first_seq: u64) {
        let from = self.path_of(first_seq);
        let base = format!("{}.corrupt", Segment::file_name(first_seq));
        // Never overwrite an earlier quarantined file of the same name.
        let mut to = self.dir.join(&base);
        let mut n = 1;
        while self.fs.exists(&to) {
            to = self.dir.join(format!("{base}.{n}"));
            n += 1;
        }
        match self.fs.rename(&from, &to) {
            Ok(()) => {
                self.counters.quarantined_segments += 1;
                log::warn!("queue: quarantined {} as {}", from.display(), to.display());
            }
            Err(e) => log::error!("queue: cannot quarantine {}: {e}", from.display()),
        }
    }

    /// Closes the cached reader if it reads segment `first_seq`.
    pub(super) fn drop_reader_of(&mut self, first_seq: u64) {
        if self
            .reader
            .as_ref()
            .is_some_and(|r| r.first_seq == first_seq)
        {
            self.reader = None;
        }
    }

    pub(super) fn quarantine_or_delete(&mut self, first_seq: u64, corrupt: bool) {
        self.drop_reader_of(first_seq);
        if corrupt {
            self.quarantine(first_seq);
        } else {
            let path = self.path_of(first_seq);
            if let Err(e) = self.fs.remove_file(&path) {
                log::warn!("queue: cannot delete {}: {e}", path.display());
            }
        }
    }
}

/// Creates, fsyncs and removes a probe file in `dir`: the queue can write there.
pub(super) fn probe_writable(dir: &Path) -> Result<(), QueueError> {
    // Named by PID: two relays started at once must not delete each other's probe (the
    // loser of the lock then says so, instead of blaming the directory).
    let path = dir.join(format!(".probe-{}", std::process::id()));
    let made = std::fs::File::create(&path)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::remove_file(&path));
    match made {
        Ok(()) => Ok(()),
        // A read-only or full filesystem is not a setup mistake: the backlog can still be
        // delivered, and appends report the error one by one (health says so).
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::StorageFull
            ) =>
        {
            log::error!(
                "queue: directory {} is not writable ({e}); delivering what it holds, new alerts are refused",
                dir.display()
            );
            Ok(())
        }
        Err(source) => Err(QueueError::NotWritable {
            path: dir.to_owned(),
            user: lock::user_name(),
            source,
        }),
    }
}
