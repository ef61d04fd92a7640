package appliance

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/configs"
)

// The cluster-wide values (ranges, block size, DNS domain) are decided when
// the cluster is created and reach a node only through the cluster (the
// join answer, then the map). A node's own config keys for them are used
// only to create a cluster; elsewhere they are ignored, with one warning
// naming every key the operator set to something else.

// ignoredClusterKeys lists "key = config value (cluster: value)" for each
// cluster-wide key written in cfg (file or flag) whose value differs from
// the cluster's.
func ignoredClusterKeys(cfg *configs.Loaded, n clustermap.Network) []string {
	var out []string
	differs := func(key, mine, cluster string) {
		if cfg.Written(key) && mine != cluster {
			out = append(out, fmt.Sprintf("%s = %s (cluster: %s)", key, mine, cluster))
		}
	}
	differs("wireguard.subnet", cfg.WireGuard.Subnet.String(), n.WireGuardSubnet.String())
	differs("network.container_subnet", cfg.Network.ContainerSubnet.String(), n.ContainerSubnet.String())
	if n.ContainerBlockBits != 0 {
		differs("network.container_block", strconv.Itoa(cfg.Network.ContainerBlock), strconv.Itoa(n.ContainerBlockBits))
	}
	differs("network.vip_subnet", cfg.Network.VIPSubnet.String(), n.VIPSubnet.String())
	differs("network.dns_domain", cfg.Network.DNSDomain, n.Domain)
	return out
}

// clusterRanges names the cluster's ranges by the keys that set them.
func clusterRanges(n clustermap.Network) []configs.Range {
	return []configs.Range{
		{Key: "wireguard.subnet", Prefix: n.WireGuardSubnet},
		{Key: "network.container_subnet", Prefix: n.ContainerSubnet},
		{Key: "network.vip_subnet", Prefix: n.VIPSubnet},
	}
}

// clusterOverlapError explains cluster ranges that overlap the host's
// networks; nil when there are none.
func clusterOverlapError(overlaps []configs.Overlap) error {
	if len(overlaps) == 0 {
		return nil
	}
	var parts []string
	for _, o := range overlaps {
		parts = append(parts, fmt.Sprintf("the cluster's %s %s overlaps %s, a network this host is on", o.Key, o.Prefix, o.Host))
	}
	return fmt.Errorf("%s: routing it into the overlay would cut this host off from that network; move the host to another network, or create the cluster with other ranges",
		strings.Join(parts, "; "))
}
