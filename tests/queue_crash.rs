//! The real binary as a child process, SIGKILLed while alerts flow and while its backlog
//! drains, against a real broker (embedded rumqttd in this process, or mosquitto) and a
//! WebSocket server sending numbered alerts.

#[path = "../examples/support/mod.rs"]
mod support;

use alert_relay::queue::SEQ_BLOCK;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// Generous: the machine running the tests may be loaded (or emulating another CPU).
const T: Duration = Duration::from_secs(120);

/// The relay binary, under `ALERT_RELAY_TEST_RUNNER` (qemu-user) when CI sets it.
fn relay_cmd() -> Command {
    support::command_for(env!("CARGO_BIN_EXE_alert-relay"))
}

fn write_config(dir: &Path, ws_url: &str, mqtt_port: u16, queue: &str) -> PathBuf {
    let text = format!(
        r#"
[source]
url = "{ws_url}"
backoff_initial = "50ms"
backoff_max = "300ms"
max_frame_bytes = "16KiB"

[queue]
dir = "{}"
{queue}

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "relay-crash-test-{}"
backoff_initial = "50ms"
backoff_max = "300ms"
stats_interval = "1s"
"#,
        dir.join("queue").display(),
        unique_id()
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn start_relay(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    relay_cmd()
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the relay binary")
}

fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

fn sigterm(mut child: Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "relay exited with {status}");
}

/// `alert-relay queue dump --dir DIR`: (seq, event number, acked) of every record on disk.
fn dump(queue_dir: &Path) -> Vec<(u64, u64, bool)> {
    let out = run_ok(relay_cmd().args(["queue", "dump", "--dir"]).arg(queue_dir));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            (
                v["seq"].as_u64().expect("seq"),
                event_number(v["body"]["event_id"].as_str().expect("event_id")),
                v["acked"].as_bool().expect("acked"),
            )
        })
        .collect()
}

fn event_number(id: &str) -> u64 {
    id.trim_start_matches("ev-")
        .parse()
        .expect("numbered event")
}

/// Published alerts in arrival order: (relay.seq, event number).
fn published(sub: &Subscriber) -> Vec<(u64, u64)> {
    sub.on("alert-relay/alerts/")
        .iter()
        .map(|m| {
            let v = m.json();
            (
                v["relay"]["seq"].as_u64().expect("relay.seq"),
                event_number(v["event_id"].as_str().expect("event_id")),
            )
        })
        .collect()
}

fn onlines(sub: &Subscriber) -> usize {
    sub.on("alert-relay/status")
        .iter()
        .filter(|m| m.payload == b"online")
        .count()
}

/// True when the last two stats messages (after the first `after`) both show an empty queue
/// and the same count of alerts received: drained, and nothing more arriving from upstream
/// (alerts queued in the WebSocket server while the relay was down arrive right after connect).
fn drained(sub: &Subscriber, after: usize) -> bool {
    let stats: Vec<serde_json::Value> = sub
        .on("alert-relay/stats")
        .iter()
        .skip(after)
        .map(|m| m.json())
        .collect();
    let [.., a, b] = stats.as_slice() else {
        return false;
    };
    a["queue"]["depth_records"] == 0
        && b["queue"]["depth_records"] == 0
        && a["alerts_received"] == b["alerts_received"]
}

/// Checks the published stream: each seq always carries the same event; the first time each
/// seq appears, seqs and event numbers both increase (queue order; anything else is a replayed
/// duplicate). Returns seq -> event.
fn check_order(pubs: &[(u64, u64)]) -> BTreeMap<u64, u64> {
    let mut first: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut last_seq, mut last_ev) = (0u64, 0u64);
    for &(seq, ev) in pubs {
        match first.get(&seq) {
            Some(&e) => assert_eq!(e, ev, "seq {seq} published with two different events"),
            None => {
                assert!(
                    seq > last_seq && ev > last_ev,
                    "new seq {seq} (event {ev}) after seq {last_seq} (event {last_ev}): out of order"
                );
                first.insert(seq, ev);
                (last_seq, last_ev) = (seq, ev);
            }
        }
    }
    first
}

