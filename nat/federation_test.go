package nat

import (
	"net/netip"
	"strings"
	"testing"
)

// The gateway lets a peer reach the exposed task IPs only, and masquerades
// its traffic into the cluster.
func TestGatewayRules(t *testing.T) {
	opts := Options{ContainerSubnet: netip.MustParsePrefix("10.20.0.0/16"), Bridge: "warren-br0", Overlay: "warren0",
		PeerGateways: []PeerGateway{{Peer: "a", Subnet: netip.MustParsePrefix("10.0.0.0/16"),
			Exposed: []netip.Addr{netip.MustParseAddr("10.20.1.3"), netip.MustParseAddr("10.20.1.2")}}}}
	out := string(Render(nil, opts))
	want := []string{
		`-A WARREN-FORWARD -s 10.0.0.0/16 -m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment "peer a: replies" -j ACCEPT`,
		`-A WARREN-FORWARD -s 10.0.0.0/16 -d 10.20.1.2/32 -m comment --comment "peer a: exported task" -j ACCEPT`,
		`-A WARREN-FORWARD -s 10.0.0.0/16 -d 10.20.1.3/32 -m comment --comment "peer a: exported task" -j ACCEPT`,
		`-A WARREN-FORWARD -s 10.0.0.0/16 -m comment --comment "peer a: only exported services" -j DROP`,
		`-A WARREN-POSTROUTING -s 10.0.0.0/16 -d 10.20.0.0/16 -m comment --comment "peer a into this cluster" -j MASQUERADE`,
	}
	last := -1
	for _, w := range want {
		i := strings.Index(out, w)
		if i < 0 {
			t.Fatalf("rules lack %q:\n%s", w, out)
		}
		if strings.HasPrefix(w, "-A WARREN-FORWARD") {
			if i < last {
				t.Errorf("rule %q out of order", w)
			}
			last = i
		}
	}
	// The drop comes before the DNAT accepts, and the masquerade before
	// the mark check that returns unmarked packets.
	if strings.Index(out, "only exported services") > strings.Index(out, "--ctstate DNAT") {
		t.Error("the peer's drop comes after the DNAT accept rules")
	}
	if strings.Index(out, "peer a into this cluster") > strings.Index(out, "-j RETURN") {
		t.Error("the peer's masquerade comes after the RETURN of unmarked packets")
	}
	if strings.Contains(string(Render(nil, Options{})), "peer ") {
		t.Error("rules for peers without peers")
	}
}
