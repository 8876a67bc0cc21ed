#!/usr/bin/env bash
# CI stage: the Docker path of Cross.toml, proven. `cross build --release` (cross-rs) with podman
# for aarch64-unknown-linux-gnu, aarch64-unknown-linux-musl and armv7-unknown-linux-gnueabihf;
# glibc <= 2.31 checked for the gnu binaries; each binary run under qemu-user (`--version` and
# `check-config` on the example config).
#
#   .ci/cross-podman.sh            (from .ci/run; also runs on its own, as root)
#
# Installs what it needs, idempotently: Debian's podman, runc, debootstrap, qemu-user, binutils
# for the targets; cross $CROSS_VERSION with `cargo install --locked`. Registries reach no image
# registry here, so the build images' base, debian:bullseye-slim, is made locally: debootstrap
# --variant=minbase bullseye, imported into podman's storage (/var/lib/containers, kept by the
# machine between runs) with the label alert-relay.base, which marks it as built; later runs
# reuse it. The per-target images (cross/Dockerfile.bullseye, see Cross.toml) are built by cross
# on top of it; podman's layer cache keeps them too.
#
# cross 0.2.5 misreads rustup 1.28+'s `rustup toolchain list` ("(active, default)") and then runs
# `rustup toolchain add <the toolchain>`, which moved an unpinned stable from 1.95.0 to 1.99.1 on
# these machines. rust-toolchain.toml pins the toolchain; this script fails if the toolchain
# (pinned or stable) changed under it.
#
# Knobs: CROSS_PODMAN_TARGETS (space-separated; default all three, see TARGETS), CROSS_PODMAN_TIMEOUT
# (seconds for all builds, default 1500), CROSS_PODMAN_PROFILE (ci or release, see below), CROSS_TARGET_DIR (default
# target/cross-podman: cross builds in a container with other paths and linkers, so sharing
# ./target would rebuild the release artifacts the other stages use), CROSS_PODMAN_STATE (where
# containers.conf and the debootstrap tree live; default /var/cache/alert-relay-ci).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CROSS_VERSION=${CROSS_VERSION:-0.2.5}
TIMEOUT=${CROSS_PODMAN_TIMEOUT:-1500}
STATE=${CROSS_PODMAN_STATE:-/var/cache/alert-relay-ci}
BASE_IMAGE=docker.io/library/debian:bullseye-slim
BASE_LABEL=alert-relay.base
BASE_MIRROR=${BASE_MIRROR:-http://deb.debian.org/debian}
MAX_GLIBC=2.31
EXAMPLE_CONFIG=config/example.toml
# armv7-unknown-linux-gnueabihf builds from the same Dockerfile (CROSS_DEB_ARCH=armhf).
read -r -a TARGETS <<<"${CROSS_PODMAN_TARGETS:-aarch64-unknown-linux-gnu aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf}"
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
# The release profile (fat LTO, one codegen unit) made the three builds take 1574 s here with one
# job (26 min; the stage's box is 30 min with installs and, on a fresh machine, debootstrap);
# with the override below they took 1073 s (stage 17 min 53 s).
# This stage proves the Docker path: the image, the linker, the glibc the binary needs and that
# it runs; the shipped binary's size and speed are cross/build.sh's stages' (same profile as a
# user's build). So it builds without LTO and with 16 codegen units, a cargo --config override
# (cross passes cargo's arguments through). CROSS_PODMAN_PROFILE=release builds the real profile.
profile_args=()
if [ "${CROSS_PODMAN_PROFILE:-ci}" = ci ]; then
    profile_args=(--config 'profile.release.lto="off"' --config profile.release.codegen-units=16)
fi
export DEBIAN_FRONTEND=noninteractive

fail() { echo "cross-podman: $*" >&2; exit 1; }
note() { echo "cross-podman: $*"; }
t0=$SECONDS
phase() { note "[$((SECONDS - t0))s] $*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "SKIPPED: cross-podman: needs root (podman storage, debootstrap)"; exit 0; }
    SUDO=sudo
fi

# ------------------------------------------------------------------ installs
phase "install"
pkgs=(podman runc debootstrap qemu-user file binutils-aarch64-linux-gnu binutils-arm-linux-gnueabihf
    libc6-dev-arm64-cross libc6-dev-armhf-cross)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    note "installing: ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! cross --version 2>/dev/null | grep -q "^cross $CROSS_VERSION"; then
    cargo install --locked cross --version "$CROSS_VERSION"
fi
cross --version 2>/dev/null | head -n1
podman --version

# The toolchain cross must not move (see the header).
toolchain_before=$(rustc --version)
stable_before=$(rustc +stable --version 2>/dev/null || echo none)
note "toolchain: $(rustup show active-toolchain) = $toolchain_before; stable = $stable_before"

# ------------------------------------------------------------------ podman set-up
mkdir -p "$STATE"
# No ulimits (the container runtime here refuses them), the host's network (apt-get in the image
# builds; registries are the only hosts reachable), cgroupfs (no systemd as PID 1 in CI), runc.
cat >"$STATE/containers.conf" <<'EOF'
[containers]
default_ulimits = []
netns = "host"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
export CONTAINERS_CONF=$STATE/containers.conf
export CROSS_CONTAINER_ENGINE=podman

base_mark=$(podman image inspect -f "{{ index .Labels \"$BASE_LABEL\" }}" "$BASE_IMAGE" 2>/dev/null || true)
if [ "$base_mark" = "debootstrap-minbase-bullseye" ]; then
    note "base image $BASE_IMAGE: cached ($(podman image inspect -f '{{.Created}}' "$BASE_IMAGE"))"
else
    phase "base image: debootstrap --variant=minbase bullseye"
    root=$STATE/bullseye-minbase
    rm -rf "$root"
    timeout 900 debootstrap --variant=minbase bullseye "$root" "$BASE_MIRROR" >"$STATE/debootstrap.log" 2>&1 ||
        { tail -n 20 "$STATE/debootstrap.log" >&2; fail "debootstrap failed (log: $STATE/debootstrap.log)"; }
    tar -C "$root" -c . | podman import --change "LABEL $BASE_LABEL=debootstrap-minbase-bullseye" - "$BASE_IMAGE"
    rm -rf "$root"
    note "base image $BASE_IMAGE imported"
fi

# A machine whose podman cannot start a container at all cannot run this stage: say so.
if ! probe=$(timeout 120 podman run --rm "$BASE_IMAGE" true 2>&1); then
    echo "SKIPPED: cross-podman: podman cannot run a container on this machine: $probe"
    exit 0
fi

# ------------------------------------------------------------------ builds
export CARGO_TARGET_DIR=${CROSS_TARGET_DIR:-$PWD/target/cross-podman}
deadline=$((SECONDS + TIMEOUT))

check_glibc() {
    local bin=$1 objdump=$2 newest
    newest=$("$objdump" -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -n1)
    echo "GLIBC $bin: needs at most GLIBC_$newest (limit GLIBC_$MAX_GLIBC)"
    [ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -n1)" = "$MAX_GLIBC" ] ||
        fail "$bin needs GLIBC_$newest, newer than GLIBC_$MAX_GLIBC"
}

for target in "${TARGETS[@]}"; do
    left=$((deadline - SECONDS))
    [ "$left" -gt 0 ] || fail "time box of ${TIMEOUT}s used up before $target"
    phase "cross build --release --target $target (time left ${left}s)"
    timeout "$left" cross build --release --target "$target" "${profile_args[@]}" ||
        fail "cross build --release --target $target failed or timed out"
    bin=$CARGO_TARGET_DIR/$target/release/alert-relay
    [ -x "$bin" ] || fail "$bin not built"
    file "$bin"
    case $target in
        aarch64-unknown-linux-gnu) check_glibc "$bin" aarch64-linux-gnu-objdump
            run=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
        aarch64-unknown-linux-musl) run=(qemu-aarch64) ;;
        armv7-unknown-linux-gnueabihf) check_glibc "$bin" arm-linux-gnueabihf-objdump
            run=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
    esac
    echo "SIZE $target (cross): $(stat -c %s "$bin") bytes"
    echo "+ ${run[*]} $bin --version"
    "${run[@]}" "$bin" --version
    echo "+ ${run[*]} $bin check-config --config $EXAMPLE_CONFIG"
    "${run[@]}" "$bin" check-config --config "$EXAMPLE_CONFIG" >/dev/null
    phase "$target: built by cross, runs under qemu"
done

[ "$(rustc --version)" = "$toolchain_before" ] ||
    fail "cross changed the toolchain: was '$toolchain_before', now '$(rustc --version)'"
[ "$(rustc +stable --version 2>/dev/null || echo none)" = "$stable_before" ] ||
    fail "cross changed stable: was '$stable_before', now '$(rustc +stable --version)'"
phase "done: ${TARGETS[*]} built with cross $CROSS_VERSION (podman), toolchain unchanged ($toolchain_before)"
