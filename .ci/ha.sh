#!/usr/bin/env bash
# CI stage: the relay against a real Home Assistant (tests/ha/run.sh). Home Assistant 2026.x
# runs from a Debian testing chroot (Python 3.14), HA_CHROOT, default
# /var/cache/alert-relay-ci/ha2026/chroot, built by tests/ha/make-chroot.sh (5m31s cold on this
# machine, debootstrap included; 1.6 GB; kept between runs). If it cannot be built
# within 12 min (no debootstrap, no apt), Home Assistant 2025.4.4 from the venv in
# /var/cache/alert-relay-ci/ha is tested instead (about 17 min cold; kept between runs). A
# warm run takes about a minute (10 min box). Prints which Home Assistant it tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "SKIPPED: tests/ha/run.sh: no mosquitto binary"
    exit 0
fi
[ -x target/debug/alert-relay ] || cargo build
chroot_dir=${HA_CHROOT:-/var/cache/alert-relay-ci/ha2026/chroot}
if [ ! -x "$chroot_dir/opt/ha/venv/bin/hass" ]; then
    command -v debootstrap >/dev/null 2>&1 || timeout 300 sh -c "apt-get update -q && apt-get install -y -q debootstrap" >/dev/null || true
    if command -v debootstrap >/dev/null 2>&1; then
        HA_CHROOT=$chroot_dir timeout 720 tests/ha/make-chroot.sh ||
            echo "NOTE: building the Home Assistant 2026.x chroot failed or timed out"
    fi
fi
if [ -x "$chroot_dir/opt/ha/venv/bin/hass" ]; then
    echo "testing Home Assistant $(cat "$chroot_dir/opt/ha/version") (chroot $chroot_dir)"
    HA_CHROOT=$chroot_dir timeout 600 tests/ha/run.sh target/debug/alert-relay
    exit
fi
unset HA_CHROOT
echo "NOTE: no Home Assistant 2026.x chroot at $chroot_dir: testing Home Assistant 2025.4.4 instead"
py=${HA_PYTHON:-/root/.pyenv/versions/3.13.0/bin/python}
if [ ! -x "$py" ]; then
    echo "SKIPPED: tests/ha/run.sh: no Python 3.13 at $py (Home Assistant 2025.4 needs it)"
    exit 0
fi
# The first call installs (if needed) and runs; a run alone fits in 10 minutes.
if [ ! -x /var/cache/alert-relay-ci/ha/venv/bin/hass ]; then
    timeout 1500 tests/ha/run.sh --install-only || {
        echo "Home Assistant install failed or timed out"
        exit 1
    }
fi
echo "testing Home Assistant $(cat /var/cache/alert-relay-ci/ha/version) (venv /var/cache/alert-relay-ci/ha)"
timeout 600 tests/ha/run.sh target/debug/alert-relay
