#!/usr/bin/env bash
# Time-boxed fuzzing (issue 13): every cargo-fuzz target in fuzz/ runs for FUZZ_SECONDS
# (default 50) from its seeds (fuzz/seeds/<target>, copied into a scratch corpus), on the nightly
# toolchain CI installs. A crash fails the stage and prints the reproducer's path; fix it and
# keep the input under fuzz/regressions/<target>/ (tests/fuzz_regressions.rs replays those on
# stable). Installs cargo-fuzz (pinned) only when missing. Everything runs under `timeout`.
#
# Knobs: FUZZ_SECONDS per target, FUZZ_TARGETS (space-separated subset), FUZZ_BUILD_TIMEOUT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=${CARGO_FUZZ_VERSION:-0.13.1}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
FUZZ_BUILD_TIMEOUT=${FUZZ_BUILD_TIMEOUT:-900}
FUZZ_TARGETS=${FUZZ_TARGETS:-frame webhook config queue_record mqtt_command}

if ! rustc +nightly --version >/dev/null 2>&1; then
    timeout 600 rustup toolchain install nightly --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    timeout 1200 cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
cargo fuzz --version

# -s none: the harness hunts panics (overflow checks and debug assertions on with -a); the
# crate forbids unsafe code, so AddressSanitizer would mostly slow the build and the runs.
t0=$SECONDS
timeout "$FUZZ_BUILD_TIMEOUT" cargo +nightly fuzz build -a -s none
echo "fuzz: built in $((SECONDS - t0))s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in $FUZZ_TARGETS; do
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    cp -r "fuzz/seeds/$t/." "$work/$t/" 2>/dev/null || true
    echo "fuzz: $t for ${FUZZ_SECONDS}s"
    # The outer timeout is the hard stop should libFuzzer's own clock not end the run.
    if ! timeout $((FUZZ_SECONDS + 60)) cargo +nightly fuzz run -a -s none "$t" "$work/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$work/$t.log" 2>&1; then
        tail -n 40 "$work/$t.log"
        found=$(ls -t "fuzz/artifacts/$t" 2>/dev/null | head -n1 || true)
        if [ -n "$found" ]; then
            echo "fuzz: $t CRASHED; reproducer: fuzz/artifacts/$t/$found"
            echo "      replay: cargo +nightly fuzz run -a -s none $t fuzz/artifacts/$t/$found"
        else
            echo "fuzz: $t failed without a reproducer (see the log above)"
        fi
        failed+=("$t")
        continue
    fi
    grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$work/$t.log" | tr '\n' ' '
    echo
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: all targets ran ${FUZZ_SECONDS}s without a crash"
