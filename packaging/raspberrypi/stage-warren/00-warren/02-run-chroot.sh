#!/bin/bash -e
# pi-gen, inside the image: install the package built for the image's
# architecture (its postinst enables warren-appliance.service without
# starting it) and enable the first-boot config import.
arch=$(dpkg --print-architecture)
deb=$(ls /var/cache/warren-stage/warren-appliance_*_"${arch}".deb | sort -V | tail -n 1)
if [ -z "${deb}" ]; then
	echo "stage-warren: no warren-appliance package for ${arch} in files/" >&2
	exit 1
fi
dpkg -i "${deb}"
if [ -f /var/cache/warren-stage/warren.toml ]; then
	install -m 0600 /var/cache/warren-stage/warren.toml /etc/warren/warren.toml
fi
rm -rf /var/cache/warren-stage
systemctl enable warren-firstboot-config.service
