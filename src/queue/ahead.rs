//! What keeps the disk off the queue lock under `fsync = "batch"` (issue 18): the fsyncs a
//! group commit would make holding the lock, done by the writer without it ([`AheadIo`]),
//! and the records a caller of [`QueueHandle`] writes itself, whose fsync the writer owes
//! ([`Queue::owe_sync`], folded into its next group commit with [`SyncJob::then`]), and when
//! that fsync is due ([`Queue::sync_due`]): not at all while the broker's PUBACKs make the
//! records safe first, only [`SYNC_GRACE`] after a write it has not acknowledged.

use super::append::create_segment;
use super::*;

/// Under `fsync = "batch"`, how long the fsync of a written record waits for the broker's
/// PUBACK (issue 18). A record the broker acknowledges first is safe without it, so on a
/// healthy broker a lone alert costs no fsync and no wake-up of the writer thread; one it
/// does not is fsynced this much later than it would be otherwise (the window in which a power
/// cut loses an alert neither synced nor acknowledged grows by this). 10 ms: mosquitto's
/// default (`set_tcp_nodelay false`) holds each PUBACK until the relay's next publish carries
/// the TCP ACK of the last one, so PUBACKs come one alert interval late (5 ms at 200/s); a
/// grace shorter than that fsynced every alert (2 ms did: 2.9x the forwarder's CPU).
pub(super) const SYNC_GRACE: std::time::Duration = std::time::Duration::from_millis(10);
/// How many unacknowledged writes [`Queue::sync_due`] tells apart: enough for 10 ms of a
/// burst's group commits and direct writes; beyond it a write shares the time of the last one
/// (its fsync comes sooner, never later).
pub(super) const GRACE_WRITES: usize = 256;
/// Written records are fsynced at least this often even when the broker acknowledged them
/// all, so a failing disk (EIO on fsync) shows in health within a second while alerts flow.
pub(super) const SYNC_AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// After this many graces in a row ended without the PUBACK, a direct write's fsync is asked
/// for at once (as without a grace): waiting would only add a timer wake-up per alert.
pub(super) const LATE_AFTER: u32 = 3;
/// While PUBACKs are late, every this many direct writes waits the grace again, to see
/// whether they came back in time.
pub(super) const PROBE_EVERY: u32 = 32;

impl Queue {
    /// Under the lock, before a group commit whose first payload is `len` bytes: the fsyncs
    /// its appends would otherwise make holding the queue (the writer runs them without it,
    /// [`AheadIo::run`], then hands the result back with [`Queue::finish_ahead`]):
    /// - the seq reservation, renewed once fewer than half a block of reserved seqs is left
    ///   (a group commit takes at most a few thousand, so its appends never reserve);
    /// - the ack persist and deletions a roll makes first, and the new segment's creation
    ///   (magic, fsync, directory fsync), when the first record starts a new segment.
    ///
    /// Safe because only the writer appends: nothing issues a seq or rolls in between, and
    /// what is prepared takes effect only in [`Queue::finish_ahead`], under the lock, after
    /// its fsyncs. `None` when nothing is due.
    pub(super) fn ahead_io(&mut self, len: usize) -> Option<AheadIo> {
        if !self.pending.is_empty() || self.roll_failure.is_some() {
            return None;
        }
        let reserve = (self.next_seq + SEQ_BLOCK / 2 >= self.reserved_upto)
            .then(|| block_after(self.next_seq));
        let roll = len <= self.largest_payload() && self.needs_roll(len);
        let mut flush = None;
        if roll {
            self.retire_acked_tail();
            if !self.retired.is_empty() {
                flush = self.begin_flush();
            }
        }
        if reserve.is_none() && !roll {
            return None;
        }
        Some(AheadIo {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            fsync: self.fsync,
            flush,
            reserve,
            segment: roll.then_some(self.next_seq),
        })
    }

