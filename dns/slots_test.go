package dns

import (
	"net"
	"sync"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

// askUDPFrom sends one query from the source address src.
func askUDPFrom(src, server, name string, timeout time.Duration) (*miekg.Msg, error) {
	m := new(miekg.Msg)
	m.SetQuestion(name, miekg.TypeA)
	c := &miekg.Client{Net: "udp", Timeout: timeout,
		Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}, Timeout: timeout}}
	resp, _, err := c.Exchange(m, server)
	return resp, err
}

// Finding 7 of hardening-2: one task could take every forwarding slot
// (512) with slow external names, and then no task on the node resolved
// anything outside the domain. A source gets maxInflightPerSource slots;
// past them its queries fail at once, and other sources are still served.
func TestOneSourceCannotTakeEveryForwardSlot(t *testing.T) {
	release := make(chan struct{})
	fast := answerA("192.0.2.77")
	up := startFakeUpstream(t, "", func(w miekg.ResponseWriter, r *miekg.Msg) {
		if r.Question[0].Name == "slow.example." {
			<-release // never answered while the test runs
			return
		}
		fast(w, r)
	})
	s, addr := startServer(t, Config{Upstreams: []string{up.addr}, ForwardTimeout: 30 * time.Second})
	var wg sync.WaitGroup
	defer func() { close(release); wg.Wait() }()
	hog := "127.0.0.1"
	for range maxInflightPerSource {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The client gives up at once; the server's forward holds the
			// slot until the upstream answers (never, here) or 30 s pass.
			askUDPFrom(hog, addr, "slow.example.", time.Second)
		}()
	}
	waitFor(t, "the hog's queries to hold their slots", func() bool { return len(s.fwd.inflight) == maxInflightPerSource })
	// The hog's next external query fails at once (within the client's
	// 10 s, far below the 30 s forward budget it would otherwise wait).
	resp, err := askUDPFrom(hog, addr, "slow.example.", 10*time.Second)
	if err != nil || resp.Rcode != miekg.RcodeServerFailure {
		t.Fatalf("the hog's query beyond its slots: %v %v, want SERVFAIL at once", resp, err)
	}
	// Another task still resolves external names.
	resp, err = askUDPFrom("127.0.0.2", addr, "fast.example.", 10*time.Second)
	if err != nil || len(aAddrs(resp.Answer)) != 1 {
		t.Fatalf("another source's query: %v %v", resp, err)
	}
}
