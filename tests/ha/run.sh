#!/usr/bin/env bash
# Proof against a real Home Assistant: mosquitto + Home Assistant core (PyPI, in a cached venv)
# + the relay with sim GPIO, driven through HA's REST API only by tests/ha/drive.py.
#
#   tests/ha/run.sh [path/to/alert-relay]     (default: target/debug/alert-relay)
#   tests/ha/run.sh --install-only            (only make the cached install)
#
# HA_CACHE (default /var/cache/alert-relay-ci/ha) holds the venv; it is made on first use
# (python 3.13 from pyenv, homeassistant==$HA_VERSION with its own package constraints).
# With HA_CHROOT=dir, Home Assistant runs instead from the Debian testing chroot that
# tests/ha/make-chroot.sh builds (2026.x, Python 3.14): its config dir and log live inside the
# chroot, under dir/tmp, where this script and drive.py read them; everything else stays on the
# host and HA is reached on the shared loopback.
# Prints "N passed, N failed" last; exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
HA_CACHE=${HA_CACHE:-/var/cache/alert-relay-ci/ha}
HA_VERSION=${HA_VERSION:-2025.4.4}
PY=${HA_PYTHON:-/root/.pyenv/versions/3.13.0/bin/python}

install_ha() {
    mkdir -p "$HA_CACHE"
    if [ -x "$HA_CACHE/venv/bin/hass" ] && [ "$(cat "$HA_CACHE/version" 2>/dev/null)" = "$HA_VERSION" ]; then
        return
    fi
    echo "installing Home Assistant $HA_VERSION into $HA_CACHE (first run only)"
    rm -rf "$HA_CACHE/venv"
    "$PY" -m venv "$HA_CACHE/venv"
    "$HA_CACHE/venv/bin/pip" install -q --upgrade pip
    "$HA_CACHE/venv/bin/pip" download -q --no-deps -d "$HA_CACHE/wheels" "homeassistant==$HA_VERSION"
    # HA pins its dependency tree in package_constraints.txt; without it pip backtracks for ages.
    "$HA_CACHE/venv/bin/python" - "$HA_CACHE/wheels/homeassistant-$HA_VERSION-py3-none-any.whl" "$HA_CACHE/constraints.txt" <<'PYEOF'
import sys, zipfile
open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("homeassistant/package_constraints.txt"))
PYEOF
    "$HA_CACHE/venv/bin/pip" install -q -c "$HA_CACHE/constraints.txt" \
        "$HA_CACHE/wheels/homeassistant-$HA_VERSION-py3-none-any.whl" paho-mqtt home-assistant-frontend
    echo "$HA_VERSION" > "$HA_CACHE/version"
}
if [ -n "${HA_CHROOT:-}" ]; then
    . "$here/chroot.sh"
    if [ "${1:-}" = "--install-only" ]; then
        exec "$here/make-chroot.sh"
    fi
    if [ ! -x "$HA_CHROOT/opt/ha/venv/bin/hass" ]; then
        echo "no Home Assistant in $HA_CHROOT: build it with tests/ha/make-chroot.sh" >&2
        exit 1
    fi
    HA_VERSION=$(cat "$HA_CHROOT/opt/ha/version")
    # drive.py and free_port need only the standard library: any host Python does.
    PY=$(command -v python3 || echo "$PY")
    work=$(mktemp -d "$HA_CHROOT/tmp/alert-relay-ha.XXXXXX")
    hass_cmd=("${chroot_cmd[@]}" /opt/ha/venv/bin/hass)
    in_ha() { printf '%s' "${1#"$HA_CHROOT"}"; } # a host path under the chroot, as HA sees it
else
    install_ha
    if [ "${1:-}" = "--install-only" ]; then
        exit 0
    fi
    PY=$HA_CACHE/venv/bin/python
    work=$(mktemp -d /tmp/alert-relay-ha.XXXXXX)
    hass_cmd=("$HA_CACHE/venv/bin/hass")
    in_ha() { printf '%s' "$1"; }
