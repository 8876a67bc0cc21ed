#!/usr/bin/env bash
# Runs the pi-gen stage (stage-alert-relay) against a Debian root filesystem the way pi-gen
# would (prerun.sh, 00-install/00-run.sh on the host, 00-install/00-run-chroot.sh through an
# on_chroot like pi-gen's), then checks the result and provisions a card inside it.
#
#   deploy/pi-gen/test-stage.sh DEB [ROOTFS]
#
# DEB: an alert-relay .deb for the rootfs's architecture (`cargo deb` gives the amd64 one).
# ROOTFS: a root filesystem to copy (it is left untouched); default: a bookworm minbase with
# systemd made with debootstrap once and kept in $PI_GEN_TEST_CACHE (/var/cache/alert-relay-ci).
# Needs root (chroot, mounts). What this does NOT exercise: pi-gen itself, an arm64/armhf
# image, qemu-user-static binfmt, booting (the units are checked enabled, not run).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 DEB [ROOTFS]" >&2; exit 1; }
deb=$(realpath "$1")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${PI_GEN_TEST_CACHE:-/var/cache/alert-relay-ci}
fail() { echo "pi-gen test: FAIL: $*" >&2; exit 1; }
ok() { echo "pi-gen test: ok: $*"; }

src_root=${2:-}
if [ -z "$src_root" ]; then
    src_root=$cache/bookworm-systemd
    if [ ! -x "$src_root/bin/systemctl" ]; then
        rm -rf "$src_root"
        mkdir -p "$cache"
        timeout 1200 debootstrap --variant=minbase --include=systemd bookworm "$src_root" \
            http://deb.debian.org/debian >"$cache/debootstrap-bookworm.log" 2>&1 ||
            fail "debootstrap (log: $cache/debootstrap-bookworm.log)"
    fi
fi

work=$(mktemp -d /var/tmp/pi-gen-test.XXXXXX)
export ROOTFS_DIR=$work/rootfs
mounts=()
cleanup() {
    local m
    for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
cp -a "$src_root" "$ROOTFS_DIR"
# Raspberry Pi OS images carry a machine-id until the export stage; so does this copy.
echo 0123456789abcdef0123456789abcdef >"$ROOTFS_DIR/etc/machine-id"

# pi-gen's helpers, as its stages see them (scripts/common).
copy_previous() { fail "prerun.sh asked for a previous stage, but ROOTFS_DIR exists"; }
on_chroot() {
    local d
    for d in proc sys dev; do
        if ! mountpoint -q "$ROOTFS_DIR/$d"; then
            mount --bind "/$d" "$ROOTFS_DIR/$d"
            mounts=("$ROOTFS_DIR/$d" "${mounts[@]}")
        fi
    done
    chroot "$ROOTFS_DIR" /bin/bash -e "$@"
}
export -f copy_previous on_chroot fail

# The stage, with the package in files/ as the README says.
cp -a "$here/stage-alert-relay" "$work/stage"
cp "$deb" "$work/stage/00-install/files/alert-relay_$(dpkg-deb --field "$deb" Version)_$(dpkg-deb --field "$deb" Architecture).deb"
cd "$work/stage"
bash -e ./prerun.sh
cd 00-install
bash -e ./00-run.sh
on_chroot <./00-run-chroot.sh
ok "stage ran: prerun.sh, 00-run.sh, 00-run-chroot.sh"

in_root() { chroot "$ROOTFS_DIR" "$@"; }
in_root dpkg-query -W -f='${Package} ${Version} ${Architecture} ${Status}\n' alert-relay |
    grep -q 'install ok installed' || fail "alert-relay not installed"
in_root /usr/bin/alert-relay --version
for unit in alert-relay.service alert-relay-provision.service; do
    [ -L "$ROOTFS_DIR/etc/systemd/system/multi-user.target.wants/$unit" ] || fail "$unit not enabled"
    in_root systemctl is-enabled "$unit" | grep -qx enabled || fail "systemctl: $unit not enabled"
done
ok "both units enabled"
perms=$(in_root stat -c '%U:%G %a' /etc/alert-relay/config.toml)
[ "$perms" = "root:alert-relay 640" ] || fail "config is $perms"
in_root id -nG alert-relay | tr ' ' '\n' | grep -qx gpio || fail "alert-relay not in gpio"
in_root /usr/bin/alert-relay check-config --config /etc/alert-relay/config.toml >/dev/null
[ ! -s "$ROOTFS_DIR/etc/machine-id" ] || fail "/etc/machine-id still set: cloned cards would share it"
[ ! -e "$ROOTFS_DIR/tmp/alert-relay.deb" ] || fail "the .deb was left in the image"
ok "package files, user, config mode, empty machine-id"
in_root systemd-analyze verify /usr/lib/systemd/system/alert-relay-provision.service ||
    fail "systemd-analyze verify alert-relay-provision.service"

# Flash and go inside the image: a config and a password on the boot partition.
boot=$ROOTFS_DIR/boot/firmware
mkdir -p "$boot"
sed -e 's|^# username = "alert-relay"|username = "alert-relay"|' \
    -e 's|^# password_file = .*|password_file = "/etc/alert-relay/mqtt-password"|' \
    "$ROOTFS_DIR/usr/share/doc/alert-relay/example.toml" >"$boot/alert-relay.toml"
echo hunter2 >"$boot/mqtt-password"
in_root /usr/libexec/alert-relay/alert-relay-provision --boot /boot/firmware --etc /etc/alert-relay ||
    fail "provisioning exited $?"
for f in config.toml mqtt-password; do
    perms=$(in_root stat -c '%U:%G %a' "/etc/alert-relay/$f")
    [ "$perms" = "root:alert-relay 640" ] || fail "/etc/alert-relay/$f is $perms"
done
[ ! -e "$boot/mqtt-password" ] && [ -e "$boot/alert-relay.toml.applied" ] || fail "card not consumed"
cat "$boot/alert-relay-provision.log"
in_root /usr/bin/alert-relay check-config --config /etc/alert-relay/config.toml >/dev/null
ok "provisioned /boot/firmware/alert-relay.toml inside the image"
echo "pi-gen test: PASSED ($(in_root dpkg --print-architecture) rootfs, $(in_root cat /etc/debian_version))"
