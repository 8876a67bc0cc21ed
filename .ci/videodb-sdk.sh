#!/usr/bin/env bash
# Conformance of the VideoDB stand-in with VideoDB's own Python SDK (issue 14).
#
# The relay's VideoDB tests run against examples/support/videodb.rs; this stage proves that
# stand-in against the real SDK: it creates a venv, installs the pinned SDK (idempotent: skipped
# when the venv already has that version), starts the stand-in as a process
# (examples/videodb_standin.rs) and runs tests/videodb_sdk/conformance.py, which drives it
# through the SDK (connect_websocket + connect, create_event/list_events, create_alert on a v1
# and a v2 index, list/enable/disable, receiving an alert, a binary JSON frame and a non-JSON
# frame). Bumping the pin: README, "VideoDB SDK conformance".
#
# Knobs: VIDEODB_SDK_VERSION (default the pin below), VIDEODB_SDK_VENV (default
# target/videodb-sdk-venv), PYTHON (default: python3.11 from pyenv if present, else python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VIDEODB_SDK_VERSION=${VIDEODB_SDK_VERSION:-0.5.1}
VENV=${VIDEODB_SDK_VENV:-target/videodb-sdk-venv}
KEY=ci-conformance-key

if [ -z "${PYTHON:-}" ]; then
    if [ -x /root/.pyenv/versions/3.11.7/bin/python3 ]; then
        PYTHON=/root/.pyenv/versions/3.11.7/bin/python3
    else
        PYTHON=python3
    fi
fi
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "SKIPPED: videodb-sdk conformance: $PYTHON has no venv/ensurepip module (apt-get install python3-venv)"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
have=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("videodb"))' 2>/dev/null || true)
if [ "$have" != "$VIDEODB_SDK_VERSION" ]; then
    timeout 300 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "videodb==$VIDEODB_SDK_VERSION"
fi
echo "videodb SDK $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("videodb"))') in $VENV"

timeout 600 cargo build -q --example videodb_standin
standin=target/debug/examples/videodb_standin
out=$(mktemp)
"$standin" --key "$KEY" --hello typed --v2-index rts-1/idx-v2 >"$out" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1 300); do # up to 30 s
    [ -s "$out" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "the stand-in exited before listening" >&2; exit 1; }
    sleep 0.1
done
api_url=$("$VENV/bin/python" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["api_url"])' "$out")
echo "stand-in at $api_url (pid $pid)"
timeout 120 "$VENV/bin/python" tests/videodb_sdk/conformance.py "$api_url" "$KEY"