fi
relay_bin=$(realpath "${1:-$repo/target/debug/alert-relay}")

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt_port=$(free_port); ha_port=$(free_port); http_port=$(free_port)
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)

cat > "$work/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
CONF
cat > "$work/broker.sh" <<SH
#!/bin/sh
case "\$1" in
  start) "$mosq" -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 & echo \$! > "$work/mosquitto.pid"
         for i in \$(seq 100); do (echo > /dev/tcp/127.0.0.1/$mqtt_port) 2>/dev/null && exit 0; sleep 0.1; done; exit 1 ;;
  stop)  kill "\$(cat "$work/mosquitto.pid")"; while kill -0 "\$(cat "$work/mosquitto.pid")" 2>/dev/null; do sleep 0.1; done ;;
esac
SH
chmod +x "$work/broker.sh"
sed -i '1s|^#!/bin/sh|#!/bin/bash|' "$work/broker.sh"
"$work/broker.sh" start

mkdir -p "$work/ha"
cat > "$work/ha/configuration.yaml" <<YAML
homeassistant:
  name: relay-ci
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: DE
http:
  server_host: 127.0.0.1
  server_port: $ha_port
api:
config:
onboarding:
logger:
  default: info
YAML
"${hass_cmd[@]}" -c "$(in_ha "$work/ha")" --skip-pip --log-file "$(in_ha "$work/ha/home-assistant.log")" \
    > "$work/hass.out" 2>&1 &
pids+=($!)

token=ci-token-0123456789
printf '%s' "$token" > "$work/token"
cat > "$work/relay.toml" <<TOML
[source]
url = "ws://127.0.0.1:9/never"
backoff_max = "2s"

[queue]
dir = "$work/queue"

[mqtt]
host = "127.0.0.1"
port = $mqtt_port
client_id = "relay-ci"
topic_prefix = "ar-ci"
backoff_max = "1s"
ha_discovery = true
ha_device_name = "CI relay"
ha_event_types = ["person"]

[gpio]
backend = "sim"
sim_trace = "$work/trace.jsonl"

[gpio.patterns]
alarm = { kind = "blink", on = "100ms", off = "100ms", duration = "1s" }
chirp = { kind = "blink", on = "50ms", off = "50ms", count = 3 }

[[gpio.outputs]]
name = "horn"
kind = "buzzer"
max_on = "5s"

[[gpio.outputs]]
name = "lamp"
kind = "light"
max_on = "5s"

[[gpio.rules]]
name = "porch"
labels = ["person"]
outputs = ["lamp", "horn"]
pattern = { kind = "solid", duration = "500ms" }
max_age = "1h"

[http]
listen = "127.0.0.1:$http_port"
token_file = "$work/token"
TOML

export HA_URL="http://127.0.0.1:$ha_port" HA_LOG="$work/ha/home-assistant.log" \
    RELAY_CMD="RUST_LOG=info exec '$relay_bin' run --config '$work/relay.toml' >> '$work/relay.log' 2>&1" \
    RELAY_WEBHOOK="http://127.0.0.1:$http_port/webhook" TOKEN="$token" \
    SIM_TRACE="$work/trace.jsonl" MQTT_PORT="$mqtt_port" \
    BROKER_START="$work/broker.sh start" BROKER_STOP="$work/broker.sh stop"
echo "work dir: $work (HA $HA_VERSION on :$ha_port, mosquitto :$mqtt_port, relay http :$http_port)"
status=0
"$PY" "$here/drive.py" || status=$?
"$work/broker.sh" stop || true
if [ "$status" != 0 ]; then
    echo "--- relay log (tail)"; tail -n 40 "$work/relay.log" || true
    echo "--- HA log (warnings)"; grep -E "WARNING|ERROR" "$work/ha/home-assistant.log" | tail -n 40 || true
fi
exit "$status"
