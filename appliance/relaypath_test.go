package appliance

import (
	"net/netip"
	"testing"
	"time"

	"github.com/warren-appliance/warren/tunnel"
)

type fakeRelay struct {
	up  bool
	eps map[tunnel.Key]netip.AddrPort
}

func (f *fakeRelay) Endpoint(k tunnel.Key) (netip.AddrPort, string, bool) {
	if !f.up {
		return netip.AddrPort{}, "", false
	}
	return f.eps[k], "manager-1", true
}

func TestRelayPolicy(t *testing.T) {
	a, b, c := tunnel.Key{1}, tunnel.Key{2}, tunnel.Key{3}
	direct := netip.MustParseAddrPort("192.168.1.2:51820")
	peers := []tunnel.Peer{{PublicKey: a, Endpoint: direct}, {PublicKey: b, Endpoint: direct}, {PublicKey: c, Endpoint: direct, Keepalive: -1}}
	rp := &fakeRelay{up: true, eps: map[tunnel.Key]netip.AddrPort{
		a: netip.MustParseAddrPort("127.0.0.1:40001"), b: netip.MustParseAddrPort("127.0.0.1:40002"), c: netip.MustParseAddrPort("127.0.0.1:40003")}}
	t0 := time.Unix(1_000_000, 0)
	var p relayPolicy
	endpoints := func(out []tunnel.Peer) map[tunnel.Key]netip.AddrPort {
		m := map[tunnel.Key]netip.AddrPort{}
		for _, x := range out {
			m[x.PublicKey] = x.Endpoint
			if x.PinEndpoint != (x.Endpoint != direct) {
				t.Fatalf("peer %v: endpoint %s pinned %v: only relay endpoints are pinned", x.PublicKey, x.Endpoint, x.PinEndpoint)
			}
		}
		return m
	}
	// a handshakes and keeps receiving; b never handshakes; c (no
	// keepalive) handshook once and is idle.
	health := func(now time.Time, rxA int64) []tunnel.PeerHealth {
		return []tunnel.PeerHealth{
			{PublicKey: a, LastHandshake: now.Add(-5 * time.Second), RxBytes: rxA, Healthy: true},
			{PublicKey: b},
			{PublicKey: c, LastHandshake: t0, RxBytes: 100, Healthy: true},
		}
	}
	got := endpoints(p.apply(peers, health(t0, 100), t0, rp))
	if got[a] != direct || got[b] != direct || got[c] != direct {
		t.Fatalf("at first every peer is direct: %v", got)
	}
	got = endpoints(p.apply(peers, health(t0.Add(19*time.Second), 200), t0.Add(19*time.Second), rp))
	if got[b] != direct {
		t.Fatal("b relayed before relayAfter")
	}
	t1 := t0.Add(relayAfter)
	got = endpoints(p.apply(peers, health(t1, 300), t1, rp))
	if got[a] != direct || got[b] != rp.eps[b] || got[c] != direct {
		t.Fatalf("after relayAfter: want only b (never a handshake) relayed: %v", got)
	}
	// a stops receiving (its NAT mapping went away): relayed after
	// stallAfter, although its last handshake still counts as healthy; c
	// has no keepalive, so its silence means nothing.
	t2 := t1.Add(stallAfter - time.Second)
	if got = endpoints(p.apply(peers, health(t2, 300), t2, rp)); got[a] != direct {
		t.Fatal("a relayed before stallAfter")
	}
	t3 := t1.Add(stallAfter)
	if got = endpoints(p.apply(peers, health(t3, 300), t3, rp)); got[a] != rp.eps[a] || got[c] != direct {
		t.Fatalf("after a stall: %v", got)
	}
	// Without a relay session, relayed peers keep their direct endpoint.
	rp.up = false
	if got = endpoints(p.apply(peers, health(t3, 300), t3, rp)); got[a] != direct || got[b] != direct {
		t.Fatalf("relay down: %v", got)
	}
	rp.up = true
	// A peer that leaves the map is forgotten; back, it starts afresh.
	p.apply(peers[:1], health(t3, 300), t3, rp)
	if got = endpoints(p.apply(peers, health(t3, 300), t3, rp)); got[b] != direct {
		t.Fatalf("a peer back in the map kept its old verdict: %v", got)
	}
}
