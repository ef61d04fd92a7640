package netpolicy

import (
	"net/netip"
	"strings"
	"testing"
)

// A peered cluster's subnet reaches only the exposed task IPs: one set per
// peer, checked right after the replies' RETURN, before any policy.
func TestPeerFilter(t *testing.T) {
	r := Render(Input{Peers: []Peer{{Name: "b", Subnet: netip.MustParsePrefix("10.20.0.0/16"),
		Exposed: []netip.Addr{netip.MustParseAddr("10.0.1.3"), netip.MustParseAddr("10.0.1.2")}}}})
	set := SetName("peer b may reach")
	rule := `-A WARREN-POLICY -s 10.20.0.0/16 -m set ! --match-set ` + set + ` dst -m comment --comment "peer b: only exported services" -j DROP`
	out := string(r.Restore)
	if !strings.Contains(out, rule) {
		t.Fatalf("rules lack %q:\n%s", rule, out)
	}
	if strings.Index(out, "replies and known connections") > strings.Index(out, rule) || strings.Index(out, rule) > strings.Index(out, "-j "+ChainIngress) {
		t.Errorf("the peer's drop is not between the replies' RETURN and the policies:\n%s", out)
	}
	if len(r.Sets) != 1 || r.Sets[0].Name != set || len(r.Sets[0].Members) != 2 || r.Sets[0].Members[0] != netip.MustParsePrefix("10.0.1.2/32") {
		t.Errorf("sets %+v", r.Sets)
	}
	// Nothing exported: the set is empty, so every new connection drops.
	r = Render(Input{Peers: []Peer{{Name: "b", Subnet: netip.MustParsePrefix("10.20.0.0/16")}}})
	if len(r.Sets) != 1 || len(r.Sets[0].Members) != 0 || !strings.Contains(string(r.Restore), rule) {
		t.Errorf("no exports: %+v\n%s", r.Sets, r.Restore)
	}
}
