use super::*;
use crate::config::{FsyncPolicy, OnFull, QueueConfig};

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
    let (mut q, _) = Queue::open(&c).expect("open");
    for i in 0..300 {
        q.append_durable(&payload(i), i).expect("append");
    }
    let many = segment_files(dir.path()).len();
    assert!(many > 3, "expected several segments, got {many}");
    let all = read_all(&mut q);
    assert_eq!(all.len(), 300);
    for r in all.iter().take(290) {
        q.ack(r.seq).expect("ack");
    }
    assert!(segment_files(dir.path()).len() < many);
    q.rewind();
    let again = read_all(&mut q);
    assert_eq!(
        again.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (291..=300).collect::<Vec<_>>()
    );
}

#[test]
fn torn_tail_is_truncated_at_every_offset_and_intact_records_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 64 << 10, OnFull::DropOldest);
    {
        let (mut q, _) = Queue::open(&c).expect("open");
        for i in 0..5 {
            q.append_durable(&payload(i), i).expect("append");
        }
        q.close().expect("close");
    }
    let seg = segment_files(dir.path()).remove(0);
    let full = fs::read(&seg).expect("read");
    let last_len = HEADER_LEN + payload(4).len();
    let last_start = full.len() - last_len;
    for cut in last_start..full.len() {
        fs::write(&seg, &full[..cut]).expect("write");
        let (mut q, report) = Queue::open(&c).expect("open");
        assert_eq!(
            report.torn_tail_bytes,
            (cut - last_start) as u64,
            "cut at {cut}"
        );
        let got = read_all(&mut q);
        assert_eq!(got.len(), 4, "cut at {cut}");
        // The next append lands cleanly after the truncation point.
        q.append_durable(b"after", 9).expect("append");
        drop(q);
        let (mut q, _) = Queue::open(&c).expect("reopen");
        let got = read_all(&mut q);
        assert_eq!(got.len(), 5);
        assert_eq!(got[4].payload, b"after");
        // Restore: the original segment only (a restarted queue starts a fresh segment).
        for extra in segment_files(dir.path()).into_iter().filter(|p| *p != seg) {
            fs::remove_file(extra).expect("remove");
        }
        fs::write(&seg, &full).expect("restore");
    }
}

#[test]
fn zero_filled_tail_power_cut_signature_is_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 64 << 10, OnFull::DropOldest);
    {
        let (mut q, _) = Queue::open(&c).expect("open");
        for i in 0..10 {
            q.append_durable(&payload(i), i).expect("append");
        }
    }
    let seg = segment_files(dir.path()).remove(0);
    let mut data = fs::read(&seg).expect("read");
    data.extend(std::iter::repeat_n(0u8, 4096));
    fs::write(&seg, &data).expect("write");
    let (mut q, report) = Queue::open(&c).expect("open");
    assert_eq!(report.torn_tail_bytes, 4096);
    assert_eq!(read_all(&mut q).len(), 10);
}

#[test]
fn corrupt_record_in_older_segment_loses_only_that_record_and_quarantines_the_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 4 << 10, OnFull::DropOldest);
    {
        let (mut q, _) = Queue::open(&c).expect("open");
        for i in 0..200 {
            q.append_durable(&payload(i), i).expect("append");
        }
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    // Flip a payload bit in the middle of the first segment.
    let mut data = fs::read(&segs[0]).expect("read");
    let mid = data.len() / 2;
    data[mid] ^= 0x40;
    fs::write(&segs[0], &data).expect("write");
    // Older segments are validated as they are read, not at open.
    let (mut q, report) = Queue::open(&c).expect("open");
    assert_eq!(report.unacked_records, 200);
    let got = read_all(&mut q);
    assert_eq!(q.counters().corrupt_regions, 1);
    assert_eq!(q.counters().corrupt_records, 1);
    assert_eq!(got.len(), 199, "only the record holding the flipped bit is lost");
    assert_eq!(got.last().map(|r| r.seq), Some(200));
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(q.gauges().depth_records, 199);
    for r in &got {
        q.ack(r.seq).expect("ack");
    }
    assert_eq!(q.gauges().depth_records, 0);
    let corrupt: Vec<_> = fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".corrupt"))
        .collect();
    assert_eq!(
        corrupt.len(),
        1,
        "the broken segment is kept aside, not deleted"
    );
}

#[test]
fn all_nul_segment_is_quarantined_and_the_queue_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 64 << 10, OnFull::DropOldest);
    fs::write(dir.path().join(Segment::file_name(1)), vec![0u8; 8192]).expect("write");
    let (mut q, report) = Queue::open(&c).expect("open");
    assert_eq!(report.quarantined_segments, 1);
    assert_eq!(q.append_durable(b"fresh", 0).expect("append"), 1);
    assert_eq!(read_all(&mut q).len(), 1);
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
