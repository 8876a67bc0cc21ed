//! GPIO benchmark (not a test), one command:
//!
//!   cargo run --release --example gpio_bench
//!
//! 1. Edge accuracy: the real engine drives the `sim` backend (trace file included) through
//!    1000 blink edges (on 2 ms, off 3 ms) on a current-thread runtime, as the daemon does,
//!    once idle and once while every core runs a CPU-burning thread. Each
//!    edge's `mono_us` in the trace is compared with its schedule (first edge + pattern
//!    offset): median, p99 and worst lateness.
//! 2. Alert to edge: the real relay (`alert_relay::run`, its own current-thread
//!    runtime on its own thread, queue on disk, embedded MQTT broker) reads alerts from a
//!    local WebSocket server (examples/support). For each alert the wall-clock time of the
//!    server's send is compared with the `at` of the first "on" edge in the sim trace (both
//!    the same machine clock, microseconds): median, p99 and worst.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use alert_relay::config::Config;
use alert_relay::gpio::{run_engine, GpioCommand, SimBackend};
use alert_relay::stats::Stats;
use support::*;

/// Blink edges in the accuracy run.
const EDGES: u32 = 1000;
/// Alerts in the latency run, and the gap between them (longer than the 5 ms pattern, so each
/// alert starts a fresh pattern and its "on" edge is its own).
const ALERTS: usize = 300;
const ALERT_GAP: Duration = Duration::from_millis(20);

fn main() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("gpio_bench: {cores} cores");
    let idle = edge_accuracy(0);
    report("edge lateness, idle", &idle);
    let loaded = edge_accuracy(cores);
    report(&format!("edge lateness, {cores} CPU burners"), &loaded);
    let lat = alert_to_edge();
    report("websocket frame sent -> first GPIO edge", &lat);
}

fn report(what: &str, us: &[i64]) {
    let mut v = us.to_vec();
    v.sort_unstable();
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "{what}: n={} median {} us, p99 {} us, worst {} us, best {} us",
        v.len(),
        pct(0.5),
        pct(0.99),
        v[v.len() - 1],
        v[0]
    );
}

fn outputs_config(trace: &Path) -> Config {
    Config::parse(&format!(
        "[source]\nurl = \"ws://127.0.0.1:1/\"\n[gpio]\nbackend = \"sim\"\nsim_trace = {:?}\n[[gpio.outputs]]\nname = \"red\"\npin = 17\nmax_on = \"1h\"\n",
        trace.display().to_string()
    ))
    .expect("bench config")
}

/// (mono_us, on) of every trace line for `output`, and the wall-clock `at` in µs.
fn read_trace(trace: &Path, output: &str) -> Vec<(i64, bool, i64)> {
    std::fs::read_to_string(trace)
        .expect("trace")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["output"] == output)
        .map(|v| {
            let at = v["at"]
                .as_str()
                .and_then(alert_relay::clock::parse_rfc3339)
                .map(alert_relay::clock::unix_micros)
                .expect("at") as i64;
            (
                v["mono_us"].as_i64().expect("mono_us"),
                v["on"].as_bool().expect("on"),
                at,
            )
        })
        .collect()
}

/// Lateness of each blink edge against its schedule, in µs, with `burners` busy threads.
fn edge_accuracy(burners: usize) -> Vec<i64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace.jsonl");
    let cfg = outputs_config(&trace);
    let stop = Arc::new(AtomicBool::new(false));
    let burn: Vec<_> = (0..burners)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let (on, off) = (Duration::from_millis(2), Duration::from_millis(3));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let backend = SimBackend::new(&cfg.gpio.outputs, Some(&trace)).expect("sim");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let (activity, mut act) = tokio::sync::watch::channel(vec![false]);
        let engine = tokio::spawn(run_engine(
            cfg.gpio.outputs.clone(),
            Box::new(backend),
            rx,
            stop_rx,
            Arc::new(Stats::default()),
            activity,
        ));
        let pattern = alert_relay::config::Pattern::Blink {
            on,
            off,
            count: Some(EDGES / 2),
            duration: None,
        };
        tx.send(GpioCommand::Test { output: 0, pattern })
            .await
            .expect("send");
        let _ = act.wait_for(|v| v[0]).await;
        let _ = act.wait_for(|v| !v[0]).await;
        drop(tx);
        let _ = engine.await;
    });
    stop.store(true, Ordering::Relaxed);
    for b in burn {
        let _ = b.join();
    }
    // Skip the forced "off" at start and at exit: the pattern's edges alternate from "on".
    let edges: Vec<(i64, bool, i64)> = read_trace(&trace, "red");
    let first = edges.iter().position(|e| e.1).expect("an on edge");
    let pattern = &edges[first..first + EDGES as usize];
    let t0 = pattern[0].0;
    let period = (on + off).as_micros() as i64;
    pattern
        .iter()
        .enumerate()
        .map(|(k, (mono, level, _))| {
            let cycle = (k / 2) as i64;
            let sched = cycle * period + if *level { 0 } else { on.as_micros() as i64 };
            mono - t0 - sched
        })
        .collect()
}

/// Send-to-edge latency of each alert through the whole relay, in µs.
fn alert_to_edge() -> Vec<i64> {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let broker = Broker::start_any();
    let ws = server.block_on(WsServer::start());
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace.jsonl");
    let gpio = format!(
        r#"
[gpio]
backend = "sim"
sim_trace = {:?}
[[gpio.outputs]]
name = "red"
pin = 17
[[gpio.rules]]
labels = ["bench*"]
output = "red"
pattern = {{ kind = "solid", duration = "5ms" }}
"#,
        trace.display().to_string()
    );
    let text = relay_config(&ws.url(), broker.port(), &dir.path().join("q"), &gpio);
    let cfg = Config::parse(&text).expect("relay config");
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let s = stats.clone();
    let relay = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(alert_relay::run(
            cfg,
            async move {
                let _ = stop_rx.await;
            },
            alert_relay::RunOptions {
                stats: s,
                ..Default::default()
            },
        ))
        .expect("relay");
    });
    server.block_on(async {
        wait_until("the relay to connect", Duration::from_secs(20), || {
            count(&stats.source_connects) >= 1
        })
        .await;
        // Let the hello and the broker connection settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let mut sent = Vec::with_capacity(ALERTS);
    for i in 0..ALERTS {
        let frame = alert_frame(&format!("ev-{i}"), &format!("bench_{i}"), 0.9);
        sent.push(alert_relay::clock::unix_micros(SystemTime::now()) as i64);
        ws.send_text(frame);
        std::thread::sleep(ALERT_GAP);
    }
    server.block_on(async {
        wait_until("every alert to reach GPIO", Duration::from_secs(30), || {
            count(&stats.gpio_rule_matches) >= ALERTS as u64
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let _ = stop_tx.send(());
    let _ = relay.join();
    drop(broker);
    let ons: Vec<i64> = read_trace(&trace, "red")
        .into_iter()
        .filter(|e| e.1)
        .map(|e| e.2)
        .collect();
    // An alert that arrives while the previous 5 ms pattern still runs extends it (no edge of
    // its own): pair each "on" edge with the latest send before it.
    let extended = ALERTS - ons.len();
    if extended > 0 {
        println!(
            "({extended} alerts arrived within 5 ms of the previous one and extended its pattern)"
        );
    }
    ons.iter()
        .map(|on| {
            let s = sent
                .iter()
                .rev()
                .find(|s| *s <= on)
                .expect("a send before the edge");
            on - s
        })
        .collect()
}
