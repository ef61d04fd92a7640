#!/bin/bash -e
# pi-gen, on the build host: stage the warren-appliance package(s) and the
# optional fleet-wide config into the image's root filesystem.
# $ROOTFS_DIR is the image's root; this script runs from its own directory.
shopt -s nullglob
debs=(files/warren-appliance_*.deb)
if [ ${#debs[@]} -eq 0 ]; then
	echo "stage-warren: copy dist/warren-appliance_<version>_armhf.deb (32-bit image) or _arm64.deb (64-bit) into $(pwd)/files/" >&2
	exit 1
fi
install -d -m 0755 "${ROOTFS_DIR}/var/cache/warren-stage"
install -m 0644 "${debs[@]}" "${ROOTFS_DIR}/var/cache/warren-stage/"

# A warren.toml here is baked into every card (its join token too); without
# one, each card is configured from warren.toml on its boot partition.
if [ -f files/warren.toml ]; then
	install -m 0600 files/warren.toml "${ROOTFS_DIR}/var/cache/warren-stage/warren.toml"
fi

install -m 0755 files/warren-firstboot-config "${ROOTFS_DIR}/usr/local/sbin/warren-firstboot-config"
install -m 0644 files/warren-firstboot-config.service "${ROOTFS_DIR}/etc/systemd/system/warren-firstboot-config.service"
