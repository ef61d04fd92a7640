package meshmatrix

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
)

func TestGateways(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	nodes := []api.NodeView{
		{ID: "m1", Name: "a-manager-1", Tunnel: []api.PeerHealth{{PublicKey: "gwb=", LastHandshake: now.Add(-10 * time.Second), RxBytes: 5, TxBytes: 7}}},
		{ID: "w1", Name: "a-worker-1"},
	}
	gw := func(key string) *api.PeerGateway {
		return &api.PeerGateway{PublicKey: key, Endpoint: netip.MustParseAddrPort("192.168.100.20:51820")}
	}
	peers := []api.PeerView{
		{Name: "c", Status: api.PeerConnected, Gateway: gw("gwc="), GatewayNode: "m1"},
		{Name: "b", Status: api.PeerConnected, Gateway: gw("gwb="), GatewayNode: "m1"},
		{Name: "d", Status: api.PeerFailed, Reason: "192.0.2.9:7946: connection refused", GatewayNode: "m1"},
	}
	got := Gateways(nodes, peers, now)
	if len(got) != 3 || got[0].Peer != "b" || got[1].Peer != "c" || got[2].Peer != "d" {
		t.Fatalf("links %+v", got)
	}
	b := got[0]
	if !b.Healthy || b.From != "a-manager-1" || b.Endpoint != "192.168.100.20:51820" || *b.HandshakeAgeSeconds != 10 || b.RxBytes != 5 || b.TxBytes != 7 {
		t.Errorf("b: %+v", b)
	}
	if c := got[1]; c.Healthy || !strings.Contains(c.Problem, "no WireGuard peer for the peer's gateway") {
		t.Errorf("c (gateway without a WireGuard peer): %+v", c)
	}
	if d := got[2]; d.Healthy || !strings.Contains(d.Problem, "peer link failed: 192.0.2.9:7946: connection refused") {
		t.Errorf("d (failed link): %+v", d)
	}
	// A stale handshake is unhealthy.
	got = Gateways(nodes, peers[1:2], now.Add(HealthyWithin))
	if got[0].Healthy || !strings.Contains(got[0].Problem, "last handshake") {
		t.Errorf("stale: %+v", got[0])
	}
}