    /// Under the lock again: records what [`AheadIo::run`] did. A failed reservation or
    /// segment is left to the append, which tries again holding the lock and reports it.
    pub(super) fn finish_ahead(&mut self, done: AheadDone) {
        if let Some((flush, took, result)) = done.flush {
            self.end_flush(&flush, took, flush.write && result.is_ok());
            if let Err(e) = result {
                log::error!("queue: cannot persist the ack position: {e}");
            }
        }
        if let Some((upto, Ok(took))) = done.reserve {
            if let Some(us) = took {
                self.count_fsync(1, us);
            }
            self.counters.bytes_written += WORD_FILE_LEN as u64;
            self.reserved_upto = self.reserved_upto.max(upto);
        }
        if let Some((first, Ok((f, took)))) = done.segment {
            // Only the writer appends, so nothing moved; checked anyway.
            if self.pending.is_empty() && self.next_seq == first {
                if let Some(us) = took {
                    self.count_fsync(2, us);
                }
                self.install_segment(first, f);
            } else {
                let _ = self.fs.remove_file(&self.path_of(first));
            }
        }
    }

    /// True when a record of `len` payload bytes may be appended and written by a caller of
    /// [`QueueHandle`] itself: `fsync = "batch"`, and the append makes no fsync and no file
    /// operation beyond the one `write` (no roll, no seq reservation, no room to make, no
    /// file to open), so the caller's thread never waits on the disk. Otherwise it goes
    /// through the writer thread.
    pub(super) fn appends_without_io(&self, len: usize) -> bool {
        self.fsync == FsyncPolicy::Batch
            && self.pending.is_empty()
            && self.roll_failure.is_none()
            && self.active.is_some()
            && len <= self.largest_payload()
            && !self.needs_roll(len)
            && self.next_seq + SEQ_BLOCK / 2 < self.reserved_upto
            && self.over_bound((HEADER_LEN + len) as u64).is_none()
    }

    /// `job`'s records are written (by a caller of [`QueueHandle`] directly, or by a group
    /// commit the writer defers): the writer owes their fsync, due at [`Queue::sync_due`].
    /// True when none was owed before.
    pub(super) fn owe_sync(&mut self, job: SyncJob, now: Instant) -> bool {
        let first = self.owed.is_none();
        let due = self.sync_due();
        if first {
            self.owed_since = Some(now);
        }
        // Each write's grace starts when it is made.
        if self.unacked_writes.len() < GRACE_WRITES {
            self.unacked_writes.push_back((job.upto_seq, now));
        } else if let Some(last) = self.unacked_writes.back_mut() {
            last.0 = job.upto_seq;
        }
        self.owed = Some(match self.owed.take() {
            Some(older) => older.then(job),
            None => job,
        });
        if self.sync_due() != due {
            self.wake_syncer();
        }
        first
    }

    /// True when nothing is owed, or the broker acknowledged every record owed: the fsync
    /// makes nobody safe, it only proves the disk (see [`SYNC_AT_LEAST_EVERY`]).
    pub(super) fn owed_settled(&self) -> bool {
        self.owed
            .as_ref()
            .is_none_or(|job| self.acked_upto >= job.upto_seq)
    }

    /// When the owed fsync is due: [`SYNC_GRACE`] after the oldest write the broker has not
    /// acknowledged yet, and at the latest [`SYNC_AT_LEAST_EVERY`] after the oldest write not
    /// synced. `None` when nothing is owed.
    ///
    /// The grace is each write's own: a broker that answers every PUBACK within it never
    /// makes an fsync due, even when the next alert is always written before the last one's
    /// PUBACK comes (mosquitto with Nagle on sends each PUBACK with the next publish's ACK).
    pub(super) fn sync_due(&self) -> Option<Instant> {
        self.owed.as_ref()?;
        let latest = self.owed_since? + SYNC_AT_LEAST_EVERY;
        let unacked = self
            .unacked_writes
            .iter()
            .find(|&&(upto, _)| upto > self.acked_upto);
        match unacked {
            Some(&(_, at)) => Some(latest.min(at + SYNC_GRACE)),
            None => Some(latest),
        }
    }

    /// After `acked_upto` moved: forgets the writes it covers. True when one of them was
    /// acknowledged within its grace (at `now`).
    pub(super) fn pop_acked_writes(&mut self, now: Instant) -> bool {
        let mut in_time = false;
        while let Some(&(upto, at)) = self.unacked_writes.front() {
            if upto > self.acked_upto {
                break;
            }
            self.unacked_writes.pop_front();
            in_time |= now < at + SYNC_GRACE;
        }
        in_time
    }

    /// The sync timer found the grace over without the PUBACK.
    pub(super) fn grace_missed(&mut self) {
        if !self.owed_settled() {
            self.late_graces = self.late_graces.saturating_add(1);
        }
    }

