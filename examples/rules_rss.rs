//! Memory of 10,000 rules against one (issue 13: within +5 MB), one command:
//!
//!   cargo build --release && cargo run --release --example rules_rss [-- path/to/alert-relay]
//!
//! Starts the real binary (default `target/release/alert-relay`) with 1 and with 10,000 named
//! `[[gpio.rules]]` (sim GPIO, Home Assistant discovery on; examples/rss: the rule shapes),
//! with no broker, and connected to an embedded broker (discovery and the rule states are
//! published), and
//! prints the peak and current resident set of each, the median of `rss::RUNS` runs
//! (examples/rss: how it is measured).
//! With a broker, the wait ends at the relay's first stats message (sent after discovery).
//! `tests/rules_memory.rs` fails when the peak grows more than 5 MB.

mod rss;
mod support;

use std::path::PathBuf;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/alert-relay"));
    assert!(
        bin.exists(),
        "{} missing: cargo build --release",
        bin.display()
    );
    println!("binary: {}", bin.display());
    let server = support::Broker::start_any();
    let port = server.port();
    for (broker, shape) in rss::CASES {
        let mut base = None;
        for rules in [1usize, 10_000] {
            let r = rss::median(&bin, rules, shape, broker.then_some(port)).await;
            let base_peak = *base.get_or_insert(r.peak_kib);
            println!(
                "{:<9} {shape:?} {rules:>6} rules: peak {:>7} KiB  now {:>7} KiB  peak over 1 rule: {:+} KiB (median of {})",
                if broker { "broker" } else { "no broker" },
                r.peak_kib,
                r.now_kib,
                r.peak_kib as i64 - base_peak as i64,
                rss::RUNS
            );
        }
    }
}
