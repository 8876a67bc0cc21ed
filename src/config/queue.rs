//! `[queue]`: the on-disk queue's place, bounds and fsync policy.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{bounded, bounded_opt, names};
use super::units::{ByteSize, DurationStr};
use super::{print, ConfigError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum OnFull {
    DropOldest,
    DropNewest,
}

names!(OnFull { "drop_oldest" => DropOldest, "drop_newest" => DropNewest });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum FsyncPolicy {
    /// Group commit: every record written together shares one fsync, before publishing.
    Batch,
    /// One fsync per record.
    Always,
    /// Never fsync (tmpfs / RAM disks): a power cut loses what the kernel had not written.
    Never,
}

names!(FsyncPolicy { "batch" => Batch, "always" => Always, "never" => Never });

#[derive(Debug, Clone, Serialize)]
pub struct QueueConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub on_full: OnFull,
    pub fsync: FsyncPolicy,
    /// Size at which a segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// Most unpublished records held (None = bounded by `max_bytes` only).
    pub max_records: Option<u64>,
    /// Unpublished records older than this are dropped (and counted) instead of published.
    #[serde(serialize_with = "print::opt_duration")]
    pub max_age: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) dir: Option<PathBuf>,
    max_bytes: Option<ByteSize>,
    on_full: Option<OnFull>,
    fsync: Option<FsyncPolicy>,
    segment_bytes: Option<ByteSize>,
    max_records: Option<u64>,
    max_age: Option<DurationStr>,
}

/// Where the queue lives unless `queue.dir` says otherwise (the systemd unit's StateDirectory).
pub const DEFAULT_QUEUE_DIR: &str = "/var/lib/alert-relay/queue";

pub(super) fn validate_queue(q: RawQueue) -> Result<QueueConfig, ConfigError> {
    let max_bytes = bounded(
        "queue.max_bytes",
        q.max_bytes,
        64 << 20,
        64 << 10..,
        "must be at least 64 KiB",
    )?;
    let on_full = q.on_full.unwrap_or(OnFull::DropOldest);
    let fsync = q.fsync.unwrap_or(FsyncPolicy::Batch);
    // Segments are deleted whole, so drop_oldest frees at least one segment: keep at least
    // eight segments within max_bytes, and no segment larger than 4 MiB (cheap to rescan).
    let default_segment = (max_bytes / 8).clamp(16 << 10, 4 << 20);
    let segment_bytes = bounded(
        "queue.segment_bytes",
        q.segment_bytes,
        default_segment,
        4 << 10..=max_bytes / 2,
        "must be at least 4 KiB and at most half of queue.max_bytes",
    )?;
    // drop_oldest frees whole segments, and segments are capped at max_records / 8 records, so
    // a bound below 16 would leave segments of one or two records (an fsync'd file each).
    let max_records = bounded_opt(
        "queue.max_records",
        q.max_records,
        16..,
        "must be at least 16",
    )?;
    let max_age = bounded_opt(
        "queue.max_age",
        q.max_age,
        Duration::from_secs(1)..,
        "must be at least 1s",
    )?;
    Ok(QueueConfig {
        max_records,
        max_age,
        dir: q.dir.unwrap_or_else(|| PathBuf::from(DEFAULT_QUEUE_DIR)),
        max_bytes,
        on_full,
        fsync,
        segment_bytes,
    })
}
