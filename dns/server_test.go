package dns

import (
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

func TestAnswersFromRecords(t *testing.T) {
	s, addr := startServer(t, Config{})
	s.Update(sampleRecords)

	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			cases := []struct {
				name  string
				qtype uint16
				want  []string
				ttl   uint32
			}{
				{"nginx.warren.local.", miekg.TypeA, []string{"10.1.0.5"}, ServiceTTL},
				{"NgInX.WARREN.Local.", miekg.TypeA, []string{"10.1.0.5"}, ServiceTTL},
				{"nginx-2.warren.local.", miekg.TypeA, []string{"10.0.2.2"}, TaskTTL},
				{"tasks.nginx.warren.local.", miekg.TypeA, []string{"10.0.1.2", "10.0.2.2"}, TaskTTL},
				{"tasks.api.warren.local.", miekg.TypeA, []string{"10.0.1.3"}, TaskTTL},
			}
			for _, c := range cases {
				resp := ask(t, addr, network, c.name, c.qtype)
				if resp.Rcode != miekg.RcodeSuccess || !resp.Authoritative {
					t.Fatalf("%s: rcode %s aa=%v", c.name, miekg.RcodeToString[resp.Rcode], resp.Authoritative)
				}
				var got []string
				for _, a := range aAddrs(resp.Answer) {
					got = append(got, a.String())
				}
				slices.Sort(got)
				if !slices.Equal(got, c.want) {
					t.Errorf("%s: got %v, want %v", c.name, got, c.want)
				}
				for _, rr := range resp.Answer {
					if rr.Header().Ttl != c.ttl {
						t.Errorf("%s: TTL %d, want %d", c.name, rr.Header().Ttl, c.ttl)
					}
				}
				if resp.Question[0].Name != c.name {
					t.Errorf("question not echoed as asked: %q", resp.Question[0].Name)
				}
			}
		})
	}

	t.Run("AAAA of a known name is NODATA", func(t *testing.T) {
		resp := ask(t, addr, "udp", "nginx.warren.local.", miekg.TypeAAAA)
		if resp.Rcode != miekg.RcodeSuccess || len(resp.Answer) != 0 {
			t.Fatalf("rcode %s, %d answers; want NOERROR without data", miekg.RcodeToString[resp.Rcode], len(resp.Answer))
		}
		requireSOA(t, resp)
	})
	t.Run("MX of a known name is NODATA", func(t *testing.T) {
		resp := ask(t, addr, "udp", "nginx-1.warren.local.", miekg.TypeMX)
		if resp.Rcode != miekg.RcodeSuccess || len(resp.Answer) != 0 {
			t.Fatalf("rcode %s, %d answers", miekg.RcodeToString[resp.Rcode], len(resp.Answer))
		}
	})
	t.Run("unknown names are NXDOMAIN with SOA", func(t *testing.T) {
		for _, name := range []string{"redis.warren.local.", "nginx-3.warren.local.", "tasks.redis.warren.local.", "a.b.nginx.warren.local."} {
			resp := ask(t, addr, "udp", name, miekg.TypeA)
			if resp.Rcode != miekg.RcodeNameError {
				t.Errorf("%s: rcode %s, want NXDOMAIN", name, miekg.RcodeToString[resp.Rcode])
			}
			requireSOA(t, resp)
		}
	})
	t.Run("apex is NODATA for A, answers SOA", func(t *testing.T) {
		resp := ask(t, addr, "udp", "warren.local.", miekg.TypeA)
		if resp.Rcode != miekg.RcodeSuccess || len(resp.Answer) != 0 {
			t.Errorf("apex A: rcode %s, %d answers", miekg.RcodeToString[resp.Rcode], len(resp.Answer))
		}
		resp = ask(t, addr, "udp", "warren.local.", miekg.TypeSOA)
		if len(resp.Answer) != 1 || resp.Answer[0].Header().Rrtype != miekg.TypeSOA {
			t.Errorf("apex SOA: %v", resp.Answer)
		}
	})
	t.Run("PTR of a VIP and a task", func(t *testing.T) {
		for ip, want := range map[string]string{"10.1.0.5": "nginx.warren.local.", "10.0.2.2": "nginx-2.warren.local."} {
			arpa, _ := miekg.ReverseAddr(ip)
			resp := ask(t, addr, "udp", arpa, miekg.TypePTR)
			if len(resp.Answer) != 1 || resp.Answer[0].(*miekg.PTR).Ptr != want {
				t.Errorf("PTR %s: %v, want %s", ip, resp.Answer, want)
			}
		}
	})
	t.Run("non-IN class inside the domain is refused", func(t *testing.T) {
		m := new(miekg.Msg)
		m.SetQuestion("nginx.warren.local.", miekg.TypeA)
		m.Question[0].Qclass = miekg.ClassCHAOS
		if resp := exchange(t, addr, "udp", m); resp.Rcode != miekg.RcodeRefused {
			t.Errorf("rcode %s, want REFUSED", miekg.RcodeToString[resp.Rcode])
		}
	})
	t.Run("zone transfer is refused", func(t *testing.T) {
		if resp := ask(t, addr, "tcp", "warren.local.", miekg.TypeAXFR); resp.Rcode != miekg.RcodeRefused {
			t.Errorf("AXFR: rcode %s, want REFUSED", miekg.RcodeToString[resp.Rcode])
		}
	})
	t.Run("unknown EDNS version is BADVERS", func(t *testing.T) {
		m := new(miekg.Msg)
		m.SetQuestion("nginx.warren.local.", miekg.TypeA)
		m.SetEdns0(1232, false)
		m.IsEdns0().SetVersion(1)
		if resp := exchange(t, addr, "udp", m); resp.Rcode != miekg.RcodeBadVers {
			t.Errorf("rcode %s, want BADVERS", miekg.RcodeToString[resp.Rcode])
		}
	})
	t.Run("NOTIFY is not implemented", func(t *testing.T) {
		m := new(miekg.Msg)
		m.SetNotify("warren.local.")
		if resp := exchange(t, addr, "udp", m); resp.Rcode != miekg.RcodeNotImplemented {
			t.Errorf("rcode %s, want NOTIMP", miekg.RcodeToString[resp.Rcode])
		}
	})
}

