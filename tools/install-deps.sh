#!/bin/sh
# Usage: tools/install-deps.sh [demo|test] [--list]
#
# Installs from Debian's archive what one entry point needs, only what is
# missing, so it is cheap to run before every build:
#   demo  what `make demo` needs to run a local cluster: containerd and runc
#         (the nodes start their own containerd; the host's service is not
#         used), iptables, iproute2, wireguard-tools, conntrack, kmod,
#         procps, util-linux (nsenter, unshare), busybox-static (the demo's
#         image) and curl (to try the VIP).
#   test  (the default) what `make test`, `make bench` and .ci/run need: the
#         demo's packages and the test tools: iputils-ping, iperf3, rpm and
#         dpkg-dev (package checks), qemu-user-static (`make test-arm`),
#         systemd (systemd-analyze), debootstrap (the install test),
#         cloud-init and python3-yaml (user-data checks), prometheus (its
#         promtool checks the metrics and alert rules), docker-registry,
#         skopeo and apache2-utils (the private registry lab: the registry
#         server, pushing to it, htpasswd) and nftables (the nft command the
#         nftables backend's tests read the kernel's table with); and it loads the
#         br_netfilter module the task network tests switch on and off.
# `make image` and `make test-boot` use tools/install-image-deps.sh.
# --list prints the packages and installs nothing.
#
# Nothing installed here starts or is enabled on this host: apt-missing.sh
# installs with service starts denied and disables the units of what it
# installed (Debian's prometheus, containerd and docker-registry packages
# ship services).
# The Go toolchain is expected at /usr/local/go or on PATH.
set -eu

DEMO="containerd runc iptables iproute2 wireguard-tools conntrack kmod procps util-linux busybox-static curl"
TEST="$DEMO iputils-ping iperf3 rpm dpkg-dev qemu-user-static systemd debootstrap cloud-init python3-yaml prometheus docker-registry skopeo apache2-utils nftables"

what=test
list=false
for arg in "$@"; do
	case $arg in
	demo | test) what=$arg ;;
	--list) list=true ;;
	*)
		echo "usage: $0 [demo|test] [--list]" >&2
		exit 2
		;;
	esac
done
case $what in
demo) PKGS=$DEMO ;;
test) PKGS=$TEST ;;
esac
if $list; then
	echo $PKGS
	exit 0
fi

"$(dirname "$0")/apt-missing.sh" "install-deps $what" $PKGS

if [ "$what" = test ] && [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
	# The orchestrate isolation tests load it themselves too (after a reboot).
	modprobe br_netfilter 2>/dev/null ||
		echo "install-deps: could not load br_netfilter (modprobe br_netfilter); the task network tests need it" >&2
fi

if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		echo "install-deps: add /usr/local/go/bin to PATH" >&2
	else
		echo "install-deps: Go is not installed (need Go 1.26 at /usr/local/go)" >&2
	fi
	exit 1
fi
go mod download
