#!/bin/sh
# mmdebstrap --customize-hook of packaging/image/build.sh: configures the
# arm64 root file system at $1 (runs on the build host; commands inside the
# root run under qemu-user through chroot).
# Arguments: ROOT DEB SEED_DIR ROOT_LABEL FAT_LABEL
set -eu
root=$1 deb=$2 seed=$3 root_label=$4 fat_label=$5

# The project's package. Its postinst enables warren-appliance.service
# (not started: here nothing runs).
cp "$deb" "$root/tmp/warren-appliance.deb"
chroot "$root" dpkg -i /tmp/warren-appliance.deb
rm -f "$root/tmp/warren-appliance.deb"

# On first boot cloud-init (cloud-init.service) writes /etc/warren/warren.toml
# from the seed on the firmware partition: the appliance starts after it.
mkdir -p "$root/etc/systemd/system/warren-appliance.service.d"
cat >"$root/etc/systemd/system/warren-appliance.service.d/10-image.conf" <<'EOF'
# Appliance image: cloud-init writes /etc/warren/warren.toml from the seed on
# the boot partition at first boot; start after it.
[Unit]
After=cloud-init.service
EOF

cat >"$root/etc/fstab" <<EOF
LABEL=$root_label  /               ext4  rw,noatime,errors=remount-ro  0 1
# The firmware partition holds the cloud-init seed (with the join token):
# readable by root only on the running board.
LABEL=$fat_label  /boot/firmware  vfat  rw,noatime,umask=0077,nofail  0 2
EOF
echo warren >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
EOF

# cloud-init reads the NoCloud seed (user-data, meta-data, network-config)
# from the firmware partition, found by its label.
cat >"$root/etc/cloud/cloud.cfg.d/90-warren-image.cfg" <<EOF
# Warren appliance image: the NoCloud seed is on the firmware partition.
datasource_list: [ NoCloud, None ]
datasource:
  NoCloud:
    fs_label: $fat_label
EOF
# cloud-init renders network-config for systemd-networkd (no ifupdown,
# netplan or NetworkManager in the image).
chroot "$root" systemctl enable systemd-networkd.service

# raspi-firmware's kernel hook writes config.txt and cmdline.txt into
# /boot/firmware. It cannot detect the board in a chroot, so say it here:
# root by label (the card is mmcblk0 on a Pi, something else elsewhere),
# the Pi 3/4 serial console, no CMA reservation (headless; a 64M one can
# keep a Pi 4 from booting). /etc/default/raspi-extra-cmdline (written before
# the packages) adds the memory cgroup switches.
sed -i \
	-e "s|^#\?ROOTPART=.*|ROOTPART=\"LABEL=$root_label\"|" \
	-e 's|^#\?CMA=.*|CMA=0|' \
	-e 's|^#\?CONSOLES=.*|CONSOLES="tty0 ttyS1,115200"|' \
	"$root/etc/default/raspi-firmware"
grep -q "^ROOTPART=\"LABEL=$root_label\"" "$root/etc/default/raspi-firmware"
# The initrd carries the drivers to mount the root file system on the
# boards this image is for, not MODULES=most (under emulation that takes
# most of an hour to build): Pi 3/4 SD card (sdhci-iproc, bcm2835 sdhost,
# the Pi 4's 1.8 V regulator), USB mass storage (Pi 4 USB boot, Pi 3),
# virtio (emulated boards), ext4 and vfat. Kernel upgrades on the board keep
# the list. The rest (MMC core, Pi firmware, mailbox, DMA, clocks, pinctrl)
# is built into Debian's arm64 kernel.
cat >"$root/etc/initramfs-tools/conf.d/warren-image.conf" <<'EOF2'
# Appliance image: only the modules listed in /etc/initramfs-tools/modules.
MODULES=list
EOF2
cat >>"$root/etc/initramfs-tools/modules" <<'EOF2'
# Appliance image: root on a Raspberry Pi 3/4 SD card or USB disk, or on
# an emulated board's virtio disk.
sdhci-iproc
bcm2835
gpio-regulator
reset-raspberrypi
xhci-pci
dwc2
usb-storage
uas
sd_mod
virtio_pci
virtio_mmio
virtio_blk
ext4
vfat
nls_cp437
nls_ascii
crc32c_generic
EOF2
# build.sh diverted update-initramfs during the install: restore it and
# build the initrd once; its post-update hook runs raspi-firmware's, which
# copies kernel, initrd and device trees to /boot/firmware.
rm -f "$root/usr/sbin/update-initramfs"
chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
kver=$(cd "$root/lib/modules" && ls | sort -V | tail -n 1)
chroot "$root" update-initramfs -c -k "$kver"
grep -q cgroup_enable=memory "$root/boot/firmware/cmdline.txt"

# The documented seed, for the user to edit before first boot.
cp "$seed/user-data" "$seed/meta-data" "$seed/network-config" "$root/boot/firmware/"

# Every card gets its own identity on first boot: machine ID (systemd) and
# SSH host keys (cloud-init generates them).
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*

chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/var/log/apt/*

# Updates for the installed system (fetched on the board, not at build time).
suite=$(. "$root/etc/os-release" && echo "$VERSION_CODENAME")
cat >"$root/etc/apt/sources.list" <<EOF2
deb http://deb.debian.org/debian $suite main non-free-firmware
deb http://deb.debian.org/debian $suite-updates main non-free-firmware
deb http://deb.debian.org/debian-security $suite-security main non-free-firmware
EOF2
