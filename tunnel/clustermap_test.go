package tunnel

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestPeersFromMap(t *testing.T) {
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	k3, _ := GenerateKey()
	m := &clustermap.Map{Nodes: []clustermap.Node{
		{ID: "self", PublicKey: k1.PublicKey().String(), OverlayIP: netip.MustParseAddr("10.0.0.1"), ContainerBlock: netip.MustParsePrefix("10.0.1.0/24")},
		{ID: "w1", PublicKey: k2.PublicKey().String(), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"),
			OverlayIP: netip.MustParseAddr("10.0.0.2"), ContainerBlock: netip.MustParsePrefix("10.0.2.0/24"), Status: clustermap.NodeDown},
		{ID: "w2", PublicKey: k3.PublicKey().String(), OverlayIP: netip.MustParseAddr("10.0.0.3")}, // behind NAT, no block yet
		{ID: "joining", OverlayIP: netip.MustParseAddr("10.0.0.4")},                                // no key yet
	}}
	peers, err := PeersFromMap(m, "self", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 2 {
		t.Fatalf("got %d peers, want 2: %+v", len(peers), peers)
	}
	byKey := map[Key]Peer{}
	for _, p := range peers {
		byKey[p.PublicKey] = p
	}
	w1 := byKey[k2.PublicKey()]
	if w1.Endpoint != netip.MustParseAddrPort("192.0.2.2:51820") || len(w1.AllowedIPs) != 2 ||
		w1.AllowedIPs[0] != netip.MustParsePrefix("10.0.0.2/32") || w1.AllowedIPs[1] != netip.MustParsePrefix("10.0.2.0/24") {
		t.Fatalf("w1 = %+v", w1)
	}
	w2 := byKey[k3.PublicKey()]
	if w2.Endpoint.IsValid() || len(w2.AllowedIPs) != 1 || w2.AllowedIPs[0] != netip.MustParsePrefix("10.0.0.3/32") {
		t.Fatalf("w2 = %+v", w2)
	}
	if err := validatePeers(peers, k1); err != nil {
		t.Fatalf("translated peers do not validate: %v", err)
	}

	m.Nodes = append(m.Nodes, clustermap.Node{ID: "bad", Name: "bad-node", PublicKey: "garbage", OverlayIP: netip.MustParseAddr("10.0.0.9")})
	if _, err := PeersFromMap(m, "self", 0); err == nil || !strings.Contains(err.Error(), "bad-node") {
		t.Fatalf("bad key: err = %v, want it to name the node", err)
	}
}
