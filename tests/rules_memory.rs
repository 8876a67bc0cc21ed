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

/// Met since the rules hold boxed slices and the engine only the cooldowns of rules that
/// fired: +3,976 and +4,368 KiB in two debug runs (was +6,060 KiB; +94,660 KiB before the
/// piecewise parse). Still ignored: the one-rule baseline alone varied by ~450 KiB between
/// runs on the loaded build machine, a margin too thin for the README's `cargo test`.
/// Run it with `cargo test --test rules_memory -- --ignored --nocapture` (~15 s).
#[test]
#[ignore = "met (+4.0-4.4 MB), but the baseline varies ~0.5 MB run to run: run it on purpose"]
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
