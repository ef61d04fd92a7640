package ipam

import (
	"net/netip"
	"testing"
)

func TestNextAddrSequentialSkipsNetworkAndBroadcast(t *testing.T) {
	subnet := netip.MustParsePrefix("10.0.0.0/30")
	taken := map[netip.Addr]bool{}
	var got []string
	for {
		a, err := NextAddr(subnet, func(a netip.Addr) bool { return taken[a] })
		if err != nil {
			break
		}
		taken[a] = true
		got = append(got, a.String())
	}
	if len(got) != 2 || got[0] != "10.0.0.1" || got[1] != "10.0.0.2" {
		t.Fatalf("allocated %v, want [10.0.0.1 10.0.0.2]", got)
	}
	delete(taken, netip.MustParseAddr("10.0.0.1"))
	if a, _ := NextAddr(subnet, func(a netip.Addr) bool { return taken[a] }); a.String() != "10.0.0.1" {
		t.Fatalf("after release got %v, want the freed 10.0.0.1", a)
	}
}

func TestNextBlockSkipsWireGuardSubnet(t *testing.T) {
	container := netip.MustParsePrefix("10.0.0.0/16")
	wg := netip.MustParsePrefix("10.0.0.0/24")
	taken := map[netip.Prefix]bool{}
	var got []string
	for range 3 {
		b, err := NextBlock(container, 24, []netip.Prefix{wg}, func(p netip.Prefix) bool { return taken[p] })
		if err != nil {
			t.Fatal(err)
		}
		taken[b] = true
		got = append(got, b.String())
	}
	want := []string{"10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("blocks %v, want %v", got, want)
		}
	}
}

func TestNextBlockFull(t *testing.T) {
	_, err := NextBlock(netip.MustParsePrefix("10.0.0.0/24"), 24, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, func(netip.Prefix) bool { return false })
	if err == nil {
		t.Fatal("a subnet fully covered by the WireGuard subnet must have no block")
	}
	if _, err := NextBlock(netip.MustParsePrefix("10.0.0.0/24"), 16, nil, func(netip.Prefix) bool { return false }); err == nil {
		t.Fatal("a block larger than the subnet must be refused")
	}
}
