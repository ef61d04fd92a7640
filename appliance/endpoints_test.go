package appliance

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/tunnel"
)

// A static peer's endpoint given as a name is resolved at start; while its
// handshake is stale it is resolved again, and a new address replaces the
// old one; a fresh handshake or a literal endpoint is left alone.
func TestStaticPeerNamesResolvedAndReresolvedWhenStale(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	addrs := map[string]string{"home.example.org": "192.0.2.7"}
	lookup := func(_ context.Context, host string) (netip.Addr, error) {
		a, ok := addrs[host]
		if !ok {
			return netip.Addr{}, errors.New("no such host")
		}
		return netip.MustParseAddr(a), nil
	}
	l, err := configs.Parse([]byte(`[node]
name = "g"
role = "standalone"
state_dir = "`+t.TempDir()+`"
[wireguard]
address = "10.0.0.1/24"
[[wireguard.peer]]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "home.example.org:51820"
allowed_ips = ["10.0.0.2/32"]
[[wireguard.peer]]
public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
endpoint = "192.0.2.9:51820"
allowed_ips = ["10.0.0.3/32"]
[[wireguard.peer]]
public_key = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA="
endpoint = "gone.example.org:51820"
allowed_ips = ["10.0.0.4/32"]
`), "warren.toml")
	if err == nil {
		err = l.Finish()
	}
	if err != nil {
		t.Fatalf("host:port endpoints must be accepted: %v", err)
	}
	peers := staticPeers(context.Background(), l, lookup, log)
	if peers[0].Endpoint.String() != "192.0.2.7:51820" || peers[1].Endpoint.String() != "192.0.2.9:51820" || peers[2].Endpoint.IsValid() {
		t.Fatalf("endpoints at start: %v %v %v", peers[0].Endpoint, peers[1].Endpoint, peers[2].Endpoint)
	}
	now := time.Now()
	health := []tunnel.PeerHealth{
		{PublicKey: peers[0].PublicKey, LastHandshake: now.Add(-10 * time.Second)},
		{PublicKey: peers[1].PublicKey, LastHandshake: now.Add(-time.Hour)},
	}
	if stale := staleNamedPeers(l.WireGuard.Peers, peers, health, now); len(stale) != 1 || stale[0] != 2 {
		t.Fatalf("stale named peers with a fresh handshake = %v, want only the unresolved [2]", stale)
	}
	// The home router's address changes; the handshake goes stale.
	addrs["home.example.org"] = "198.51.100.3"
	health[0].LastHandshake = now.Add(-10 * time.Minute)
	stale := staleNamedPeers(l.WireGuard.Peers, peers, health, now)
	if len(stale) != 2 || stale[0] != 0 || stale[1] != 2 {
		t.Fatalf("stale named peers = %v, want [0 2] (the literal endpoint never)", stale)
	}
	next, changed := reresolve(context.Background(), l.WireGuard.Peers, peers, stale, lookup, log)
	if !changed || next[0].Endpoint.String() != "198.51.100.3:51820" || next[2].Endpoint.IsValid() || peers[0].Endpoint.String() != "192.0.2.7:51820" {
		t.Fatalf("after re-resolving: changed %v, %v %v (old list %v)", changed, next[0].Endpoint, next[2].Endpoint, peers[0].Endpoint)
	}
	if _, changed := reresolve(context.Background(), l.WireGuard.Peers, next, stale, lookup, log); changed {
		t.Fatal("the same address reported as a change")
	}
}
