package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
)

// openWatch opens a watch stream with cert and returns its status; the
// stream stays open until the test ends.
func openWatch(t *testing.T, addr string, cert tls.Certificate) int {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); tr.CloseIdleConnections() })
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+api.PathWatch, nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp.StatusCode
}

// slowStatus sends a status report's headers and part of its body with
// cert, and returns once the manager answered or is reading the body.
func slowStatus(t *testing.T, addr string, cert tls.Certificate) (status chan int) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", api.PathStatus)
	status = make(chan int, 1)
	go func() {
		var code int
		fmt.Fscanf(c, "HTTP/1.1 %d", &code)
		status <- code
	}()
	return status
}

// Finding 5 of hardening-2: one worker held 300 watch streams. A node
// gets maxWatchesPerNode streams and maxRequestsPerNode calls in flight;
// others are answered 429, and closing frees the slots.
func TestCapsPerAuthenticatedNode(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	join(t, cfg)
	cert := agentCert(t, cfg.StateDir)
	for i := range maxWatchesPerNode {
		if got := openWatch(t, tm.addr, cert); got != http.StatusOK {
			t.Fatalf("watch %d: %d", i+1, got)
		}
	}
	if got := openWatch(t, tm.addr, cert); got != http.StatusTooManyRequests {
		t.Fatalf("watch %d: %d, want 429", maxWatchesPerNode+1, got)
	}
	// Another node is not affected.
	other := agentConfig(t, tm, "worker-2")
	join(t, other)
	if got := openWatch(t, tm.addr, agentCert(t, other.StateDir)); got != http.StatusOK {
		t.Fatalf("another node's watch: %d", got)
	}
	// Calls in flight: reports that never finish their body.
	var held []chan int
	for range maxRequestsPerNode {
		held = append(held, slowStatus(t, tm.addr, cert))
	}
	// The held calls are in their handlers once the next one is refused;
	// until then a complete call may still get a slot: retry.
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, _ := nodeAPICall(t, tm.addr, http.MethodPost, api.PathStatus, NodeStatus{}, certs(cert))
		if code == http.StatusTooManyRequests {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("call beyond %d in flight: %d, want 429", maxRequestsPerNode, code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i, h := range held {
		select {
		case c := <-h:
			t.Fatalf("held call %d answered %d", i, c)
		default:
		}
	}
}

// Finding 5 of hardening-2: 8 addresses x 32 silent connections, re-opened
// as soon as they close, took all the unauthenticated slots: joins and
// reconnects were refused, nodes went down. Buckets per /24 and the slots
// kept for members' addresses keep a known node's reconnect working.
func TestSilentConnectionsDoNotLockOutKnownNodes(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	join(t, cfg) // from 127.0.0.1: a known address from now on
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for i := 1; i <= 8; i++ {
		src := &net.TCPAddr{IP: net.IPv4(127, 0, byte(i), 2)}
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := &net.Dialer{LocalAddr: src, Timeout: 2 * time.Second}
				for ctx.Err() == nil {
					c, err := d.DialContext(ctx, "tcp", tm.addr)
					if err != nil {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					// Silent until the manager closes it, then again.
					c.Read(make([]byte, 1))
					c.Close()
				}
			}()
		}
	}
	time.Sleep(time.Second) // let them take their slots
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	// The node restarts: a new agent, new connections.
	a, err := agent.Join(rctx, cfg)
	if err == nil {
		err = a.Report(rctx, NodeStatus{})
	}
	if err != nil {
		t.Fatalf("known node's reconnect while 256 silent connections are held: %v", err)
	}
}

// Sources share a bucket per /24 and /64; members' addresses get the kept
// slots once the rest are full.
func TestConnLimiterBucketsAndKeptSlots(t *testing.T) {
	member := netip.MustParseAddr("192.0.2.10")
	l := &connLimiter{known: func(a netip.Addr) bool { return a == member }}
	got := 0
	for i := range 8 {
		for range 32 {
			if _, ok := l.acquire(netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)})); ok {
				got++
			}
		}
	}
	if got != maxUnauthConnsPerBucket {
		t.Fatalf("8 addresses of one /24 took %d slots, want %d", got, maxUnauthConnsPerBucket)
	}
	v6 := 0
	for i := range 40 {
		if _, ok := l.acquire(netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1))); ok {
			v6++
		}
	}
	if v6 != maxUnauthConnsPerBucket {
		t.Fatalf("40 addresses of one /64 took %d slots, want %d", v6, maxUnauthConnsPerBucket)
	}
	// Fill the rest from many networks; then only members get in.
	for i := 0; l.total < maxUnauthConns; i++ {
		l.acquire(netip.AddrFrom4([4]byte{10, byte(i), 0, 1}))
	}
	if _, ok := l.acquire(netip.MustParseAddr("203.0.113.9")); ok {
		t.Fatal("an unknown source got a slot beyond the cap")
	}
	kept, ok := l.acquire(member)
	if !ok || !kept {
		t.Fatalf("member: kept=%v ok=%v, want a kept slot", kept, ok)
	}
	l.learn(netip.MustParseAddr("203.0.113.9")) // authenticated from there once
	if kept, ok := l.acquire(netip.MustParseAddr("203.0.113.9")); !ok || !kept {
		t.Fatal("an address a node authenticated from is not kept a slot")
	}
	l.release(member, true)
	if l.kept != 1 {
		t.Fatalf("kept = %d after release", l.kept)
	}
}
