//! Damage on disk: torn tails, zero-filled power-cut signatures, flipped bits and corrupt or
//! unreadable segments; the queue opens, counts the damage and loses only the records it hit.

use super::*;

/// `payload(0..n)` in one 64 KiB segment, closed cleanly: the directory, the config and the
/// segment's path.
fn one_closed_segment(n: u64) -> (tempfile::TempDir, QueueConfig, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 64 << 10, OnFull::DropOldest);
    open_with_records(&c, n).close().expect("close");
    let seg = segment_files(dir.path()).remove(0);
    (dir, c, seg)
}

#[test]
fn torn_tail_is_truncated_at_every_offset_and_intact_records_kept() {
    let (dir, c, seg) = one_closed_segment(5);
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
    drop(open_with_records(&c, 10)); // not closed: a crash
    let seg = segment_files(dir.path()).remove(0);
    rewrite(&seg, |data| data.extend(std::iter::repeat_n(0u8, 4096)));
    let (mut q, report) = Queue::open(&c).expect("open");
    assert_eq!(report.torn_tail_bytes, 4096);
    assert_eq!(read_all(&mut q).len(), 10);
}

#[test]
fn corrupt_record_in_older_segment_loses_only_that_record_and_quarantines_the_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path(), 1 << 20, 4 << 10, OnFull::DropOldest);
    drop(open_with_records(&c, 200)); // not closed: a crash
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    // Flip a payload bit in the middle of the first segment.
    rewrite(&segs[0], |data| {
        let mid = data.len() / 2;
        data[mid] ^= 0x40;
    });
    // Older segments are validated as they are read, not at open.
    let (mut q, report) = Queue::open(&c).expect("open");
    assert_eq!(report.unacked_records, 200);
    let got = read_all(&mut q);
    assert_eq!(q.counters().corrupt_regions, 1);
    assert_eq!(q.counters().corrupt_records, 1);
    assert_eq!(
        got.len(),
        199,
        "only the record holding the flipped bit is lost"
    );
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

/// A closed queue of records over several small segments, a copy of every file to go back
/// to between damage experiments, and where each record lies.
struct Bench {
    dir: tempfile::TempDir,
    c: QueueConfig,
    snap: Vec<(PathBuf, Vec<u8>)>,
    /// (segment path, record seq, record offset, record length) for every record.
    layout: Vec<(PathBuf, u64, usize, usize)>,
}

impl Bench {
    /// `payload(0..n)` (seqs 1..=n) in 4 KiB segments.
    fn new(n: u64) -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cfg(dir.path(), 1 << 20, 4 << 10, OnFull::DropOldest);
        open_with_records(&c, n).close().expect("close");
        let snap = dir_contents(dir.path());
        let layout = record_layout(dir.path());
        Bench {
            dir,
            c,
            snap,
            layout,
        }
    }

    fn segments(&self) -> Vec<PathBuf> {
        segment_files(self.dir.path())
    }

    /// Puts every file back as it was built, then damages segment `seg` with [`rewrite`].
    fn damage<R>(&self, seg: &Path, damage: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        restore(self.dir.path(), &self.snap);
        rewrite(seg, damage)
    }
}

fn restore(dir: &Path, snap: &[(PathBuf, Vec<u8>)]) {
    for e in fs::read_dir(dir).expect("dir").flatten() {
        fs::remove_file(e.path()).expect("remove");
    }
    for (p, data) in snap {
        fs::write(p, data).expect("write");
    }
}

/// (segment path, record seq, record offset, record length) for every record.
fn record_layout(dir: &Path) -> Vec<(PathBuf, u64, usize, usize)> {
    let mut out = Vec::new();
    for seg in segment_files(dir) {
        let data = fs::read(&seg).expect("read");
        let mut off = SEGMENT_MAGIC.len();
        while off + HEADER_LEN <= data.len() {
            let h = Header::parse(&data[off..off + HEADER_LEN]);
            out.push((seg.clone(), h.seq, off, HEADER_LEN + h.len));
            off += HEADER_LEN + h.len;
        }
    }
    out
}

/// Opens the damaged queue and reads everything: the queue must open, and hand out exactly
/// the records in `expect` (seqs), with their original payloads.
fn assert_delivers(c: &QueueConfig, expect: &[u64], what: &str) -> QueueCounters {
    let (mut q, _) = Queue::open(c).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let got = read_all(&mut q);
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, expect, "{what}");
    for r in &got {
        assert_eq!(
            r.payload,
            payload(r.seq - 1),
            "{what}: payload of seq {}",
            r.seq
        );
    }
    q.counters().clone()
}

