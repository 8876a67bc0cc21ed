//! The queue's writer thread and the shared handle the rest of the relay uses.
//!
//! One OS thread owns fsyncing and every append that needs I/O beyond one `write`: it takes
//! every request waiting in its channel, appends them,
//! writes them with one `write`, makes them readable (the publisher sends while the writer
//! syncs) and fsyncs once outside the lock (group commit). fsync latency therefore never stalls
//! the async runtime (GPIO timing, socket reads, MQTT keepalive). Before a group commit it makes
//! the fsyncs its appends would otherwise make holding the lock (a new segment, the ack persist
//! before it, the seq reservation) without it, so the publisher's reads and acks never wait on
//! the disk either. Under `fsync = "batch"` a lone record (nothing in the channel, no fsync
//! needed to append it) is written by its caller instead, under the lock, and readable at once:
//! the writer is only woken to fsync it (issue 18: one thread hop fewer per alert).
//!
//! Each requester is answered once its record is *safe*: when the fsync covering it is done, or
//! earlier, when the broker acknowledged it while the fsync ran ([`Queue::ack`] answers the
//! record's [`Receipt`]), whichever comes first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, Notify};

use super::{Queue, QueueError, Record};
use crate::config::FsyncPolicy;
use crate::stats::Stats;

/// Requests that may wait for the writer at once. A full channel makes senders wait (the
/// source then stops reading its socket, and TCP pushes back upstream). At ~0.6 KiB a request
/// this bounds a burst's memory to ~300 KiB; one group commit takes everything waiting, so
/// a deeper channel buys no throughput (measured with `examples/bench.rs`: 4096 cost ~4 MiB
/// of peak RSS in a 20 000-alert burst for the same rate).
pub const WRITE_CHANNEL_CAPACITY: usize = 512;
/// Most records one group commit takes, so one fsync never waits on an unbounded batch.
const MAX_BATCH: usize = 4096;
/// Under load (the last group commit took at least [`BUSY_BATCH`] records and more were waiting
/// when it finished), the writer waits this long for more before committing, like PostgreSQL's
/// `commit_delay`: fewer, larger fsyncs. Each fsync rewrites the segment's partly filled last
/// page and the inode, so small batches cost the SD card several KiB each. An alert arriving
/// when the writer has caught up never waits.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(1);
const BUSY_BATCH: usize = 4;

/// The answer to one append request.
pub type WriteOutcome = Result<u64, Arc<QueueError>>;

pub struct WriteRequest {
    pub payload: Vec<u8>,
    pub accepted_us: u64,
    /// Called by the writer thread with the outcome, before `done` is answered.
    pub then: Option<Then>,
    pub done: Option<oneshot::Sender<WriteOutcome>>,
}

/// Told the outcome of appends, on the writer thread (keep it short: it delays the next
/// group commit). Saves the caller a task per append just to wait for the answer.
pub trait OnOutcome: Send + Sync {
    fn on_outcome(&self, tag: u64, outcome: Option<u64>);
}

/// An [`OnOutcome`] call owed for one append, with the caller's `tag`. Made exactly once: with
/// the seq when the record is durable, with `None` when it failed or the writer stopped first.
pub struct Then {
    sink: Arc<dyn OnOutcome>,
    tag: u64,
    fired: bool,
}

impl Then {
    pub fn new(sink: Arc<dyn OnOutcome>, tag: u64) -> Then {
        Then {
            sink,
            tag,
            fired: false,
        }
    }

    fn fire(mut self, outcome: Option<u64>) {
        self.fired = true;
        self.sink.on_outcome(self.tag, outcome);
    }
}

/// What a requester is owed for one record written but not yet synced: held by the queue
/// while the fsync runs, answered by whichever comes first, the fsync (the writer) or the
/// broker's acknowledgement ([`Queue::ack`]).
pub struct Receipt {
    then: Option<Then>,
    done: Option<oneshot::Sender<WriteOutcome>>,
    /// Where the answer is counted (`queue_appended` or `queue_append_failed`).
    stats: Option<Arc<Stats>>,
}

impl Receipt {
    /// Moves what `req` is owed out of it; its answer is counted in `stats`.
    fn take(req: &mut WriteRequest, stats: &Arc<Stats>) -> Receipt {
        Receipt {
            then: req.then.take(),
            done: req.done.take(),
            stats: Some(stats.clone()),
        }
    }

