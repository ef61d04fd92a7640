package appliance

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/tunnel"
	"github.com/warren-appliance/warren/tunnel/paths"
)

func TestPathPeersAddTheAdvertiseEndpointAndUseManagersForSTUN(t *testing.T) {
	k1, _ := tunnel.GenerateKey()
	k2, _ := tunnel.GenerateKey()
	k3, _ := tunnel.GenerateKey()
	mgrEP := netip.MustParseAddrPort("192.0.2.1:51820")
	wEP := netip.MustParseAddrPort("10.9.1.2:51820")
	refl := netip.MustParseAddrPort("192.0.2.50:51820")
	m := &clustermap.Map{Nodes: []clustermap.Node{
		{ID: "m", Name: "manager-1", Role: clustermap.RoleManager, PublicKey: k1.PublicKey().String(), Endpoint: mgrEP, Candidates: []netip.AddrPort{mgrEP}},
		{ID: "w", Name: "worker-1", Role: clustermap.RoleWorker, PublicKey: k2.PublicKey().String(), Endpoint: wEP, Candidates: []netip.AddrPort{refl}},
		{ID: "self", Name: "worker-2", Role: clustermap.RoleWorker, PublicKey: k3.PublicKey().String()},
		{ID: "bad", Name: "broken", PublicKey: "not a key"},
	}}
	peers, servers := pathPeers(m, "self")
	if !slices.Equal(servers, []netip.AddrPort{mgrEP}) {
		t.Fatalf("STUN servers %v, want the manager's endpoint", servers)
	}
	if len(peers) != 2 || peers[0].Name != "manager-1" || peers[1].Name != "worker-1" {
		t.Fatalf("peers %+v: want manager-1 and worker-1 (not self, not the broken key)", peers)
	}
	if !slices.Equal(peers[0].Candidates, []netip.AddrPort{mgrEP}) {
		t.Fatalf("manager candidates %v: its endpoint must not be listed twice", peers[0].Candidates)
	}
	if !slices.Equal(peers[1].Candidates, []netip.AddrPort{refl, wEP}) {
		t.Fatalf("worker candidates %v, want the reported one then the advertise endpoint", peers[1].Candidates)
	}
}

func TestPeerPathTreatsLoopbackEndpointsAsRelay(t *testing.T) {
	relayed := &paths.PeerPath{Path: paths.PathRelay, Via: "manager-1"}
	for _, c := range []struct {
		ep        string
		p         *paths.PeerPath
		path, via string
	}{
		{"127.0.0.1:40001", relayed, "relay", "manager-1"},
		{"127.0.0.1:40001", nil, "relay", ""},
		{"192.0.2.50:51820", nil, "direct", ""}, // a static peer
		{"192.0.2.50:51820", &paths.PeerPath{Path: paths.PathDirect}, "direct", ""},
		// A map endpoint no probe confirmed is no path yet.
		{"192.0.2.50:51820", &paths.PeerPath{}, "", ""},
		{"", nil, "", ""},
	} {
		var ep netip.AddrPort
		if c.ep != "" {
			ep = netip.MustParseAddrPort(c.ep)
		}
		if path, via := peerPath(ep, c.p); path != c.path || via != c.via {
			t.Errorf("peerPath(%q) = %q, %q; want %q, %q", c.ep, path, via, c.path, c.via)
		}
	}
}
