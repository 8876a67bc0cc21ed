//! End-to-end benchmark a user can run with one command (needs mosquitto installed):
//!
//!   cargo run --release --example bench                 # full run, ~1–2 minutes
//!   cargo run --release --example bench -- --count 5000 --rate-seconds 5
//!
//! Source (a local WebSocket server speaking the upstream protocol, ~460-byte alerts) -> the
//! relay as a separate process (the release binary) -> a real mosquitto on loopback (QoS 1) ->
//! a subscriber in this process. For `fsync = "batch"` and `"always"` it measures: sustained
//! throughput for a burst, loss and duplicates, end-to-end latency percentiles at a fixed rate,
//! CPU per alert and RSS of the relay (from /proc), idle RSS and idle wake-ups (context
//! switches over an idle window), and bytes written to disk per payload byte. A
//! `mosquitto_pub` run into the same broker, in the same invocation, gives the ceiling of this
//! loop on this machine, so every throughput is also a ratio. The same phases run first on
//! `examples/forwarder.rs` (a 40-line forwarder that keeps nothing, a separate process too:
//! `$ALERT_RELAY_BENCH_FORWARDER`, else built here), and each policy is reported against it in
//! a `vs forwarder` line with issue 18's targets.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::{free_port, Broker, Mosquitto, WsServer};

/// The broker under the bench. mosquitto by default queues at most 1000 QoS 1 messages for a
/// subscriber that falls behind and drops the rest; the subscriber is the bench's measuring
/// instrument, so it must not lose messages the relay delivered: no queue limit.
///
/// `set_tcp_nodelay true`, as the README recommends: with mosquitto's default (Nagle on), a
/// PUBACK at 200/s reaches the relay only with its next publish, so every alert is fsynced.
/// `ALERT_RELAY_BENCH_NAGLE=1` measures with mosquitto's default instead.
fn bench_broker(port: u16) -> Broker {
    let conf = match std::env::var_os("ALERT_RELAY_BENCH_NAGLE") {
        Some(_) => "max_queued_messages 0",
        None => "max_queued_messages 0\nset_tcp_nodelay true",
    };
    println!("# broker: mosquitto with {conf:?}");
    Mosquitto::new().conf(conf).start(port)
}

