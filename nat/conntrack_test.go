package nat

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// flow is a conntrack entry: the original tuple src -> dst and the reply's
// source (the endpoint after DNAT, or dst itself when not NATed).
func flow(proto uint8, src, dst, replySrc string) *netlink.ConntrackFlow {
	s, d, r := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst), netip.MustParseAddrPort(replySrc)
	f := &netlink.ConntrackFlow{}
	f.Forward = netlink.IPTuple{Protocol: proto, SrcIP: net.IP(s.Addr().AsSlice()), SrcPort: s.Port(),
		DstIP: net.IP(d.Addr().AsSlice()), DstPort: d.Port()}
	f.Reverse = netlink.IPTuple{Protocol: proto, SrcIP: net.IP(r.Addr().AsSlice()), SrcPort: r.Port(),
		DstIP: net.IP(s.Addr().AsSlice()), DstPort: s.Port()}
	return f
}

func TestStaleUDPFilter(t *testing.T) {
	const udp, tcp = unix.IPPROTO_UDP, unix.IPPROTO_TCP
	before := []Service{
		{Name: "dns", VIP: netip.MustParseAddr("10.1.0.7"),
			Ports:     []Port{{Protocol: "udp", Port: 53, TargetPort: 5353, Published: 5354}},
			Endpoints: []Endpoint{ep("dns-1", "10.0.1.9"), ep("dns-2", "10.0.2.9")}},
		{Name: "any", VIP: netip.MustParseAddr("10.1.0.8"), Endpoints: []Endpoint{ep("any-1", "10.0.1.30"), ep("any-2", "10.0.1.31")}},
		{Name: "gone", VIP: netip.MustParseAddr("10.1.0.9"), Ports: []Port{{Protocol: "udp", Port: 9}},
			Endpoints: []Endpoint{ep("gone-1", "10.0.1.40")}},
	}
	after := []Service{
		{Name: "dns", VIP: netip.MustParseAddr("10.1.0.7"),
			Ports:     []Port{{Protocol: "udp", Port: 53, TargetPort: 5353, Published: 5354}},
			Endpoints: []Endpoint{ep("dns-2", "10.0.2.9")}},
		{Name: "any", VIP: netip.MustParseAddr("10.1.0.8"), Endpoints: []Endpoint{ep("any-2", "10.0.1.31")}},
	}
	local := map[netip.Addr]bool{netip.MustParseAddr("192.168.1.20"): true}
	f := newStaleUDPFilter(newUDPBackends(before), newUDPBackends(after), local)

	cases := []struct {
		name  string
		flow  *netlink.ConntrackFlow
		stale bool
	}{
		{"VIP flow to removed endpoint", flow(udp, "10.0.1.5:4000", "10.1.0.7:53", "10.0.1.9:5353"), true},
		{"VIP flow to kept endpoint", flow(udp, "10.0.1.5:4000", "10.1.0.7:53", "10.0.2.9:5353"), false},
		{"VIP flow never DNATed", flow(udp, "10.0.1.5:4000", "10.1.0.7:53", "10.1.0.7:53"), true},
		{"published flow to removed endpoint", flow(udp, "192.168.1.5:4000", "192.168.1.20:5354", "10.0.1.9:5353"), true},
		{"published flow to kept endpoint", flow(udp, "192.168.1.5:4000", "192.168.1.20:5354", "10.0.2.9:5353"), false},
		{"same port on an address not ours", flow(udp, "192.168.1.5:4000", "192.168.1.99:5354", "192.168.1.99:5354"), false},
		{"all-ports flow to removed endpoint", flow(udp, "10.0.1.5:4000", "10.1.0.8:1234", "10.0.1.30:1234"), true},
		{"all-ports flow to kept endpoint", flow(udp, "10.0.1.5:4000", "10.1.0.8:1234", "10.0.1.31:1234"), false},
		{"flow to a removed service", flow(udp, "10.0.1.5:4000", "10.1.0.9:9", "10.0.1.40:9"), true},
		{"TCP is left alone", flow(tcp, "10.0.1.5:4000", "10.1.0.7:53", "10.0.1.9:5353"), false},
		{"unrelated UDP", flow(udp, "10.0.1.5:4000", "8.8.8.8:53", "8.8.8.8:53"), false},
	}
	for _, c := range cases {
		if got := f.MatchConntrackFlow(c.flow); got != c.stale {
			t.Errorf("%s: stale = %v, want %v", c.name, got, c.stale)
		}
	}
}
