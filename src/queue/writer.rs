//! The queue's writer thread and the shared handle the rest of the relay uses.
//!
//! One OS thread owns appending: it takes every request waiting in its channel, appends them,
//! writes them with one `write`, makes them readable (the publisher sends while the writer
//! syncs) and fsyncs once outside the lock (group commit). fsync latency therefore never stalls
//! the async runtime (GPIO timing, socket reads, MQTT keepalive).
//!
//! Each requester is answered once its record is *safe*: when the fsync covering it is done, or
//! earlier, when the broker acknowledged it while the fsync ran ([`Queue::ack`] answers the
//! record's [`Receipt`]), whichever comes first.

use std::collections::BTreeMap;
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
}

impl Receipt {
    /// Moves what `req` is owed out of it.
    fn take(req: &mut WriteRequest) -> Receipt {
        Receipt {
            then: req.then.take(),
            done: req.done.take(),
        }
    }

    /// A receipt that tells `sink` (tests: the model's senders).
    #[cfg(test)]
    pub(super) fn for_test(sink: Arc<dyn OnOutcome>, tag: u64) -> Receipt {
        Receipt {
            then: Some(Then::new(sink, tag)),
            done: None,
        }
    }

    /// Tells the `then` sink first, then the receiver (as the writer always did).
    pub(super) fn answer(self, outcome: WriteOutcome) {
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

/// Shared access to the queue: appends go through the writer thread, reads and acks lock it
/// briefly.
#[derive(Clone)]
pub struct QueueHandle {
    queue: Arc<Mutex<Queue>>,
    readable: Arc<Notify>,
    tx: mpsc::Sender<WriteRequest>,
}

impl QueueHandle {
    /// Queues `payload` for appending. Waits while the writer is backed up.
    pub async fn append(&self, payload: Vec<u8>, accepted_us: u64) -> Result<(), QueueClosed> {
        self.tx
            .send(WriteRequest {
                payload,
                accepted_us,
                then: None,
                done: None,
            })
            .await
            .map_err(|_| QueueClosed)
    }

    /// Queues `payload` for appending and returns at once. Waits only while the writer is
    /// backed up, so the caller keeps the order of its appends without waiting for their
    /// fsync. The writer makes the `then` call once the outcome is known; with `receipt`, the
    /// returned receiver gets the outcome too (after that call).
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
        self.tx
            .send(WriteRequest {
                payload,
                accepted_us,
                then,
                done,
            })
            .await
            .map_err(|_| QueueClosed)?;
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
        self.tx.send(req).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
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
    let policy = queue.fsync_policy();
    let queue = Arc::new(Mutex::new(queue));
    let readable = Arc::new(Notify::new());
    let (tx, rx) = mpsc::channel(WRITE_CHANNEL_CAPACITY);
    let handle = QueueHandle {
        queue: queue.clone(),
        readable: readable.clone(),
        tx,
    };
    let join = std::thread::Builder::new()
        .name("queue-writer".into())
        .spawn(move || writer_loop(queue, rx, readable, policy, stats))?;
    Ok((handle, join))
}

fn writer_loop(
    queue: Arc<Mutex<Queue>>,
    mut rx: mpsc::Receiver<WriteRequest>,
    readable: Arc<Notify>,
    policy: FsyncPolicy,
    stats: Arc<Stats>,
) {
    let lock = || queue.lock().unwrap_or_else(|p| p.into_inner());
    let mut batch: Vec<WriteRequest> = Vec::new();
    let mut results: Vec<Result<u64, Arc<QueueError>>> = Vec::new();
    let mut busy = false;
    loop {
        let waiting = match busy {
            true => rx.try_recv().ok(),
            false => None,
        };
        let first = match waiting {
            Some(r) => r,
            None => {
                // Caught up: the next alert is a lone one and is committed at once.
                busy = false;
                match rx.blocking_recv() {
                    Some(r) => r,
                    None => break,
                }
            }
        };
        batch.push(first);
        if busy && policy == FsyncPolicy::Batch {
            std::thread::sleep(COMMIT_DELAY);
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        busy = batch.len() >= BUSY_BATCH;
        let mut q = lock();
        for req in &batch {
            let r = q.append(&req.payload, req.accepted_us).map_err(Arc::new);
            let r = match (r, policy) {
                (Ok(seq), FsyncPolicy::Always) => commit_and_sync(&mut q, policy).map(|_| seq),
                (r, _) => r,
            };
            results.push(r);
        }
        let job = q.commit();
        drop(q);
        // Receipts of the records this commit wrote, for whoever makes them safe first: the
        // broker's ack (while we fsync) or the fsync. What is left afterwards is ours.
        let mut unanswered = BTreeMap::new();
        let mut registered = false;
        let committed = match job {
            Ok(Some(job)) => {
                registered = true;
                {
                    let mut q = lock();
                    for (req, r) in batch.iter_mut().zip(&results) {
                        if let Ok(seq) = r {
                            q.await_safe(*seq, Receipt::take(req));
                        }
                    }
                    // Readable now, in the page cache: the publisher sends while we fsync.
                    q.mark_written(&job);
                }
                readable.notify_one();
                let synced = job.sync(policy);
                let mut q = lock();
                let r = match synced {
                    Ok(()) => {
                        q.mark_durable(&job);
                        Ok(())
                    }
                    Err(e) => {
                        q.sync_failed(&e);
                        Err(Arc::new(e))
                    }
                };
                unanswered = q.take_receipts();
                r
            }
            Ok(None) => Ok(()),
            Err(e) => Err(Arc::new(e)),
        };
        if let Err(e) = &committed {
            stats.log_queue_error(e);
        }
        // Wake the publisher again after the fsync (under `always` this is the only wake-up).
        // Without it, 200/s bench rounds showed p99 tails of 36–54 ms that runs with it did not
        // (two rounds each, one session); the cause was not pinned down.
        readable.notify_one();
        for (mut req, r) in batch.drain(..).zip(results.drain(..)) {
            let receipt = match &r {
                Ok(seq) if registered => {
                    match unanswered.remove(seq) {
                        Some(receipt) => receipt,
                        // Answered already: the broker acknowledged it before the fsync ended.
                        None => {
                            stats.inc(&stats.queue_appended);
                            continue;
                        }
                    }
                }
                _ => Receipt::take(&mut req),
            };
            let r = match (&committed, r) {
                (Err(e), Ok(_)) => Err(e.clone()),
                (_, r) => r,
            };
            match &r {
                Ok(_) => stats.inc(&stats.queue_appended),
                Err(e) => {
                    stats.inc(&stats.queue_append_failed);
                    stats.log_queue_error(e);
                }
            }
            receipt.answer(r);
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
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log(Mutex<Vec<(u64, Option<u64>)>>);

    impl OnOutcome for Log {
        fn on_outcome(&self, tag: u64, outcome: Option<u64>) {
            self.0.lock().expect("lock").push((tag, outcome));
        }
    }

    fn open(dir: &std::path::Path, segment_bytes: u64) -> Queue {
        let cfg = crate::config::QueueConfig {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
            on_full: crate::config::OnFull::DropOldest,
            fsync: FsyncPolicy::Batch,
            segment_bytes,
            max_records: None,
            max_age: None,
        };
        Queue::open(&cfg).expect("open").0
    }

    #[test]
    fn then_is_told_the_seq_once_or_none_when_dropped_unsent() {
        let log = Arc::new(Log::default());
        Then::new(log.clone(), 7).fire(Some(42));
        drop(Then::new(log.clone(), 8));
        assert_eq!(*log.0.lock().expect("lock"), vec![(7, Some(42)), (8, None)]);
    }

    #[tokio::test]
    async fn the_writer_settles_then_before_answering_the_receipt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = open(dir.path(), 1 << 16);
        let (handle, join) = spawn_writer(queue, Arc::new(Stats::default())).expect("writer");
        let log = Arc::new(Log::default());
        let rx = handle
            .append_then(b"{}".to_vec(), 1, Some(Then::new(log.clone(), 99)), true)
            .await
            .expect("sent")
            .expect("receipt");
        let seq = rx.await.expect("answered").expect("durable");
        assert_eq!(*log.0.lock().expect("lock"), vec![(99, Some(seq))]);
        drop(handle);
        join.join().expect("writer thread");
    }

    /// A writer on a queue whose segment fsyncs wait at `fs.gate`, with one record written and
    /// acknowledged already (its segment exists: later appends do not roll, so only group
    /// commits' fsyncs meet the gate).
    async fn gated_writer(
        dir: &std::path::Path,
    ) -> (
        super::super::fault_fs::GatedFs,
        QueueHandle,
        JoinHandle<()>,
        Arc<Stats>,
    ) {
        let fs = super::super::fault_fs::GatedFs::default();
        let cfg = crate::config::QueueConfig {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
            on_full: crate::config::OnFull::DropOldest,
            fsync: FsyncPolicy::Batch,
            segment_bytes: 1 << 16,
            max_records: None,
            max_age: None,
        };
        let queue = Queue::open_with(&cfg, Arc::new(fs.clone()))
            .expect("open")
            .0;
        let stats = Arc::new(Stats::default());
        let (handle, join) = spawn_writer(queue, stats.clone()).expect("writer");
        let seq = handle
            .append_durable(b"{}".to_vec(), 1)
            .await
            .expect("warm-up");
        handle.read_batch(10, 1 << 20).expect("read");
        handle.lock().ack(seq).expect("ack");
        (fs, handle, join, stats)
    }

    const T: std::time::Duration = std::time::Duration::from_secs(20);

    /// Appends with a `then` (tag `tag`) and a receipt; returns once the writer's fsync of it
    /// waits at the gate, with the record read back by a "publisher" meanwhile.
    async fn append_held(
        fs: &super::super::fault_fs::GatedFs,
        handle: &QueueHandle,
        log: &Arc<Log>,
        tag: u64,
    ) -> (oneshot::Receiver<WriteOutcome>, u64) {
        let rx = handle
            .append_then(
                b"{\"a\":1}".to_vec(),
                2,
                Some(Then::new(log.clone(), tag)),
                true,
            )
            .await
            .expect("sent")
            .expect("receipt");
        let gate = fs.gate.clone();
        let held = tokio::task::spawn_blocking(move || gate.wait_holding(T))
            .await
            .expect("join");
        assert!(held, "the writer's fsync never reached the gate");
        // Readable while the fsync runs (issue 18's first part).
        let records = handle.read_batch(10, 1 << 20).expect("read");
        assert_eq!(
            records.len(),
            1,
            "the written record is readable before its fsync"
        );
        (rx, records[0].seq)
    }

    #[tokio::test]
    async fn a_record_the_broker_acknowledges_is_answered_before_its_fsync_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fs, handle, join, stats) = gated_writer(dir.path()).await;
        fs.gate.close();
        let log = Arc::new(Log::default());
        let (rx, seq) = append_held(&fs, &handle, &log, 7).await;
        // The publisher got the PUBACK: that alone makes the record safe.
        handle.lock().ack(seq).expect("ack");
        let answer = tokio::time::timeout(T, rx).await.expect("answered");
        assert_eq!(answer.expect("sent").expect("safe"), seq);
        assert!(fs.gate.holding(), "answered only after the fsync");
        assert_eq!(*log.0.lock().expect("lock"), vec![(7, Some(seq))]);
        fs.gate.open(None);
        drop(handle);
        join.join().expect("writer thread");
        // Told once, counted once (the warm-up record and this one).
        assert_eq!(*log.0.lock().expect("lock"), vec![(7, Some(seq))]);
        assert_eq!(Stats::get(&stats.queue_appended), 2);
        assert_eq!(Stats::get(&stats.queue_append_failed), 0);
    }

    #[tokio::test]
    async fn a_record_nobody_acknowledged_is_answered_by_its_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fs, handle, join, _stats) = gated_writer(dir.path()).await;
        fs.gate.close();
        let log = Arc::new(Log::default());
        let (mut rx, seq) = append_held(&fs, &handle, &log, 8).await;
        // Published, not acknowledged, the fsync still waiting: nobody may be told yet.
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert!(log.0.lock().expect("lock").is_empty());
        let passed = fs.gate.passed();
        fs.gate.open(None);
        let answer = tokio::time::timeout(T, rx).await.expect("answered");
        assert_eq!(answer.expect("sent").expect("durable"), seq);
        assert!(fs.gate.passed() > passed, "answered after the fsync");
        assert_eq!(*log.0.lock().expect("lock"), vec![(8, Some(seq))]);
        drop(handle);
        join.join().expect("writer thread");
    }