    /// A receipt that tells `sink` (tests: the model's senders).
    #[cfg(test)]
    pub(super) fn for_test(sink: Arc<dyn OnOutcome>, tag: u64) -> Receipt {
        Receipt {
            then: Some(Then::new(sink, tag)),
            done: None,
            stats: None,
        }
    }

    /// Counts the outcome, tells the `then` sink, then the receiver (as the writer always did).
    pub(super) fn answer(self, outcome: WriteOutcome) {
        if let Some(stats) = &self.stats {
            match &outcome {
                Ok(_) => stats.inc(&stats.queue_appended),
                Err(e) => {
                    stats.inc(&stats.queue_append_failed);
                    stats.log_queue_error(e);
                }
            }
        }
        if let Some(then) = self.then {
            then.fire(outcome.as_ref().ok().copied());
        }
        if let Some(done) = self.done {
            let _ = done.send(outcome);
        }
    }
}

impl Drop for Then {
    fn drop(&mut self) {
        if !self.fired {
            self.sink.on_outcome(self.tag, None);
        }
    }
}

/// What the writer's channel carries.
enum Msg {
    Append(WriteRequest),
    /// Sync what is owed now: a record was written on the caller's thread without a sync
    /// timer ([`Queue::owe_sync`]), or the timer found the owed fsync due
    /// ([`Queue::sync_due`]).
    Sync,
}

/// Counts a request from before it is sent until the writer has appended it: while any is
/// counted, appends go through the channel (after it), which keeps every caller's order.
struct InChannel<'a>(&'a AtomicUsize, bool);

impl<'a> InChannel<'a> {
    fn enter(n: &'a AtomicUsize) -> InChannel<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        InChannel(n, true)
    }

    /// Sent: the writer takes the count off once it has appended the request.
    fn sent(mut self) {
        self.1 = false;
    }
}

impl Drop for InChannel<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Shared access to the queue: appends are written at once by the caller when that needs no
/// fsync and nothing waits in the writer's channel, otherwise by the writer thread; reads and
/// acks lock the queue briefly.
#[derive(Clone)]
pub struct QueueHandle {
    queue: Arc<Mutex<Queue>>,
    readable: Arc<Notify>,
    tx: mpsc::Sender<Msg>,
    stats: Arc<Stats>,
    /// Requests sent to (or being sent to) the writer and not yet appended.
    in_channel: Arc<AtomicUsize>,
    /// `fsync = "batch"`: a caller may write a record itself (see [`QueueHandle::append_then`]).
    direct: bool,
}

impl QueueHandle {
    /// Queues `payload` for appending. Waits while the writer is backed up.
    pub async fn append(&self, payload: Vec<u8>, accepted_us: u64) -> Result<(), QueueClosed> {
        self.submit(WriteRequest {
            payload,
            accepted_us,
            then: None,
            done: None,
        })
        .await
    }

