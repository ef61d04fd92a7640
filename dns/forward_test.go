package dns

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

func TestForwardsOutsideDomain(t *testing.T) {
	up := startFakeUpstream(t, "", answerA("192.0.2.10"))
	_, addr := startServer(t, Config{Upstreams: []string{up.addr}})

	for _, network := range []string{"udp", "tcp"} {
		m := new(miekg.Msg)
		m.SetQuestion("Example.COM.", miekg.TypeA)
		m.Id = 4242
		resp := exchange(t, addr, network, m)
		if resp.Id != 4242 || resp.Rcode != miekg.RcodeSuccess {
			t.Fatalf("%s: id %d rcode %s", network, resp.Id, miekg.RcodeToString[resp.Rcode])
		}
		if got := aAddrs(resp.Answer); len(got) != 1 || got[0].String() != "192.0.2.10" {
			t.Fatalf("%s: answer %v, want the upstream's 192.0.2.10", network, resp.Answer)
		}
		if resp.Question[0].Name != "Example.COM." {
			t.Fatalf("%s: question %q, want the case as asked", network, resp.Question[0].Name)
		}
	}
	if !up.seen("Example.COM.") {
		t.Fatal("upstream never saw the query")
	}
	// Names of the domain never reach the upstream.
	before := up.count.Load()
	ask(t, addr, "udp", "unknown.warren.local.", miekg.TypeA)
	if up.count.Load() != before {
		t.Fatal("a name inside the domain was forwarded")
	}
}