    #[tokio::test]
    async fn a_failed_fsync_fails_only_what_the_broker_had_not_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fs, handle, join, stats) = gated_writer(dir.path()).await;
        let log = Arc::new(Log::default());
        // Acknowledged, then its fsync fails: the broker has it, it stays answered "safe".
        fs.gate.close();
        let (rx, acked) = append_held(&fs, &handle, &log, 1).await;
        handle.lock().ack(acked).expect("ack");
        let answer = tokio::time::timeout(T, rx).await.expect("answered");
        assert_eq!(answer.expect("sent").expect("safe"), acked);
        let passed = fs.gate.passed();
        fs.gate.open(Some(5));
        assert!(fs.gate.wait_passed(passed + 1, T), "the fsync never failed");
        // The next append starts a new segment (its creation fsyncs too, past an open gate).
        fs.gate.open(None);
        let seq = handle
            .append_durable(b"{}".to_vec(), 1)
            .await
            .expect("again");
        handle.read_batch(10, 1 << 20).expect("read");
        handle.lock().ack(seq).expect("ack");
        // Not acknowledged, and its fsync fails: told "failed" (the dedup window forgets it).
        fs.gate.close();
        let (rx, _) = append_held(&fs, &handle, &log, 2).await;
        fs.gate.open(Some(5));
        let answer = tokio::time::timeout(T, rx).await.expect("answered");
        assert!(answer.expect("sent").is_err(), "a failed fsync is reported");
        assert_eq!(
            *log.0.lock().expect("lock"),
            vec![(1, Some(acked)), (2, None)]
        );
        assert_eq!(Stats::get(&stats.queue_appended), 3);
        assert_eq!(Stats::get(&stats.queue_append_failed), 1);
        fs.gate.open(None);
        drop(handle);
        join.join().expect("writer thread");
    }

    fn segment_count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .count()
    }

    #[tokio::test]
    async fn flush_acks_persists_the_position_and_deletes_acknowledged_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = open(dir.path(), 4 << 10);
        let (handle, join) = spawn_writer(queue, Arc::new(Stats::default())).expect("writer");
        for i in 0..200 {
            handle
                .append_durable(format!("{{\"n\":{i:0>100}}}").into_bytes(), i)
                .await
                .expect("append");
        }
        let before = segment_count(dir.path());
        assert!(before > 4, "{before} segments");
        let records = handle.read_batch(200, 1 << 20).expect("read");
        assert_eq!(records.len(), 200);
        {
            let mut q = handle.lock();
            for r in &records[..150] {
                q.ack(r.seq).expect("ack");
            }
            assert!(q.ack_dirty());
        }
        // Acknowledged segments stay until the flush: acks never touch the disk.
        assert_eq!(segment_count(dir.path()), before);
        handle.flush_acks().expect("flush");
        assert!(!handle.lock().ack_dirty());
        let after = segment_count(dir.path());
        assert!(after < before, "{after} of {before} segments left");
        // On disk: every seq below 151 is acknowledged (what a crash now would recover from).
        let ack = std::fs::read(dir.path().join("ack")).expect("ack file");
        let position = u64::from_le_bytes(ack[..8].try_into().expect("8 bytes"));
        assert_eq!(position, records[150].seq);
        drop(handle);
        join.join().expect("writer thread");
    }
}
