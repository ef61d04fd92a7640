package mdns

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNetns runs fn on a thread in a fresh network namespace whose
// loopback carries multicast (the only link: nothing leaves the test).
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // not unlocked: the thread dies with the goroutine
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		defer netns.Set(orig)
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err == nil {
			err = netlink.LinkSetAllmulticastOn(lo)
		}
		if err == nil {
			err = netlink.LinkSetMulticastOn(lo)
		}
		if err == nil {
			_, mc, _ := net.ParseCIDR("224.0.0.0/4")
			err = netlink.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: mc})
		}
		if err != nil {
			t.Errorf("set up the namespace: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// respond answers A queries for name with addr, as avahi does for a
// legacy unicast query: to the querier's address and port, same ID.
func respond(t *testing.T, name string, addr netip.Addr) (stop func()) {
	lo, _ := net.InterfaceByName("lo")
	conn, err := net.ListenMulticastUDP("udp4", lo, net.UDPAddrFromAddrPort(Group))
	if err != nil {
		t.Fatalf("responder: %v", err)
	}
	go func() {
		buf := make([]byte, 9000)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			var q dns.Msg
			if q.Unpack(buf[:n]) != nil || q.Response || len(q.Question) != 1 || !strings.EqualFold(q.Question[0].Name, name) {
				continue
			}
			r := new(dns.Msg)
			r.SetReply(&q)
			r.Authoritative = true
			r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: addr.AsSlice()})
			b, _ := r.Pack()
			conn.WriteToUDP(b, from)
		}
	}()
	return func() { conn.Close() }
}

func TestLookupLocalName(t *testing.T) {
	inNewNetns(t, func() {
		stop := respond(t, "pi-1.local.", netip.MustParseAddr("192.0.2.77"))
		defer stop()
		got, err := Resolver{}.ResolveHostPort(context.Background(), "pi-1.local:7946")
		if err != nil || got != "192.0.2.77:7946" {
			t.Errorf("pi-1.local:7946 resolved to %q, %v", got, err)
		}
		// Names that are not .local are left to the Go resolver.
		if got, err := (Resolver{}).ResolveHostPort(context.Background(), "192.0.2.1:7946"); err != nil || got != "192.0.2.1:7946" {
			t.Errorf("an IP address changed: %q, %v", got, err)
		}
		// Nobody answers for another name: a clear error.
		_, err = Resolver{Timeout: 1500 * time.Millisecond}.LookupAddr(context.Background(), "pi-9.local")
		if err == nil || !strings.Contains(err.Error(), "no multicast DNS (mDNS) answer") || !strings.Contains(err.Error(), "IP address") {
			t.Errorf("unanswered .local name: %v", err)
		}
	})
}

func TestIsLocal(t *testing.T) {
	for host, want := range map[string]bool{"pi-1.local": true, "PI.LOCAL.": true, "warren.local.example": false, "192.0.2.1": false, "local": false} {
		if IsLocal(host) != want {
			t.Errorf("IsLocal(%q) != %v", host, want)
		}
	}
}
