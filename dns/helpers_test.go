package dns

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

// testLogger writes through t.Log so logs show up only for failing tests.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startServer starts a Server on a random loopback port, closed at cleanup.
func startServer(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Listen == nil {
		cfg.Listen = []string{"127.0.0.1:0"}
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.Upstreams == nil && cfg.ResolvConf == "" {
		// No upstream unless the test asks: forwarding to the host's real
		// resolvers would send traffic off the machine.
		path := t.TempDir() + "/resolv.conf"
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg.ResolvConf = path
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, s.Addrs()[0].String()
}

// fakeUpstream is a resolver on loopback that answers through fn and
// counts the queries it saw by name.
type fakeUpstream struct {
	addr  string
	count atomic.Int64
	names chan string
}

func startFakeUpstream(t testing.TB, listen string, fn func(w miekg.ResponseWriter, r *miekg.Msg)) *fakeUpstream {
	t.Helper()
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	fu := &fakeUpstream{names: make(chan string, 100000)}
	h := miekg.HandlerFunc(func(w miekg.ResponseWriter, r *miekg.Msg) {
		fu.count.Add(1)
		if len(r.Question) > 0 {
			select {
			case fu.names <- r.Question[0].Name:
			default:
			}
		}
		fn(w, r)
	})
	fu.addr = startPlainServer(t, listen, h)
	return fu
}

// startPlainServer serves h with miekg/dns alone on UDP and TCP at listen
// ("ip:port", port 0 for any) and returns the bound address.
func startPlainServer(t testing.TB, listen string, h miekg.Handler) string {
	t.Helper()
	pc, ln, ap, err := bindPair(t.Context(), hostOf(t, listen), portOf(t, listen), false)
	if err != nil {
		t.Fatalf("listen %s: %v", listen, err)
	}
	for _, srv := range []*miekg.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return ap.String()
}

// forget drops the record of the queries received so far.
func (fu *fakeUpstream) forget() {
	for {
		select {
		case <-fu.names:
		default:
			return
		}
	}
}

// seen reports whether the upstream received a query for name since the
// last forget (consuming the record up to that query).
func (fu *fakeUpstream) seen(name string) bool {
	for {
		select {
		case n := <-fu.names:
			if n == name {
				return true
			}
		default:
			return false
		}
	}
}

func hostOf(t testing.TB, hp string) string {
	h, _, err := net.SplitHostPort(hp)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func portOf(t testing.TB, hp string) uint16 {
	_, p, err := net.SplitHostPort(hp)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return uint16(n)
}

// answerA replies to every query with one A record of ip (to A queries).
func answerA(ip string) func(miekg.ResponseWriter, *miekg.Msg) {
	addr := net.ParseIP(ip).To4()
	return func(w miekg.ResponseWriter, r *miekg.Msg) {
		m := new(miekg.Msg)
		m.SetReply(r)
		if q := r.Question[0]; q.Qtype == miekg.TypeA {
			m.Answer = append(m.Answer, &miekg.A{
				Hdr: miekg.RR_Header{Name: q.Name, Rrtype: miekg.TypeA, Class: q.Qclass, Ttl: 30},
				A:   addr,
			})
		}
		w.WriteMsg(m)
	}
}

// ask sends one question and fails the test when no answer arrives.
func ask(t testing.TB, server, network, name string, qtype uint16) *miekg.Msg {
	t.Helper()
	m := new(miekg.Msg)
	m.SetQuestion(name, qtype)
	return exchange(t, server, network, m)
}

func exchange(t testing.TB, server, network string, m *miekg.Msg) *miekg.Msg {
	t.Helper()
	c := &miekg.Client{Net: network, Timeout: 10 * time.Second}
	resp, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("%s query %s to %s: %v", network, m.Question[0].Name, server, err)
	}
	return resp
}

// aAddrs returns the addresses of the A/AAAA records in rrs.
func aAddrs(rrs []miekg.RR) []netip.Addr {
	var out []netip.Addr
	for _, rr := range rrs {
		switch rr := rr.(type) {
		case *miekg.A:
			a, _ := netip.AddrFromSlice(rr.A)
			out = append(out, a.Unmap())
		case *miekg.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			out = append(out, a)
		}
	}
	return out
}

// freePort returns a loopback port free for UDP and TCP right now.
func freePort(t testing.TB) uint16 {
	t.Helper()
	pc, ln, ap, err := bindPair(t.Context(), "127.0.0.1", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
	ln.Close()
	return ap.Port()
}

// uniqueLoopback returns a 127.x.y.z address unique to this test run, so
// tests needing port 53 do not collide with other packages or runs.
func uniqueLoopback(n byte) string {
	pid := os.Getpid()
	return fmt.Sprintf("127.%d.%d.%d", 100+pid%100, (pid/100)%250+1, n)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (binds port 53 on a loopback address)")
	}
}

var sampleRecords = Records{
	Domain: "warren.local",
	Services: map[string]netip.Addr{
		"nginx": netip.MustParseAddr("10.1.0.5"),
		"api":   netip.MustParseAddr("10.1.0.6"),
	},
	Tasks: map[string]netip.Addr{
		"nginx-1": netip.MustParseAddr("10.0.1.2"),
		"nginx-2": netip.MustParseAddr("10.0.2.2"),
		"api-1":   netip.MustParseAddr("10.0.1.3"),
	},
	ServiceTasks: map[string][]netip.Addr{
		"nginx": {netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.2.2")},
		"api":   {netip.MustParseAddr("10.0.1.3")},
	},
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
