package dns

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	miekg "github.com/miekg/dns"
)

func lookup(z *zone, name string, qtype uint16) *miekg.Msg {
	resp := new(miekg.Msg)
	z.answer(resp, name, qtype)
	return resp
}

func TestCompileZoneSkipsBadNamesAndClashes(t *testing.T) {
	z, problems := compileZone("warren.local.", Records{
		Services: map[string]netip.Addr{
			"web":      netip.MustParseAddr("10.1.0.1"),
			"Web":      netip.MustParseAddr("10.1.0.2"), // same name, other case
			"bad.name": netip.MustParseAddr("10.1.0.3"),
			"":         netip.MustParseAddr("10.1.0.4"),
			"web-1":    netip.MustParseAddr("10.1.0.5"),
		},
		Tasks: map[string]netip.Addr{
			"web-1":     netip.MustParseAddr("10.0.1.2"), // clashes with the service
			"web-2":     netip.MustParseAddr("::ffff:10.0.1.3"),
			"v6-1":      netip.MustParseAddr("fd00::3"),
			"bad name":  netip.MustParseAddr("10.0.1.9"),
			"zero-addr": {},
		},
		ServiceTasks: map[string][]netip.Addr{
			"web":   {netip.MustParseAddr("10.0.1.3"), netip.MustParseAddr("10.0.1.3"), netip.MustParseAddr("fd00::3")},
			"ghost": {}, // a service with no running task
		},
	}, 7)

	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.Error())
	}
	for _, want := range []string{`service "web"`, `service "bad.name"`, `service ""`, `task "web-1"`, `task "bad name"`} {
		if !slices.ContainsFunc(msgs, func(m string) bool { return strings.HasPrefix(m, want+":") }) {
			t.Errorf("no problem reported for %s; got %q", want, msgs)
		}
	}
	if len(problems) != 5 {
		t.Errorf("%d problems, want 5: %q", len(problems), msgs)
	}

	// Sorted order: "Web" sorts before "web", so it won the name.
	if got := aAddrs(lookup(z, "web.warren.local.", miekg.TypeA).Answer); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.1.0.2")}) {
		t.Errorf("web: %v", got)
	}
	// The service keeps the name a task also claims.
	if got := aAddrs(lookup(z, "web-1.warren.local.", miekg.TypeA).Answer); len(got) != 1 || got[0] != netip.MustParseAddr("10.1.0.5") {
		t.Errorf("web-1: %v, want the service's VIP", got)
	}
	// IPv4-mapped addresses are served as A.
	if got := aAddrs(lookup(z, "web-2.warren.local.", miekg.TypeA).Answer); len(got) != 1 || got[0] != netip.MustParseAddr("10.0.1.3") {
		t.Errorf("web-2: %v", got)
	}
	// IPv6 tasks answer AAAA, and A is NODATA.
	if got := aAddrs(lookup(z, "v6-1.warren.local.", miekg.TypeAAAA).Answer); len(got) != 1 || got[0] != netip.MustParseAddr("fd00::3") {
		t.Errorf("v6-1 AAAA: %v", got)
	}
	if resp := lookup(z, "v6-1.warren.local.", miekg.TypeA); resp.Rcode != miekg.RcodeSuccess || len(resp.Answer) != 0 {
		t.Errorf("v6-1 A: %v", resp)
	}
	// Duplicates collapse; both families under tasks.<service>; ANY gives both.
	if got := aAddrs(lookup(z, "tasks.web.warren.local.", miekg.TypeANY).Answer); len(got) != 2 {
		t.Errorf("tasks.web ANY: %v", got)
	}
	// A service without tasks: its tasks name exists with no data, and
	// ghost.<domain> exists as an empty non-terminal (no VIP given).
	for _, name := range []string{"tasks.ghost.warren.local.", "ghost.warren.local."} {
		if resp := lookup(z, name, miekg.TypeA); resp.Rcode != miekg.RcodeSuccess || len(resp.Answer) != 0 || len(resp.Ns) != 1 {
			t.Errorf("%s: %v, want NODATA with SOA", name, resp)
		}
	}
	if resp := lookup(z, "zero-addr.warren.local.", miekg.TypeA); resp.Rcode != miekg.RcodeSuccess || len(resp.Answer) != 0 {
		t.Errorf("zero-addr: %v, want NODATA", resp)
	}
	if z.soa.Serial != 7 {
		t.Errorf("serial %d", z.soa.Serial)
	}
	// Reverse: the first owner of an address keeps the PTR.
	arpa, _ := miekg.ReverseAddr("10.0.1.3")
	if ptr, ok := z.lookupPTR(arpa); !ok || ptr.(*miekg.PTR).Ptr != "web-2.warren.local." {
		t.Errorf("PTR 10.0.1.3: %v", ptr)
	}
}

