# Sourced by tests/ha/run.sh and tests/ha/make-chroot.sh: run a command inside the Debian
# testing chroot $HA_CHROOT (Python 3.14 for Home Assistant 2026.x). A private mount namespace
# holds the /proc, /dev and /sys bind mounts, so they vanish with the command and nothing is
# left mounted on the host; the network is the host's, so 127.0.0.1 is the same loopback.
# PIP_FIND_LINKS is dropped: a host path means nothing inside.
# Every step execs, so "${chroot_cmd[@]}" cmd & gives $! = the command's own pid.
chroot_cmd=(unshare --mount --propagation private sh -c '
    c=$1; shift
    mount --rbind /proc "$c/proc" && mount --rbind /dev "$c/dev" && mount --rbind /sys "$c/sys" &&
        exec chroot "$c" /usr/bin/env -u PIP_FIND_LINKS PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"
' sh "$HA_CHROOT")
in_chroot() { "${chroot_cmd[@]}" "$@"; }
