#!/bin/sh
# Builds the warren-appliance .deb and .rpm for linux/amd64, linux/arm64 and
# 32-bit ARM (GOARM=6, one armhf package for every Raspberry Pi) from the
# binary `make cross` wrote (warren; the packages add warren-appliance as a
# symlink to it), into dist/.
#
#   VERSION=1.2.3 sh packaging/build.sh          # what `make package` runs
#   sh packaging/build.sh --print-version 1.2.3-4-gabcdef0
#
# Environment: VERSION (git describe output; default 0.0.0-dev),
# BIN_DIR (default bin, holding linux-amd64/ linux-arm64/ linux-arm/),
# DIST_DIR (default dist), ARCHS (default "amd64 arm64 arm"),
# PACKAGERS (default "deb rpm"), NFPM_VERSION (default v2.45.2).
set -eu

# pkg_version turns `git describe --tags --always --dirty` output into a
# version that dpkg and rpm both accept and order the same way:
#   1.2.3                    -> 1.2.3
#   v1.2.3-4-gabcdef0-dirty  -> 1.2.3+4.gabcdef0.dirty   (after 1.2.3)
#   1.2.3-rc.1               -> 1.2.3~rc.1               (before 1.2.3)
#   abcdef0 (no tag yet)     -> 0.0.0~git.abcdef0        (before any release)
#   0.0.0-dev or empty       -> 0.0.0~dev
pkg_version() {
	v=${1#v}
	[ -n "$v" ] || v=0.0.0-dev
	meta=""
	case $v in
	*-dirty)
		meta=dirty
		v=${v%-dirty}
		;;
	esac
	# Commits since the tag: "-N-gHASH" becomes build metadata.
	since=$(printf '%s\n' "$v" | sed -n -E 's/^(.*)-([0-9]+)-(g[0-9a-f]+)$/\2.\3/p')
	if [ -n "$since" ]; then
		meta=$since${meta:+.$meta}
		v=$(printf '%s\n' "$v" | sed -E 's/-[0-9]+-g[0-9a-f]+$//')
	fi
	if printf '%s\n' "$v" | grep -Eq '^[0-9a-f]{7,}$' && ! printf '%s\n' "$v" | grep -q '\.'; then
		# No tag at all: git describe --always printed an abbreviated hash.
		v=0.0.0~git.$v
	else
		base=$(printf '%s\n' "$v" | sed -E 's/^([0-9]+(\.[0-9]+)*).*$/\1/')
		case $base in
		[0-9]*) ;;
		*)
			echo "build.sh: version $1 does not start with a number" >&2
			return 1
			;;
		esac
		pre=${v#"$base"}
		# dpkg and rpm allow letters, digits and . in a pre-release.
		pre=$(printf '%s' "$pre" | tr -c 'A-Za-z0-9.' '.' | sed -E 's/^\.+//')
		v=$base${pre:+~$pre}
	fi
	printf '%s\n' "$v${meta:+"+$meta"}"
}

if [ "${1:-}" = --print-version ]; then
	pkg_version "${2:-}"
	exit
fi

cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-bin}
DIST_DIR=${DIST_DIR:-dist}
NFPM_VERSION=${NFPM_VERSION:-v2.45.2}
ARCHS=${ARCHS:-amd64 arm64 arm}
PACKAGERS=${PACKAGERS:-deb rpm}
WARREN_PKG_VERSION=$(pkg_version "${VERSION:-}")
export WARREN_PKG_VERSION

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The shipped /etc/warren/warren.toml sets nothing node-specific (setup
# commands remember role, name and managers in the state dir); the examples
# of every role go to /usr/share/doc/warren-appliance/examples/.
export WARREN_STAGE_DIR="$work/stage"
mkdir -p "$WARREN_STAGE_DIR/examples"
cp packaging/config/warren.toml "$WARREN_STAGE_DIR/warren.toml"
cp configs/examples/*.toml "$WARREN_STAGE_DIR/examples/"

# nfpm_arch maps GOARCH to nfpm's name, which nfpm turns into deb
# amd64/arm64/armhf and rpm x86_64/aarch64/armv6hl.
nfpm_arch() {
	case $1 in
	amd64 | arm64) echo "$1" ;;
	arm) echo arm6 ;;
	*)
		echo "build.sh: no package architecture for GOARCH $1" >&2
		return 1
		;;
	esac
}

# Check every input before writing any package: static binaries, and ARMv6
# code in the armhf package, which must run on a Pi Zero or Pi 1 as well.
for goarch in $ARCHS; do
	nfpm_arch "$goarch" >/dev/null
	for b in warren; do # warren-appliance is a link nfpm makes to it
		bin="$BIN_DIR/linux-$goarch/$b"
		if [ ! -x "$bin" ]; then
			echo "build.sh: $bin is missing; run 'make cross' first" >&2
			exit 1
		fi
		meta=$(go version -m "$bin")
		for want in "GOARCH=$goarch" CGO_ENABLED=0; do
			if ! printf '%s\n' "$meta" | grep -qw -- "$want"; then
				echo "build.sh: $bin was not built with $want" >&2
				exit 1
			fi
		done
		if [ "$goarch" = arm ] && ! printf '%s\n' "$meta" | grep -qw GOARM=6; then
			echo "build.sh: $bin was not built with GOARM=6 (armhf must run on every Raspberry Pi)" >&2
			exit 1
		fi
	done
done

# nfpm is a build tool, not a dependency of the product: install it from the
# module proxy into the temp dir, leaving go.mod alone.
echo "build.sh: nfpm $NFPM_VERSION"
env GOBIN="$work/tools" GOOS= GOARCH= GOARM= GOFLAGS= CGO_ENABLED=0 \
	go install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION"

mkdir -p "$DIST_DIR"
for goarch in $ARCHS; do
	WARREN_NFPM_ARCH=$(nfpm_arch "$goarch")
	WARREN_BIN_DIR="$BIN_DIR/linux-$goarch"
	export WARREN_NFPM_ARCH WARREN_BIN_DIR
	for packager in $PACKAGERS; do
		"$work/tools/nfpm" package --config packaging/nfpm.yaml \
			--packager "$packager" --target "$DIST_DIR/"
	done
done
