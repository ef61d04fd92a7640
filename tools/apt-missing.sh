#!/bin/sh
# Usage: apt-missing.sh CALLER PACKAGE...
# Installs those of the Debian packages that are not installed yet, so a
# caller can run it before every build or test at no cost. CALLER names the
# script in its messages.
#
# These are tools for building, testing and the demo, not services for this
# host: packages are installed with service starts denied (policy-rc.d
# answering 101, as in Debian's chroots and containers), and the systemd
# units of every package this run installed (dependencies included) are
# disabled afterwards, so nothing starts at the next boot either; cloud-init
# also gets /etc/cloud/cloud-init.disabled, as its generator would run it
# at boot regardless.
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
echo "$caller: installing$missing (their services neither started nor enabled)"
export DEBIAN_FRONTEND=noninteractive

installed() { dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 2>/dev/null | awk '$1 == "ii" { print $2 }' | sort; }
before=$(mktemp)
installed >"$before"

policy=/usr/sbin/policy-rc.d
own_policy=false
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\n# apt-missing.sh: no service starts while it installs tools\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	own_policy=true
fi
cleanup() {
	if $own_policy; then rm -f "$policy"; fi
	rm -f "$before"
}
trap cleanup EXIT

apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null

for pkg in $(installed | comm -13 "$before" -); do
	units=$(dpkg -L "$pkg" 2>/dev/null | grep -E '/systemd/system/[^/]+\.(service|socket|timer|path)$' | xargs -r -n1 basename | grep -v '@\.' || true)
	for unit in $units; do
		if systemctl is-enabled "$unit" >/dev/null 2>&1; then
			echo "$caller: disabling $unit (from $pkg): not a service for this host"
			systemctl disable "$unit" >/dev/null 2>&1 || true
		fi
	done
	if [ "$pkg" = cloud-init ]; then
		mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
	fi
done
