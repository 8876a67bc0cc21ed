#!/usr/bin/env bash
# Push alert-relay to one or many devices over ssh, restart it, wait until it is healthy, and
# roll back to the previous version on failure.
#
#   deploy/install.sh [options] HOST...          (HOST: anything ssh accepts, e.g. pi@kitchen)
#
#   --deb FILE       install this .deb with dpkg -i (arm64/armhf package built by cargo-deb), or
#   --bin FILE       install this binary as /usr/bin/alert-relay (the unit, sysusers entry and
#                    wait-gpio from deploy/ are installed too if the host has none)
#   --config FILE    also install FILE as /etc/alert-relay/config.toml (checked on the host with
#                    the NEW binary's `check-config` before anything is replaced)
#   --health URL     healthy = `curl -fsS URL` succeeds on the host (e.g. http://127.0.0.1:8787/healthz)
#   --mqtt PREFIX    healthy = mosquitto_sub on the host reads "online" from PREFIX/status
#   --mqtt-port N    broker port on the host for --mqtt (default 1883)
#   --timeout SECS   how long to wait for healthy (default 60)
#   --parallel N     hosts at a time (default 4)
#
# Health is always also `systemctl is-active alert-relay` staying active for the whole wait.
# On failure the host gets its previous binary (or package) and config back and is restarted.
# The remote side runs `sudo` non-interactively: the ssh user needs passwordless sudo (or be root).
# Environment: SSH (default: ssh), SSH_OPTS (extra options), SCP (default: scp).
# Exit status: 0 if every host is healthy on the new version, 1 otherwise (see the summary).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deb="" bin="" config="" health="" mqtt="" mqtt_port=1883 timeout=60 parallel=4
hosts=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -n 's/^# \{0,1\}//p' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --deb) deb=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --health) health=$2; shift 2 ;;
        --mqtt) mqtt=$2; shift 2 ;;
        --mqtt-port) mqtt_port=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --parallel) parallel=$2; shift 2 ;;
        -h | --help) usage ;;
        -*) echo "install.sh: unknown option $1" >&2; usage ;;
        *) hosts+=("$1"); shift ;;
    esac
