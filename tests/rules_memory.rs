//! 10,000 rules within +5 MB of one rule (issue 13 item 9), on the real binary: `alert-relay
//! run` with rules shaped like config/example.toml's first one, sim GPIO and Home Assistant discovery configured, no broker reachable, measured at
//! READY=1 by `VmHWM` (the peak resident set, so the config parse counts although its memory
//! is freed; examples/rss says why that figure). `cargo run --release --example rules_rss`
//! prints the same figures for the release build, with and without a broker.

#[path = "../examples/rss/mod.rs"]
mod rss;
#[path = "../examples/support/mod.rs"]
mod support;

use std::path::Path;

/// The bound: 5 MB (10^6 bytes each, as the issue writes it), in KiB.
const BOUND_KIB: u64 = 5_000_000 / 1024;

/// Not met yet: +6,152 KiB in the debug build, +6,284 KiB in release (was +94,660 KiB). The
/// parse now costs little above the rules themselves; what is left is ~600 B per rule held:
/// `RuleConfig` (256 B), its strings and vectors, the publisher's copy of every exact label as
/// an HA event type, the rule engine's per-rule state.
/// Run it with `cargo test --test rules_memory -- --ignored --nocapture`.
#[test]
#[ignore = "issue 13 item 9 not met yet: ~600 B per rule are held (see the doc comment)"]
fn ten_thousand_rules_cost_at_most_5_mb_more_than_one() {
    if std::env::var("ALERT_RELAY_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        // Under qemu-user, /proc/<pid>/status is qemu's own (its translator's memory).
        support::skipped(
            "ten_thousand_rules_cost_at_most_5_mb_more_than_one",
            "the relay runs under ALERT_RELAY_TEST_RUNNER (qemu), whose RSS is not the relay's",
        );
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_alert-relay"));
    let port = support::free_port(); // nothing listens: the relay keeps retrying
    let one = rss::measure(bin, 1, rss::Shape::Example, port, "rss-1", || {});
    let many = rss::measure(bin, 10_000, rss::Shape::Example, port, "rss-10000", || {});
    let over = many.peak_kib.saturating_sub(one.peak_kib);
    eprintln!(
        "peak RSS: 1 rule {} KiB, 10,000 rules {} KiB (+{over} KiB); now {} / {} KiB",
        one.peak_kib, many.peak_kib, one.now_kib, many.now_kib
    );
    assert!(
        over <= BOUND_KIB,
        "10,000 rules peak {over} KiB above one rule (bound {BOUND_KIB} KiB): {one:?} {many:?}"
    );
}
