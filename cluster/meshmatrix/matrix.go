// Package meshmatrix builds the cluster's N×N mesh matrix from what the
// manager knows: each node's last report of its WireGuard peers (handshake
// time and traffic) and its clock offset. It is pure: the CLI feeds it the
// admin API's node list and prints or encodes the result.
package meshmatrix

import (
	"fmt"
	"sort"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
)

// HealthyWithin is how recent a handshake must be for a healthy link, as
// the tunnel's own health check (tunnel.HealthyWithin): with keepalive on,
// a live peer rehandshakes every 2 minutes.
const HealthyWithin = 180 * time.Second

// Link is one ordered pair: what node From sees of its peer To.
type Link struct {
	From string `json:"from"`
	To   string `json:"to"`
	// HandshakeAgeSeconds is null when From never completed a handshake
	// with To, or has not reported it.
	HandshakeAgeSeconds *float64 `json:"handshake_age_seconds"`
	Healthy             bool     `json:"healthy"`
	RxBytes             uint64   `json:"rx_bytes"`
	TxBytes             uint64   `json:"tx_bytes"`
	// Problem says why an unhealthy link is so.
	Problem string `json:"problem,omitempty"`
	// Path is "direct" or "relay" as From reported it ("" unknown).
	Path string `json:"path,omitempty"`
}

// Matrix is every ordered pair of distinct nodes, sorted by From then To.
type Matrix struct {
	Nodes []string `json:"nodes"`
	Links []Link   `json:"links"`
}

// Build computes the matrix at time now (the manager's clock). A node's
// handshake times are in its own clock; its reported clock offset puts
// them on the manager's.
func Build(nodes []api.NodeView, now time.Time) Matrix {
	sorted := append([]api.NodeView(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	m := Matrix{Nodes: []string{}, Links: []Link{}}
	for _, n := range sorted {
		m.Nodes = append(m.Nodes, n.Name)
	}
	for _, from := range sorted {
		peers := map[string]api.PeerHealth{}
		for _, p := range from.Tunnel {
			peers[p.PublicKey] = p
		}
		offset := time.Duration(from.ClockOffsetSeconds * float64(time.Second))
		for _, to := range sorted {
			if to.Name == from.Name {
				continue
			}
			l := Link{From: from.Name, To: to.Name}
			p, ok := peers[to.PublicKey]
			switch {
			case from.Status != "ready":
				l.Problem = fmt.Sprintf("%s is %s", from.Name, from.Status)
			case to.Status != "ready":
				l.Problem = fmt.Sprintf("%s is %s", to.Name, to.Status)
			case from.LastSeen.IsZero():
				l.Problem = fmt.Sprintf("%s has not reported yet", from.Name)
			case !ok:
				l.Problem = fmt.Sprintf("%s has no peer with %s's key", from.Name, to.Name)
			}
			if ok {
				l.RxBytes, l.TxBytes, l.Path = p.RxBytes, p.TxBytes, p.Path
				if !p.LastHandshake.IsZero() {
					age := max(now.Add(offset).Sub(p.LastHandshake), 0).Round(time.Second).Seconds()
					l.HandshakeAgeSeconds = &age
				}
			}
			if l.Problem == "" {
				switch {
				case l.HandshakeAgeSeconds == nil:
					l.Problem = "no handshake yet"
				case *l.HandshakeAgeSeconds > HealthyWithin.Seconds():
					l.Problem = fmt.Sprintf("last handshake %s ago", time.Duration(*l.HandshakeAgeSeconds)*time.Second)
				default:
					l.Healthy = true
				}
			}
			m.Links = append(m.Links, l)
		}
	}
	return m
}

// Cell is the matrix text for one link: the handshake age, "never", a
// trailing "(relay)" when From reaches To through a relay, and a trailing
// "!" when the link is unhealthy.
func Cell(l Link) string {
	s := "never"
	if l.HandshakeAgeSeconds != nil {
		s = (time.Duration(*l.HandshakeAgeSeconds) * time.Second).String()
	}
	if l.Path == "relay" {
		s += " (relay)"
	}
	if !l.Healthy {
		s += "!"
	}
	return s
}

// GatewayLink is the WireGuard link of this cluster's gateway node to a
// peered cluster's gateway (federation), as the gateway node reported it.
type GatewayLink struct {
	Peer     string `json:"peer"`
	From     string `json:"from"` // this cluster's gateway node ("" unknown)
	Endpoint string `json:"endpoint,omitempty"`
	// Status is the manager's link to the peer (connected, connecting,
	// failed); the rest is the WireGuard link between the gateways.
	Status              string   `json:"status"`
	HandshakeAgeSeconds *float64 `json:"handshake_age_seconds"`
	Healthy             bool     `json:"healthy"`
	RxBytes             uint64   `json:"rx_bytes"`
	TxBytes             uint64   `json:"tx_bytes"`
	Problem             string   `json:"problem,omitempty"`
}

// Gateways computes the gateway links at time now from the nodes' reports
// and the peers: healthy when the peer link is connected and the gateway
// node handshook with the peer's gateway within HealthyWithin.
func Gateways(nodes []api.NodeView, peers []api.PeerView, now time.Time) []GatewayLink {
	out := []GatewayLink{}
	for _, p := range peers {
		g := GatewayLink{Peer: p.Name, Status: p.Status}
		var gw *api.NodeView
		for i := range nodes {
			if nodes[i].ID == p.GatewayNode {
				gw = &nodes[i]
			}
		}
		if gw != nil {
			g.From = gw.Name
		}
		if p.Gateway != nil {
			g.Endpoint = p.Gateway.Endpoint.String()
		}
		switch {
		case p.Status != api.PeerConnected:
			g.Problem = "peer link " + p.Status
			if p.Reason != "" {
				g.Problem += ": " + p.Reason
			}
		case p.Gateway == nil:
			g.Problem = "the peer has not named its gateway yet"
		case gw == nil:
			g.Problem = "this cluster has no gateway node yet"
		}
		if gw != nil && p.Gateway != nil {
			var h *api.PeerHealth
			for i := range gw.Tunnel {
				if gw.Tunnel[i].PublicKey == p.Gateway.PublicKey {
					h = &gw.Tunnel[i]
				}
			}
			offset := time.Duration(gw.ClockOffsetSeconds * float64(time.Second))
			if h != nil {
				g.RxBytes, g.TxBytes = h.RxBytes, h.TxBytes
				if !h.LastHandshake.IsZero() {
					age := max(now.Add(offset).Sub(h.LastHandshake), 0).Round(time.Second).Seconds()
					g.HandshakeAgeSeconds = &age
				}
			}
			if g.Problem == "" {
				switch {
				case h == nil:
					g.Problem = fmt.Sprintf("%s has no WireGuard peer for the peer's gateway", gw.Name)
				case g.HandshakeAgeSeconds == nil:
					g.Problem = "no handshake yet"
				case *g.HandshakeAgeSeconds > HealthyWithin.Seconds():
					g.Problem = fmt.Sprintf("last handshake %s ago", time.Duration(*g.HandshakeAgeSeconds)*time.Second)
				}
			}
		}
		g.Healthy = g.Problem == ""
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}
