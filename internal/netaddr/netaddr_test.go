package netaddr

import (
	"net/netip"
	"testing"
)

func TestLast(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.1.0/24":  "10.0.1.255",
		"10.0.0.0/16":  "10.0.255.255",
		"10.0.1.7/24":  "10.0.1.255", // host bits ignored
		"10.1.0.0/20":  "10.1.15.255",
		"192.0.2.5/32": "192.0.2.5",
		"0.0.0.0/0":    "255.255.255.255",
	} {
		if got := Last(netip.MustParsePrefix(in)); got.String() != want {
			t.Errorf("Last(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestBridge(t *testing.T) {
	if got := Bridge(netip.MustParsePrefix("10.0.1.0/24")); got != netip.MustParseAddr("10.0.1.1") {
		t.Errorf("Bridge(10.0.1.0/24) = %s", got)
	}
}
