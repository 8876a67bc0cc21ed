//! 10,000 rules within +5 MB of one rule (issue 13 item 9), on the real binary: `alert-relay
//! run` with sim GPIO and Home Assistant discovery configured, for each case of `rss::CASES`
//! (no broker with config/example.toml's rule shape and with a heavier one; connected to a
//! broker, so discovery and the rule states are published), measured by `VmHWM` (the peak
//! resident set, so the config parse counts although its memory is freed; examples/rss says
//! why that figure), the median of `rss::RUNS` runs. `cargo run --release --example
//! rules_rss` prints the same figures for the release build.

#[path = "../examples/rss/mod.rs"]
mod rss;
#[path = "../examples/support/mod.rs"]
mod support;

use std::path::Path;

/// The bound: 5 MB (10^6 bytes each, as the issue writes it), in KiB.
const BOUND_KIB: u64 = 5_000_000 / 1024;

/// Release build at this commit (`examples/rules_rss`, medians of 3): +2,900-3,030 KiB
/// (Example shape), +4,070-4,240 KiB (Heavy), +3,360-3,460 KiB (with a broker); main before
/// was +4,204 / +5,160 / +5,136 KiB in the same window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rules_cost_at_most_5_mb_more_than_one() {
    if std::env::var("ALERT_RELAY_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        // Under qemu-user, /proc/<pid>/status is qemu's own (its translator's memory).
        support::skipped(
            "ten_thousand_rules_cost_at_most_5_mb_more_than_one",
            "the relay runs under ALERT_RELAY_TEST_RUNNER (qemu), whose RSS is not the relay's",
        );
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_alert-relay"));
    let broker = support::Broker::start_any();
    let mut over_bound = Vec::new();
    for (with_broker, shape) in rss::CASES {
        let port = with_broker.then(|| broker.port());
        let one = rss::median(bin, 1, shape, port).await;
        let many = rss::median(bin, 10_000, shape, port).await;
        let over = many.peak_kib.saturating_sub(one.peak_kib);
        eprintln!(
            "{shape:?}{}: peak RSS 1 rule {} KiB, 10,000 rules {} KiB (+{over} KiB, bound {BOUND_KIB})",
            if with_broker { " with a broker" } else { "" },
            one.peak_kib,
            many.peak_kib,
        );
        if over > BOUND_KIB {
            over_bound.push(format!(
                "{shape:?} broker={with_broker}: +{over} KiB ({one:?} {many:?})"
            ));
        }
    }
    assert!(
        over_bound.is_empty(),
        "10,000 rules peak more than {BOUND_KIB} KiB above one rule: {over_bound:?}"
    );
}