struct Args {
    count: usize,
    rate: usize,
    rate_seconds: usize,
    idle_seconds: u64,
    policies: Vec<String>,
    /// Alerts to pile up on disk with the broker away (0 = skip that phase).
    backlog: usize,
    /// Ceiling and burst runs each; medians are reported (the machine is shared and noisy).
    repeat: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        count: 20_000,
        rate: 200,
        rate_seconds: 10,
        idle_seconds: 10,
        policies: vec!["batch".into(), "always".into()],
        backlog: 0,
        repeat: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--count" => a.count = v.parse().unwrap_or(a.count),
            "--rate" => a.rate = v.parse().unwrap_or(a.rate),
            "--rate-seconds" => a.rate_seconds = v.parse().unwrap_or(a.rate_seconds),
            "--idle-seconds" => a.idle_seconds = v.parse().unwrap_or(a.idle_seconds),
            "--fsync" => a.policies = v.split(',').map(str::to_owned).collect(),
            "--backlog" => a.backlog = v.parse().unwrap_or(a.backlog),
            "--repeat" => a.repeat = v.parse::<usize>().unwrap_or(a.repeat).max(1),
            other => {
                eprintln!("unknown argument {other}\nusage: bench [--count N] [--rate N] [--rate-seconds N] [--idle-seconds N] [--fsync batch,always,never] [--backlog N] [--repeat N]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

fn now_us() -> u64 {
    alert_relay::clock::unix_micros(SystemTime::now())
}

/// A ~460-byte alert in VideoDB's shape, carrying its send time for latency.
fn alert(i: usize) -> String {
    serde_json::json!({
        "channel": "alert",
        "rtstream_id": "rts-019a1b2c3d4e",
        "rtstream_name": "Front gate camera",
        "data": {
            "event_id": format!("evt-{i:08}"),
            "label": "intrusion",
            "confidence": 0.93,
            "explanation": "A person climbed over the front gate after closing time and walked to the door.",
            "timestamp": alert_relay::clock::rfc3339_micros(now_us()),
            "start_time": 120.0,
            "end_time": 126.5,
            "stream_url": "https://rt.videodb.io/stream/rts-019a1b2c3d4e",
            "player_url": "https://console.videodb.io/player?url=rts-019a1b2c3d4e",
            "bench_sent_us": now_us(),
        }
    })
    .to_string()
}

/// What the subscriber saw.
#[derive(Default)]
struct Seen {
    /// event index -> times seen
    counts: HashMap<usize, u32>,
    latencies_us: Vec<u64>,
    last_at: Option<Instant>,
    ceiling: u64,
    ceiling_last: Option<Instant>,
}

async fn subscriber(port: u16, seen: Arc<Mutex<Seen>>) {
    let mut opts = MqttOptions::new(format!("bench-sub-{}", free_port()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(1000);
    let (client, mut el) = AsyncClient::new(opts, 100);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe("bench/#", QoS::AtLeastOnce).await;
                    let _ = client
                        .subscribe("alert-relay/alerts/#", QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    let mut s = seen.lock().expect("lock");
                    if p.topic.starts_with("bench/") {
                        s.ceiling += 1;
                        s.ceiling_last = Some(now);
                        continue;
                    }
                    let recv = now_us();
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    let idx = v["event_id"]
                        .as_str()
                        .and_then(|e| e.strip_prefix("evt-"))
                        .and_then(|n| n.parse().ok());
                    if let Some(idx) = idx {
                        *s.counts.entry(idx).or_insert(0) += 1;
                        if let Some(sent) = v["bench_sent_us"].as_u64() {
                            s.latencies_us.push(recv.saturating_sub(sent));
                        }
                        s.last_at = Some(now);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    // Two subscriptions: wait for the second SUBACK too.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

struct Proc {
    pid: u32,
}

/// Resident KiB by mapping (see [`Proc::rss_map`]).
#[derive(Default)]
struct RssMap {
    exe_file: u64,
    exe_anon: u64,
    lib_file: u64,
    lib_anon: u64,
    heap: u64,
    stack: u64,
    other_anon: u64,
}

impl Proc {
    fn status_kib(&self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let g = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        g(11) + g(12)
    }
    fn ctx_switches(&self) -> u64 {
        // Summed over all threads of the process.
        let mut total = 0;
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) {
            for t in rd.flatten() {
                let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                for l in s.lines() {
                    if l.starts_with("voluntary_ctxt_switches")
                        || l.starts_with("nonvoluntary_ctxt_switches")
                    {
                        total += l
                            .split_whitespace()
                            .nth(1)
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                }
            }
        }
        total
    }
    /// Proportional set size (KiB): shared pages (libc) divided among the processes using them.
    fn pss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
    /// Where the resident pages are, from /proc/PID/smaps: each mapping's `Rss`, split into
    /// file-backed and `Anonymous` (a private page written after mapping counts as anonymous).
    fn rss_map(&self) -> RssMap {
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).unwrap_or_default();
        let smaps =
            std::fs::read_to_string(format!("/proc/{}/smaps", self.pid)).unwrap_or_default();
        let mut m = RssMap::default();
        let (mut path, mut rss) = (String::new(), 0u64);
        let kib = |v: &str| -> u64 {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                // A mapping's header: range perms offset dev inode [path].
                path = fields.nth(4).unwrap_or("").to_string();
                rss = 0;
            } else if let Some(v) = line.strip_prefix("Rss:") {
                rss = kib(v);
            } else if let Some(v) = line.strip_prefix("Anonymous:") {
                let anon = kib(v);
                let file = rss.saturating_sub(anon);
                if !path.is_empty() && Path::new(&path) == exe {
                    m.exe_file += file;
                    m.exe_anon += anon;
                } else if path.starts_with('/') {
                    m.lib_file += file;
                    m.lib_anon += anon;
                } else if path == "[heap]" {
                    m.heap += rss;
                } else if path == "[stack]" {
                    m.stack += rss;
                } else if path.is_empty() {
                    m.other_anon += rss;
                } else {
                    // [vdso], [vvar]: the kernel's pages.
                    m.lib_file += rss;
                }
            }
        }
        m
    }
    fn write_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/io", self.pid))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("write_bytes:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

fn ticks_per_sec() -> f64 {
    // Linux reports /proc/*/stat times in USER_HZ, which is 100 on every mainstream config.
    100.0
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// "a, b, c" (each rounded), in the order measured.
fn spread(xs: &[f64]) -> String {
    xs.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `mosquitto_pub -l` run of `args.count` messages; returns messages per second as the
/// subscriber saw them.
async fn ceiling_run(args: &Args, port: u16, seen: &Arc<Mutex<Seen>>) -> f64 {
    seen.lock().expect("lock").ceiling = 0;
    let lines: String = (0..args.count).map(|i| alert(i) + "\n").collect();
    let t0 = Instant::now();
    let mut pubp = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "bench/ceiling",
            "-q",
            "1",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)");
    if let Some(mut stdin) = pubp.stdin.take() {
        let _ = stdin.write_all(lines.as_bytes());
    }
    let _ = pubp.wait();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().expect("lock").ceiling < args.count as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = seen
        .lock()
        .expect("lock")
        .ceiling_last
        .map(|l| l - t0)
        .unwrap_or(t0.elapsed());
    args.count as f64 / elapsed.as_secs_f64()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The relay under test: `$ALERT_RELAY_BENCH_BIN` when set (an installed binary, or a build
/// with symbols for `perf`), else this checkout's release build (built first).
fn relay_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ALERT_RELAY_BENCH_BIN") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--bin", "alert-relay"])
        .current_dir(root)
        .status()
        .expect("run cargo build --release");
    assert!(status.success(), "cargo build --release failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("release/alert-relay")
}

fn start_relay(bin: &Path, ws_url: &str, port: u16, dir: &Path, fsync: &str) -> (Child, Proc) {
    let cfg = format!(
        "[source]\nurl = \"{ws_url}\"\n[queue]\ndir = \"{}\"\nmax_bytes = \"1GiB\"\nfsync = \"{fsync}\"\n[mqtt]\nport = {port}\nclient_id = \"bench-relay-{}\"\nmax_inflight = 256\n",
        dir.join("queue").display(),
        free_port()
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, cfg).expect("write config");
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start relay");
    let pid = child.id();
    (child, Proc { pid })
}

/// What one process is measured as: the relay with an fsync policy, or the forwarder.
enum Target<'a> {
    Relay(&'a Path, &'a str),
    Forwarder(PathBuf),
}

/// One process's figures; per-round lists are in the order measured.
struct Row {
    name: String,
    burst_rates: Vec<f64>,
    lost: usize,
    dups: u64,
    complete: bool,
    peak_rss_kib: u64,
    burst_cpu_ms: f64,
    disk_per_payload: f64,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    max_ms: Vec<f64>,
    rate_cpu_ms: Vec<f64>,
    rate_complete: bool,
    idle_rss_kib: u64,
    idle_pss_kib: u64,
    idle_anon_kib: u64,
    idle_threads: u64,
    idle_map: RssMap,
    idle_wakeups: u64,
    /// Context switches of the process (all threads) per alert in the fixed-rate run.
    rate_cs_per_alert: Vec<f64>,
}

/// "a, b, c" with two decimals.
fn spread2(xs: &[f64]) -> String {
    xs.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn forwarder_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ALERT_RELAY_BENCH_FORWARDER") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--example", "forwarder"])
        .current_dir(root)
        .status()
        .expect("run cargo build --release --example forwarder");
    assert!(
        status.success(),
        "cargo build --release --example forwarder failed"
    );
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("release/examples/forwarder")
}

async fn measure(
    args: &Args,
    seen: &Arc<Mutex<Seen>>,
    port: u16,
    payload_len: usize,
    target: &Target<'_>,
) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = WsServer::start().await;
    *seen.lock().expect("lock") = Seen::default();
    let (name, (mut child, proc_)) = match target {
        Target::Relay(bin, policy) => (
            policy.to_string(),
            start_relay(bin, &ws.url(), port, dir.path(), policy),
        ),
        Target::Forwarder(bin) => {
            let child = Command::new(bin)
                .arg(ws.url())
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the forwarder");
            let pid = child.id();
            ("fwd".to_string(), (child, Proc { pid }))
        }
    };
    // Wait for the process to connect upstream.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ws.connections.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Idle: RSS and wake-ups over a quiet window.
    let idle_rss_kib = proc_.status_kib("VmRSS:");
    // RSS = anonymous memory + pages of the binary and libc mapped from the page cache.
    let idle_anon_kib = proc_.status_kib("RssAnon:");
    let idle_pss_kib = proc_.pss_kib();
    let idle_threads = proc_.status_kib("Threads:");
    let idle_map = proc_.rss_map();
    let cs0 = proc_.ctx_switches();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_wakeups = proc_.ctx_switches() - cs0;

    // Burst: as fast as possible, `repeat` times on the same process.
    let cpu0 = proc_.cpu_ticks();
    let wb0 = proc_.write_bytes();
    let (mut burst_rates, mut dups, mut lost, mut complete) = (Vec::new(), 0, 0, true);
    let mut next = 0;
    for _ in 0..args.repeat {
        *seen.lock().expect("lock") = Seen::default();
        let t0 = Instant::now();
        for i in next..next + args.count {
            ws.send_text(alert(i));
        }
        next += args.count;
        complete &= wait_for(seen, args.count, Duration::from_secs(120)).await;
        let s = seen.lock().expect("lock");
        dups += s.counts.values().map(|c| u64::from(c - 1)).sum::<u64>();
        lost += args.count - s.counts.len();
        let elapsed = s.last_at.map(|l| l - t0).unwrap_or(t0.elapsed());
        burst_rates.push(args.count as f64 / elapsed.as_secs_f64());
    }
    let bursts = args.count * args.repeat;
    let burst_cpu = (proc_.cpu_ticks() - cpu0) as f64 / ticks_per_sec();
    let written = proc_.write_bytes() - wb0;

    // Fixed rate: latency, CPU and context switches per alert, `repeat` rounds.
    let (mut p50_ms, mut p99_ms, mut max_ms, mut rate_cpu_ms, mut rate_cs_per_alert) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rate_complete = true;
    let n = args.rate * args.rate_seconds;
    for _ in 0..args.repeat {
        *seen.lock().expect("lock") = Seen::default();
        let cpu0 = proc_.cpu_ticks();
        let cs0 = proc_.ctx_switches();
        let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
        let start = tokio::time::Instant::now();
        for i in 0..n {
            tokio::time::sleep_until(start + interval * i as u32).await;
            ws.send_text(alert(next + i));
        }
        next += n;
        rate_complete &= wait_for(seen, n, Duration::from_secs(30)).await;
        let s = seen.lock().expect("lock");
        lost += n - s.counts.len();
        dups += s.counts.values().map(|c| u64::from(c - 1)).sum::<u64>();
        let mut lat = s.latencies_us.clone();
        drop(s);
        lat.sort_unstable();
        rate_cpu_ms.push(1000.0 * (proc_.cpu_ticks() - cpu0) as f64 / ticks_per_sec() / n as f64);
        rate_cs_per_alert.push((proc_.ctx_switches() - cs0) as f64 / n as f64);
        p50_ms.push(percentile(&lat, 0.50) as f64 / 1000.0);
        p99_ms.push(percentile(&lat, 0.99) as f64 / 1000.0);
        max_ms.push(lat.last().copied().unwrap_or(0) as f64 / 1000.0);
    }
    let peak_rss_kib = proc_.status_kib("VmHWM:");
    let _ = Command::new("kill")
        .args(["-TERM", &proc_.pid.to_string()])
        .status();
    let _ = child.wait();
    Row {
        name,
        burst_rates,
        lost,
        dups,
        complete,
        peak_rss_kib,
        burst_cpu_ms: 1000.0 * burst_cpu / bursts as f64,
        disk_per_payload: written as f64 / (bursts * payload_len) as f64,
        p50_ms,
        p99_ms,
        max_ms,
        rate_cpu_ms,
        rate_complete,
        idle_rss_kib,
        idle_pss_kib,
        idle_anon_kib,
        idle_threads,
        idle_map,
        idle_wakeups,
        rate_cs_per_alert,
    }
}

impl Row {
    fn print(&self, args: &Args, ceiling: f64) {
        let policy = &self.name;
        let throughput = median(&self.burst_rates);
        println!(
            "{policy:<6} burst: {throughput:.0} alerts/s ({:.0}% of ceiling; median of {}: {}), lost {}, dups {}{}; peak RSS {:.1} MiB; CPU {:.3} ms/alert; disk {:.2} B written per payload B",
            100.0 * throughput / ceiling,
            self.burst_rates.len(),
            spread(&self.burst_rates),
            self.lost,
            self.dups,
            if self.complete { "" } else { " (INCOMPLETE)" },
            self.peak_rss_kib as f64 / 1024.0,
            self.burst_cpu_ms,
            self.disk_per_payload,
        );
        println!(
            "{policy:<6} {}/s: p50 {:.2} ms ({}), p99 {:.2} ms ({}), max {:.2} ms{}; CPU {:.3} ms/alert ({}); {:.1} context switches/alert; idle RSS {:.1} MiB (PSS {:.1} MiB, anonymous {:.1} MiB, {} threads), {} wake-ups in {}s idle",
            args.rate,
            median(&self.p50_ms),
            spread2(&self.p50_ms),
            median(&self.p99_ms),
            spread2(&self.p99_ms),
            median(&self.max_ms),
            if self.rate_complete { "" } else { " (INCOMPLETE)" },
            median(&self.rate_cpu_ms),
            self.rate_cpu_ms.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "),
            median(&self.rate_cs_per_alert),
            self.idle_rss_kib as f64 / 1024.0,
            self.idle_pss_kib as f64 / 1024.0,
            self.idle_anon_kib as f64 / 1024.0,
            self.idle_threads,
            self.idle_wakeups,
            args.idle_seconds,
        );
        let m = &self.idle_map;
        println!(
            "{policy:<6} idle RSS by mapping (KiB): binary {} file-backed (code, rodata) + {} anonymous (relocated and written data); shared libraries {} file-backed + {} anonymous; heap {}; main stack {}; other anonymous {} (thread stacks, malloc arenas, large allocations)",
            m.exe_file, m.exe_anon, m.lib_file, m.lib_anon, m.heap, m.stack, m.other_anon
        );
    }

    /// Issue 18's targets for a durable policy, against the forwarder measured in this run.
    fn print_ratios(&self, fwd: &Row, ceiling: f64) {
        let burst = median(&self.burst_rates) / ceiling;
        let p50 = median(&self.p50_ms) / median(&fwd.p50_ms);
        let p99 = median(&self.p99_ms) / median(&fwd.p99_ms);
        let cpu = median(&self.rate_cpu_ms) / median(&fwd.rate_cpu_ms);
        let rss = self.peak_rss_kib as f64 / 1024.0;
        let ok = |pass: bool| if pass { "ok" } else { "MISSED" };
        println!(
            "{:<6} vs forwarder: burst {burst:.2}x ceiling (>= 1.0 {}), p50 {p50:.2}x (<= 1.2 {}), p99 {p99:.2}x (<= 2 {}), CPU/alert {cpu:.2}x (<= 2 {}), lost {} ({}), peak RSS {rss:.1} MiB (<= 8 {}), idle RSS {:.1} MiB (<= 4 {})",
            self.name,
            ok(burst >= 1.0),
            ok(p50 <= 1.2),
            ok(p99 <= 2.0),
            ok(cpu <= 2.0),
            self.lost,
            ok(self.lost == 0),
            ok(rss <= 8.0),
            self.idle_rss_kib as f64 / 1024.0,
            ok(self.idle_rss_kib <= 4096),
        );
    }
}

async fn wait_for(seen: &Arc<Mutex<Seen>>, want: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if seen.lock().expect("lock").counts.len() >= want {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let bin = relay_binary();
    let port = free_port();
    // The bench always uses mosquitto: it is what users run.
    let _broker = bench_broker(port);
    let seen = Arc::new(Mutex::new(Seen::default()));
    subscriber(port, seen.clone()).await;
    let payload_len = alert(0).len();
    println!(
        "# alert-relay bench: {} alerts of ~{payload_len} bytes, rate run {}/s for {}s",
        args.count, args.rate, args.rate_seconds
    );
    println!(
        "# machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        uname()
    );

    // Ceiling: mosquitto_pub -l publishes one message per stdin line, QoS 1, into the same broker.
    let mut ceilings = Vec::new();
    for _ in 0..args.repeat {
        ceilings.push(ceiling_run(&args, port, &seen).await);
    }
    let ceiling = median(&ceilings);
    println!(
        "ceiling  mosquitto_pub -> mosquitto -> subscriber: {ceiling:.0} msg/s (median of {}: {})",
        ceilings.len(),
        spread(&ceilings)
    );

    // The reference first: the 40-line forwarder that keeps nothing (examples/forwarder.rs),
    // measured exactly like the relay.
    let forwarder = measure(
        &args,
        &seen,
        port,
        payload_len,
        &Target::Forwarder(forwarder_binary()),
    )
    .await;
    forwarder.print(&args, ceiling);
    let mut rows = Vec::new();
    for policy in &args.policies {
        let row = measure(
            &args,
            &seen,
            port,
            payload_len,
            &Target::Relay(&bin, policy),
        )
        .await;
        row.print(&args, ceiling);
        row.print_ratios(&forwarder, ceiling);
        rows.push(row);
    }
    if args.backlog > 0 {
        backlog_phase(&bin, &args, &seen).await;
    }
    println!("# {} policies measured", rows.len());
}

/// The broker is away while `args.backlog` alerts arrive: the backlog must live on disk, so the
/// relay's RSS stays flat; then the broker comes up and the backlog drains.
async fn backlog_phase(bin: &Path, args: &Args, seen: &Arc<Mutex<Seen>>) {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = WsServer::start().await;
    let (mut child, proc_) = start_relay(bin, &ws.url(), port, dir.path(), "batch");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ws.connections.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut samples = Vec::new();
    let step = (args.backlog / 10).max(1);
    let t0 = Instant::now();
    for i in 0..args.backlog {
        ws.send_text(alert(10_000_000 + i));
        if (i + 1) % step == 0 {
            // Let the relay catch up before sampling, so RSS reflects a durable backlog.
            let queued = dir_bytes(&dir.path().join("queue"));
            tokio::time::sleep(Duration::from_millis(200)).await;
            samples.push((i + 1, queued, proc_.status_kib("VmRSS:")));
        }
        if i % 2000 == 1999 {
            // Keep the in-process WebSocket buffer small: pace at the relay's speed.
            tokio::task::yield_now().await;
            while dir_bytes(&dir.path().join("queue")) < ((i + 1).saturating_sub(4000) * 400) as u64
                && Instant::now() - t0 < Duration::from_secs(3600)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for (n, bytes, rss) in &samples {
        println!(
            "backlog  {n:>9} alerts, {:>7.1} MiB on disk: relay RSS {:.1} MiB",
            *bytes as f64 / 1048576.0,
            *rss as f64 / 1024.0
        );
    }
    *seen.lock().expect("lock") = Seen::default();
    let _broker = bench_broker(port);
    subscriber(port, seen.clone()).await;
    let t1 = Instant::now();
    let drained = wait_for(seen, args.backlog, Duration::from_secs(1800)).await;
    let got = seen.lock().expect("lock").counts.len();
    println!(
        "backlog  drained {got} of {} in {:.1}s ({:.0} alerts/s){}; peak RSS {:.1} MiB",
        args.backlog,
        t1.elapsed().as_secs_f64(),
        got as f64 / t1.elapsed().as_secs_f64(),
        if drained { "" } else { " (INCOMPLETE)" },
        proc_.status_kib("VmHWM:") as f64 / 1024.0
    );
    let _ = Command::new("kill")
        .args(["-TERM", &proc_.pid.to_string()])
        .status();
    let _ = child.wait();
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn uname() -> String {
    Command::new("uname")
        .arg("-srm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