    /// Queues `payload` for appending and returns at once. Waits only while the writer is
    /// backed up, so the caller keeps the order of its appends without waiting for their
    /// fsync. The `then` call is made once the outcome is known; with `receipt`, the returned
    /// receiver gets the outcome too (after that call).
    ///
    /// With `fsync = "batch"`, when nothing waits in the writer's channel and the append needs
    /// no fsync of its own (no new segment, no seq reservation, no room to make), the record
    /// is written here, under the lock, and made readable at once (issue 18: one hop and one
    /// wake-up fewer per lone alert); the writer thread is only asked for the fsync and
    /// answers after it, unless the broker's PUBACK came first. A `write` to the page cache
    /// takes microseconds; nothing here fsyncs.
    pub async fn append_then(
        &self,
        payload: Vec<u8>,
        accepted_us: u64,
        then: Option<Then>,
        receipt: bool,
    ) -> Result<Option<oneshot::Receiver<WriteOutcome>>, QueueClosed> {
        let (done, rx) = match receipt {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        self.submit(WriteRequest {
            payload,
            accepted_us,
            then,
            done,
        })
        .await?;
        Ok(rx)
    }

    /// Appends and waits until the record is durable; returns its sequence number.
    pub async fn append_durable(
        &self,
        payload: Vec<u8>,
        accepted_us: u64,
    ) -> Result<u64, Arc<QueueError>> {
        let (done, rx) = oneshot::channel();
        let req = WriteRequest {
            payload,
            accepted_us,
            then: None,
            done: Some(done),
        };
        let closed = || {
            Arc::new(QueueError::Io {
                path: "queue writer".into(),
                source: std::io::Error::other("queue writer has stopped"),
            })
        };
        self.submit(req).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Writes `req` here if it may be ([`QueueHandle::append_then`]), else hands it to the
    /// writer (waiting while its channel is full).
    async fn submit(&self, req: WriteRequest) -> Result<(), QueueClosed> {
        let Some(req) = self.write_here(req) else {
            return Ok(());
        };
        let counted = InChannel::enter(&self.in_channel);
        self.tx
            .send(Msg::Append(req))
            .await
            .map_err(|_| QueueClosed)?;
        counted.sent();
        Ok(())
    }

    /// The direct append: `Some(req)` back when it must go through the writer.
    fn write_here(&self, mut req: WriteRequest) -> Option<WriteRequest> {
        if !self.direct || self.in_channel.load(Ordering::SeqCst) != 0 {
            return Some(req);
        }
        let mut q = self.lock();
        // Checked again holding the lock, under which the writer appends and uncounts.
        if self.in_channel.load(Ordering::SeqCst) != 0 || !q.appends_without_io(req.payload.len()) {
            return Some(req);
        }
        let receipt = Receipt::take(&mut req, &self.stats);
        let written = q
            .append(&req.payload, req.accepted_us)
            .and_then(|seq| q.commit().map(|job| (seq, job)));
        match written {
            Ok((seq, Some(job))) => {
                q.await_safe(seq, receipt);
                q.mark_written(&job);
                let first = q.owe_sync(job, std::time::Instant::now());
                let at_once = !q.timed() || (first && q.sync_at_once());
                if at_once {
                    // The timer need not arm for it: the writer takes it now.
                    q.sync_asked = true;
                }
                drop(q);
                self.readable.notify_one();
                if first && at_once {
                    // Already owed: a wake-up is on its way (or the writer is busy and takes
                    // the owed fsync along with its next commit).
                    let _ = self.tx.try_send(Msg::Sync);
                }
            }
            Ok((_, None)) => {
                drop(q);
                // Cannot happen (an active segment and a buffered record); never a lie.
                receipt.answer(Err(Arc::new(QueueError::Io {
                    path: "queue".into(),
                    source: std::io::Error::other("the record was not written"),
                })));
            }
            Err(e) => {
                drop(q);
                receipt.answer(Err(Arc::new(e)));
            }
        }
        None
    }

    /// Locks the queue for reads and acks. Never hold the guard across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock aborts the process (panic = "abort"), so poisoning
        // can only be seen in tests; the queue's state is still consistent at every await.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when new durable records may be readable.
    pub async fn readable(&self) {
        self.readable.notified().await
    }

    /// Persists the ack position and deletes fully acknowledged segments, holding the queue
    /// only to look and to record: the write, fsync, rename and unlinks run without it, so the
    /// publisher and the writer never wait on an SD card's fsync here. Blocking: call it from
    /// `spawn_blocking`.
    pub fn flush_acks(&self) -> Result<(), QueueError> {
        let Some(flush) = self.lock().begin_flush() else {
            return Ok(());
        };
        let (took, result) = flush.run();
        self.lock()
            .end_flush(&flush, took, flush.write && result.is_ok());
        result
    }

    /// Reads durable records; after a read failed with an I/O error, the reader is woken
    /// again when the retry is due.
    pub fn read_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        let mut q = self.lock();
        let r = q.read_batch(max_records, max_bytes);
        if r.is_err() {
            if let (Some(wait), Ok(rt)) = (q.read_retry_in(), tokio::runtime::Handle::try_current())
            {
                let readable = self.readable.clone();
                rt.spawn(async move {
                    tokio::time::sleep(wait).await;
                    readable.notify_one();
                });
            }
        }
        r
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the queue writer has stopped")]
pub struct QueueClosed;

/// Starts the writer thread. It stops when every [`QueueHandle`] is dropped, after writing,
/// syncing and closing the queue.
pub fn spawn_writer(
    queue: Queue,
    stats: Arc<Stats>,
) -> std::io::Result<(QueueHandle, JoinHandle<()>)> {
    let mut queue = queue;
    let policy = queue.fsync_policy();
    // Under `batch`, inside a runtime: fsyncs wait for the broker's PUBACK (issue 18).
    let runtime = tokio::runtime::Handle::try_current()
        .ok()
        .filter(|_| policy == FsyncPolicy::Batch);
    let wake = Arc::new(Notify::new());
    if runtime.is_some() {
        queue.sync_wake = Some(wake.clone());
    }
    let queue = Arc::new(Mutex::new(queue));
    let readable = Arc::new(Notify::new());
    let (tx, rx) = mpsc::channel(WRITE_CHANNEL_CAPACITY);
    let in_channel = Arc::new(AtomicUsize::new(0));
    let handle = QueueHandle {
        queue: queue.clone(),
        readable: readable.clone(),
        tx,
        stats: stats.clone(),
        in_channel: in_channel.clone(),
        direct: policy == FsyncPolicy::Batch,
    };
    if let Some(rt) = &runtime {
        rt.spawn(sync_when_due(
            Arc::downgrade(&queue),
            handle.tx.downgrade(),
            wake,
        ));
    }
    let join = std::thread::Builder::new()
        .name("queue-writer".into())
        .spawn(move || writer_loop(queue, rx, readable, policy, stats, in_channel))?;
    Ok((handle, join))
}

/// The sync timer, on the runtime's thread: asks the writer for the owed fsync once it is due
/// ([`Queue::sync_due`]). Told by the queue whenever the due time moves (a write the broker
/// has not acknowledged, or the PUBACK that settles it), so a record acknowledged within
/// [`SYNC_GRACE`](super::ahead::SYNC_GRACE) costs no timer wake-up, no hop to the writer
/// thread and no fsync. Holds neither the queue nor the channel: it ends with them.
async fn sync_when_due(
    queue: std::sync::Weak<Mutex<Queue>>,
    tx: mpsc::WeakSender<Msg>,
    wake: Arc<Notify>,
) {
    enum Next {
        Wait,
        Sleep(std::time::Instant),
        Ask,
    }
    loop {
        let next = {
            let Some(queue) = queue.upgrade() else {
                return;
            };
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            match q.sync_due() {
                None => Next::Wait,
                Some(_) if q.sync_asked => Next::Wait,
                Some(at) if at > std::time::Instant::now() => Next::Sleep(at),
                Some(_) => {
                    q.sync_asked = true;
                    q.grace_missed();
                    Next::Ask
                }
            }
        };
        match next {
            Next::Wait => wake.notified().await,
            Next::Sleep(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            Next::Ask => {
                let Some(tx) = tx.upgrade() else {
                    return;
                };
                // A full channel means a busy writer, which looks at the due time itself
                // after each group commit.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Msg::Sync) {
                    return;
                }
            }
        }
    }
}

fn writer_loop(
    queue: Arc<Mutex<Queue>>,
    mut rx: mpsc::Receiver<Msg>,
    readable: Arc<Notify>,
    policy: FsyncPolicy,
    stats: Arc<Stats>,
    in_channel: Arc<AtomicUsize>,
) {
    let lock = || queue.lock().unwrap_or_else(|p| p.into_inner());
    let mut batch: Vec<WriteRequest> = Vec::new();
    let mut results: Vec<Result<u64, Arc<QueueError>>> = Vec::new();
    // A `Msg::Sync` came: sync what is owed with this round.
    let mut asked = false;
    let push = |batch: &mut Vec<WriteRequest>, asked: &mut bool, m: Msg| match m {
        Msg::Append(r) => batch.push(r),
        Msg::Sync => *asked = true,
    };
    let mut busy = false;
    let mut open = true;
    while open {
        if batch.is_empty() {
            let waiting = match busy {
                true => rx.try_recv().ok(),
                false => None,
            };
            let first = match waiting {
                Some(m) => Some(m),
                None => {
                    // Caught up: the next alert is a lone one and is committed at once.
                    busy = false;
                    rx.blocking_recv()
                }
            };
            match first {
                Some(m) => push(&mut batch, &mut asked, m),
                // Every handle is gone: sync what is owed, then close.
                None => open = false,
            }
            if busy && policy == FsyncPolicy::Batch {
                std::thread::sleep(COMMIT_DELAY);
            }
            while open && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => push(&mut batch, &mut asked, m),
                    Err(_) => break,
                }
            }
            busy = batch.len() >= BUSY_BATCH;
        }
        // Without the lock: the fsyncs the first append would make holding it (a new
        // segment, the ack persist before it, the seq reservation), so the publisher's reads
        // and acks never wait on them. Nothing is written directly meanwhile: the batch's
        // requests are still counted in `in_channel`.
        if let Some(first) = batch.first() {
            let ahead = lock().ahead_io(first.payload.len());
            if let Some(io) = ahead {
                let done = io.run();
                lock().finish_ahead(done);
            }
        }
        let mut q = lock();
        // This group commit ends before the record that would start a new segment: that
        // one opens the next commit, whose segment is made without the lock.
        let mut n = 0;
        for req in &batch {
            if n > 0 && q.needs_roll(req.payload.len()) {
                break;
            }
            let r = q.append(&req.payload, req.accepted_us).map_err(Arc::new);
            let r = match (r, policy) {
                (Ok(seq), FsyncPolicy::Always) => commit_and_sync(&mut q, policy).map(|_| seq),
                (r, _) => r,
            };
            results.push(r);
            n += 1;
        }
        in_channel.fetch_sub(n, Ordering::SeqCst);
        let (own, commit_failed) = match q.commit() {
            Ok(job) => (job, None),
            Err(e) => (None, Some(Arc::new(e))),
        };
        // Receipts of the records this commit wrote, for whoever makes them safe first: the
        // broker's ack (while we fsync) or the fsync. What is left afterwards is ours.
        let registered = own.is_some();
        if registered {
            for (req, r) in batch.iter_mut().zip(&results) {
                if let Ok(seq) = r {
                    q.await_safe(*seq, Receipt::take(req, &stats));
                }
            }
        }
        // Records written directly by callers since the last fsync are covered by this one.
        // With a sync timer, the fsync waits until due (the broker's PUBACKs may make it
        // needless), unless asked for, or the queue closes.
        let now = std::time::Instant::now();
        let sync_now = !q.timed()
            || !open
            || std::mem::take(&mut asked)
            || q.sync_due().is_some_and(|at| at <= now);
        let mut deferred = false;
        let job = match (sync_now, own) {
            (true, own) => q.take_owed(own),
            (false, own) => {
                if let Some(own) = own {
                    // Readable now; the sync timer asks for its fsync when due.
                    q.mark_written(&own);
                    q.owe_sync(own, now);
                    deferred = true;
                }
                None
            }
        };
        let mut unanswered = BTreeMap::new();
        let mut sync_failed = None;
        if let Some(job) = job {
            // Readable now, in the page cache: the publisher sends while we fsync.
            q.mark_written(&job);
            drop(q);
            readable.notify_one();
            let synced = job.sync(policy);
            let mut q = lock();
            let mut upto = job.upto_seq;
            match synced {
                Ok(()) => q.mark_durable(&job),
                Err(e) => {
                    q.sync_failed(&e);
                    sync_failed = Some(Arc::new(e));
                    // Records written directly meanwhile share the file whose pages the
                    // kernel may have dropped; a later fsync of it could succeed without
                    // them. They fail too (the broker's PUBACK still makes one safe).
                    if let Some(later) = q.take_owed(None) {
                        upto = upto.max(later.upto_seq);
                    }
                }
            }
            unanswered = q.take_receipts_below(upto);
        } else {
            drop(q);
            if deferred {
                readable.notify_one();
            }
        }
        let failed = commit_failed.or(sync_failed.clone());
        if let Some(e) = &failed {
            stats.log_queue_error(e);
        }
        // Under `always` (records readable once synced) this is the only wake-up.
        if policy != FsyncPolicy::Batch {
            readable.notify_one();
        }
        for (mut req, r) in batch.drain(..n).zip(results.drain(..)) {
            let receipt = match &r {
                Ok(seq) if registered => match unanswered.remove(seq) {
                    Some(receipt) => receipt,
                    // Answered already: the broker acknowledged it before the fsync ended.
                    None => continue,
                },
                _ => Receipt::take(&mut req, &stats),
            };
            let r = match (&failed, r) {
                (Some(e), Ok(_)) => Err(e.clone()),
                (_, r) => r,
            };
            receipt.answer(r);
        }
        // The rest were written directly: safe now, unless the fsync failed.
        for (seq, receipt) in unanswered {
            receipt.answer(match &sync_failed {
                Some(e) => Err(e.clone()),
                None => Ok(seq),
            });
        }
    }
    if let Err(e) = lock().close() {
        log::error!("queue: closing failed: {e}");
    }
}

fn commit_and_sync(q: &mut Queue, policy: FsyncPolicy) -> Result<(), Arc<QueueError>> {
    if let Some(job) = q.commit().map_err(Arc::new)? {
        if let Err(e) = job.sync(policy) {
            q.sync_failed(&e);
            return Err(Arc::new(e));
        }
        q.mark_durable(&job);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