#[test]
fn bit_flip_in_any_header_or_payload_field_loses_only_that_record() {
    let n = 150;
    let b = Bench::new(n);
    assert_eq!(b.layout.len() as u64, n);
    assert!(b.segments().len() >= 3, "spans several segments");
    let newest = b.segments().pop().expect("segments");
    // Every record; in each: the length, CRC, sequence number, timestamp and payload (first,
    // middle, last byte).
    for (seg, seq, off, len) in &b.layout {
        for field in [
            0,
            3,
            4,
            8,
            15,
            16,
            23,
            HEADER_LEN,
            (HEADER_LEN + len) / 2,
            len - 1,
        ] {
            if field >= *len {
                continue;
            }
            for bit in [0u8, 7] {
                let seg_len = b.damage(seg, |data| {
                    data[off + field] ^= 1 << bit;
                    data.len()
                });
                let expect: Vec<u64> = (1..=n).filter(|s| s != seq).collect();
                let what = format!("seq {seq}, byte {field}, bit {bit}");
                let k = assert_delivers(&b.c, &expect, &what);
                let last_of_newest = *seg == newest && off + len == seg_len;
                if last_of_newest {
                    // Indistinguishable from a torn write: truncated.
                    assert!(k.torn_tail_bytes > 0, "{what}: torn tail counted");
                } else {
                    assert_eq!(k.corrupt_records, 1, "{what}: counted");
                    assert_eq!(k.corrupt_regions, 1, "{what}: counted once");
                }
            }
        }
    }
}

#[test]
fn torn_older_segment_at_every_offset_of_its_last_record_keeps_the_rest() {
    // With fsync = "never" a power cut can tear an older segment, not just the newest.
    let n = 150;
    let b = Bench::new(n);
    let first_seg = b.segments().remove(0);
    let (_, last_seq, last_off, last_len) = b
        .layout
        .iter()
        .rfind(|r| r.0 == first_seg)
        .cloned()
        .expect("records in the first segment");
    for cut in last_off..last_off + last_len {
        b.damage(&first_seg, |data| data.truncate(cut));
        let expect: Vec<u64> = (1..=n).filter(|s| *s != last_seq).collect();
        let k = assert_delivers(&b.c, &expect, &format!("cut at {cut}"));
        assert_eq!(k.corrupt_records, 1);
    }
}

#[test]
fn zero_filled_region_power_cut_signature_loses_only_the_zeroed_records() {
    let n = 150;
    let b = Bench::new(n);
    let segs = b.segments();
    for (label, seg, tail) in [
        ("newest segment tail", segs[segs.len() - 1].clone(), true),
        ("older segment tail", segs[0].clone(), true),
        ("older segment middle", segs[1].clone(), false),
    ] {
        // Zero about 700 bytes (a page's worth on small segments), ending at the file's end
        // or in the middle.
        let (start, end) = b.damage(&seg, |data| {
            let end = if tail { data.len() } else { data.len() / 2 };
            let start = end.saturating_sub(700).max(SEGMENT_MAGIC.len());
            data[start..end].fill(0);
            (start, end)
        });
        // Records touched by the zeroed range are lost, every other one is delivered.
        let lost: Vec<u64> = b
            .layout
            .iter()
            .filter(|r| r.0 == seg && r.2 < end && r.2 + r.3 > start)
            .map(|r| r.1)
            .collect();
        assert!(!lost.is_empty(), "{label}: records zeroed");
        let expect: Vec<u64> = (1..=n).filter(|s| !lost.contains(s)).collect();
        let k = assert_delivers(&b.c, &expect, label);
        if label == "newest segment tail" {
            assert!(
                k.torn_tail_bytes >= (end - start) as u64,
                "{label}: truncated"
            );
        } else {
            assert_eq!(k.corrupt_records, lost.len() as u64, "{label}: counted");
        }
    }
}

#[test]
fn corrupt_record_in_newest_segment_middle_keeps_the_records_after_it() {
    // Closed cleanly: the unused seq reservation is given back, seqs continue at 21.
    let (dir, c, seg) = one_closed_segment(20);
    let layout = record_layout(dir.path());
    let (_, seq, off, _) = layout[9].clone();
    rewrite(&seg, |data| data[off + HEADER_LEN + 2] ^= 0x10);
    let (mut q, report) = Queue::open(&c).expect("open");
    assert_eq!(report.corrupt_regions, 1);
    assert_eq!(report.torn_tail_bytes, 0, "not mistaken for a torn tail");
    assert_eq!(report.unacked_records, 19);
    let got: Vec<u64> = read_all(&mut q).iter().map(|r| r.seq).collect();
    assert_eq!(got, (1..=20).filter(|s| *s != seq).collect::<Vec<_>>());
    // New records go to a new segment; the damaged one is quarantined once acked.
    assert_eq!(q.append_durable(b"next", 0).expect("append"), 21);
    for s in got.iter().copied().chain([21]) {
        q.ack(s).expect("ack");
    }
    assert!(dir
        .path()
        .join(format!("{}.corrupt", Segment::file_name(1)))
        .exists());
}
