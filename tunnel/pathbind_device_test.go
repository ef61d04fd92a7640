package tunnel

import (
	"net/netip"
	"strings"
	"testing"
)

// An endpoint the path machine chose (SetEndpoint) replaces a configured
// one that leads nowhere, starts the handshake, and survives the next
// SetPeers with the configured endpoint; SetEndpoint with a zero endpoint
// lets the configured one apply again.
func TestSetEndpointWinsOverTheConfiguredOne(t *testing.T) {
	tp := newTopo(t)
	ca, cb := tp.pairConfigs(t, ModeTUN, ModeTUN)
	stale := netip.AddrPortFrom(tp.underB, 51999) // nothing listens there
	ca.Peers[0].Endpoint = stale
	cb.Peers[0].Endpoint = netip.AddrPort{} // b cannot start a handshake
	a := startNode(t, tp.a, ca)
	b := startNode(t, tp.b, cb)
	good := netip.AddrPortFrom(tp.underB, 51820)

	a.setEndpoint(b.Pub, good)
	out := runIn(t, tp.a, "busybox", "ping", "-c", "3", "-W", "5", "10.0.0.2")
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping a->b after SetEndpoint:\n%s", out)
	}
	a.setPeers(ca.Peers...) // the map's stale endpoint again, as a resync would
	if h := a.health(); len(h) != 1 || h[0].Endpoint != good || !h[0].Healthy {
		t.Fatalf("after SetPeers with the stale endpoint: %+v, want %s kept", h, good)
	}
	a.setEndpoint(b.Pub, netip.AddrPort{})
	if h := a.health(); h[0].Endpoint != good {
		t.Fatalf("dropping the choice moved a healthy peer: %+v", h)
	}
}
