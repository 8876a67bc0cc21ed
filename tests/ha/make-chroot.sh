#!/usr/bin/env bash
# Builds the Home Assistant 2026.x install that tests/ha/run.sh uses with HA_CHROOT: HA 2026
# needs Python >= 3.14, which Debian testing has (bookworm and the pyenv pythons do not), so a
# debootstrap'ed Debian testing chroot holds Python and a venv with homeassistant from PyPI,
# installed with HA's own package_constraints.txt as in run.sh. Needs root, debootstrap, apt and
# PyPI. Idempotent: an existing chroot and an install of the same version are kept.
#
#   tests/ha/make-chroot.sh     HA_CHROOT (default /var/cache/alert-relay-ci/ha2026/chroot),
#                               HA_VERSION (default: the newest 2026.x on PyPI)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HA_CHROOT=${HA_CHROOT:-/var/cache/alert-relay-ci/ha2026/chroot}
case "$HA_CHROOT" in
    /?*/?*) ;;
    *) echo "HA_CHROOT=$HA_CHROOT: give a directory at least two levels below /" >&2; exit 1 ;;
esac
. "$here/chroot.sh"

if [ ! -x "$HA_CHROOT/usr/bin/python3" ]; then
    echo "debootstrap: Debian testing into $HA_CHROOT"
    rm -rf "$HA_CHROOT"
    mkdir -p "$(dirname "$HA_CHROOT")"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        testing "$HA_CHROOT" http://deb.debian.org/debian > "$HA_CHROOT.debootstrap.log" 2>&1 || {
        tail -n 20 "$HA_CHROOT.debootstrap.log"
        exit 1
    }
fi
cp /etc/resolv.conf "$HA_CHROOT/etc/resolv.conf"
# The host's local CAs (a TLS-intercepting egress proxy, say) must be trusted by pip inside too.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$HA_CHROOT/usr/local/share/ca-certificates/"
    in_chroot update-ca-certificates > /dev/null
fi
in_chroot python3 --version

v=/opt/ha/venv
[ -x "$HA_CHROOT$v/bin/pip" ] || in_chroot python3 -m venv "$v"
in_chroot "$v/bin/pip" install -q --upgrade pip
spec="homeassistant>=2026,<2027"
[ -z "${HA_VERSION:-}" ] || spec="homeassistant==$HA_VERSION"
rm -rf "$HA_CHROOT/opt/ha/wheels"
in_chroot "$v/bin/pip" download -q --no-deps -d /opt/ha/wheels "$spec"
whl=$(cd "$HA_CHROOT/opt/ha/wheels" && ls homeassistant-*-py3-none-any.whl)
version=${whl#homeassistant-}
version=${version%%-*}
if [ -x "$HA_CHROOT$v/bin/hass" ] && [ "$(cat "$HA_CHROOT/opt/ha/version" 2>/dev/null)" = "$version" ]; then
    echo "Home Assistant $version already installed in $HA_CHROOT"
    exit 0
fi
echo "installing Home Assistant $version into $HA_CHROOT$v"
# HA pins its dependency tree in package_constraints.txt; without it pip backtracks for ages.
in_chroot "$v/bin/python" - "/opt/ha/wheels/$whl" /opt/ha/constraints.txt <<'PYEOF'
import sys, zipfile
open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("homeassistant/package_constraints.txt"))
PYEOF
in_chroot "$v/bin/pip" install -q -c /opt/ha/constraints.txt \
    "/opt/ha/wheels/$whl" paho-mqtt home-assistant-frontend
# run.sh starts hass with --skip-pip, and 2026.x sets up integrations at start (camera,
# conversation, tts, assist_pipeline, analytics, ...) whose requirements the wheel does not pull
# in; without them the MQTT config flow fails to load (aiohasupervisor). Install the
# requirements of those integrations and of their dependencies, at the versions they pin.
# Not assist_pipeline/assist_satellite: pymicro-vad and pyspeex-noise have no Python 3.14 wheel
# and would need a C++ toolchain; HA logs their setup failure, which has nothing to do with MQTT.
in_chroot "$v/bin/python" - > "$HA_CHROOT/opt/ha/requirements.txt" <<'PYEOF'
import json, pathlib, homeassistant.components as c
root = pathlib.Path(c.__file__).parent
seed = ["mqtt", "hassio", "analytics", "camera", "stream", "conversation", "tts", "ffmpeg",
        "ai_task", "image_processing", "infrared",
        "radio_frequency", "onboarding", "backup", "frontend"]
todo, seen, reqs = list(seed), set(), set()
while todo:
    name = todo.pop()
    if name in seen or not (root / name / "manifest.json").exists():
        continue
    seen.add(name)
    m = json.loads((root / name / "manifest.json").read_text())
    reqs.update(m.get("requirements", []))
    todo += m.get("dependencies", [])
print("\n".join(sorted(reqs)))
PYEOF
in_chroot "$v/bin/pip" install -q -c /opt/ha/constraints.txt -r /opt/ha/requirements.txt
echo "$version" > "$HA_CHROOT/opt/ha/version"
echo "Home Assistant $version installed in $HA_CHROOT"