func requireSOA(t *testing.T, resp *miekg.Msg) {
	t.Helper()
	if len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != miekg.TypeSOA {
		t.Fatalf("authority section %v, want the zone's SOA", resp.Ns)
	}
	if soa := resp.Ns[0].(*miekg.SOA); soa.Minttl != NegativeTTL || soa.Hdr.Name != "warren.local." {
		t.Fatalf("SOA %v", soa)
	}
}

func TestUpdateSwapsRecordsAtOnce(t *testing.T) {
	s, addr := startServer(t, Config{})
	s.Update(sampleRecords)
	if resp := ask(t, addr, "udp", "nginx-2.warren.local.", miekg.TypeA); len(resp.Answer) != 1 {
		t.Fatalf("before removal: %v", resp)
	}

	next := Records{
		Domain:   "warren.local",
		Services: map[string]netip.Addr{"nginx": netip.MustParseAddr("10.1.0.5")},
		Tasks:    map[string]netip.Addr{"nginx-1": netip.MustParseAddr("10.0.1.2")},
		ServiceTasks: map[string][]netip.Addr{
			"nginx": {netip.MustParseAddr("10.0.1.2")},
		},
	}
	s.Update(next)
	// The very next query: no polling.
	if resp := ask(t, addr, "udp", "nginx-2.warren.local.", miekg.TypeA); resp.Rcode != miekg.RcodeNameError {
		t.Fatalf("removed task: rcode %s, want NXDOMAIN", miekg.RcodeToString[resp.Rcode])
	}
	if resp := ask(t, addr, "udp", "api.warren.local.", miekg.TypeA); resp.Rcode != miekg.RcodeNameError {
		t.Fatalf("removed service: rcode %s, want NXDOMAIN", miekg.RcodeToString[resp.Rcode])
	}
	if got := aAddrs(ask(t, addr, "tcp", "tasks.nginx.warren.local.", miekg.TypeA).Answer); len(got) != 1 || got[0] != netip.MustParseAddr("10.0.1.2") {
		t.Fatalf("tasks.nginx after update: %v", got)
	}

	// A new domain takes over; the old one is no longer ours.
	next.Domain = "Edge.Lan."
	s.Update(next)
	if got := aAddrs(ask(t, addr, "udp", "nginx.edge.lan.", miekg.TypeA).Answer); len(got) != 1 {
		t.Fatalf("new domain: %v", got)
	}
	if resp := ask(t, addr, "udp", "nginx.warren.local.", miekg.TypeA); resp.Rcode != miekg.RcodeServerFailure {
		// Outside the zone now, and no upstream configured.
		t.Fatalf("old domain: rcode %s, want SERVFAIL (forwarded, no upstream)", miekg.RcodeToString[resp.Rcode])
	}

	// Empty records (nil maps, no domain): every name goes, the domain stays.
	s.Update(Records{})
	if resp := ask(t, addr, "udp", "nginx.edge.lan.", miekg.TypeA); resp.Rcode != miekg.RcodeNameError {
		t.Fatalf("after empty update: rcode %s, want NXDOMAIN in the kept domain", miekg.RcodeToString[resp.Rcode])
	}
}

