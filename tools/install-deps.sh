#!/bin/sh
# Installs what building, testing and the demo need on a Debian machine:
# the Go toolchain is expected at /usr/local/go or on PATH; the rest comes
# from Debian's archive. It installs only what is missing, so it is cheap
# to run before every `make test`.
set -eu

PKGS="containerd runc iputils-ping curl iptables wireguard-tools iproute2 busybox-static iperf3 conntrack kmod procps util-linux rpm dpkg-dev qemu-user-static systemd debootstrap cloud-init python3-yaml prometheus"

"$(dirname "$0")/apt-missing.sh" install-deps $PKGS

if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		echo "install-deps: add /usr/local/go/bin to PATH" >&2
	else
		echo "install-deps: Go is not installed (need Go 1.26 at /usr/local/go)" >&2
	fi
	exit 1
fi
# Containerd is started per simulated node by the tests; the host's own
# service is not needed and may stay stopped.
go mod download
