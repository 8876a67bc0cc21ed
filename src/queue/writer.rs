//! The queue's writer thread and the shared handle the rest of the relay uses.
//!
//! One OS thread owns appending: it takes every request waiting in its channel, appends them,
//! writes them with one `write`, fsyncs once outside the lock (group commit), and only then makes
//! them readable and answers the requesters. fsync latency therefore never stalls the async
//! runtime (GPIO timing, socket reads, MQTT keepalive).

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, Notify};

use super::{Queue, QueueError, Record};
use crate::config::FsyncPolicy;
use crate::stats::Stats;

/// Requests that may wait for the writer at once. At ~0.5 KiB an alert this bounds the
/// memory of a burst to a few MiB while fsync is slow; a full channel makes senders wait.
pub const WRITE_CHANNEL_CAPACITY: usize = 4096;
/// Most records one group commit takes, so one fsync never waits on an unbounded batch.
const MAX_BATCH: usize = 4096;

/// The answer to one append request.
pub type WriteOutcome = Result<u64, Arc<QueueError>>;

pub struct WriteRequest {
    pub payload: Vec<u8>,
    pub accepted_us: u64,
    pub done: Option<oneshot::Sender<WriteOutcome>>,
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
                done: None,
            })
            .await
            .map_err(|_| QueueClosed)
    }

    /// Queues `payload` for appending and returns at once with a receiver for the outcome (the
    /// seq, once durable). Waits only while the writer is backed up, so the caller keeps the
    /// order of its appends without waiting for their fsync.
    pub async fn append_with_receipt(
        &self,
        payload: Vec<u8>,
        accepted_us: u64,
    ) -> Result<oneshot::Receiver<WriteOutcome>, QueueClosed> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(WriteRequest {
                payload,
                accepted_us,
                done: Some(done),
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

    pub fn read_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        self.lock().read_batch(max_records, max_bytes)
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
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
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
        let committed = match job {
            Ok(Some(job)) => {
                let t0 = std::time::Instant::now();
                match job.sync(policy) {
                    Ok(()) => {
                        stats.record_fsync(t0.elapsed());
                        lock().mark_durable(&job);
                        Ok(())
                    }
                    Err(e) => Err(Arc::new(e)),
                }
            }
            Ok(None) => Ok(()),
            Err(e) => Err(Arc::new(e)),
        };
        if let Err(e) = &committed {
            stats.log_queue_error(e);
        }
        readable.notify_one();
        for (req, r) in batch.drain(..).zip(results.drain(..)) {
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
            if let Some(done) = req.done {
                let _ = done.send(r);
            }
        }
    }
    if let Err(e) = lock().close() {
        log::error!("queue: closing failed: {e}");
    }
}

fn commit_and_sync(q: &mut Queue, policy: FsyncPolicy) -> Result<(), Arc<QueueError>> {
    if let Some(job) = q.commit().map_err(Arc::new)? {
        job.sync(policy).map_err(Arc::new)?;
        q.mark_durable(&job);
    }
    Ok(())
}