func TestDomainServedBeforeFirstUpdate(t *testing.T) {
	_, addr := startServer(t, Config{})
	resp := ask(t, addr, "udp", "nginx.warren.local.", miekg.TypeA)
	if resp.Rcode != miekg.RcodeNameError {
		t.Fatalf("rcode %s, want NXDOMAIN from the empty zone (not forwarded)", miekg.RcodeToString[resp.Rcode])
	}
}

func TestTruncatesLargeUDPAnswers(t *testing.T) {
	s, addr := startServer(t, Config{})
	r := Records{Domain: "warren.local", ServiceTasks: map[string][]netip.Addr{}}
	var ips []netip.Addr
	ip := netip.MustParseAddr("10.0.1.1")
	for range 200 {
		ip = ip.Next()
		ips = append(ips, ip)
	}
	r.ServiceTasks["big"] = ips
	s.Update(r)

	resp := ask(t, addr, "udp", "tasks.big.warren.local.", miekg.TypeA)
	if !resp.Truncated {
		t.Fatalf("UDP answer with %d records not truncated", len(resp.Answer))
	}
	resp.Compress = true // as it went on the wire
	if packed, _ := resp.Pack(); len(packed) > miekg.MinMsgSize {
		t.Fatalf("UDP answer is %d bytes, over 512", len(packed))
	}

	// With EDNS the client may take more, up to our 1232 cap.
	m := new(miekg.Msg)
	m.SetQuestion("tasks.big.warren.local.", miekg.TypeA)
	m.SetEdns0(4096, false)
	resp = exchange(t, addr, "udp", m)
	resp.Compress = true
	if packed, _ := resp.Pack(); !resp.Truncated || len(packed) > maxUDPResponse || len(resp.Answer) <= 30 {
		t.Fatalf("EDNS UDP answer: tc=%v, %d bytes, %d records", resp.Truncated, len(packed), len(resp.Answer))
	}

	resp = ask(t, addr, "tcp", "tasks.big.warren.local.", miekg.TypeA)
	if resp.Truncated || len(resp.Answer) != 200 {
		t.Fatalf("TCP answer: tc=%v, %d records, want all 200", resp.Truncated, len(resp.Answer))
	}
}

func TestStartReportsBindErrors(t *testing.T) {
	_, addr := startServer(t, Config{})
	s, err := NewServer(Config{Listen: []string{addr}, Logger: quietLogger(), Upstreams: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		s.Close()
		t.Fatal("Start on an address in use succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close after failed Start: %v", err)
	}
}

func TestNewServerRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Listen: []string{"localhost:53"}},
		{Listen: []string{"127.0.0.1"}},
		{Listen: []string{"127.0.0.1:99999"}},
		{Listen: []string{"127.0.0.1:0"}, Domain: "bad domain"},
		{Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"dns.google"}},
	} {
		if _, err := NewServer(cfg); err == nil {
			t.Errorf("NewServer(%+v) accepted", cfg)
		}
	}
}