/// Tiny xorshift, seeded from the clock and printed, so a failing run can be reproduced.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("QUEUE_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        eprintln!("QUEUE_CRASH_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Sends numbered alerts (`ev-1`, `ev-2`, ...) every `every` until `stop`. Await the handle
/// before numbering more alerts elsewhere: a send in flight when `stop` is set would otherwise
/// race them and go out of order (a failed run saw event 1100 sent before 1099).
fn feed(
    ws: Arc<WsServer>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let n = next.fetch_add(1, Ordering::SeqCst);
            ws.send_text(alert_frame(&format!("ev-{n}"), "crash_test", 0.9));
            tokio::time::sleep(every).await;
        }
    })
}

/// What can be proven, and how:
/// - An alert read from the WebSocket but not yet written when the relay dies is lost: the
///   upstream is at-most-once and the relay never claimed it. So "sent" is not the yardstick.
/// - A record the relay wrote to its queue gets a sequence number; SIGKILL does not lose
///   what reached the kernel, and a record that never reached it leaves no gap (its number is
///   reused after restart). So *every* sequence number from 1 to the last one on disk was a
///   durable record. The test asserts that all of them were published (0 lost), that each
///   number always carries the same event, and that first publications come in queue order
///   (seq and event number both increasing; anything else is a replayed duplicate).
/// - Independently, after every kill the queue directory is dumped with `queue dump`; every
///   record on disk then (acked or not) must be among the published ones at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_durable_alert_is_published_despite_repeated_sigkills() {
    let broker = Broker::start_any();
    let ws = Arc::new(WsServer::start().await);
    let sub = Subscriber::start(broker.port(), "alert-relay/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Small segments: kills land around segment rolls and deletions too.
    let config = write_config(
        dir.path(),
        &ws.url(),
        broker.port(),
        "max_bytes = \"16MiB\"\nsegment_bytes = \"64KiB\"",
    );
    let log = dir.path().join("relay.log");
    let queue_dir = dir.path().join("queue");
    let mut rng = Rng::new();
    let next = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut on_disk: BTreeMap<u64, u64> = BTreeMap::new();
    let mut kills = 0;

    // Phase 1: alerts flow steadily; kill at random moments.
    let feeder = feed(
        ws.clone(),
        next.clone(),
        stop.clone(),
        Duration::from_millis(2),
    );
    for _ in 0..6 {
        let seen = onlines(&sub);
        let mut child = start_relay(&config, &log);
        wait_until("relay online", T, || onlines(&sub) > seen).await;
        tokio::time::sleep(Duration::from_millis(100 + rng.below(900))).await;
        sigkill(&mut child);
        kills += 1;
        note_on_disk(&mut on_disk, &dump(&queue_dir));
    }
    stop.store(true, Ordering::SeqCst);
    feeder.await.expect("feeder");

    // Phase 2: a burst (queued upstream while the relay is down) builds a backlog; kill while
    // it drains.
    for _ in 0..3 {
        // A backlog of up to 2400 alerts; the test broker queues without limit for a
        // subscriber that falls behind (mosquitto: `max_queued_messages 0`).
        for _ in 0..800 {
            let n = next.fetch_add(1, Ordering::SeqCst);
            ws.send_text(alert_frame(&format!("ev-{n}"), "crash_test", 0.9));
        }
        let seen = onlines(&sub);
        let before = published(&sub).len();
        let mut child = start_relay(&config, &log);
        wait_until("relay online", T, || onlines(&sub) > seen).await;
        // Replays and new records both count: the backlog is being worked through.
        wait_until("publishing under way", T, || published(&sub).len() > before).await;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        sigkill(&mut child);
        kills += 1;
        note_on_disk(&mut on_disk, &dump(&queue_dir));
    }

    // Phase 3: a last run drains everything; then a clean stop.
    let seen_stats = sub.on("alert-relay/stats").len();
    let seen = onlines(&sub);
    let child = start_relay(&config, &log);
    wait_until("relay online", T, || onlines(&sub) > seen).await;
    wait_until("backlog drained (stats depth 0)", T, || {
        drained(&sub, seen_stats)
    })
    .await;
    sigterm(child);
    let last = dump(&queue_dir);
    assert!(last.iter().all(|&(_, _, acked)| acked), "drained and acked");
    note_on_disk(&mut on_disk, &last);
    // Everything is acked now: the ack position is one past the last durable record (the
    // newest segment may be an empty one a killed run had just created).
    let last_seq = queue_stats(&queue_dir)["ack_position"]
        .as_u64()
        .expect("ack_position")
        - 1;
    assert!(last.iter().all(|r| r.0 <= last_seq));
    assert!(last_seq > 0);

    let pubs = published(&sub);
    let first = check_order(&pubs);
    let missing: Vec<u64> = (1..=last_seq).filter(|s| !first.contains_key(s)).collect();
    // Seqs are reserved durably at least a block (SEQ_BLOCK) ahead, up to a block boundary;
    // after a SIGKILL the relay goes on above the reservation, so the unused rest of it is
    // never issued (SPEC: seqs strictly increase, gaps allowed): a run of missing seqs ends on
    // a block boundary and is under two blocks long. Anything else missing is a durable
    // record never published.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &s in &missing {
        match runs.last_mut() {
            Some((_, end)) if *end == s => *end = s + 1,
            _ => runs.push((s, s + 1)),
        }
    }
    assert!(
        runs.len() as u64 <= kills
            && runs
                .iter()
                .all(|(a, b)| b % SEQ_BLOCK == 0 && b - a < 2 * SEQ_BLOCK),
        "durable seqs never published (more than one unissued reservation per SIGKILL): {runs:?}"
    );
    assert_eq!(
        first.len() as u64,
        last_seq - missing.len() as u64,
        "nothing published beyond the log"
    );
    for (seq, ev) in &on_disk {
        assert_eq!(
            first.get(seq),
            Some(ev),
            "record seq {seq} seen on disk not published"
        );
    }
    let sent = next.load(Ordering::SeqCst) - 1;
    eprintln!(
        "{kills} SIGKILLs: {sent} alerts sent, {last_seq} made durable, all published \
         ({} duplicates replayed); {} lost upstream while the relay was down or dying",
        pubs.len() as u64 - first.len() as u64,
        sent - first.len() as u64
    );
    assert!(kills >= 9);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    if std::env::var("QUEUE_CRASH_SHOW_LOG").is_ok() {
        eprintln!("{log}");
    }
    assert!(!log.contains("panicked"), "relay log:\n{log}");
}

