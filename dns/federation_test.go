package dns

import (
	"net/netip"
	"testing"

	miekg "github.com/miekg/dns"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// A peered cluster's service resolves as SERVICE.PEER and SERVICE.global
// to VIPs of this cluster; a local service of the same name keeps its own.
func TestImportedNames(t *testing.T) {
	m := &clustermap.Map{Domain: "warren.local",
		Services: []clustermap.Service{{Name: "web", VIP: netip.MustParseAddr("10.1.0.1")}},
		Imports: []clustermap.Import{
			{Peer: "b", Service: "web", VIP: netip.MustParseAddr("10.1.0.2")},
			{Peer: "global", Service: "web", VIP: netip.MustParseAddr("10.1.0.3")},
			{Peer: "b", Service: "api"}, // no VIP yet: no name
		}}
	r := RecordsFromMap(m)
	z, problems := compileZone("warren.local.", r, 1)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	for name, want := range map[string]string{
		"web.warren.local.": "10.1.0.1", "web.b.warren.local.": "10.1.0.2", "web.global.warren.local.": "10.1.0.3",
	} {
		resp := lookup(z, name, miekg.TypeA)
		if len(resp.Answer) != 1 || resp.Answer[0].(*miekg.A).A.String() != want {
			t.Errorf("%s: %v, want %s", name, resp.Answer, want)
		}
	}
	if resp := lookup(z, "api.b.warren.local.", miekg.TypeA); resp.Rcode != miekg.RcodeNameError {
		t.Errorf("an import without VIP answered %v", resp)
	}
	// The peer's label alone exists (NODATA, not NXDOMAIN).
	if resp := lookup(z, "b.warren.local.", miekg.TypeA); resp.Rcode != miekg.RcodeSuccess || len(resp.Answer) != 0 {
		t.Errorf("b.warren.local: %v", resp)
	}
	// Removing the peer removes the names.
	m.Imports = nil
	z, _ = compileZone("warren.local.", RecordsFromMap(m), 2)
	if resp := lookup(z, "web.b.warren.local.", miekg.TypeA); resp.Rcode != miekg.RcodeNameError {
		t.Errorf("after the peer left: %v", resp)
	}
}