    /// A direct write just owed its fsync: whether to ask the writer for it at once, because
    /// the last graces ended without the PUBACK (this one then is not waited for either,
    /// except every [`PROBE_EVERY`]th).
    pub(super) fn sync_at_once(&mut self) -> bool {
        if self.late_graces < LATE_AFTER {
            return false;
        }
        self.late_owes = self.late_owes.wrapping_add(1);
        self.late_owes % PROBE_EVERY != 0
    }

    /// A sync timer runs ([`spawn_writer`](super::spawn_writer) inside a runtime, under
    /// `batch`): an owed fsync waits until [`Queue::sync_due`], not for a wake-up.
    pub(super) fn timed(&self) -> bool {
        self.sync_wake.is_some()
    }

    /// Tells the writer's sync timer that [`Queue::sync_due`] moved.
    pub(super) fn wake_syncer(&self) {
        if let Some(wake) = &self.sync_wake {
            wake.notify_one();
        }
    }

    /// `job` (a group commit's, if any) together with the fsync owed for records written
    /// before it: one job that covers both, to sync now.
    pub(super) fn take_owed(&mut self, job: Option<SyncJob>) -> Option<SyncJob> {
        self.owed_since = None;
        self.unacked_writes.clear();
        self.sync_asked = false;
        match (self.owed.take(), job) {
            (Some(older), Some(job)) => Some(older.then(job)),
            (owed, job) => job.or(owed),
        }
    }

    /// The writer, after an fsync that covered every seq below `upto`: the receipts of those
    /// the broker did not answer first (records written later stay, for their own fsync).
    pub(super) fn take_receipts_below(&mut self, upto: u64) -> BTreeMap<u64, Receipt> {
        let later = self.receipts.split_off(&upto);
        std::mem::replace(&mut self.receipts, later)
    }
}

/// The fsyncs a group commit's appends would make holding the queue, done by the writer
/// without it ([`Queue::ahead_io`]).
pub(super) struct AheadIo {
    fs: Arc<dyn Filesystem>,
    dir: PathBuf,
    fsync: FsyncPolicy,
    /// The ack persist and deletions before a roll.
    flush: Option<AckFlush>,
    /// The seq reservation to write.
    reserve: Option<u64>,
    /// The first seq of the segment to create.
    segment: Option<u64>,
}

/// What [`AheadIo::run`] did, for [`Queue::finish_ahead`].
pub(super) struct AheadDone {
    flush: Option<(AckFlush, Option<u64>, Result<(), QueueError>)>,
    reserve: Option<(u64, Result<Option<u64>, QueueError>)>,
    #[allow(clippy::type_complexity)]
    segment: Option<(u64, io::Result<(Arc<dyn FsFile>, Option<u64>)>)>,
}

impl AheadIo {
    /// The I/O, in the order an append under the lock does it: ack persist and deletions,
    /// the new segment, the seq reservation.
    pub(super) fn run(self) -> AheadDone {
        let flush = self.flush.map(|f| {
            let (took, result) = f.run();
            (f, took, result)
        });
        let segment = self.segment.map(|first| {
            let path = self.dir.join(Segment::file_name(first));
            (
                first,
                create_segment(&*self.fs, &self.dir, &path, self.fsync),
            )
        });
        let reserve = self.reserve.map(|upto| {
            let path = self.dir.join("seq");
            (upto, write_word_file(&*self.fs, &path, upto, self.fsync))
        });
        AheadDone {
            flush,
            reserve,
            segment,
        }
    }
}

impl SyncJob {
    /// One job covering this one's files and then `newer`'s (written after it).
    fn then(self, newer: SyncJob) -> SyncJob {
        let mut extra = self.extra;
        let same = self.segment_first_seq == newer.segment_first_seq;
        let file = match same {
            true => newer.file.or(self.file),
            false => {
                extra.extend(self.file);
                newer.file
            }
        };
        extra.extend(newer.extra);
        SyncJob {
            file,
            extra,
            upto_seq: self.upto_seq.max(newer.upto_seq),
            segment_first_seq: newer.segment_first_seq,
            segment_bytes: match same {
                true => self.segment_bytes.max(newer.segment_bytes),
                false => newer.segment_bytes,
            },
            took_us: Cell::new(None),
        }
    }
}
