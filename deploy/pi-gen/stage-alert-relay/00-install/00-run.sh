#!/bin/bash -e
# pi-gen, on the build host: put the alert-relay .deb for the image's architecture into the
# image, for 00-run-chroot.sh to install. Drop the package(s) into files/ first (see
# deploy/pi-gen/README.md): alert-relay_<version>_arm64.deb and/or ..._armhf.deb.
arch=${ARCH:-$(chroot "${ROOTFS_DIR}" dpkg --print-architecture)}
shopt -s nullglob
debs=(files/alert-relay_*_"${arch}".deb)
if [ ${#debs[@]} -ne 1 ]; then
    echo "alert-relay stage: need exactly one files/alert-relay_*_${arch}.deb, found ${#debs[@]}" >&2
    exit 1
fi
install -m 644 "${debs[0]}" "${ROOTFS_DIR}/tmp/alert-relay.deb"
