#!/bin/sh
# Builds the Warren appliance image for arm64 Raspberry Pi boards: a raw disk
# image (MBR; FAT firmware partition + ext4 root) made only from Debian
# packages and the project's arm64 .deb. Run as root (`make image` runs
# tools/install-image-deps.sh first). No loop devices or mounts of the image:
# the root file system is made with `mke2fs -d`, the FAT one with
# `mkfs.vfat -C` and mtools, the partition table with sfdisk on the file.
#
# Environment:
#   VERSION   package version (as packaging/build.sh prints it), required
#   DEB       the arm64 package (default dist/warren-appliance_<VERSION>_arm64.deb)
#   OUT       the image (default dist/warren-appliance-<VERSION>-arm64.img)
#   SUITE     Debian release (default bookworm)
#   MIRROR    Debian mirror (default http://deb.debian.org/debian)
#   WORK_DIR  scratch space (default a new directory under /var/tmp), removed at the end
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
: "${VERSION:?VERSION is required (the package version)}"
DEB=${DEB:-dist/warren-appliance_${VERSION}_arm64.deb}
OUT=${OUT:-dist/warren-appliance-${VERSION}-arm64.img}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SEED=$repo/packaging/raspberrypi/image-seed

# Partition layout: the firmware partition starts at 4 MiB (SD erase-block
# aligned) and is FAT32 (the Pi boot ROM and firmware read FAT only).
FAT_START_MIB=4
FAT_MIB=256
ROOT_LABEL=RASPIROOT
FAT_LABEL=RASPIFIRM

if [ "$(id -u)" != 0 ]; then
	echo "build-image: run as root (mmdebstrap, chroot, device nodes in the root file system)" >&2
	exit 1
fi
[ -f "$DEB" ] || { echo "build-image: $DEB not found (make image builds it with packaging/build.sh)" >&2; exit 1; }
for t in mmdebstrap mke2fs mkfs.vfat mcopy mmd sfdisk qemu-aarch64-static; do
	command -v "$t" >/dev/null || { echo "build-image: $t missing (run tools/install-image-deps.sh)" >&2; exit 1; }
done
DEB=$(cd "$(dirname "$DEB")" && pwd)/$(basename "$DEB")
mkdir -p "$(dirname "$OUT")"
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")

WORK_DIR=${WORK_DIR:-$(mktemp -d /var/tmp/warren-image.XXXXXX)}
registered_binfmt="" mounted_binfmt=""
cleanup() {
	rm -rf "$WORK_DIR"
	if [ -n "$registered_binfmt" ]; then
		echo -1 >/proc/sys/fs/binfmt_misc/qemu-aarch64 || true
	fi
	if [ -n "$mounted_binfmt" ]; then
		umount /proc/sys/fs/binfmt_misc || true
	fi
}
trap cleanup EXIT INT TERM

# Maintainer scripts of arm64 packages run under qemu-user: the kernel must
# hand aarch64 ELF files to qemu-aarch64-static. Register it (with F, so it
# works inside the chroot) only for this build if nothing did.
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/register" ]; then
	mount -t binfmt_misc binfmt_misc "$binfmt"
	mounted_binfmt=yes
fi
if [ ! -e "$binfmt/qemu-aarch64" ]; then
	printf '%s\n' ':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' >"$binfmt/register"
	registered_binfmt=yes
fi

root=$WORK_DIR/root
# Debian packages only. raspi-firmware (non-free-firmware) is the Pi's boot
# firmware; its kernel hook copies the kernel, initrd and the Pi device trees
# of linux-image-arm64 to /boot/firmware and writes config.txt and
# cmdline.txt there. cloud-init reads the NoCloud seed from the same
# partition; systemd-networkd applies its network-config.
PACKAGES="linux-image-arm64 raspi-firmware initramfs-tools systemd-sysv udev dbus
systemd-timesyncd systemd-resolved containerd runc iptables wireguard-tools
cloud-init cloud-guest-utils openssh-server sudo ca-certificates kmod iproute2
e2fsprogs dosfstools fdisk procps netbase"
include=$(echo $PACKAGES | tr ' ' ',')

# update-initramfs is a no-op while the packages install (under emulation
# each run takes minutes, and the kernel and several triggers would each run
# it); customize.sh puts it back and builds the initrd once.
echo "build-image: debootstrapping $SUITE arm64 (emulated; takes a while)"
nice -n 10 mmdebstrap --arch=arm64 --variant=minbase \
	--components=main,non-free-firmware \
	--aptopt='Acquire::Check-Valid-Until "false"' \
	--include="$include" \
	--setup-hook='mkdir -p "$1/boot/firmware" "$1/etc/default"' \
	--setup-hook='printf "%s\n" "cgroup_enable=memory cgroup_memory=1" > "$1/etc/default/raspi-extra-cmdline"' \
	--essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs' \
	--essential-hook='printf "#!/bin/sh\nexit 0\n" > "$1/usr/sbin/update-initramfs"; chmod 755 "$1/usr/sbin/update-initramfs"' \
	--customize-hook="sh $here/customize.sh \"\$1\" \"$DEB\" \"$SEED\" $ROOT_LABEL $FAT_LABEL" \
	"$SUITE" "$root" "$MIRROR"

# The FAT partition: everything the firmware hook put in /boot/firmware,
# plus the NoCloud seed. /boot/firmware stays as an empty mount point.
fat=$WORK_DIR/fat.img
rm -f "$fat"
mkfs.vfat -C -F 32 -n "$FAT_LABEL" "$fat" $((FAT_MIB * 1024)) >/dev/null
(cd "$root/boot/firmware" && mcopy -s -i "$fat" ./* ::/)
find "$root/boot/firmware" -mindepth 1 -delete

# The root file system, sized to its content plus room for the first boot
# (cloud-init grows it to the card's size then).
used_mib=$(du -sm --apparent-size "$root" | cut -f1)
root_mib=$((used_mib * 13 / 10 + 256))
rootfs=$WORK_DIR/root.ext4
rm -f "$rootfs"
mke2fs -q -t ext4 -L "$ROOT_LABEL" -d "$root" -E root_owner=0:0 "$rootfs" "${root_mib}M"

total_mib=$((FAT_START_MIB + FAT_MIB + root_mib))
tmp_out=$OUT.tmp
rm -f "$tmp_out"
truncate -s "${total_mib}M" "$tmp_out"
# MBR: the Pi boot ROM reads the first partition of an MBR table; type c is
# FAT32 (LBA).
sfdisk -q "$tmp_out" <<EOF
label: dos
unit: sectors
start=$((FAT_START_MIB * 2048)), size=$((FAT_MIB * 2048)), type=c, bootable
start=$(((FAT_START_MIB + FAT_MIB) * 2048)), size=$((root_mib * 2048)), type=83
EOF
dd if="$fat" of="$tmp_out" bs=1M seek=$FAT_START_MIB conv=notrunc,sparse status=none
dd if="$rootfs" of="$tmp_out" bs=1M seek=$((FAT_START_MIB + FAT_MIB)) conv=notrunc,sparse status=none
mv "$tmp_out" "$OUT"
echo "build-image: wrote $OUT ($total_mib MiB; root file system $root_mib MiB, $used_mib MiB used)"
