#!/bin/sh
# Installs what `make image` and `make test-boot` need on a Debian machine,
# beyond tools/install-deps.sh: mmdebstrap and qemu-user-static (an arm64
# Debian root file system built under emulation), mtools, dosfstools,
# e2fsprogs and fdisk (the disk image, without loop devices), and
# qemu-system-arm (its qemu-system-aarch64 boots the emulated boards) with
# openssh-client (the boot test logs in to the boards). Kept apart from
# install-deps.sh so `make test` does not download them.
set -eu

PKGS="mmdebstrap arch-test qemu-user-static qemu-system-arm mtools dosfstools e2fsprogs fdisk openssh-client dpkg-dev iproute2 procps"

"$(dirname "$0")/apt-missing.sh" install-image-deps $PKGS
