package tunnel

import (
	"encoding/hex"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func testKey(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	return k
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func TestPlanPeers(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a, b, c := testKey(0xaa), testKey(0xbb), testKey(0xcc)
	ep := netip.MustParseAddrPort
	hexA, hexB, hexC := a.hex(), b.hex(), c.hex()
	stateA := peerState{PublicKey: a, Endpoint: ep("192.168.1.1:51820"), AllowedIPs: pfx("10.0.0.1/32", "10.0.1.0/24"), Keepalive: 25 * time.Second}
	peerA := Peer{PublicKey: a, Endpoint: ep("192.168.1.1:51820"), AllowedIPs: pfx("10.0.1.0/24", "10.0.0.1/32")}

	tests := []struct {
		name    string
		current []peerState
		desired []Peer
		want    string
	}{
		{
			name:    "empty to empty",
			current: nil, desired: nil, want: "",
		},
		{
			name:    "add one peer with default keepalive",
			desired: []Peer{peerA},
			want: "public_key=" + hexA + "\nendpoint=192.168.1.1:51820\npersistent_keepalive_interval=25\n" +
				"replace_allowed_ips=true\nallowed_ip=10.0.0.1/32\nallowed_ip=10.0.1.0/24\n",
		},
		{
			name:    "unchanged peer is not mentioned",
			current: []peerState{stateA},
			desired: []Peer{peerA},
			want:    "",
		},
		{
			name:    "host bits and order in allowed IPs do not count as a change",
			current: []peerState{stateA},
			desired: []Peer{{PublicKey: a, Endpoint: ep("192.168.1.1:51820"), AllowedIPs: pfx("10.0.1.7/24", "10.0.0.1/32", "10.0.0.1/32")}},
			want:    "",
		},
		{
			name:    "add a third peer without touching the first",
			current: []peerState{stateA},
			desired: []Peer{peerA, {PublicKey: c, AllowedIPs: pfx("10.0.0.3/32"), Keepalive: -1}},
			want:    "public_key=" + hexC + "\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.0.0.3/32\n",
		},
		{
			name:    "remove a peer",
			current: []peerState{stateA, {PublicKey: b}},
			desired: []Peer{peerA},
			want:    "public_key=" + hexB + "\nremove=true\n",
		},
		{
			name:    "allowed IPs change replaces only that peer's list",
			current: []peerState{stateA},
			desired: []Peer{{PublicKey: a, Endpoint: ep("192.168.1.1:51820"), AllowedIPs: pfx("10.0.0.1/32", "10.0.2.0/24")}},
			want:    "public_key=" + hexA + "\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip=10.0.0.1/32\nallowed_ip=10.0.2.0/24\n",
		},
		{
			name:    "keepalive change",
			current: []peerState{stateA},
			desired: []Peer{{PublicKey: a, Endpoint: ep("192.168.1.1:51820"), AllowedIPs: pfx("10.0.0.1/32", "10.0.1.0/24"), Keepalive: 10 * time.Second}},
			want:    "public_key=" + hexA + "\nupdate_only=true\npersistent_keepalive_interval=10\n",
		},
		{
			name:    "new endpoint applied when the peer is not healthy",
			current: []peerState{stateA},
			desired: []Peer{{PublicKey: a, Endpoint: ep("192.168.1.9:51820"), AllowedIPs: pfx("10.0.0.1/32", "10.0.1.0/24")}},
			want:    "public_key=" + hexA + "\nupdate_only=true\nendpoint=192.168.1.9:51820\n",
		},
		{
			name: "roamed endpoint of a healthy peer is kept",
			current: []peerState{{PublicKey: a, Endpoint: ep("203.0.113.5:40000"), AllowedIPs: pfx("10.0.0.1/32", "10.0.1.0/24"),
				Keepalive: 25 * time.Second, LastHandshake: now.Add(-30 * time.Second)}},
			desired: []Peer{peerA},
			want:    "",
		},
		{
			name: "roamed endpoint with a stale handshake is replaced by the configured one",
			current: []peerState{{PublicKey: a, Endpoint: ep("203.0.113.5:40000"), AllowedIPs: pfx("10.0.0.1/32", "10.0.1.0/24"),
				Keepalive: 25 * time.Second, LastHandshake: now.Add(-10 * time.Minute)}},
			desired: []Peer{peerA},
			want:    "public_key=" + hexA + "\nupdate_only=true\nendpoint=192.168.1.1:51820\n",
		},
		{
			name:    "peer without configured endpoint keeps the learned one",
			current: []peerState{stateA},
			desired: []Peer{{PublicKey: a, AllowedIPs: pfx("10.0.0.1/32", "10.0.1.0/24")}},
			want:    "",
		},
		{
			name:    "v4-mapped configured endpoint equals the plain one",
			current: []peerState{stateA},
			desired: []Peer{{PublicKey: a, Endpoint: ep("[::ffff:192.168.1.1]:51820"), AllowedIPs: pfx("10.0.0.1/32", "10.0.1.0/24")}},
			want:    "",
		},
		{
			name:    "ipv6 endpoint is bracketed",
			desired: []Peer{{PublicKey: b, Endpoint: ep("[fd00::2]:51820"), AllowedIPs: pfx("fd10::2/128")}},
			want:    "public_key=" + hexB + "\nendpoint=[fd00::2]:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=fd10::2/128\n",
		},
		{
			name:    "peers are emitted sorted by key",
			desired: []Peer{{PublicKey: c, Keepalive: -1}, {PublicKey: b, Keepalive: -1}},
			want: "public_key=" + hexB + "\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\n" +
				"public_key=" + hexC + "\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := planPeers(tt.current, tt.desired, now)
			if got != tt.want {
				t.Fatalf("plan:\n%s\nwant:\n%s", got, tt.want)
			}
			if strings.Contains(got, "replace_peers") {
				t.Fatal("plan uses replace_peers")
			}
		})
	}
}

func TestUsablePeersSkipsOnlyTheBadOnes(t *testing.T) {
	self := testKey(1)
	a, b := testKey(0xaa), testKey(0xbb)
	good := Peer{PublicKey: b, AllowedIPs: pfx("10.0.0.2/32")}
	var lowOrder Key
	hex.Decode(lowOrder[:], []byte("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"))
	tests := []struct {
		name  string
		peers []Peer
		err   string
	}{
		{"zero key", []Peer{{AllowedIPs: pfx("10.0.0.9/32")}, good}, "zero public key"},
		{"low-order key", []Peer{{PublicKey: lowOrder}, good}, "low-order"},
		{"own key", []Peer{{PublicKey: self}, good}, "own key"},
		{"duplicate", []Peer{good, {PublicKey: b, AllowedIPs: pfx("10.0.0.3/32")}}, "listed twice"},
		{"shared prefix", []Peer{good, {PublicKey: a, AllowedIPs: pfx("10.0.0.2/32")}}, "claimed by peers"},
		{"endpoint without port", []Peer{{PublicKey: a, Endpoint: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0)}, good}, "no port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, skipped := usablePeers(tt.peers, self)
			if len(ok) != 1 || ok[0].PublicKey != good.PublicKey || !slices.Equal(ok[0].AllowedIPs, good.AllowedIPs) {
				t.Fatalf("kept %+v, want only the good peer", ok)
			}
			if len(skipped) != 1 || !strings.Contains(skipped[0].Error(), tt.err) {
				t.Fatalf("skipped = %v, want one mentioning %q", skipped, tt.err)
			}
		})
	}
	ok, skipped := usablePeers([]Peer{{PublicKey: a, AllowedIPs: pfx("10.0.0.1/32")}, good}, self)
	if len(ok) != 2 || len(skipped) != 0 {
		t.Fatalf("good set: kept %d, skipped %v", len(ok), skipped)
	}
}

