//! The queue's unit tests: restart order, acks and rewind, the bounds, gauges and stats;
//! damage on disk (torn, zeroed, flipped, quarantined) in `damage.rs`.

use super::*;
use crate::config::{FsyncPolicy, OnFull, QueueConfig};
use std::fs;

mod damage;

fn cfg(dir: &Path, max_bytes: u64, segment_bytes: u64, on_full: OnFull) -> QueueConfig {
    QueueConfig {
        dir: dir.to_owned(),
        max_bytes,
        on_full,
        fsync: FsyncPolicy::Batch,
        segment_bytes,
        max_records: None,
        max_age: None,
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i:06}-{}", "x".repeat((i % 37) as usize)).into_bytes()
}

fn read_all(q: &mut Queue) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let batch = q.read_batch(100, 1 << 20).expect("read");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Opens the queue and appends `payload(0..n)` (seqs 1..=n), each made durable; the caller
/// closes it, drops it (a crash) or goes on using it.
fn open_with_records(c: &QueueConfig, n: u64) -> Queue {
    let (mut q, _) = Queue::open(c).expect("open");
    for i in 0..n {
        q.append_durable(&payload(i), i).expect("append");
    }
    q
}

/// Rewrites the file at `path` as `damage` leaves its bytes; returns what `damage` returns.
fn rewrite<R>(path: &Path, damage: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut data = fs::read(path).expect("read");
    let r = damage(&mut data);
    fs::write(path, &data).expect("write");
    r
}

/// Every file in `dir` with its contents.
fn dir_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| (e.path(), fs::read(e.path()).expect("read")))
        .collect()
}

#[test]
fn unacked_records_survive_restart_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 8 << 10, OnFull::DropOldest);
    {
        let (mut q, _) = Queue::open(&c).expect("open");
        for i in 0..200 {
            assert_eq!(q.append_durable(&payload(i), i).expect("append"), i + 1);
        }
        let first = q.read_batch(50, 1 << 20).expect("read");
        assert_eq!(first.len(), 50);
        for r in &first {
            q.ack(r.seq).expect("ack");
        }
        q.close().expect("close");
    }
    let (mut q, report) = Queue::open(&c).expect("reopen");
    assert_eq!(report.unacked_records, 150);
    let rest = read_all(&mut q);
    let seqs: Vec<u64> = rest.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (51..=200).collect::<Vec<_>>());
    assert_eq!(rest[0].payload, payload(50));
    // New appends continue the sequence.
    assert_eq!(q.append_durable(b"next", 0).expect("append"), 201);
}

#[test]
fn acked_segments_are_deleted_and_rewind_resends_unacked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 4 << 10, OnFull::DropOldest);
    let mut q = open_with_records(&c, 300);
    let many = segment_files(dir.path()).len();
    assert!(many > 3, "expected several segments, got {many}");
    let all = read_all(&mut q);
    assert_eq!(all.len(), 300);
    for r in all.iter().take(290) {
        q.ack(r.seq).expect("ack");
    }
    // Deleted with the next ack persist (the daemon's is at most ~1 s later), not inline.
    assert_eq!(segment_files(dir.path()).len(), many);
    assert!(q.ack_dirty());
    q.persist_ack().expect("persist");
    assert!(segment_files(dir.path()).len() < many);
    assert!(!q.ack_dirty());
    q.rewind();
    let again = read_all(&mut q);
    assert_eq!(
        again.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (291..=300).collect::<Vec<_>>()
    );
}

#[test]
fn drop_oldest_keeps_the_bound_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 64 << 10, 8 << 10, OnFull::DropOldest);
    let (mut q, _) = Queue::open(&c).expect("open");
    for i in 0..3000 {
        q.append_durable(&payload(i), i).expect("append");
        assert!(q.gauges().depth_bytes <= 64 << 10);
    }
    let dropped = q.counters().dropped_oldest;
    let left = read_all(&mut q);
    assert!(dropped > 0);
    assert_eq!(dropped + left.len() as u64, 3000);
    assert_eq!(left.last().map(|r| r.seq), Some(3000));
}

#[test]
fn drop_newest_refuses_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 64 << 10, 8 << 10, OnFull::DropNewest);
    let (mut q, _) = Queue::open(&c).expect("open");
    let mut refused = 0;
    for i in 0..3000 {
        match q.append_durable(&payload(i), i) {
            Ok(_) => {}
            Err(QueueError::Full { .. }) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 0);
    assert_eq!(q.counters().dropped_newest, refused);
    let kept = read_all(&mut q);
    assert_eq!(kept.len() as u64 + refused, 3000);
    assert_eq!(
        kept.first().map(|r| r.seq),
        Some(1),
        "the oldest records are kept"
    );
}

