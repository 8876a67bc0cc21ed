//! Queue benchmark (not a test): `cargo run --release --example queue_bench`.
//!
//! Prints, for ~460-byte alert payloads on the filesystem holding `QUEUE_BENCH_DIR` (default:
//! the system temp dir):
//! - append + fsync throughput per policy: `batch` with lone alerts (one fsync each) and with
//!   bursts of 64 (one group commit), `always`, `never`;
//! - drain rate: read + ack of a 100k-record backlog;
//! - recovery time: open a queue holding a 256 MiB backlog and read its first record;
//! - bytes written to disk per alert and per payload byte.
//!
//! Each figure is the median of `QUEUE_BENCH_RUNS` runs (default 3). Recovery is measured
//! with the backlog in the page cache (a cold cache adds one segment's read from the card).

use std::path::Path;
use std::time::{Duration, Instant};

use alert_relay::config::{FsyncPolicy, OnFull, QueueConfig};
use alert_relay::queue::Queue;

const PAYLOAD_BYTES: usize = 460;
const MIB: u64 = 1 << 20;

fn cfg(dir: &Path, fsync: FsyncPolicy, max_bytes: u64) -> QueueConfig {
    QueueConfig {
        dir: dir.to_owned(),
        max_bytes,
        on_full: OnFull::DropOldest,
        fsync,
        // The default for max_bytes >= 32 MiB.
        segment_bytes: 4 * MIB,
        max_records: None,
        max_age: None,
    }
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = format!(
        "\u{1}\u{0}\u{10}\u{0}alerts/intrusion{{\"event_id\":\"ev-{i}\",\"label\":\"intrusion\",\"confidence\":0.91,\"explanation\":\"person at the door\",\"pad\":\""
    )
    .into_bytes();
    p.resize(PAYLOAD_BYTES - 2, b'x');
    p.extend_from_slice(b"\"}");
    p
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn runs() -> usize {
    std::env::var("QUEUE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("QUEUE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir")
}

/// Appends for about `budget` (or `max` records) in commits of `burst`; returns records/s
/// and the queue's bytes written per payload byte.
fn append_rate(fsync: FsyncPolicy, burst: usize, budget: Duration, max: u64) -> (f64, f64, f64) {
    let dir = bench_dir();
    let (mut q, _) = Queue::open(&cfg(dir.path(), fsync, 1 << 40)).expect("open");
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < budget && n < max {
        for _ in 0..burst {
            q.append(&payload(n), n).expect("append");
            if fsync == FsyncPolicy::Always {
                let job = q.commit().expect("commit").expect("job");
                job.sync(fsync).expect("sync");
                q.mark_durable(&job);
            }
            n += 1;
        }
        if let Some(job) = q.commit().expect("commit") {
            job.sync(fsync).expect("sync");
            q.mark_durable(&job);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let c = q.counters();
    (
        n as f64 / secs,
        c.bytes_written as f64 / c.payload_bytes as f64,
        c.bytes_written as f64 / c.appended as f64,
    )
}

fn fill(dir: &Path, bytes: u64) -> u64 {
    let (mut q, _) = Queue::open(&cfg(dir, FsyncPolicy::Never, 1 << 40)).expect("open");
    let mut n = 0;
    while q.gauges().depth_bytes < bytes {
        for _ in 0..256 {
            q.append(&payload(n), n).expect("append");
            n += 1;
        }
        if let Some(job) = q.commit().expect("commit") {
            q.mark_durable(&job);
        }
    }
    q.close().expect("close");
    n
}

fn main() {
    let runs = runs();
    println!(
        "queue benchmark: {PAYLOAD_BYTES}-byte payloads, 4 MiB segments, median of {runs} runs"
    );
    println!(
        "dir: {}",
        bench_dir()
            .path()
            .parent()
            .map_or("?".into(), |p| p.display().to_string())
    );

    let budget = Duration::from_secs(2);
    let mut amp = (0.0, 0.0);
    for (name, policy, burst) in [
        ("batch, lone alerts (1 per fsync)", FsyncPolicy::Batch, 1),
        ("batch, bursts of 64 (1 fsync each)", FsyncPolicy::Batch, 64),
        (
            "always (fsync per record), bursts of 64",
            FsyncPolicy::Always,
            64,
        ),
        ("never, bursts of 64", FsyncPolicy::Never, 64),
    ] {
        let r: Vec<(f64, f64, f64)> = (0..runs)
            .map(|_| append_rate(policy, burst, budget, 2_000_000))
            .collect();
        let rate = median(r.iter().map(|x| x.0).collect());
        println!(
            "append+fsync  {name:<42} {rate:>10.0} alerts/s  {:>7.1} MiB/s",
            rate * PAYLOAD_BYTES as f64 / MIB as f64
        );
        if burst == 64 && policy == FsyncPolicy::Batch {
            amp = (
                median(r.iter().map(|x| x.1).collect()),
                median(r.iter().map(|x| x.2).collect()),
            );
        }
    }
    println!(
        "bytes written per alert (batch, bursts of 64): {:.1} ({:.3} per payload byte; record header {} bytes + segment headers and the ack file)",
        amp.1,
        amp.0,
        alert_relay::queue::HEADER_LEN
    );

    // Drain: read + ack through a backlog.
    let rates: Vec<f64> = (0..runs)
        .map(|_| {
            let dir = bench_dir();
            let n = fill(dir.path(), 48 * MIB);
            let (mut q, _) =
                Queue::open(&cfg(dir.path(), FsyncPolicy::Batch, 1 << 40)).expect("open");
            let t0 = Instant::now();
            let mut done = 0u64;
            loop {
                let b = q.read_batch(64, 1 << 20).expect("read");
                if b.is_empty() {
                    break;
                }
                for r in &b {
                    q.ack(r.seq).expect("ack");
                }
                done += b.len() as u64;
            }
            q.persist_ack().expect("persist");
            assert_eq!(done, n);
            done as f64 / t0.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "drain (read + ack, batches of 64, 48 MiB backlog)      {:>10.0} alerts/s",
        median(rates)
    );

    // Recovery of a 256 MiB backlog.
    let dir = bench_dir();
    let n = fill(dir.path(), 256 * MIB);
    let c = cfg(dir.path(), FsyncPolicy::Batch, 1 << 40);
    let times: Vec<f64> = (0..runs.max(5))
        .map(|_| {
            let t0 = Instant::now();
            let (mut q, report) = Queue::open(&c).expect("open");
            let first = q.read_batch(1, 1 << 20).expect("read");
            let took = t0.elapsed().as_secs_f64();
            assert_eq!(report.unacked_records, n);
            assert_eq!(first.len(), 1);
            // Leave no new segment or ack behind: every run sees the same directory.
            drop(q);
            took
        })
        .collect();
    println!(
        "recovery of a 256 MiB backlog ({n} alerts, {} segments): open + first read {:.1} ms",
        (256 * MIB).div_ceil(4 * MIB),
        median(times) * 1e3
    );
    // For comparison: what recovery would cost if it CRC-checked every record up front (this
    // is what `alert-relay queue stats` does).
    let scans: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            let sum = alert_relay::queue::inspect_dir(dir.path(), |_| {}).expect("scan");
            assert_eq!(sum.records, n);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "full CRC scan of the same 256 MiB (queue stats), for comparison: {:.0} ms",
        median(scans) * 1e3
    );
}