func TestCloseReleasesEverything(t *testing.T) {
	// The upstream answers the loop probe but never the test's query.
	reached := make(chan struct{})
	release := make(chan struct{})
	up := startFakeUpstream(t, "", func(w miekg.ResponseWriter, r *miekg.Msg) {
		if r.Question[0].Name == "stuck.example." {
			close(reached)
			<-release
			return
		}
		answerA("192.0.2.1")(w, r)
	})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // runs before the upstream's shutdown
	before := runtime.NumGoroutine()

	s, err := NewServer(Config{
		Listen:         []string{"127.0.0.1:0"},
		Upstreams:      []string{up.addr},
		ForwardTimeout: time.Minute, // still in flight when Close comes
		Logger:         quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0]

	// A forward stuck on the silent upstream, and an idle TCP client.
	answered := make(chan *miekg.Msg, 1)
	go func() {
		m := new(miekg.Msg)
		m.SetQuestion("stuck.example.", miekg.TypeA)
		resp, _, _ := (&miekg.Client{Timeout: 30 * time.Second}).Exchange(m, addr.String())
		answered <- resp
	}()
	idle, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	<-reached // Close only once the query is out to the upstream

	closeStart := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("Close took %v", time.Since(closeStart))
	if resp := <-answered; resp == nil || resp.Rcode != miekg.RcodeServerFailure {
		t.Fatalf("query in flight at Close: %v, want SERVFAIL", resp)
	}
	// The port is free again for both transports.
	pc, ln, _, err := bindPair(t.Context(), "127.0.0.1", addr.Port(), false)
	if err != nil {
		t.Fatalf("port still held after Close: %v", err)
	}
	pc.Close()
	ln.Close()
	unblock() // the upstream's own handler is not the server's to end
	// No goroutine of the server survives (polling: exits are asynchronous).
	waitFor(t, "the server's goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Start(); err == nil {
		t.Fatal("Start after Close succeeded")
	}
}

func TestOnAnswerCountsByRcode(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	s, addr := startServer(t, Config{OnAnswer: func(rc string) {
		mu.Lock()
		got[rc]++
		mu.Unlock()
	}})
	s.Update(Records{Domain: "warren.local", Services: map[string]netip.Addr{"web": netip.MustParseAddr("10.1.0.1")}})
	ask(t, addr, "udp", "web.warren.local.", miekg.TypeA)
	ask(t, addr, "udp", "nope.warren.local.", miekg.TypeA)
	ask(t, addr, "tcp", "nope.warren.local.", miekg.TypeA)
	bad := new(miekg.Msg)
	bad.SetQuestion("web.warren.local.", miekg.TypeA)
	bad.SetEdns0(1232, false)
	bad.IsEdns0().SetVersion(1)
	exchange(t, addr, "udp", bad)
	mu.Lock()
	defer mu.Unlock()
	want := map[string]int{"noerror": 1, "nxdomain": 2, "badvers": 1}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("answers counted %v, want %v", got, want)
	}
}

func TestOnAnswerCountsIgnoredQueries(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	_, addr := startServer(t, Config{Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, OnAnswer: func(rc string) {
		mu.Lock()
		got[rc]++
		mu.Unlock()
	}})
	q := new(miekg.Msg)
	q.SetQuestion("web.warren.local.", miekg.TypeA)
	c := &miekg.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	if _, _, err := c.Exchange(q, addr); err == nil {
		t.Fatal("a query from outside Allow was answered")
	}
	mu.Lock()
	defer mu.Unlock()
	if !reflect.DeepEqual(got, map[string]int{"ignored": 1}) {
		t.Fatalf("counted %v, want one ignored query", got)
	}
}