func TestNormalizeDomain(t *testing.T) {
	for in, want := range map[string]string{
		"warren.local":   "warren.local.",
		" Warren.Local.": "warren.local.",
		"lan":            "lan.",
	} {
		if got, err := normalizeDomain(in); err != nil || got != want {
			t.Errorf("normalizeDomain(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ".", "a..b", "bad domain", "a.b\\c", strings.Repeat("a", 64) + ".x", strings.Repeat("abcdefg.", 40)} {
		if got, err := normalizeDomain(bad); err == nil {
			t.Errorf("normalizeDomain(%q) accepted as %q", bad, got)
		}
	}
}

func TestLoopsBack(t *testing.T) {
	local := func(a netip.Addr) bool { return a == netip.MustParseAddr("10.0.1.1") }
	ap := netip.MustParseAddrPort
	cases := []struct {
		up      string
		listens []string
		want    bool
	}{
		{"10.0.1.1:53", []string{"10.0.1.1:53"}, true},
		{"10.0.1.1:53", []string{"10.0.1.1:5353"}, false},
		{"10.0.1.1:53", []string{"[::]:53"}, true},      // wildcard covers local addresses
		{"127.0.0.53:53", []string{"0.0.0.0:53"}, true}, // and loopback
		{"192.0.2.1:53", []string{"0.0.0.0:53"}, false}, // not ours
		{"0.0.0.0:53", []string{"10.0.1.1:53"}, true},   // "this host"
		{"0.0.0.0:53", []string{"192.0.2.9:53"}, false}, // not a local listener
		{"[::ffff:10.0.1.1]:53", []string{"10.0.1.1:53"}, true},
		{"127.0.0.53:53", []string{"127.0.0.1:53"}, false}, // another stub: the probe decides
	}
	for _, c := range cases {
		var listens []netip.AddrPort
		for _, l := range c.listens {
			listens = append(listens, ap(l))
		}
		if got := loopsBack(ap(c.up), listens, local); got != c.want {
			t.Errorf("loopsBack(%s, %v) = %v, want %v", c.up, c.listens, got, c.want)
		}
	}
}

func TestResolvConfUpstreams(t *testing.T) {
	got, err := resolvConfUpstreams([]byte("# comment\nsearch lan\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver not-an-ip\noptions ndots:3\nnameserver ::ffff:192.0.2.54\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.53:53"),
		netip.MustParseAddrPort("[fe80::1%eth0]:53"),
		netip.MustParseAddrPort("192.0.2.54:53"),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestResolvConfForTasks(t *testing.T) {
	got := string(ResolvConf(netip.MustParseAddr("10.0.1.1"), "Warren.Local."))
	want := "# Generated by warren: the node's service discovery resolver.\nnameserver 10.0.1.1\nsearch warren.local\noptions ndots:2\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if strings.Count(got, "nameserver") != 1 {
		t.Fatal("more than one nameserver")
	}
	if got := string(ResolvConf(netip.MustParseAddr("fd00::1"), "bad domain")); strings.Contains(got, "search") || !strings.Contains(got, "nameserver fd00::1\n") {
		t.Fatalf("bad domain: %q", got)
	}
}

func TestResolveClient(t *testing.T) {
	s, addr := startServer(t, Config{})
	r := Records{Domain: "warren.local", ServiceTasks: map[string][]netip.Addr{}, Tasks: map[string]netip.Addr{
		"v6-1": netip.MustParseAddr("fd00::7"),
	}}
	var ips []netip.Addr
	ip := netip.MustParseAddr("10.0.3.0")
	for range 150 {
		ip = ip.Next()
		ips = append(ips, ip)
	}
	r.ServiceTasks["big"] = ips
	s.Update(r)
	ctx := t.Context()

	got, err := Resolve(ctx, addr, "tasks.big.warren.local")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, ips) {
		t.Fatalf("got %d addresses, want all 150 (TCP retry after truncation)", len(got))
	}
	if got, err := Resolve(ctx, addr, "V6-1.warren.local."); err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("fd00::7") {
		t.Fatalf("v6-1: %v, %v", got, err)
	}
	if _, err := Resolve(ctx, addr, "nope.warren.local"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown name: %v, want ErrNotFound", err)
	}
	if got, err := Resolve(ctx, addr, "tasks.warren.local"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tasks.warren.local: %v, %v", got, err)
	}
	// Outside the domain with no upstream: the server's SERVFAIL is an error.
	if _, err := Resolve(ctx, addr, "example.com"); err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Fatalf("example.com: %v, want a SERVFAIL error", err)
	}
	for _, bad := range []string{"localhost:53", "300.1.1.1"} {
		if _, err := Resolve(ctx, bad, "x.warren.local"); err == nil {
			t.Errorf("server %q accepted", bad)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Resolve(ctx, addr, "big.warren.local"); err == nil {
		t.Error("cancelled context: no error")
	}
}
