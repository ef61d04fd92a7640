package appliance

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"sort"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/nat"
	"github.com/warren-appliance/warren/netpolicy"
	"github.com/warren-appliance/warren/orchestrate"
	"github.com/warren-appliance/warren/tunnel"
)

// The functions here are the pure half of the daemon: each turns the
// cluster map into one reconciler's desired state.

// meshPeers gives every other node of the map as a WireGuard peer: its
// overlay /32 plus its container block, reached at its advertised endpoint.
// Nodes with a key that does not parse are skipped (the manager validated
// them; a bad one must not take the whole mesh down).
func meshPeers(m *clustermap.Map, selfID string, keepalive time.Duration) []tunnel.Peer {
	var out []tunnel.Peer
	for _, n := range m.Nodes {
		if n.ID == selfID {
			continue
		}
		k, err := tunnel.ParseKey(n.PublicKey)
		if err != nil {
			continue
		}
		p := tunnel.Peer{PublicKey: k, Endpoint: n.Endpoint, Keepalive: keepalive}
		if n.OverlayIP.IsValid() {
			p.AllowedIPs = append(p.AllowedIPs, netip.PrefixFrom(n.OverlayIP, 32))
		}
		if n.ContainerBlock.IsValid() {
			p.AllowedIPs = append(p.AllowedIPs, n.ContainerBlock)
		}
		if f := m.Federation; f != nil && n.ID == f.GatewayID {
			// The peers' container subnets are routed through our gateway.
			for _, g := range f.Gateways {
				if g.ContainerSubnet.IsValid() {
					p.AllowedIPs = append(p.AllowedIPs, g.ContainerSubnet)
				}
			}
		}
		out = append(out, p)
	}
	return append(out, gatewayPeers(m, selfID, keepalive)...)
}

// gatewayPeers are, on this cluster's gateway node only, the peers'
// gateways: WireGuard links that carry traffic to and from the peers'
// container subnets.
func gatewayPeers(m *clustermap.Map, selfID string, keepalive time.Duration) []tunnel.Peer {
	f := m.Federation
	if f == nil || f.GatewayID != selfID {
		return nil
	}
	var out []tunnel.Peer
	for _, g := range f.Gateways {
		k, err := tunnel.ParseKey(g.PublicKey)
		if err != nil || !g.Endpoint.IsValid() || !g.ContainerSubnet.IsValid() {
			continue
		}
		p := tunnel.Peer{PublicKey: k, Endpoint: g.Endpoint, Keepalive: keepalive, AllowedIPs: []netip.Prefix{g.ContainerSubnet}}
		if g.OverlayIP.IsValid() {
			p.AllowedIPs = append([]netip.Prefix{netip.PrefixFrom(g.OverlayIP, 32)}, p.AllowedIPs...)
		}
		out = append(out, p)
	}
	return out
}

// natGateways are, on the gateway node only, the peers whose traffic it
// masquerades into the cluster.
func natGateways(m *clustermap.Map, selfID string) []nat.PeerGateway {
	f := m.Federation
	if f == nil || f.GatewayID != selfID {
		return nil
	}
	var out []nat.PeerGateway
	for _, g := range f.Gateways {
		if g.ContainerSubnet.IsValid() {
			out = append(out, nat.PeerGateway{Peer: g.Peer, Subnet: g.ContainerSubnet})
		}
	}
	return out
}

// natServices gives each service with a VIP and its running endpoints.
func natServices(m *clustermap.Map, selfID string) []nat.Service {
	var out []nat.Service
	for _, s := range m.Services {
		if !s.VIP.IsValid() {
			continue
		}
		svc := nat.Service{Name: s.Name, VIP: s.VIP, Affinity: s.Affinity}
		for _, p := range s.Ports {
			svc.Ports = append(svc.Ports, nat.Port{Protocol: p.Protocol, Port: p.Target, TargetPort: p.Target, Published: p.Published})
		}
		for _, t := range m.Endpoints(s.Name) {
			svc.Endpoints = append(svc.Endpoints, nat.Endpoint{Name: t.Name, IP: t.IP, Local: t.NodeID == selfID})
		}
		out = append(out, svc)
	}
	// Peered clusters' services: a VIP of ours over the peer's task IPs,
	// reached through the gateway.
	for _, im := range m.Imports {
		if !im.VIP.IsValid() {
			continue
		}
		svc := nat.Service{Name: importRuleName(im), VIP: im.VIP}
		for _, p := range im.Ports {
			svc.Ports = append(svc.Ports, nat.Port{Protocol: p.Protocol, Port: p.Target, TargetPort: p.Target})
		}
		for _, ip := range im.Endpoints {
			svc.Endpoints = append(svc.Endpoints, nat.Endpoint{Name: im.Peer + "." + ip.String(), IP: ip})
		}
		out = append(out, svc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// taskSpecs gives the tasks the map assigns to this node that should run.
func taskSpecs(m *clustermap.Map, selfID string) []orchestrate.TaskSpec {
	services := map[string]clustermap.Service{}
	for _, s := range m.Services {
		services[s.Name] = s
	}
	var out []orchestrate.TaskSpec
	for _, t := range m.TasksOn(selfID) {
		if t.DesiredState != clustermap.TaskRunning || !t.IP.IsValid() {
			continue
		}
		svc := services[t.Service]
		image := t.Image
		if image == "" {
			image = svc.Image
		}
		env, command, w := svc.TaskSpecOf(t.SpecVersion)
		spec := orchestrate.TaskSpec{Name: t.Name, Service: t.Service, Image: image, Env: env, Command: command, IP: t.IP,
			SpecVersion: t.SpecVersion, Revision: t.Revision, Mounts: w.Mounts,
			CapAdd: svc.CapAdd, CapDrop: svc.CapDrop, Health: svc.HealthCheck}
		if w.Restart != nil {
			spec.Restart = *w.Restart
		}
		if w.Resources != nil {
			spec.Limits = w.Resources.Limits
		}
		if w.Process != nil {
			spec.Process = *w.Process
		}
		out = append(out, spec)
	}
	return out
}

// importRuleName names an import's rules: SERVICE.PEER as in DNS (local
// service names have no dot, so they cannot clash), or a digest when that
// is longer than the rules' names may be.
func importRuleName(im clustermap.Import) string {
	name := im.Service + "." + im.Peer
	if len(name) <= 63 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "import." + hex.EncodeToString(sum[:8])
}

// policyPeers are, on the gateway node only, the peers whose traffic the
// policy chain (first in FORWARD) lets through to the exposed task IPs
// only.
func policyPeers(m *clustermap.Map, selfID string) []netpolicy.Peer {
	f := m.Federation
	if f == nil || f.GatewayID != selfID {
		return nil
	}
	var out []netpolicy.Peer
	for _, g := range f.Gateways {
		if g.ContainerSubnet.IsValid() {
			out = append(out, netpolicy.Peer{Name: g.Peer, Subnet: g.ContainerSubnet, Exposed: g.Exposed})
		}
	}
	return out
}
