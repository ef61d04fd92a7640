#!/bin/sh
# Usage: apt-missing.sh CALLER PACKAGE...
# Installs those of the Debian packages that are not installed yet, so a
# caller can run it before every build or test at no cost. CALLER names the
# script in its messages.
set -eu

caller=$1
shift
missing=""
for p in "$@"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ]; then
	echo "$caller: missing Debian packages:$missing (run as root to install them)" >&2
	exit 1
fi
echo "$caller: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
