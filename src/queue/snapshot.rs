//! What the queue reports for `{prefix}/stats`, `/healthz` and `/metrics`: one plain struct of
//! its gauges and counters, taken under the lock. `stats` serialises it (field names are the
//! JSON keys of the snapshot's `queue` object); the queue never formats it itself.

use serde::Serialize;

use super::{Queue, QueueCounters};

/// A point-in-time copy of the queue's gauges and counters, with the derived figures (age,
/// averages, write amplification) already worked out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueSnapshot {
    pub depth_records: u64,
    pub depth_bytes: u64,
    pub segments: usize,
    /// Seconds since the oldest unacknowledged record was accepted.
    pub oldest_unacked_age_s: Option<f64>,
    /// Every counter under its own name (the fsync time's maximum as `fsync_latency_us_max`).
    #[serde(flatten)]
    pub counters: QueueCounters,
    pub fsync_latency_us_avg: u64,
    /// Bytes written per payload byte, to three decimals (0 before the first append).
    pub write_amplification: f64,
    pub appends_failing: bool,
    pub append_error: Option<String>,
    /// Free bytes on the queue's filesystem, when it cannot hold `max_bytes`.
    pub fs_free_bytes: Option<u64>,
    /// How many bytes short of `max_bytes` the filesystem is (0 when it fits or is unknown).
    pub fs_short_bytes: u64,
}

impl Queue {
    /// The gauges and counters as they are now; `now_us` (wall clock, µs since the epoch) dates
    /// the oldest record, so the queue itself never reads the clock.
    pub fn snapshot(&self, now_us: u64) -> QueueSnapshot {
        let c = self.counters();
        let g = self.gauges();
        let space = self.space_short();
        let amplification = if c.payload_bytes > 0 {
            c.bytes_written as f64 / c.payload_bytes as f64
        } else {
            0.0
        };
        QueueSnapshot {
            depth_records: g.depth_records,
            depth_bytes: g.depth_bytes,
            segments: g.segments,
            oldest_unacked_age_s: g
                .oldest_unacked_us
                .map(|us| now_us.saturating_sub(us) as f64 / 1e6),
            fsync_latency_us_avg: c.fsync_us_total.checked_div(c.fsyncs).unwrap_or(0),
            write_amplification: (amplification * 1000.0).round() / 1000.0,
            appends_failing: self.append_failure().is_some(),
            append_error: self.append_failure().map(str::to_owned),
            fs_free_bytes: space.map(|(free, _)| free),
            fs_short_bytes: space.map_or(0, |(_, short)| short),
            counters: c.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{FsyncPolicy, OnFull, QueueConfig};

    use super::Queue;

    /// `{prefix}/stats`, `/healthz` and `/metrics` show these keys under `queue` (consumers
    /// read them): a renamed field must fail here, not in a dashboard.
    #[test]
    fn serialised_snapshot_keeps_the_stats_keys_and_dates_the_oldest_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut q, _) = Queue::open(&QueueConfig {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 20,
            on_full: OnFull::DropOldest,
            fsync: FsyncPolicy::Batch,
            segment_bytes: 64 << 10,
            max_records: None,
            max_age: None,
        })
        .expect("open");
        let accepted = 1_000_000_000_000_000;
        q.append_durable(b"record", accepted).expect("append");
        let v = crate::stats::queue_json(&q.snapshot(accepted + 2_500_000));
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "append_error",
                "append_io_errors",
                "appended",
                "appends_failing",
                "bytes_written",
                "corrupt_records",
                "corrupt_regions",
                "depth_bytes",
                "depth_records",
                "dropped_io_error",
                "dropped_max_age",
                "dropped_newest",
                "dropped_oldest",
                "fs_free_bytes",
                "fs_short_bytes",
                "fsync_latency_us_avg",
                "fsync_latency_us_max",
                "fsyncs",
                "oldest_unacked_age_s",
                "payload_bytes",
                "quarantined_segments",
                "read_errors",
                "segments",
                "torn_tail_bytes",
                "write_amplification",
            ]
        );
        assert_eq!(v["depth_records"], 1);
        assert_eq!(v["appended"], 1);
        assert_eq!(v["oldest_unacked_age_s"], 2.5);
        assert_eq!(v["appends_failing"], false);
        assert!(v["append_error"].is_null());
        // Written bytes include the record header (and the segment magic): above the payload.
        assert!(v["write_amplification"]
            .as_f64()
            .is_some_and(|a| a > 1.0 && a < 10.0));
    }
}