// silentUpstream reads queries over UDP and TCP and never answers. The
// names of the UDP queries it got come out of the channel.
func silentUpstream(t *testing.T) (string, <-chan string) {
	t.Helper()
	pc, ln, ap, err := bindPair(t.Context(), "127.0.0.1", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	names := make(chan string, 1000)
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		pc.Close()
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			m := new(miekg.Msg)
			if m.Unpack(buf[:n]) == nil && len(m.Question) == 1 {
				select {
				case names <- m.Question[0].Name:
				default:
				}
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return ap.String(), names
}

func TestForwardUpstreamDownIsServfail(t *testing.T) {
	closed := net.JoinHostPort("127.0.0.1", itoa(freePort(t)))
	silent, _ := silentUpstream(t)
	for name, upstreams := range map[string][]string{
		"port closed":      {closed},
		"never answers":    {silent},
		"both unreachable": {silent, closed},
	} {
		t.Run(name, func(t *testing.T) {
			_, addr := startServer(t, Config{Upstreams: upstreams, ForwardTimeout: 300 * time.Millisecond})
			for _, network := range []string{"udp", "tcp"} {
				// The client waits 10 s; the server must answer SERVFAIL
				// by itself well before that.
				resp := ask(t, addr, network, "example.com.", miekg.TypeA)
				if resp.Rcode != miekg.RcodeServerFailure {
					t.Fatalf("%s: rcode %s, want SERVFAIL", network, miekg.RcodeToString[resp.Rcode])
				}
			}
		})
	}
}

func TestForwardFallsBackToNextUpstream(t *testing.T) {
	silent, _ := silentUpstream(t)
	refusing := startFakeUpstream(t, "", func(w miekg.ResponseWriter, r *miekg.Msg) {
		m := new(miekg.Msg)
		m.SetRcode(r, miekg.RcodeRefused)
		w.WriteMsg(m)
	})
	good := startFakeUpstream(t, "", answerA("192.0.2.20"))
	_, addr := startServer(t, Config{Upstreams: []string{silent, refusing.addr, good.addr}, ForwardTimeout: 3 * time.Second})

	resp := ask(t, addr, "udp", "example.org.", miekg.TypeA)
	if got := aAddrs(resp.Answer); len(got) != 1 || got[0].String() != "192.0.2.20" {
		t.Fatalf("answer %v (rcode %s), want the third upstream's", resp.Answer, miekg.RcodeToString[resp.Rcode])
	}
	// The upstream that answered is asked first from now on.
	refusedBefore := refusing.count.Load()
	for range 5 {
		if got := aAddrs(ask(t, addr, "udp", "example.org.", miekg.TypeA).Answer); len(got) != 1 {
			t.Fatal("no answer from the preferred upstream")
		}
	}
	if refusing.count.Load() != refusedBefore {
		t.Fatal("later queries went to the failing upstreams first")
	}
}

// logCounter counts log records whose message contains a substring.
type logCounter struct {
	slog.Handler
	*counts
}

type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func newLogCounter(t *testing.T) (*slog.Logger, *logCounter) {
	lc := &logCounter{Handler: testLogger(t).Handler(), counts: &counts{n: make(map[string]int)}}
	return slog.New(lc), lc
}

// WithAttrs keeps counting through the server's logger.With("component", ...).
func (lc *logCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return &logCounter{Handler: lc.Handler.WithAttrs(as), counts: lc.counts}
}

func (lc *logCounter) Handle(ctx context.Context, r slog.Record) error {
	lc.mu.Lock()
	lc.n[r.Message]++
	lc.mu.Unlock()
	return lc.Handler.Handle(ctx, r)
}

func (lc *logCounter) count(substr string) int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	n := 0
	for msg, c := range lc.n {
		if strings.Contains(msg, substr) {
			n += c
		}
	}
	return n
}

func TestLoopToOwnAddressRefused(t *testing.T) {
	port := itoa(freePort(t))
	log, lc := newLogCounter(t)
	_, addr := startServer(t, Config{
		Listen:    []string{"127.0.0.1:" + port},
		Upstreams: []string{"127.0.0.1:" + port},
		Logger:    log,
	})
	for range 3 {
		if resp := ask(t, addr, "udp", "example.com.", miekg.TypeA); resp.Rcode != miekg.RcodeServerFailure {
			t.Fatalf("rcode %s, want SERVFAIL", miekg.RcodeToString[resp.Rcode])
		}
	}
	if n := lc.count("is this server itself"); n != 1 {
		t.Fatalf("self-loop logged %d times, want once", n)
	}
	if n := lc.count("no usable upstream resolver"); n != 1 {
		t.Fatalf("'no upstream' logged %d times, want once", n)
	}
}

// A stub resolver on loopback that forwards everything back to us (as
// systemd-resolved would if the node's resolver were among its servers).
func TestLoopThroughStubResolverRefused(t *testing.T) {
	var target atomic.Value // our server's address, known after Start
	stub := startFakeUpstream(t, "", func(w miekg.ResponseWriter, r *miekg.Msg) {
		to, _ := target.Load().(string)
		if to == "" {
			miekg.HandleFailed(w, r)
			return
		}
		resp, _, err := (&miekg.Client{Timeout: 5 * time.Second}).Exchange(r, to)
		if err != nil {
			miekg.HandleFailed(w, r)
			return
		}
		w.WriteMsg(resp)
	})
	good := startFakeUpstream(t, "", answerA("192.0.2.30"))

	t.Run("other upstream still used", func(t *testing.T) {
		port := itoa(freePort(t))
		target.Store("127.0.0.1:" + port) // before Start: the probes go out at once
		_, addr := startServer(t, Config{Listen: []string{"127.0.0.1:" + port}, Upstreams: []string{stub.addr, good.addr}})
		for range 5 {
			resp := ask(t, addr, "udp", "example.net.", miekg.TypeA)
			if got := aAddrs(resp.Answer); len(got) != 1 || got[0].String() != "192.0.2.30" {
				t.Fatalf("answer %v rcode %s, want the good upstream's", resp.Answer, miekg.RcodeToString[resp.Rcode])
			}
		}
		if stub.seen("example.net.") {
			t.Fatal("a query was forwarded to the looping stub")
		}
	})

	t.Run("only the looping upstream", func(t *testing.T) {
		log, lc := newLogCounter(t)
		port := itoa(freePort(t))
		target.Store("127.0.0.1:" + port)
		_, addr := startServer(t, Config{Listen: []string{"127.0.0.1:" + port}, Upstreams: []string{stub.addr}, Logger: log})
		for range 5 {
			if resp := ask(t, addr, "udp", "example.net.", miekg.TypeA); resp.Rcode != miekg.RcodeServerFailure {
				t.Fatalf("rcode %s, want SERVFAIL", miekg.RcodeToString[resp.Rcode])
			}
		}
		if stub.seen("example.net.") {
			t.Fatal("a query was forwarded to the looping stub")
		}
		// The probe may still be on its way on a loaded machine.
		waitFor(t, "the loop to be logged", func() bool { return lc.count("forwards back to this server") >= 1 })
		if n := lc.count("forwards back to this server"); n != 1 {
			t.Fatalf("loop logged %d times, want once", n)
		}
	})
}

func TestLoopViaResolvConfRefused(t *testing.T) {
	requireRoot(t)
	self := uniqueLoopback(1)
	path := t.TempDir() + "/resolv.conf"
	if err := os.WriteFile(path, []byte("nameserver "+self+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, Config{Listen: []string{self + ":53"}, ResolvConf: path})
	if resp := ask(t, addr, "udp", "example.com.", miekg.TypeA); resp.Rcode != miekg.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL", miekg.RcodeToString[resp.Rcode])
	}
}

func TestResolvConfReread(t *testing.T) {
	requireRoot(t)
	first := startFakeUpstream(t, uniqueLoopback(2)+":53", answerA("192.0.2.41"))
	second := startFakeUpstream(t, uniqueLoopback(3)+":53", answerA("192.0.2.42"))
	path := t.TempDir() + "/resolv.conf"
	write := func(content string) {
		t.Helper()
		// Replace by rename, as resolvconf and NetworkManager do.
		if err := os.WriteFile(path+".tmp", []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write("# managed\nsearch example\nnameserver " + hostOf(t, first.addr) + "\n")
	log, lc := newLogCounter(t)
	_, addr := startServer(t, Config{ResolvConf: path, ResolvConfPoll: 20 * time.Millisecond, Logger: log})

	answer := func() string {
		got := aAddrs(ask(t, addr, "udp", "example.com.", miekg.TypeA).Answer)
		if len(got) != 1 {
			return ""
		}
		return got[0].String()
	}
	if got := answer(); got != "192.0.2.41" {
		t.Fatalf("answer %q, want the first upstream's", got)
	}

	write("nameserver " + hostOf(t, second.addr) + "\n")
	waitFor(t, "the new resolv.conf to be used", func() bool { return answer() == "192.0.2.42" })

	// A vanished file keeps the last upstreams.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	// The watcher has seen the file gone (it logs that once) and kept them.
	waitFor(t, "the watcher to find resolv.conf gone", func() bool { return lc.count("cannot read resolv.conf") > 0 })
	if got := answer(); got != "192.0.2.42" {
		t.Fatalf("after removal: %q, want the last upstream kept", got)
	}
}

// waitFor polls cond with a generous deadline (the machine is shared).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestForwardOverloadFailsFast(t *testing.T) {
	up := startFakeUpstream(t, "", answerA("192.0.2.80"))
	s, addr := startServer(t, Config{Upstreams: []string{up.addr}, ForwardTimeout: 30 * time.Second})
	// Occupy every forwarding slot, as a flood of slow external names would.
	for range maxInflightForwards {
		s.fwd.inflight <- struct{}{}
	}
	// Answered at once: the client's 10 s timeout is far below the 30 s
	// forwarding budget a queued query would wait.
	if resp := ask(t, addr, "udp", "example.com.", miekg.TypeA); resp.Rcode != miekg.RcodeServerFailure {
		t.Fatalf("overloaded: rcode %s, want SERVFAIL", miekg.RcodeToString[resp.Rcode])
	}
	// Names of the domain do not need a slot.
	s.Update(sampleRecords)
	if got := aAddrs(ask(t, addr, "udp", "nginx.warren.local.", miekg.TypeA).Answer); len(got) != 1 {
		t.Fatalf("local answer while overloaded: %v", got)
	}
	for range maxInflightForwards {
		<-s.fwd.inflight
	}
	if got := aAddrs(ask(t, addr, "udp", "example.com.", miekg.TypeA).Answer); len(got) != 1 {
		t.Fatalf("after the flood: %v", got)
	}
}

// switchingStub answers by itself, or forwards every query back to target
// (a loop) while loop is set.
func switchingStub(t *testing.T, target *atomic.Value, loop *atomic.Bool) *fakeUpstream {
	self := answerA("192.0.2.90")
	return startFakeUpstream(t, "", func(w miekg.ResponseWriter, r *miekg.Msg) {
		if !loop.Load() {
			self(w, r)
			return
		}
		resp, _, err := (&miekg.Client{Timeout: 5 * time.Second}).Exchange(r, target.Load().(string))
		if err != nil {
			miekg.HandleFailed(w, r)
			return
		}
		w.WriteMsg(resp)
	})
}

func TestLoopAppearingLaterIsCaught(t *testing.T) {
	var target atomic.Value
	var loop atomic.Bool
	stub := switchingStub(t, &target, &loop)
	log, lc := newLogCounter(t)
	port := itoa(freePort(t))
	target.Store("127.0.0.1:" + port)
	_, addr := startServer(t, Config{
		Listen:            []string{"127.0.0.1:" + port},
		Upstreams:         []string{stub.addr},
		ForwardTimeout:    500 * time.Millisecond,
		LoopProbeInterval: 50 * time.Millisecond,
		Logger:            log,
	})
	answer := func() string {
		got := aAddrs(ask(t, addr, "udp", "example.com.", miekg.TypeA).Answer)
		if len(got) != 1 {
			return ""
		}
		return got[0].String()
	}
	if got := answer(); got != "192.0.2.90" {
		t.Fatalf("before the loop: %q", got)
	}

	loop.Store(true)
	waitFor(t, "the periodic probe to find the loop", func() bool { return lc.count("forwards back to this server") == 1 })
	stub.forget()
	if resp := ask(t, addr, "udp", "example.com.", miekg.TypeA); resp.Rcode != miekg.RcodeServerFailure {
		t.Fatalf("during the loop: rcode %s, want SERVFAIL", miekg.RcodeToString[resp.Rcode])
	}
	if stub.seen("example.com.") {
		t.Fatal("forwarded to the looping upstream after the loop was found")
	}

	loop.Store(false)
	waitFor(t, "the upstream to be used again", func() bool { return answer() == "192.0.2.90" })
	if lc.count("no longer forwards back") < 1 {
		t.Fatal("recovery not logged")
	}
}

// A loop that appears between periodic probes fills the forwarding slots
// with one query bouncing between us and the stub; running out of slots
// triggers a probe at once.
func TestLoopStormTriggersProbe(t *testing.T) {
	var target atomic.Value
	var loop atomic.Bool
	stub := switchingStub(t, &target, &loop)
	log, lc := newLogCounter(t)
	port := itoa(freePort(t))
	target.Store("127.0.0.1:" + port)
	_, addr := startServer(t, Config{
		Listen:            []string{"127.0.0.1:" + port},
		Upstreams:         []string{stub.addr},
		ForwardTimeout:    5 * time.Second,
		LoopProbeInterval: time.Hour,
		Logger:            log,
	})
	if got := aAddrs(ask(t, addr, "udp", "example.com.", miekg.TypeA).Answer); len(got) != 1 {
		t.Fatalf("before the loop: %v", got)
	}
	loop.Store(true)
	resp := ask(t, addr, "udp", "storm.example.com.", miekg.TypeA)
	if resp.Rcode != miekg.RcodeServerFailure {
		t.Fatalf("looping query: rcode %s, want SERVFAIL", miekg.RcodeToString[resp.Rcode])
	}
	waitFor(t, "the overload to trigger a probe", func() bool { return lc.count("forwards back to this server") == 1 })
}

func TestForwardRejectsAnswerToAnotherQuestion(t *testing.T) {
	liar := startFakeUpstream(t, "", func(w miekg.ResponseWriter, r *miekg.Msg) {
		m := new(miekg.Msg)
		m.SetReply(r)
		m.Question[0].Name = "other.example."
		m.Answer = append(m.Answer, &miekg.A{
			Hdr: miekg.RR_Header{Name: "other.example.", Rrtype: miekg.TypeA, Class: miekg.ClassINET, Ttl: 30},
			A:   []byte{192, 0, 2, 99},
		})
		w.WriteMsg(m)
	})
	_, addr := startServer(t, Config{Upstreams: []string{liar.addr}, ForwardTimeout: time.Second})
	resp := ask(t, addr, "udp", "example.com.", miekg.TypeA)
	if resp.Rcode != miekg.RcodeServerFailure || len(resp.Answer) != 0 {
		t.Fatalf("rcode %s answers %v, want SERVFAIL without the unrelated answer", miekg.RcodeToString[resp.Rcode], resp.Answer)
	}
}

func TestForwardKeepsEDNSAndTruncatesForClient(t *testing.T) {
	// The upstream has 100 A records (1.6 kB) and, as resolvers do, cuts
	// its UDP answer to the size asked: the client gets TC over UDP and
	// all records over TCP, through us.
	big := startFakeUpstream(t, "", func(w miekg.ResponseWriter, r *miekg.Msg) {
		m := new(miekg.Msg)
		m.SetReply(r)
		for i := range 100 {
			m.Answer = append(m.Answer, &miekg.A{
				Hdr: miekg.RR_Header{Name: r.Question[0].Name, Rrtype: miekg.TypeA, Class: miekg.ClassINET, Ttl: 30},
				A:   []byte{192, 0, 2, byte(i)},
			})
		}
		size := miekg.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), false)
			size = int(opt.UDPSize())
		}
		if _, overTCP := w.RemoteAddr().(*net.TCPAddr); overTCP {
			size = miekg.MaxMsgSize
		}
		m.Truncate(size)
		w.WriteMsg(m)
	})
	_, addr := startServer(t, Config{Upstreams: []string{big.addr}})

	m := new(miekg.Msg)
	m.SetQuestion("many.example.", miekg.TypeA)
	m.SetEdns0(1232, false)
	resp := exchange(t, addr, "udp", m)
	resp.Compress = true
	packed, _ := resp.Pack()
	if resp.IsEdns0() == nil || len(packed) > 1232 {
		t.Fatalf("UDP: OPT %v, %d bytes", resp.IsEdns0(), len(packed))
	}
	if !resp.Truncated || len(resp.Answer) < 50 {
		t.Fatalf("UDP: tc=%v, %d records; want TC and as many as fit", resp.Truncated, len(resp.Answer))
	}
	if resp := exchange(t, addr, "tcp", m); resp.Truncated || len(resp.Answer) != 100 {
		t.Fatalf("TCP: tc=%v, %d records, want all 100", resp.Truncated, len(resp.Answer))
	}
}

func TestIPv6ListenAndUpstream(t *testing.T) {
	up := startFakeUpstream(t, "[::1]:0", answerA("192.0.2.66"))
	s, addr := startServer(t, Config{Listen: []string{"[::1]:0"}, Upstreams: []string{up.addr}})
	s.Update(sampleRecords)
	if !s.Addrs()[0].Addr().Is6() {
		t.Fatalf("bound %v", s.Addrs())
	}
	for _, network := range []string{"udp", "tcp"} {
		if got := aAddrs(ask(t, addr, network, "nginx.warren.local.", miekg.TypeA).Answer); len(got) != 1 {
			t.Fatalf("%s local answer over IPv6: %v", network, got)
		}
		if got := aAddrs(ask(t, addr, network, "example.com.", miekg.TypeA).Answer); len(got) != 1 || got[0].String() != "192.0.2.66" {
			t.Fatalf("%s forwarded over IPv6: %v", network, got)
		}
	}
	got, err := Resolve(t.Context(), addr, "nginx-1.warren.local")
	if err != nil || len(got) != 1 {
		t.Fatalf("Resolve over IPv6: %v, %v", got, err)
	}
}
