package appliance

import (
	"net/netip"
	"sort"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/nat"
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
		out = append(out, p)
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