done
[ ${#hosts[@]} -gt 0 ] || usage
if { [ -n "$deb" ] && [ -n "$bin" ]; } || { [ -z "$deb" ] && [ -z "$bin" ]; }; then
    echo "install.sh: give exactly one of --deb or --bin" >&2; exit 2
fi
for f in $deb $bin $config; do [ -r "$f" ] || { echo "install.sh: cannot read $f" >&2; exit 2; }; done

SSH=${SSH:-ssh}
SCP=${SCP:-scp}
# shellcheck disable=SC2206
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10 ${SSH_OPTS:-})
# scp spells ssh's -p PORT as -P PORT.
scp_opts=()
for o in "${ssh_opts[@]}"; do [ "$o" = -p ] && o=-P; scp_opts+=("$o"); done

# The part that runs on the device, as root, with the pushed files in $STAGE.
remote_script() {
    cat <<'REMOTE'
set -eu
STAGE=$1 MODE=$2 HAVE_CONFIG=$3 HEALTH=$4 MQTT=$5 TIMEOUT=$6 MQTT_PORT=$7
UNIT=alert-relay.service
CONF=/etc/alert-relay/config.toml
BACKUP=/var/backups/alert-relay
log() { echo "[$(hostname)] $*"; }

mkdir -p "$BACKUP"
# 1. Validate the new config with the new binary before touching anything.
if [ "$MODE" = deb ]; then
    dpkg-deb -x "$STAGE/new.deb" "$STAGE/x"
    NEWBIN=$STAGE/x/usr/bin/alert-relay
else
    NEWBIN=$STAGE/alert-relay
    chmod 755 "$NEWBIN"
fi
"$NEWBIN" --version
CHECK=$CONF
[ "$HAVE_CONFIG" = 1 ] && CHECK=$STAGE/config.toml
if [ -e "$CHECK" ]; then
    "$NEWBIN" check-config --config "$CHECK" >/dev/null || { log "new config rejected; nothing changed"; exit 3; }
fi

# 2. Keep what runs now.
rm -f "$BACKUP/prev.deb" "$BACKUP/alert-relay.prev" "$BACKUP/config.toml.prev"
[ -e /usr/bin/alert-relay ] && cp -p /usr/bin/alert-relay "$BACKUP/alert-relay.prev"
[ -e "$CONF" ] && cp -p "$CONF" "$BACKUP/config.toml.prev"
[ -e "$BACKUP/current.deb" ] && mv "$BACKUP/current.deb" "$BACKUP/prev.deb"

# dpkg must never prompt (stdin is this script): keep an admin-edited config (confold).
dpkg_install() {
    DEBIAN_FRONTEND=noninteractive dpkg -i --force-confdef --force-confold "$1" </dev/null >/dev/null
}

# Called inside `if`, where `set -e` is off: every step checks its own status.
install_new() {
    if [ "$MODE" = deb ]; then
        dpkg_install "$STAGE/new.deb" || return 1
        cp "$STAGE/new.deb" "$BACKUP/current.deb" || return 1
    else
        install -m 755 "$NEWBIN" /usr/bin/alert-relay.new || return 1
        mv /usr/bin/alert-relay.new /usr/bin/alert-relay || return 1
        if [ ! -e /usr/lib/systemd/system/$UNIT ] && [ ! -e /etc/systemd/system/$UNIT ]; then
            install -D -m 644 "$STAGE/alert-relay.service" /usr/lib/systemd/system/$UNIT || return 1
            install -D -m 644 "$STAGE/sysusers.conf" /usr/lib/sysusers.d/alert-relay.conf || return 1
            install -D -m 755 "$STAGE/wait-gpio" /usr/libexec/alert-relay/wait-gpio || return 1
            systemd-sysusers /usr/lib/sysusers.d/alert-relay.conf || return 1
            systemctl daemon-reload || return 1
            systemctl enable $UNIT || return 1
        fi
    fi
    if [ "$HAVE_CONFIG" = 1 ]; then
        install -D -m 640 -g alert-relay "$STAGE/config.toml" "$CONF" || return 1
    fi
}

healthy() {
    deadline=$(( $(date +%s) + TIMEOUT ))
    while :; do
        if ! systemctl is-active --quiet $UNIT; then
            state=$(systemctl is-active $UNIT || true)
            [ "$state" = activating ] || { log "service is $state"; return 1; }
        else
            ok=1
            if [ -n "$HEALTH" ]; then curl -fsS -m 5 "$HEALTH" >/dev/null 2>&1 || ok=0; fi
            if [ -n "$MQTT" ]; then
                [ "$(mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t "$MQTT/status" -C 1 -W 5 2>/dev/null || true)" = online ] || ok=0
            fi
            [ "$ok" = 1 ] && return 0
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { log "not healthy after ${TIMEOUT}s"; return 1; }
        sleep 1
    done
}

rollback() {
    log "rolling back"
    if [ "$MODE" = deb ] && [ -e "$BACKUP/prev.deb" ]; then
        dpkg_install "$BACKUP/prev.deb" || log "dpkg could not reinstall the previous package"
        mv "$BACKUP/prev.deb" "$BACKUP/current.deb"
    elif [ -e "$BACKUP/alert-relay.prev" ]; then
        cp -p "$BACKUP/alert-relay.prev" /usr/bin/alert-relay
    fi
    [ -e "$BACKUP/config.toml.prev" ] && cp -p "$BACKUP/config.toml.prev" "$CONF"
    systemctl restart $UNIT || true
    healthy && log "previous version is running again" || log "previous version is NOT healthy either"
}

# 3. Swap, restart, wait; roll back on any failure.
if install_new && systemctl restart $UNIT && healthy; then
    log "healthy: $(/usr/bin/alert-relay --version)"
    exit 0
fi
rollback
exit 1
REMOTE
}

deploy_one() {
    local host=$1 stage rc=0
    stage=$("$SSH" "${ssh_opts[@]}" "$host" 'mktemp -d /tmp/alert-relay-deploy.XXXXXX') || return 1
    if [ -n "$deb" ]; then
        "$SCP" "${scp_opts[@]}" -q "$deb" "$host:$stage/new.deb" || return 1
    else
        "$SCP" "${scp_opts[@]}" -q "$bin" "$host:$stage/alert-relay" || return 1
        "$SCP" "${scp_opts[@]}" -q "$here/alert-relay.service" "$host:$stage/alert-relay.service" || return 1
        "$SCP" "${scp_opts[@]}" -q "$here/sysusers.d/alert-relay.conf" "$host:$stage/sysusers.conf" || return 1
        "$SCP" "${scp_opts[@]}" -q "$here/wait-gpio" "$host:$stage/wait-gpio" || return 1
    fi
    if [ -n "$config" ]; then
        "$SCP" "${scp_opts[@]}" -q "$config" "$host:$stage/config.toml" || return 1
    fi
    local mode=bin; [ -n "$deb" ] && mode=deb
    local have_config=0; [ -n "$config" ] && have_config=1
    local args="'$stage' '$mode' '$have_config' '$health' '$mqtt' '$timeout' '$mqtt_port'"
    remote_script | "$SSH" "${ssh_opts[@]}" "$host" \
        "if [ \"\$(id -u)\" = 0 ]; then sh -s -- $args; else sudo -n sh -s -- $args; fi" || rc=$?
    "$SSH" "${ssh_opts[@]}" "$host" "rm -rf '$stage'" || true
    return "$rc"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

running=0
for host in "${hosts[@]}"; do
    (
        if deploy_one "$host" >"$tmp/$host.log" 2>&1; then echo ok >"$tmp/$host.rc"; else echo failed >"$tmp/$host.rc"; fi
        sed "s/^/$host: /" "$tmp/$host.log"
    ) &
    running=$((running + 1))
    if [ "$running" -ge "$parallel" ]; then wait -n || true; running=$((running - 1)); fi
done
wait || true

echo "---- summary"
status=0
for host in "${hosts[@]}"; do
    r=$(cat "$tmp/$host.rc" 2>/dev/null || echo failed)
    echo "$host: $r"
    [ "$r" = ok ] || status=1
done
exit "$status"
