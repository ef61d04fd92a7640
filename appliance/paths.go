package appliance

import (
	"context"
	"net"
	"net/netip"
	"slices"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/wgkey"
	"github.com/warren-appliance/warren/tunnel"
	"github.com/warren-appliance/warren/tunnel/paths"
)

// pathDevice is the tunnel as the path engine drives it.
type pathDevice struct{ dev *tunnel.Device }

func (p pathDevice) SendPacket(b []byte, to netip.AddrPort) error { return p.dev.SendPacket(b, to) }

func (p pathDevice) SetEndpoint(k wgkey.Key, ep netip.AddrPort) error {
	return p.dev.SetEndpoint(tunnel.Key(k), ep)
}

func (p pathDevice) PeerStats() map[wgkey.Key]paths.PeerStats {
	out := map[wgkey.Key]paths.PeerStats{}
	for _, h := range p.dev.Health() {
		out[wgkey.Key(h.PublicKey)] = paths.PeerStats{LastHandshake: h.LastHandshake, RxBytes: h.RxBytes}
	}
	return out
}

// hostAddrs lists this host's interface addresses.
func hostAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}

// startPaths starts endpoint discovery and the path machine on the
// device's socket. relay may be nil (no relay: pairs without a direct path
// keep probing).
func (n *node) startPaths(ctx context.Context, relay paths.RelayPath) error {
	key, err := tunnel.LoadOrCreateKey(n.cfg.WireGuard.PrivateKeyFile)
	if err != nil {
		return err
	}
	var public netip.AddrPort
	if e := n.cfg.WireGuard.PublicEndpoint; e != "" {
		if public, err = resolveEndpoint(ctx, e, lookupHost); err != nil {
			// A name that does not resolve yet (DNS down at boot) must
			// not keep the node from starting: discovery still works.
			n.log.Warn("wireguard.public_endpoint does not resolve; using discovered candidates only", "public_endpoint", e, "err", err)
		}
	}
	eng, err := paths.New(paths.Config{
		PrivateKey:     key,
		Device:         pathDevice{n.dev},
		Relay:          relay,
		ListenPort:     uint16(n.cfg.WireGuard.ListenPort),
		PublicEndpoint: public,
		LocalAddrs:     hostAddrs,
		Exclude:        []netip.Prefix{n.net.WireGuardSubnet, n.net.ContainerSubnet, n.net.VIPSubnet},
		OnCandidates: func([]netip.AddrPort) {
			select {
			case n.candidatesChanged <- struct{}{}:
			default:
			}
		},
		Logger: n.log,
	})
	if err != nil {
		return err
	}
	n.paths = eng
	n.dev.SetPacketHandler(eng.HandlePacket)
	go eng.Run(ctx)
	return nil
}

// pathPeers gives the path engine every other node of m with its
// candidates (its advertise endpoint last, when it did not report it), and
// the STUN servers: the other managers' endpoints.
func pathPeers(m *clustermap.Map, selfID string) ([]paths.Peer, []netip.AddrPort) {
	var peers []paths.Peer
	var servers []netip.AddrPort
	for _, nd := range m.Nodes {
		if nd.ID == selfID {
			continue
		}
		k, err := wgkey.Parse(nd.PublicKey)
		if err != nil {
			continue
		}
		cands := slices.Clone(nd.Candidates)
		if ep := nd.Endpoint; ep.IsValid() && ep.Port() != 0 && !slices.Contains(cands, ep) {
			cands = append(cands, ep)
		}
		peers = append(peers, paths.Peer{Key: k, Name: nd.Name, Candidates: cands})
		if nd.Role == clustermap.RoleManager && nd.Endpoint.IsValid() && nd.Endpoint.Port() != 0 {
			servers = append(servers, nd.Endpoint)
		}
	}
	return peers, servers
}

// peerPath is how status names a peer's path: an endpoint on 127.0.0.0/8
// is a relay's local proxy; otherwise the path engine's finding ("direct",
// or "" while it has found none) for the peers it knows (p non-nil), and
// "direct" for a static peer with an endpoint.
func peerPath(ep netip.AddrPort, p *paths.PeerPath) (path, via string) {
	switch {
	case ep.IsValid() && ep.Addr().Unmap().IsLoopback():
		if p != nil && p.Path == paths.PathRelay {
			via = p.Via
		}
		return paths.PathRelay, via
	case p != nil:
		if p.Path == paths.PathDirect && ep.IsValid() {
			return paths.PathDirect, ""
		}
		return "", ""
	case ep.IsValid():
		return paths.PathDirect, ""
	}
	return "", ""
}

// pathsByKey indexes the path engine's peers by key (nil engine: empty).
func pathsByKey(e *paths.Engine) map[tunnel.Key]*paths.PeerPath {
	out := map[tunnel.Key]*paths.PeerPath{}
	if e == nil {
		return out
	}
	for _, p := range e.Paths() {
		out[tunnel.Key(p.Key)] = &p
	}
	return out
}