#[test]
fn max_records_bound_drops_oldest_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path(), 1 << 20, 64 << 10, OnFull::DropOldest);
    c.max_records = Some(100);
    let (mut q, _) = Queue::open(&c).expect("open");
    for i in 0..1000 {
        q.append_durable(&payload(i), i).expect("append");
        assert!(q.gauges().depth_records <= 100);
    }
    let left = read_all(&mut q);
    assert_eq!(q.counters().dropped_oldest + left.len() as u64, 1000);
    assert!(
        left.len() >= 80,
        "drops a segment (an eighth) at a time: {}",
        left.len()
    );
    assert_eq!(left.last().map(|r| r.seq), Some(1000));
}

#[test]
fn records_older_than_max_age_are_dropped_and_counted_not_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path(), 1 << 20, 8 << 10, OnFull::DropOldest);
    c.max_age = Some(std::time::Duration::from_secs(60));
    let (mut q, _) = Queue::open(&c).expect("open");
    let t0 = 1_000_000_000_000u64;
    for i in 0..100 {
        // One record a second.
        q.append_durable(&payload(i), t0 + i * 1_000_000)
            .expect("append");
    }
    // At t0 + 100 s the first 40 (accepted before t0 + 40 s) are older than 60 s.
    let now = t0 + 100 * 1_000_000;
    let got = q.read_batch_at(1000, 1 << 20, now).expect("read");
    assert_eq!(got.first().map(|r| r.seq), Some(41));
    assert_eq!(got.len(), 60);
    assert_eq!(q.counters().dropped_max_age, 40);
    assert_eq!(
        q.gauges().depth_records,
        60,
        "expired records leave the queue"
    );
}

#[test]
fn gauges_report_oldest_unacked_record_and_fsync_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 4 << 10, OnFull::DropOldest);
    let (mut q, _) = Queue::open(&c).expect("open");
    assert_eq!(q.gauges().oldest_unacked_us, None);
    for i in 0..200 {
        q.append_durable(&payload(i), 5_000 + i).expect("append");
    }
    assert_eq!(q.gauges().oldest_unacked_us, Some(5_000));
    let got = q.read_batch(150, 1 << 20).expect("read");
    for r in &got {
        q.ack(r.seq).expect("ack");
        if r.seq % 37 == 0 {
            assert_eq!(q.gauges().oldest_unacked_us, Some(5_000 + r.seq));
        }
    }
    assert_eq!(q.gauges().oldest_unacked_us, Some(5_150));
    let k = q.counters();
    assert!(k.fsyncs >= 200, "one per group commit: {}", k.fsyncs);
    assert!(k.fsync_us_max > 0 && k.fsync_us_total >= k.fsync_us_max);
    assert!(k.bytes_written > k.payload_bytes);
}

#[test]
fn inspection_reads_everything_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 4 << 10, OnFull::DropOldest);
    open_with_records(&c, 100).close().expect("close");
    {
        let (mut q, _) = Queue::open(&c).expect("open");
        let got = q.read_batch(30, 1 << 20).expect("read");
        for r in &got {
            q.ack(r.seq).expect("ack");
        }
        q.close().expect("close");
    }
    let newest = segment_files(dir.path()).pop().expect("seg");
    rewrite(&newest, |data| data.extend_from_slice(&[0u8; 100]));
    let before = dir_contents(dir.path());
    let mut seen = Vec::new();
    let sum = inspect_dir(dir.path(), |r| seen.push((r.record.seq, r.acked))).expect("inspect");
    assert_eq!(sum.ack_position, 31);
    assert_eq!(sum.unacked_records, 70);
    assert_eq!(sum.torn_tail_bytes, 100);
    assert_eq!(seen.last(), Some(&(100, false)));
    assert!(seen.iter().all(|&(s, acked)| acked == (s < 31)));
    let after = dir_contents(dir.path());
    assert_eq!(before, after, "inspection must not touch the files");
}

#[test]
fn stats_json_exposes_depth_age_drops_and_write_amplification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 64 << 10, 8 << 10, OnFull::DropOldest);
    let (mut q, _) = Queue::open(&c).expect("open");
    let now = crate::clock::unix_micros(std::time::SystemTime::now());
    for i in 0..3000 {
        q.append_durable(&payload(i), now - 5_000_000)
            .expect("append");
    }
    let v = crate::stats::queue_json(
        &q.snapshot(crate::clock::unix_micros(std::time::SystemTime::now())),
    );
    assert_eq!(v["depth_records"], q.gauges().depth_records);
    assert!(v["depth_bytes"].as_u64().is_some_and(|b| b <= 64 << 10));
    assert!(v["oldest_unacked_age_s"]
        .as_f64()
        .is_some_and(|a| (5.0..60.0).contains(&a)));
    assert!(v["dropped_oldest"].as_u64().is_some_and(|d| d > 0));
    for key in [
        "dropped_newest",
        "dropped_max_age",
        "dropped_io_error",
        "corrupt_records",
        "fsync_latency_us_avg",
        "fsync_latency_us_max",
    ] {
        assert!(v[key].is_u64(), "{key} in {v}");
    }
    assert!(v["write_amplification"]
        .as_f64()
        .is_some_and(|a| a > 1.0 && a < 2.0));
}
