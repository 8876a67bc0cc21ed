//! Disk full (ENOSPC) and read-only filesystems, for real: the queue lives on a 256 KiB tmpfs
//! mounted for the test (needs root; the test says so and returns early otherwise).

#[path = "../examples/support/mod.rs"]
mod support;

use std::path::Path;

use alert_relay::config::{FsyncPolicy, OnFull, QueueConfig};
use alert_relay::queue::{Queue, QueueError};
use support::SmallFs;

fn cfg(dir: &Path) -> QueueConfig {
    cfg_seg(dir, 16 << 10)
}

fn cfg_seg(dir: &Path, segment_bytes: u64) -> QueueConfig {
    QueueConfig {
        dir: dir.join("queue"),
        // Larger than the filesystem: the disk fills before the bound applies.
        max_bytes: 4 << 20,
        on_full: OnFull::DropOldest,
        fsync: FsyncPolicy::Batch,
        segment_bytes,
        max_records: None,
        max_age: None,
    }
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("{{\"event_id\":\"ev-{i}\",\"pad\":\"").into_bytes();
    p.resize(440, b'x');
    p.extend_from_slice(b"\"}");
    p
}

fn read_all(q: &mut Queue) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let b = q.read_batch(256, 1 << 20).expect("read");
        if b.is_empty() {
            return seqs;
        }
        for r in b {
            assert_eq!(r.payload.len(), 442);
            seqs.push(r.seq);
        }
    }
}

fn is_errno(e: &QueueError, errno: i32) -> bool {
    matches!(e, QueueError::Io { source, .. } if source.raw_os_error() == Some(errno))
}

const ENOSPC: i32 = 28;
const EROFS: i32 = 30;

#[test]
fn disk_full_refuses_new_records_keeps_stored_ones_and_recovers_when_space_returns() {
    // 16 KiB segments fill the disk exactly (a new segment cannot be created); 100 KiB ones
    // run out of space in the middle of a write (cut back to the last good record).
    for segment_bytes in [16 << 10, 100 << 10] {
        disk_full_with(segment_bytes);
    }
}

fn disk_full_with(segment_bytes: u64) {
    let Some(fs) = SmallFs::mount(
        "disk_full_refuses_new_records_keeps_stored_ones_and_recovers_when_space_returns",
        "256k",
    ) else {
        return;
    };
    let c = cfg_seg(fs.path(), segment_bytes);
    let (mut q, _) = Queue::open(&c).expect("open");
    let mut stored = Vec::new();
    let mut failures = 0;
    for i in 0..2000u64 {
        match q.append_durable(&payload(i), i) {
            Ok(seq) => stored.push(seq),
            Err(e) => {
                assert!(is_errno(&e, ENOSPC), "expected ENOSPC, got {e}");
                failures += 1;
            }
        }
    }
    assert!(failures > 1000, "the disk filled ({failures} refused)");
    assert!(stored.len() > 300, "stored {}", stored.len());
    // Every refused record is counted.
    assert_eq!(q.counters().dropped_io_error, failures);
    assert_eq!(q.counters().appended, stored.len() as u64);
    // Everything stored is intact and readable, in order.
    assert_eq!(read_all(&mut q), stored);
    // Nothing torn was left behind: a restart finds exactly the stored records.
    drop(q);
    let (mut q, report) = Queue::open(&c).expect("reopen on a full disk");
    assert_eq!(report.torn_tail_bytes, 0);
    assert_eq!(report.corrupt_regions, 0);
    assert_eq!(read_all(&mut q), stored);
    // Publishing frees whole segments; appends work again, with the sequence continuing.
    q.rewind();
    let half = &stored[..stored.len() / 2];
    for r in q.read_batch(half.len(), 64 << 20).expect("read") {
        q.ack(r.seq).expect("ack");
    }
    let next = q
        .append_durable(&payload(9999), 1)
        .expect("append after space was freed");
    assert!(next > *stored.last().expect("stored"));
}

#[test]
fn read_only_filesystem_refuses_new_records_and_the_queue_still_opens_and_reads() {
    let Some(fs) = SmallFs::mount(
        "read_only_filesystem_refuses_new_records_and_the_queue_still_opens_and_reads",
        "1m",
    ) else {
        return;
    };
    let c = cfg(fs.path());
    let (mut q, _) = Queue::open(&c).expect("open");
    for i in 0..50 {
        q.append_durable(&payload(i), i).expect("append");
    }
    // Closed cleanly: the unused seq reservation is given back, seqs go on at 51.
    q.close().expect("close");
    drop(q);
    // A torn tail the queue cannot truncate on a read-only filesystem.
    let seg = std::fs::read_dir(c.dir.clone())
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("segment");
    let mut data = std::fs::read(&seg).expect("read");
    data.extend_from_slice(&[0u8; 300]);
    std::fs::write(&seg, &data).expect("write");
    fs.remount("ro");
    let (mut q, report) = Queue::open(&c).expect("open read-only");
    assert_eq!(report.torn_tail_bytes, 300);
    assert_eq!(read_all(&mut q), (1..=50).collect::<Vec<_>>());
    let e = q.append_durable(&payload(50), 50).expect_err("read-only");
    assert!(is_errno(&e, EROFS), "expected EROFS, got {e}");
    assert!(q.persist_ack().is_ok() || q.ack_dirty());
    fs.remount("rw");
    // Writable again: the next append succeeds (in a fresh segment), nothing was lost.
    let seq = q
        .append_durable(&payload(51), 51)
        .expect("append after remount");
    assert_eq!(seq, 51);
    drop(q);
    let (mut q, _) = Queue::open(&c).expect("reopen");
    assert_eq!(read_all(&mut q), (1..=51).collect::<Vec<_>>());
}

/// The daemon's path: the writer thread answers a full disk with an error per record, counts
/// it, and keeps taking records; once publishing frees space, appends succeed again.
#[tokio::test]
async fn writer_thread_reports_disk_full_and_keeps_taking_records() {
    let Some(fs) = SmallFs::mount(
        "writer_thread_reports_disk_full_and_keeps_taking_records",
        "256k",
    ) else {
        return;
    };
    let c = cfg(fs.path());
    let (q, _) = Queue::open(&c).expect("open");
    let stats = std::sync::Arc::new(alert_relay::stats::Stats::default());
    let (handle, writer) = alert_relay::queue::spawn_writer(q, stats.clone()).expect("writer");
    let mut ok = 0u64;
    let mut refused = 0u64;
    for i in 0..1500u64 {
        match handle.append_durable(payload(i), i).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(is_errno(&e, ENOSPC), "expected ENOSPC, got {e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0 && ok > 0, "{ok} stored, {refused} refused");
    let s = &stats;
    assert_eq!(
        alert_relay::stats::Stats::get(&s.queue_append_failed),
        refused
    );
    assert_eq!(alert_relay::stats::Stats::get(&s.queue_appended), ok);
    // Publish (read + ack) half: whole segments go, space returns.
    {
        let mut q = handle.lock();
        for r in q.read_batch(ok as usize / 2, 64 << 20).expect("read") {
            q.ack(r.seq).expect("ack");
        }
    }
    let seq = handle
        .append_durable(payload(9999), 1)
        .await
        .expect("append once space is back");
    assert_eq!(seq, ok + 1, "the sequence continues without a gap");
    drop(handle);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
}
