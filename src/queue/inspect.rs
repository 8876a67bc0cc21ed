//! Offline, read-only inspection of a queue directory, for `alert-relay queue stats` and
//! `alert-relay queue dump`.
//!
//! Owns: a full CRC scan of every segment. Never does: truncate, delete, rename or write
//! anything, so it is safe to run next to a live relay (it may then see a record being
//! written as a torn tail).

use std::fs;
use std::path::Path;

use super::fs::OsFs;
use super::{list_segments, read_ack_file, scan_segment, segment_magic_ok, QueueError, Record};

/// One record as `queue dump` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedRecord {
    pub record: Record,
    /// Below the persisted ack position (the relay may still hold it until its segment is
    /// deleted).
    pub acked: bool,
}

/// What a full scan of a queue directory found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirSummary {
    /// `*.seg` files.
    pub segments: usize,
    /// `*.seg` files without a valid header (the relay quarantines them at start).
    pub bad_segments: usize,
    /// `*.corrupt*` files set aside earlier.
    pub quarantined_files: usize,
    pub segment_bytes: u64,
    /// Intact records on disk.
    pub records: u64,
    /// Intact records at or above the persisted ack position.
    pub unacked_records: u64,
    pub unacked_payload_bytes: u64,
    /// First unacknowledged sequence number per the `ack` file (1 when there is none).
    pub ack_position: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Acceptance time (µs since the epoch) of the oldest unacknowledged record.
    pub oldest_unacked_us: Option<u64>,
    pub newest_us: Option<u64>,
    /// Places where records fail their checksum and intact records follow.
    pub corrupt_regions: u64,
    /// Sequence numbers lost in those places.
    pub corrupt_records: u64,
    /// Bytes after the last intact record of a segment (a torn tail).
    pub torn_tail_bytes: u64,
}

/// Scans every segment in `dir`, calling `visit` for each intact record in order.
pub fn inspect_dir(
    dir: &Path,
    mut visit: impl FnMut(&DumpedRecord),
) -> Result<DirSummary, QueueError> {
    let io = |source| QueueError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut sum = DirSummary {
        ack_position: read_ack_file(&OsFs, &dir.join("ack")).unwrap_or(1).max(1),
        ..DirSummary::default()
    };
    for entry in fs::read_dir(dir).map_err(io)?.flatten() {
        if entry.file_name().to_string_lossy().contains(".corrupt") {
            sum.quarantined_files += 1;
        }
    }
    let ack = sum.ack_position;
    for first in list_segments(&OsFs, dir).map_err(io)? {
        let path = dir.join(super::Segment::file_name(first));
        sum.segments += 1;
        if !segment_magic_ok(&OsFs, &path).map_err(super::io_err(&path))? {
            sum.bad_segments += 1;
            continue;
        }
        let mut on_record = |record: Record| {
            let acked = record.seq < ack;
            sum.records += 1;
            sum.first_seq.get_or_insert(record.seq);
            sum.last_seq = Some(record.seq);
            sum.newest_us = Some(record.accepted_us);
            if !acked {
                sum.unacked_records += 1;
                sum.unacked_payload_bytes += record.payload.len() as u64;
                sum.oldest_unacked_us.get_or_insert(record.accepted_us);
            }
            visit(&DumpedRecord { record, acked });
        };
        let scan = scan_segment(&OsFs, &path, first, Some(&mut on_record))
            .map_err(super::io_err(&path))?;
        sum.segment_bytes += scan.file_bytes;
        sum.torn_tail_bytes += scan.file_bytes - scan.valid_bytes;
        for (start, end) in scan.holes {
            sum.corrupt_regions += 1;
            sum.corrupt_records += end - start;
        }
    }
    Ok(sum)
}
