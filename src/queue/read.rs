//! Reading: batches of CRC-checked records from the ack position on, resync past corrupt
//! ones, holes, and the retry of a failed read.

use super::*;

impl Queue {
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
        if self.read_retry.is_some_and(|(at, _)| Instant::now() < at) {
            return Ok(out);
        }
        let mut failed = None;
        while out.len() < max_records && bytes < max_bytes {
            self.skip_read_gaps();
            if self.read_seq >= self.durable_seq {
                break;
            }
            // Nothing is stored at or after the read position (the seqs up to the durable
            // reservation after a crash were never issued): nothing to read.
            if !self.segments.iter().any(|s| self.read_seq < s.next_seq) {
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
            let decoded = self
                .reader_for(pos.segment_first_seq)
                .and_then(|r| decode_at(r, pos.offset, pos.seq, end));
            match decoded {
                Ok(Decoded::Record(rec, used)) => {
                    self.read_retry = None;
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
                    let path = self.path_of(pos.segment_first_seq);
                    let resynced = match bad {
                        Decoded::Truncated if pos.offset >= end => Ok(None),
                        _ => self
                            .reader_for(pos.segment_first_seq)
                            .and_then(|r| resync(r, pos.offset + 1, end, pos.seq + 1, limit)),
                    };
                    let found = match resynced {
                        Ok(found) => found,
                        Err(e) => {
                            failed = Some(self.read_failed(&path, e));
                            break;
                        }
                    };
                    let (to_off, to_seq) = found.unwrap_or((end, limit));
                    self.skip_unreadable(idx, pos, (to_off, to_seq), &path);
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    // EACCES, EIO: not corruption. Stay here and try again after a backoff.
                    let path = self.path_of(pos.segment_first_seq);
                    failed = Some(self.read_failed(&path, e));
                    break;
                }
                Err(e) => {
                    // The file was deleted behind our back: what is left of this segment is
                    // gone. Counted and logged as lost rather than stalling on it forever.
                    let path = self.path_of(pos.segment_first_seq);
                    log::error!("queue: reading {} failed: {e}", path.display());
                    self.reader = None;
                    self.skip_unreadable(idx, pos, (end, limit), &path);
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
        match failed {
            // Records read before the failure go out; the failure is reported next time.
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// A read failed with an I/O error: counted, the reader closed, the next attempt put off
    /// (doubling), and the error returned for the caller to log (rate-limited) and to wake
    /// the reader again after [`Queue::read_retry_in`].
    pub(super) fn read_failed(&mut self, path: &Path, e: io::Error) -> QueueError {
        self.counters.read_errors += 1;
        self.reader = None;
        let wait = match self.read_retry {
            Some((_, w)) => (w * 2).min(READ_RETRY_MAX),
            None => READ_RETRY_MIN,
        };
        self.read_retry = Some((Instant::now() + wait, wait));
        QueueError::Io {
            path: path.to_owned(),
            source: e,
        }
    }

    /// Tests: the read backoff's time has come (the model's clock is abstract).
    #[cfg(test)]
    pub(crate) fn expire_read_backoff(&mut self) {
        if let Some((_, w)) = self.read_retry {
            self.read_retry = Some((Instant::now(), w));
        }
    }

    /// When a read failed with an I/O error: how long until it is tried again.
    pub fn read_retry_in(&self) -> Option<std::time::Duration> {
        self.read_retry
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }

    /// The records from `pos` up to `to` (offset, seq) in segment `idx` cannot be read: they
    /// are lost, counted once (not again when recovery or an earlier read found them), and
    /// reading goes on at `to`, the next intact record or the segment's end.
    fn skip_unreadable(&mut self, idx: usize, pos: ReadPos, to: (u64, u64), path: &Path) {
        let (offset, seq) = to;
        if !self.in_hole(pos.seq) {
            self.lose(idx, pos.seq, seq, path);
        }
        self.read = Some(ReadPos { offset, seq, ..pos });
        self.read_seq = self.read_seq.max(seq);
    }

    /// Marks `start..end` of segment `idx` unreadable: counted, logged, quarantined later.
    pub(super) fn lose(&mut self, idx: usize, start: u64, end: u64, path: &Path) {
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

    /// `seq`, or the end of the last hole that starts at or below it when that lies beyond.
    pub(super) fn past_hole(&self, seq: u64) -> u64 {
        self.holes
            .range(..=seq)
            .next_back()
            .map_or(seq, |(_, &e)| seq.max(e))
    }

    pub(super) fn in_hole(&self, seq: u64) -> bool {
        self.holes
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &e)| e > seq)
    }

    pub(super) fn add_hole(&mut self, start: u64, end: u64) {
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

    pub(super) fn reader_for(&mut self, first_seq: u64) -> io::Result<&mut SegReader> {
        if self
            .reader
            .as_ref()
            .is_none_or(|r| r.first_seq != first_seq)
        {
            self.reader = Some(SegReader::open(
                &*self.fs,
                &self.path_of(first_seq),
                first_seq,
            )?);
        }
        self.reader
            .as_mut()
            .ok_or_else(|| io::Error::other("segment reader missing"))
    }

    /// Moves the read position over acknowledged and unreadable sequence numbers.
    pub(super) fn skip_read_gaps(&mut self) {
        self.read_seq = self.read_seq.max(self.acked_upto);
        loop {
            let before = self.read_seq;
            self.read_seq = self.past_hole(self.read_seq);
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
    pub(super) fn seek(&mut self) -> ReadPos {
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
}
