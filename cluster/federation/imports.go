package federation

import (
	"cmp"
	"fmt"
	"net/netip"
	"regexp"
	"slices"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/ipam"
)

// MaxExports bounds the services one peer may export to us, and
// MaxEndpoints the endpoints of one exported service.
const (
	MaxExports   = 256
	MaxEndpoints = 1024
)

// Service names as the manager accepts them (DNS labels of at most 50).
var serviceNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$`)

// Export is one exported service as its cluster announces it to peers:
// the ports its tasks listen on and the task IPs that serve now.
type Export struct {
	Service   string            `json:"service"`
	Ports     []clustermap.Port `json:"ports,omitempty"`
	Endpoints []netip.Addr      `json:"endpoints"`
}

// ExportsOf lists the exported services of a map: ports and the IPs of
// tasks that serve (running, healthy, not draining), sorted by name.
func ExportsOf(m *clustermap.Map, exported func(service string) bool) []Export {
	eps := map[string][]netip.Addr{}
	for _, t := range m.Tasks {
		if t.Serves() {
			eps[t.Service] = append(eps[t.Service], t.IP)
		}
	}
	out := []Export{}
	for _, s := range m.Services {
		if !exported(s.Name) {
			continue
		}
		e := eps[s.Name]
		slices.SortFunc(e, netip.Addr.Compare)
		if e == nil {
			e = []netip.Addr{}
		}
		out = append(out, Export{Service: s.Name, Ports: s.Ports, Endpoints: e})
	}
	slices.SortFunc(out, func(a, b Export) int { return cmp.Compare(a.Service, b.Service) })
	return out
}

// CheckExports validates what a peer announced: service names, bounds, and
// endpoints inside the peer's container subnet (a peer may not make this
// cluster send traffic anywhere else).
func CheckExports(ex []Export, peer clustermap.Network) error {
	if len(ex) > MaxExports {
		return fmt.Errorf("%d exported services (at most %d)", len(ex), MaxExports)
	}
	seen := map[string]bool{}
	for _, e := range ex {
		if !serviceNameRE.MatchString(e.Service) {
			return fmt.Errorf("exported service %q: not a service name", e.Service)
		}
		if seen[e.Service] {
			return fmt.Errorf("exported service %q given twice", e.Service)
		}
		seen[e.Service] = true
		if len(e.Endpoints) > MaxEndpoints {
			return fmt.Errorf("exported service %q: %d endpoints (at most %d)", e.Service, len(e.Endpoints), MaxEndpoints)
		}
		for _, a := range e.Endpoints {
			if !peer.ContainerSubnet.Contains(a) {
				return fmt.Errorf("exported service %q: endpoint %s is outside the peer's container subnet %s", e.Service, a, peer.ContainerSubnet)
			}
		}
		for _, p := range e.Ports {
			if p.Target == 0 || (p.Protocol != "tcp" && p.Protocol != "udp") {
				return fmt.Errorf("exported service %q: bad port %d/%s", e.Service, p.Target, p.Protocol)
			}
		}
	}
	return nil
}

// Import is a peer's exported service as this cluster serves it: a VIP of
// this cluster's VIP range, in DNS as SERVICE.PEER.DOMAIN, balancing over
// the peer's endpoints.
type Import = clustermap.Import

// Key is how an import is known: PEER/SERVICE.
func Key(i Import) string { return i.Peer + "/" + i.Service }

// PlanImports turns the peers' exports into the imports this cluster
// serves. An import keeps its VIP while its peer exports the service; a
// new one takes the lowest free address of vipSubnet that neither a local
// service (taken) nor another import holds; a service the peer no longer
// exports (or a removed peer) loses its import and frees its VIP. The
// result is sorted by peer, then service.
func PlanImports(exports map[string][]Export, current []Import, vipSubnet netip.Prefix, taken func(netip.Addr) bool) ([]Import, error) {
	old := map[string]Import{}
	for _, c := range current {
		old[Key(c)] = c
	}
	var out []Import
	held := map[netip.Addr]bool{}
	var fresh []int
	peers := make([]string, 0, len(exports))
	for p := range exports {
		peers = append(peers, p)
	}
	slices.Sort(peers)
	for _, p := range peers {
		ex := slices.Clone(exports[p])
		slices.SortFunc(ex, func(a, b Export) int { return cmp.Compare(a.Service, b.Service) })
		for _, e := range ex {
			im := Import{Peer: p, Service: e.Service, Ports: e.Ports, Endpoints: slices.Clone(e.Endpoints)}
			if im.Endpoints == nil {
				im.Endpoints = []netip.Addr{}
			}
			slices.SortFunc(im.Endpoints, netip.Addr.Compare)
			if o, ok := old[Key(im)]; ok && vipSubnet.Contains(o.VIP) && !taken(o.VIP) && !held[o.VIP] {
				im.VIP = o.VIP
				held[o.VIP] = true
			} else {
				fresh = append(fresh, len(out))
			}
			out = append(out, im)
		}
	}
	for _, i := range fresh {
		vip, err := ipam.NextAddr(vipSubnet, func(a netip.Addr) bool { return held[a] || taken(a) })
		if err != nil {
			return nil, fmt.Errorf("VIP for %s imported from peer %s: %w", out[i].Service, out[i].Peer, err)
		}
		out[i].VIP = vip
		held[vip] = true
	}
	return out, nil
}
