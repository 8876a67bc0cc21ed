#!/usr/bin/env bash
# Build the release binary of alert-relay for one target, without Docker.
#
#   cross/build.sh TARGET [extra cargo args...]
#
# Prints the absolute path of the built binary as the LAST line of stdout; everything else
# (cargo's output, notes) goes to stderr, so `BIN=$(cross/build.sh T | tail -n1)` works.
#
# Targets (SPEC §6):
#   aarch64-unknown-linux-gnu      Pi 3/4/5, Zero 2 W, 64-bit OS (glibc pinned to 2.31 via zig)
#   aarch64-unknown-linux-musl     same boards, static binary
#   armv7-unknown-linux-gnueabihf  Pi 2/3/4 on 32-bit OS (glibc pinned to 2.31 via zig)
#   arm-unknown-linux-musleabihf   ARMv6: Pi Zero / Zero W / 1, static. rustup has no std for
#                                  it here, so it is built with nightly + rust-src + -Zbuild-std
#                                  and linked by zig (musl libc and crt from zig, ARMv6 code).
#   arm-unknown-linux-gnueabihf    ARMv6, dynamic against the device's glibc (>= 2.31), same
#                                  recipe. Only the static build can be run under
#                                  `qemu-arm -cpu arm1176` here (see cross/README.md).
#
# The ARMv6 recipe (SPEC §6) needs: `rustup toolchain install nightly`, `rustup component add
# rust-src --toolchain nightly`, cargo-zigbuild and zig. Why -C link-self-contained=no: without a
# rustup std there is no self-contained musl crt/libc.a for this target; zig provides them.
# Set ALERT_RELAY_NIGHTLY to use another toolchain name than `nightly`.
#
# gnu targets: if `cargo zigbuild` and zig are installed, the build links against glibc
# $GLIBC_VERSION (default 2.31, Raspberry Pi OS bullseye) so the binary runs on bullseye and
# bookworm. Without them it falls back to Debian's cross gcc (.cargo/config.toml), whose binaries
# need the build host's glibc (2.34+ on bookworm) -- a warning says so.
# Set ALERT_RELAY_NO_ZIG=1 to force the Debian cross gcc.
#
# Environment: CARGO_BUILD_JOBS (default 2), CARGO_TARGET_DIR (default ./target),
# GLIBC_VERSION (default 2.31). CROSS_BUILD_DIR / CROSS_BUILD_BIN build another package and
# binary with the same recipes (CI uses it for cross/tls-smoke); default: this repo, alert-relay.
set -euo pipefail

# Keep stdout for the final path only.
exec 3>&1 1>&2

die() { echo "cross/build.sh: $*" >&2; exit 1; }
note() { echo "cross/build.sh: $*" >&2; }

[ $# -ge 1 ] || die "usage: cross/build.sh TARGET [cargo args...]"
target=$1
shift

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=$(cd "${CROSS_BUILD_DIR:-$root}" && pwd)
bin_name=${CROSS_BUILD_BIN:-alert-relay}
cd "$root"

export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
glibc=${GLIBC_VERSION:-2.31}
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac

have_zig() {
    [ -z "${ALERT_RELAY_NO_ZIG:-}" ] || return 1
    cargo zigbuild --help >/dev/null 2>&1 || return 1
    # cargo-zigbuild finds zig on PATH or as the `ziglang` Python module.
    command -v zig >/dev/null 2>&1 || python3 -c 'import ziglang' >/dev/null 2>&1
}

need_rustup_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx "$1"; then
        die "rust std for $1 is not installed: run 'rustup target add $1'"
    fi
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"
}

case $target in
    aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf)
        need_rustup_target "$target"
        if have_zig; then
            note "building $target against glibc $glibc with cargo-zigbuild"
            cargo zigbuild --release --target "$target.$glibc" "$@"
        else
            case $target in
                aarch64-*) need_cmd aarch64-linux-gnu-gcc "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
                armv7-*) need_cmd arm-linux-gnueabihf-gcc "apt-get install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross" ;;
            esac
            note "WARNING: cargo-zigbuild/zig not available; linking with Debian's cross gcc."
            note "WARNING: the binary needs the build host's glibc, not $glibc (see cross/README.md)."
            cargo build --release --target "$target" "$@"
        fi
        ;;
    aarch64-unknown-linux-musl)
        need_rustup_target "$target"
        need_cmd aarch64-linux-gnu-gcc "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
        note "building $target (static) with Debian's aarch64 cross gcc as linker"
        cargo build --release --target "$target" "$@"
        ;;
    arm-unknown-linux-musleabihf | arm-unknown-linux-gnueabihf)
        nightly=${ALERT_RELAY_NIGHTLY:-nightly}
        rustc "+$nightly" --version >/dev/null 2>&1 ||
            die "toolchain '$nightly' missing: rustup toolchain install $nightly --profile minimal"
        sysroot=$(rustc "+$nightly" --print sysroot)
        [ -d "$sysroot/lib/rustlib/src/rust/library" ] ||
            die "rust-src missing: rustup component add rust-src --toolchain $nightly"
        have_zig || die "$target needs cargo-zigbuild and zig (cargo install --locked cargo-zigbuild; pip install ziglang)"
        if [ "$target" = arm-unknown-linux-musleabihf ]; then
            note "building $target (ARMv6, static) with $(rustc "+$nightly" --version), -Zbuild-std and zig"
            RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C link-self-contained=no" \
                cargo "+$nightly" zigbuild -Zbuild-std=std,panic_abort --release --target "$target" "$@"
        else
            note "building $target (ARMv6, glibc $glibc) with $(rustc "+$nightly" --version), -Zbuild-std and zig"
            cargo "+$nightly" zigbuild -Zbuild-std=std,panic_abort --release --target "$target.$glibc" "$@"
        fi
        ;;
    *)
        die "unsupported target '$target' (see the list at the top of cross/build.sh)"
        ;;
esac

bin=$target_dir/$target/release/$bin_name
[ -x "$bin" ] || die "build finished but $bin is missing"
echo "$bin" >&3