func TestPlanRoutes(t *testing.T) {
	addr := netip.MustParsePrefix("10.0.0.2/24")
	peers := []Peer{
		{PublicKey: testKey(1), AllowedIPs: pfx("10.0.0.1/32", "10.0.1.0/24")},
		{PublicKey: testKey(2), AllowedIPs: pfx("10.0.0.3/32", "10.0.3.9/24", "0.0.0.0/0", "fd10::/64")},
		{PublicKey: testKey(3), AllowedIPs: pfx("10.0.0.0/16")},
	}
	got := planRoutes(addr, peers, pfx("172.18.0.0/16", "10.0.0.0/16"))
	want := pfx("10.0.0.0/16", "10.0.1.0/24", "10.0.3.0/24", "172.18.0.0/16", "fd10::/64")
	if len(got) != len(want) {
		t.Fatalf("routes = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("routes = %v, want %v", got, want)
		}
	}
}

func TestParseUAPIGet(t *testing.T) {
	a, b := testKey(0xaa), testKey(0xbb)
	text := "private_key=" + testKey(1).hex() + "\nlisten_port=51820\n" +
		"public_key=" + a.hex() + "\npreshared_key=" + Key{}.hex() + "\nprotocol_version=1\n" +
		"endpoint=[::ffff:192.168.7.2]:51820\nlast_handshake_time_sec=1800000000\nlast_handshake_time_nsec=5\n" +
		"tx_bytes=100\nrx_bytes=200\npersistent_keepalive_interval=25\nallowed_ip=10.0.0.1/32\nallowed_ip=10.0.1.0/24\n" +
		"public_key=" + b.hex() + "\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\npersistent_keepalive_interval=0\n"
	peers, err := parseUAPIGet(text)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 2 {
		t.Fatalf("got %d peers, want 2", len(peers))
	}
	p := peers[0]
	if p.PublicKey != a || p.Endpoint != netip.MustParseAddrPort("192.168.7.2:51820") || p.RxBytes != 200 || p.TxBytes != 100 ||
		p.Keepalive != 25*time.Second || !p.LastHandshake.Equal(time.Unix(1_800_000_000, 5)) || len(p.AllowedIPs) != 2 {
		t.Fatalf("peer a parsed as %+v", p)
	}
	if q := peers[1]; q.PublicKey != b || !q.LastHandshake.IsZero() || q.Endpoint.IsValid() {
		t.Fatalf("peer b parsed as %+v", q)
	}
	if _, err := parseUAPIGet("public_key=zz\n"); err == nil {
		t.Fatal("bad hex key accepted")
	}
}

func TestHealthOf(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a, b, c := testKey(0xaa), testKey(0xbb), testKey(0xcc)
	h := healthOf([]peerState{
		{PublicKey: c, LastHandshake: now.Add(-HealthyWithin - time.Second), Keepalive: 25 * time.Second},
		{PublicKey: a, LastHandshake: now.Add(-2 * time.Minute), RxBytes: 10, TxBytes: 20, AllowedIPs: pfx("10.0.1.0/24", "10.0.0.1/32")},
		{PublicKey: b}, // never handshaked
	}, now)
	if len(h) != 3 || h[0].PublicKey != a || h[1].PublicKey != b || h[2].PublicKey != c {
		t.Fatalf("not sorted by key: %+v", h)
	}
	if !h[0].Healthy || h[1].Healthy || h[2].Healthy {
		t.Fatalf("healthy flags = %v %v %v, want true false false", h[0].Healthy, h[1].Healthy, h[2].Healthy)
	}
	if h[0].RxBytes != 10 || h[0].TxBytes != 20 || h[0].AllowedIPs[0] != netip.MustParsePrefix("10.0.0.1/32") {
		t.Fatalf("health a = %+v", h[0])
	}
}
