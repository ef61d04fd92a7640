package nat

import (
	"net/netip"
	"strings"
	"testing"
)

// The gateway masquerades a peer's traffic into the cluster and keeps it
// off the node's own ports.
func TestGatewayRules(t *testing.T) {
	opts := Options{ContainerSubnet: netip.MustParsePrefix("10.20.0.0/16"), Bridge: "warren-br0", Overlay: "warren0",
		PeerGateways: []PeerGateway{{Peer: "a", Subnet: netip.MustParsePrefix("10.0.0.0/16")}}}
	out := string(Render(nil, opts))
	for _, w := range []string{
		`-A WARREN-EXTERNAL-SERVICES -s 10.0.0.0/16 -m addrtype --dst-type LOCAL -m comment --comment "peer a: no port of this node" -j DROP`,
		`-A WARREN-POSTROUTING -s 10.0.0.0/16 -d 10.20.0.0/16 -m comment --comment "peer a into this cluster" -j MASQUERADE`,
	} {
		if !strings.Contains(out, w) {
			t.Fatalf("rules lack %q:\n%s", w, out)
		}
	}
	// The masquerade comes before the RETURN of unmarked packets.
	if strings.Index(out, "peer a into this cluster") > strings.Index(out, "-j RETURN") {
		t.Error("the peer's masquerade comes after the RETURN of unmarked packets")
	}
	if strings.Contains(string(Render(nil, Options{})), "peer ") {
		t.Error("rules for peers without peers")
	}
}
