package tunnel

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// PeersFromMap translates the cluster map into this node's peer set: every
// other node that has a key and an overlay address, reachable at its
// advertised endpoint, owning its overlay /32 (/128) and its container
// block. Nodes marked down stay peers: the tunnel keeps trying and Health
// tells when they answer again. keepalive is applied to every peer (0 means
// DefaultKeepalive).
func PeersFromMap(m *clustermap.Map, selfID string, keepalive time.Duration) ([]Peer, error) {
	var peers []Peer
	for _, n := range m.Nodes {
		if n.ID == selfID || n.PublicKey == "" || !n.OverlayIP.IsValid() {
			continue // self, or a node that has not finished joining
		}
		key, err := ParseKey(n.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("node %s (%s): %w", n.Name, n.ID, err)
		}
		allowed := []netip.Prefix{netip.PrefixFrom(n.OverlayIP, n.OverlayIP.BitLen())}
		if n.ContainerBlock.IsValid() {
			allowed = append(allowed, n.ContainerBlock.Masked())
		}
		peers = append(peers, Peer{PublicKey: key, Endpoint: n.Endpoint, AllowedIPs: allowed, Keepalive: keepalive})
	}
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.PublicKey.hex(), b.PublicKey.hex()) })
	return peers, nil
}
