package dns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

// requireHealthy checks the server still answers correctly over both
// transports. Like a stub resolver it retries a lost datagram: a flood
// overflows the socket's receive buffer and the kernel drops what follows.
func requireHealthy(t *testing.T, addr string) {
	t.Helper()
	for _, network := range []string{"udp", "tcp"} {
		m := new(miekg.Msg)
		m.SetQuestion("nginx.warren.local.", miekg.TypeA)
		c := &miekg.Client{Net: network, Timeout: 2 * time.Second}
		var resp *miekg.Msg
		var err error
		for attempt := 0; attempt < 5; attempt++ {
			if resp, _, err = c.Exchange(m, addr); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("%s: no answer after abuse: %v", network, err)
		}
		got := aAddrs(resp.Answer)
		if len(got) != 1 || got[0] != netip.MustParseAddr("10.1.0.5") {
			t.Fatalf("%s: server answers %v after abuse", network, got)
		}
	}
}

func TestMalformedPacketsLeaveServerAnswering(t *testing.T) {
	up := startFakeUpstream(t, "", answerA("192.0.2.50"))
	s, addr := startServer(t, Config{Upstreams: []string{up.addr}, Logger: quietLogger()})
	s.Update(sampleRecords)
	rng := rand.New(rand.NewPCG(1, 2))

	t.Run("random bytes over UDP", func(t *testing.T) {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := range 3000 {
			b := make([]byte, rng.IntN(700))
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			if i%3 == 0 && len(b) >= 12 {
				// A plausible header (query, one question) over random
				// sections gets past the header check into the parser.
				binary.BigEndian.PutUint16(b[2:], 0x0100)
				binary.BigEndian.PutUint16(b[4:], 1)
			}
			// A connected UDP socket may report an earlier datagram's ICMP
			// error on a later write; only the server's health matters.
			if _, err := c.Write(b); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatal(err)
			}
		}
		requireHealthy(t, addr)
	})

	t.Run("random bytes over TCP", func(t *testing.T) {
		for range 50 {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 2+rng.IntN(2000))
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(b)
			c.Close()
		}
		requireHealthy(t, addr)
	})

	t.Run("oversized UDP query", func(t *testing.T) {
		m := new(miekg.Msg)
		m.SetQuestion("nginx.warren.local.", miekg.TypeA)
		m.SetEdns0(4096, false)
		opt := m.IsEdns0()
		opt.Option = append(opt.Option, &miekg.EDNS0_PADDING{Padding: make([]byte, 8000)})
		packed, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(packed); err != nil {
			t.Fatal(err)
		}
		// Cut to the read buffer: the server answers FORMERR (the header
		// is intact) or nothing; it must not answer as if it were whole.
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 65535)
		if n, err := c.Read(buf); err == nil {
			resp := new(miekg.Msg)
			if err := resp.Unpack(buf[:n]); err != nil || resp.Rcode != miekg.RcodeFormatError {
				t.Fatalf("reply to a cut query: rcode %v err %v, want FORMERR", resp.Rcode, err)
			}
		}
		requireHealthy(t, addr)
	})

	t.Run("oversized TCP query", func(t *testing.T) {
		// Near the 64 KiB TCP limit, but well formed: answered normally.
		m := new(miekg.Msg)
		m.SetQuestion("nginx.warren.local.", miekg.TypeA)
		m.SetEdns0(4096, false)
		opt := m.IsEdns0()
		opt.Option = append(opt.Option, &miekg.EDNS0_PADDING{Padding: make([]byte, 65000)})
		resp := exchange(t, addr, "tcp", m)
		if got := aAddrs(resp.Answer); len(got) != 1 {
			t.Fatalf("answer %v", resp)
		}
		requireHealthy(t, addr)
	})

	t.Run("multiple questions and responses", func(t *testing.T) {
		m := new(miekg.Msg)
		m.SetQuestion("nginx.warren.local.", miekg.TypeA)
		m.Question = append(m.Question, m.Question[0])
		if resp := exchange(t, addr, "udp", m); resp.Rcode != miekg.RcodeFormatError {
			t.Fatalf("two questions: rcode %s", miekg.RcodeToString[resp.Rcode])
		}
		requireHealthy(t, addr)
	})
}

func TestBurstOfQueries(t *testing.T) {
	up := startFakeUpstream(t, "", answerA("192.0.2.60"))
	s, addr := startServer(t, Config{Upstreams: []string{up.addr}, Logger: quietLogger()})
	s.Update(sampleRecords)

	type query struct {
		name  string
		rcode int
		want  []string
	}
	queries := []query{
		{"nginx.warren.local.", miekg.RcodeSuccess, []string{"10.1.0.5"}},
		{"API.warren.local.", miekg.RcodeSuccess, []string{"10.1.0.6"}},
		{"nginx-2.warren.local.", miekg.RcodeSuccess, []string{"10.0.2.2"}},
		{"tasks.nginx.warren.local.", miekg.RcodeSuccess, []string{"10.0.1.2", "10.0.2.2"}},
		{"gone.warren.local.", miekg.RcodeNameError, nil},
		{"example.com.", miekg.RcodeSuccess, []string{"192.0.2.60"}},
	}

	const total, workers = 10000, 64
	var next, retries atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &miekg.Client{Net: "udp", Timeout: 5 * time.Second}
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				q := queries[i%int64(len(queries))]
				m := new(miekg.Msg)
				m.SetQuestion(q.name, miekg.TypeA)
				var resp *miekg.Msg
				var err error
				// A real client retries a lost datagram; so do we, a few times.
				for attempt := 0; attempt < 3; attempt++ {
					if resp, _, err = c.Exchange(m, addr); err == nil {
						break
					}
					retries.Add(1)
				}
				if err != nil {
					errc <- fmt.Errorf("query %d %s: %w", i, q.name, err)
					return
				}
				var got []string
				for _, a := range aAddrs(resp.Answer) {
					got = append(got, a.String())
				}
				slices.Sort(got)
				if resp.Rcode != q.rcode || !slices.Equal(got, q.want) || resp.Id != m.Id {
					errc <- fmt.Errorf("query %d %s: rcode %s answers %v, want %s %v", i, q.name, miekg.RcodeToString[resp.Rcode], got, miekg.RcodeToString[q.rcode], q.want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	t.Logf("%d queries from %d clients, %d retried after a lost datagram", total, workers, retries.Load())
	requireHealthy(t, addr)
}
