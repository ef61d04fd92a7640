package federation

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// GlobalName is the DNS label of the global names (NAME.global.DOMAIN): no
// peer may take it.
const GlobalName = "global"

// MaxPeers bounds the peers of one cluster.
const MaxPeers = 32

// Peer names are DNS labels: A's tasks resolve NAME.<peer>.DOMAIN.
var peerNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// CheckName validates a peer's name.
func CheckName(name string) error {
	if !peerNameRE.MatchString(name) {
		return fmt.Errorf("peer name %q must be a DNS label of at most 32 lowercase letters, digits and '-' (it names the peer in DNS: SERVICE.%s.warren.local)", name, name)
	}
	if name == GlobalName {
		return fmt.Errorf("peer name %q is reserved for SERVICE.global names", name)
	}
	return nil
}

type namedRange struct {
	what string
	p    netip.Prefix
}

func ranges(n clustermap.Network) []namedRange {
	return []namedRange{
		{"WireGuard subnet", n.WireGuardSubnet},
		{"container subnet", n.ContainerSubnet},
		{"VIP subnet", n.VIPSubnet},
	}
}

// Overlap is one pair of ranges that two clusters share.
type Overlap struct {
	Local, Remote         string // "WireGuard subnet", "container subnet", "VIP subnet"
	LocalRange, RemoteRng netip.Prefix
}

func (o Overlap) String() string {
	return fmt.Sprintf("this cluster's %s %s overlaps the peer's %s %s", o.Local, o.LocalRange, o.Remote, o.RemoteRng)
}

// Overlaps lists every pair of local and remote ranges that overlap: a
// peer's tasks, VIPs or gateways must be routable from here, so no address
// may mean one thing here and another there.
func Overlaps(local, remote clustermap.Network) []Overlap {
	var out []Overlap
	for _, l := range ranges(local) {
		for _, r := range ranges(remote) {
			if l.p.IsValid() && r.p.IsValid() && l.p.Overlaps(r.p) {
				out = append(out, Overlap{Local: l.what, Remote: r.what, LocalRange: l.p, RemoteRng: r.p})
			}
		}
	}
	return out
}

// Existing is a peer already recorded, for CheckPeering.
type Existing struct {
	Name      string
	ClusterID string
	Network   clustermap.Network
}

// CheckPeering is every check a new peer must pass before it is recorded:
// its name, not this cluster itself, not peered already, no range shared
// with this cluster or with another peer. The error names the ranges.
func CheckPeering(name, localID string, local clustermap.Network, remoteID string, remote clustermap.Network, peers []Existing) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if err := CheckNetwork(remote); err != nil {
		return fmt.Errorf("peer %q: %w", name, err)
	}
	if remoteID == localID {
		return fmt.Errorf("the token is this cluster's own: print it on the other cluster's manager")
	}
	if len(peers) >= MaxPeers {
		return fmt.Errorf("there are already %d peers (the limit)", MaxPeers)
	}
	for _, p := range peers {
		if p.Name == name {
			return fmt.Errorf("a peer named %q exists already (remove it first with `warren cluster peer rm %s`)", name, name)
		}
		if p.ClusterID == remoteID {
			return fmt.Errorf("this cluster is peered with that cluster already, as %q", p.Name)
		}
	}
	if ov := Overlaps(local, remote); len(ov) > 0 {
		return fmt.Errorf("cannot peer with %q: address ranges overlap: %s; the clusters' ranges must be disjoint (set other ranges at `cluster init` of one of them)", name, joinOverlaps(ov))
	}
	for _, p := range peers {
		if ov := Overlaps(p.Network, remote); len(ov) > 0 {
			for i := range ov {
				ov[i].Local = "peer " + p.Name + "'s " + ov[i].Local
			}
			s := joinOverlaps(ov)
			s = strings.ReplaceAll(s, "this cluster's peer ", "peer ")
			return fmt.Errorf("cannot peer with %q: address ranges overlap: %s", name, s)
		}
	}
	return nil
}

func joinOverlaps(ov []Overlap) string {
	parts := make([]string, len(ov))
	for i, o := range ov {
		parts[i] = o.String()
	}
	return strings.Join(parts, "; ")
}
