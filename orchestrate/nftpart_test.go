package orchestrate

import (
	"net"
	"net/netip"
	"testing"

	"github.com/warren-appliance/warren/hostfw"
)

// Every rule of the task network's part has an nftables form (the
// nftables backend's translator), with and without the container and
// node subnets.
func TestTaskPartTranslatesToNftables(t *testing.T) {
	mac, _ := net.ParseMAC("02:42:0a:00:01:02")
	ports := []taskPort{{Veth: "wva", IP: netip.MustParseAddr("10.0.1.2"), MAC: mac}}
	block := netip.MustParsePrefix("10.0.1.0/24")
	for _, c := range []struct{ container, node netip.Prefix }{
		{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.0.0.0/24")},
		{netip.MustParsePrefix("10.0.0.0/16"), netip.Prefix{}},
		{netip.Prefix{}, netip.Prefix{}},
	} {
		p := taskPart("warren-br0", "warren0", block, c.container, c.node, ports)
		n := 0
		for _, chains := range p.Tables {
			for _, rules := range chains {
				n += len(rules)
			}
		}
		if n < 8 {
			t.Fatalf("only %d rules: %+v", n, p.Tables)
		}
		if err := hostfw.NftCheck(hostfw.Part{}, p); err != nil {
			t.Errorf("container %v node %v: %v", c.container, c.node, err)
		}
	}
}