/// A TCP proxy in front of the broker that can be cut (every connection dropped, new ones
/// refused) and restored: a broker outage as the relay sees it, with a broker that cannot be
/// stopped (the embedded one).
struct Proxy {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (up, up_rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*up_rx.borrow() {
                    continue; // refused: dropped at once
                }
                let mut cut = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { port, up }
    }

    fn set_up(&self, up: bool) {
        let _ = self.up.send(up);
    }
}

/// Resident set size of a process, from /proc/PID/status (KiB).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The broker is unreachable while alerts keep coming: the backlog grows on disk (tens of
/// MiB) and the relay's resident memory does not grow with it; when the broker is back the
/// backlog drains, in order, nothing lost (the relay is never killed here, so every alert
/// sent is accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_grows_the_queue_on_disk_not_in_memory_and_drains_in_order() {
    let broker = Broker::start_any();
    let proxy = Proxy::start(broker.port()).await;
    let ws = Arc::new(WsServer::start().await);
    let sub = Subscriber::start(broker.port(), "alert-relay/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &ws.url(), proxy.port, "max_bytes = \"256MiB\"");
    let queue_dir = dir.path().join("queue");
    let log = dir.path().join("relay.log");
    let child = start_relay(&config, &log);
    let pid = child.id();
    let send = |from: u64, to: u64| {
        for n in from..to {
            ws.send_text(alert_frame(&format!("ev-{n}"), "outage_test", 0.9));
        }
    };

    // Warm up: connected, a few thousand alerts through, so buffers have their working size.
    wait_until("relay online", T, || onlines(&sub) >= 1).await;
    send(1, 2001);
    wait_until("warm-up published", T, || published(&sub).len() >= 2000).await;

    proxy.set_up(false);
    let mut next = 2001;
    // Under CI's qemu-user pass everything runs ~10x slower: a smaller backlog proves the
    // same (disk grows, RSS does not) within the deadlines.
    let emulated = std::env::var("ALERT_RELAY_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    let step = if emulated { 2_000 } else { 8_000 };
    let mut samples = Vec::new(); // (queue bytes on disk, RSS KiB)
    for _ in 0..7 {
        send(next, next + step);
        next += step;
        let target = next - 1;
        // `queue stats` scans the whole backlog: poll it gently.
        let deadline = std::time::Instant::now() + T;
        while queue_stats(&queue_dir)["last_seq"]
            .as_u64()
            .is_none_or(|last| last < target)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "alerts not queued on disk"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        samples.push((dir_bytes(&queue_dir), rss_kib(pid)));
    }
    // Baseline once the first 16k alerts are queued: buffers (the writer channel, socket and
    // allocator arenas) have their working size; from then on only the backlog grows.
    let (disk0, rss0) = samples[1];
    let (disk1, rss1) = samples[samples.len() - 1];
    eprintln!("outage: queue on disk / relay RSS: {samples:?} (bytes, KiB)");
    let disk_growth_kib = (disk1 - disk0) / 1024;
    // Five steps of ~500-byte records: at least 200 bytes each on disk.
    assert!(
        disk_growth_kib > step * 5 * 200 / 1024,
        "backlog grew on disk: {disk_growth_kib} KiB"
    );
    let rss_growth_kib = rss1.saturating_sub(rss0);
    if emulated {
        // Under qemu-user the pid is the emulator's: its RSS holds its translation cache, which
        // grows by a MiB or so whenever a new code path runs (CI saw +1.1 MiB against a 3.3 MiB
        // backlog). The native pass of this test makes the claim about the relay's memory.
        eprintln!("outage: RSS growth {rss_growth_kib} KiB not checked under emulation");
    } else {
        assert!(
            rss_growth_kib * 4 < disk_growth_kib,
            "RSS grew {rss_growth_kib} KiB while the backlog grew {disk_growth_kib} KiB"
        );
    }

    let seen_stats = sub.on("alert-relay/stats").len();
    proxy.set_up(true);
    let total = next - 1;
    // The relay's own view: every alert appended, the queue empty (every record PUBACKed).
    wait_until("backlog drained to the broker", T, || {
        sub.on("alert-relay/stats")
            .iter()
            .skip(seen_stats)
            .any(|m| {
                let v = m.json();
                v["queue_appended"] == total && v["queue"]["depth_records"] == 0
            })
    })
    .await;
    wait_until("subscriber got every alert", T, || {
        check_order(&published(&sub)).len() as u64 >= total
    })
    .await;
    let first = check_order(&published(&sub));
    let events: Vec<u64> = first.values().copied().collect();
    assert_eq!(
        events,
        (1..=total).collect::<Vec<_>>(),
        "every alert, in order"
    );
    sigterm(child);
}

/// Adds the (seq, event) pairs of a queue dump to `on_disk`, checking that no seq ever names
/// another event than it did before (records are never rewritten).
fn note_on_disk(on_disk: &mut BTreeMap<u64, u64>, dump: &[(u64, u64, bool)]) {
    for &(seq, ev, _) in dump {
        assert_eq!(
            *on_disk.entry(seq).or_insert(ev),
            ev,
            "seq {seq} changed event"
        );
    }
}

/// `alert-relay queue stats --dir DIR`.
fn queue_stats(queue_dir: &Path) -> serde_json::Value {
    let out = relay_cmd()
        .args(["queue", "stats", "--dir"])
        .arg(queue_dir)
        .output()
        .expect("queue stats");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}
