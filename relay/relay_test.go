package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/internal/wgkey"
	"github.com/warren-appliance/warren/tunnel"
)

// testCluster is a CA and the identities signed by it.
type testCluster struct {
	ca *pki.CA
}

func newTestCluster(t testing.TB) *testCluster {
	t.Helper()
	ca, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &testCluster{ca: ca}
}

func (tc *testCluster) pool() *x509.CertPool { return tc.ca.Pool() }

// identity is a node: its certificate and WireGuard key.
type identity struct {
	id   string
	cert tls.Certificate
	wg   wgkey.Key
}

func (tc *testCluster) node(t testing.TB, id string) identity {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tc.ca.SignNode(csr, id, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	priv, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return identity{id: id, cert: tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: key, Leaf: c}, wg: wgkey.Key(priv.PublicKey())}
}

func (i identity) member() Member { return Member{ID: i.id, Name: "name-" + i.id, Key: i.wg} }

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testRelay is a server on loopback: TLS on a TCP port and, unless
// noUDP, UDP on the same port number.
type testRelay struct {
	srv   *Server
	addr  string
	relay Relay
}

func startRelay(t testing.TB, tc *testCluster, self identity, cfg ServerConfig, noUDP bool, members ...identity) *testRelay {
	t.Helper()
	cfg.Logger = testLogger(t)
	srv := NewServer(cfg)
	ms := []Member{self.member()}
	for _, m := range members {
		ms = append(ms, m.member())
	}
	srv.SetMembers(ms)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var ln net.Listener
	var uc *net.UDPConn
	for range 20 {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if noUDP {
			break
		}
		uc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ln.Addr().(*net.TCPAddr).AddrPort()))
		if err == nil {
			break
		}
		ln.Close()
	}
	if uc != nil {
		go srv.ServeUDP(ctx, uc)
	}
	cert := self.cert
	go srv.ServeTLS(ctx, ln, func() *tls.Certificate { return &cert }, srv.VerifyMember(tc.pool))
	addr := ln.Addr().String()
	return &testRelay{srv: srv, addr: addr, relay: Relay{ID: self.id, Name: "name-" + self.id, Addr: addr, Manager: true}}
}

// fakeWG stands in for a node's WireGuard socket on loopback.
type fakeWG struct {
	conn *net.UDPConn
	port int
}

func newFakeWG(t testing.TB) *fakeWG {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fakeWG{conn: c, port: c.LocalAddr().(*net.UDPAddr).Port}
}

func (w *fakeWG) recv(t testing.TB, timeout time.Duration) ([]byte, netip.AddrPort, error) {
	t.Helper()
	buf := make([]byte, 65535)
	w.conn.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := w.conn.ReadFromUDPAddrPort(buf)
	return buf[:n], from, err
}

func startClient(t testing.TB, tc *testCluster, who identity, wg *fakeWG, relays ...Relay) *Client {
	t.Helper()
	cert := who.cert
	c := NewClient(ClientConfig{Cert: func() *tls.Certificate { return &cert }, CAPool: tc.pool, WireGuardPort: wg.port, Logger: testLogger(t)})
	c.SetRelays(relays)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitEndpoint(t testing.TB, c *Client, peer wgkey.Key) netip.AddrPort {
	t.Helper()
	var ep netip.AddrPort
	waitFor(t, "relay endpoint", 10*time.Second, func() error {
		e, _, ok := c.Endpoint(peer)
		if !ok {
			return fmt.Errorf("no relay session")
		}
		ep = e
		return nil
	})
	return ep
}

func waitTransport(t testing.TB, c *Client, want string) {
	t.Helper()
	waitFor(t, "transport "+want, 15*time.Second, func() error {
		if st := c.Status(); !st.Up || st.Transport != want {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// exchange sends packets both ways between two fake WireGuard sockets
// through their clients and checks what arrives, and from where.
func exchange(t testing.TB, a, b identity, ca, cb *Client, wa, wb *fakeWG) {
	t.Helper()
	epB := waitEndpoint(t, ca, b.wg) // A's endpoint for B
	if !epB.Addr().IsLoopback() {
		t.Fatalf("relay endpoint %s is not on loopback", epB)
	}
	for i := range 5 {
		msg := []byte(fmt.Sprintf("a to b %d %s", i, strings.Repeat("x", 1400)))
		if _, err := wa.conn.WriteToUDPAddrPort(msg, epB); err != nil {
			t.Fatal(err)
		}
		got, from, err := wb.recv(t, 5*time.Second)
		if err != nil {
			t.Fatalf("packet %d from A did not reach B: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("packet %d changed in transit", i)
		}
		// B's WireGuard sees A's packets from B's endpoint for A, and
		// answering there reaches A from A's endpoint for B.
		if epA, _, ok := cb.Endpoint(a.wg); !ok || epA != from {
			t.Fatalf("B received from %s, but B's relay endpoint for A is %s (ok=%v)", from, epA, ok)
		}
		reply := append([]byte("b to a "), msg...)
		if _, err := wb.conn.WriteToUDPAddrPort(reply, from); err != nil {
			t.Fatal(err)
		}
		got, from, err = wa.recv(t, 5*time.Second)
		if err != nil {
			t.Fatalf("reply %d from B did not reach A: %v", i, err)
		}
		if !bytes.Equal(got, reply) || from != epB {
			t.Fatalf("reply %d: from %s (want %s), equal %v", i, from, epB, bytes.Equal(got, reply))
		}
	}
}

func TestRelayOverUDP(t *testing.T) {
	tc := newTestCluster(t)
	r, a, b := tc.node(t, "relay1"), tc.node(t, "node-a"), tc.node(t, "node-b")
	tr := startRelay(t, tc, r, ServerConfig{}, false, a, b)
	wa, wb := newFakeWG(t), newFakeWG(t)
	ca := startClient(t, tc, a, wa, tr.relay)
	cb := startClient(t, tc, b, wb, tr.relay)
	waitTransport(t, ca, TransportUDP)
	waitTransport(t, cb, TransportUDP)
	// The server knows both receive over UDP once their pings said so.
	waitFor(t, "server sees UDP sessions", 10*time.Second, func() error {
		if st := tr.srv.Stats(); st.UDPSessions != 2 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	exchange(t, a, b, ca, cb, wa, wb)
	st := tr.srv.Stats()
	if st.RelayedPackets["udp"] < 10 || st.RelayedBytes["udp"] < 10*1400 {
		t.Fatalf("server stats %+v: want the 10 packets relayed over UDP", st)
	}
	if s := ca.Status(); s.Relay.Name != "name-relay1" || s.Transport != TransportUDP {
		t.Fatalf("client status %+v", s)
	}
	if _, via, _ := ca.Endpoint(b.wg); via != "name-relay1" {
		t.Fatalf("relayed via %q, want the relay's name", via)
	}
}

func TestRelayOverTLSWhenUDPGetsNoAnswer(t *testing.T) {
	tc := newTestCluster(t)
	r, a, b := tc.node(t, "relay1"), tc.node(t, "node-a"), tc.node(t, "node-b")
	// No UDP socket: the clients' UDP pings go unanswered, as at a site
	// that drops outgoing UDP.
	tr := startRelay(t, tc, r, ServerConfig{}, true, a, b)
	wa, wb := newFakeWG(t), newFakeWG(t)
	ca := startClient(t, tc, a, wa, tr.relay)
	cb := startClient(t, tc, b, wb, tr.relay)
	waitEndpoint(t, ca, b.wg)
	waitEndpoint(t, cb, a.wg)
	exchange(t, a, b, ca, cb, wa, wb)
	if s := ca.Status(); s.Transport != TransportTLS {
		t.Fatalf("client status %+v, want tls", s)
	}
	st := tr.srv.Stats()
	if st.RelayedPackets["tls"] < 10 || st.RelayedPackets["udp"] != 0 {
		t.Fatalf("server stats %+v: want the 10 packets relayed over TLS", st)
	}
}

func TestRelayRefusesNonMembers(t *testing.T) {
	tc := newTestCluster(t)
	r, a := tc.node(t, "relay1"), tc.node(t, "node-a")
	stranger := tc.node(t, "stranger")           // signed by the CA, not in the map
	other := newTestCluster(t).node(t, "node-a") // right name, another cluster's CA
	tr := startRelay(t, tc, r, ServerConfig{}, false, a)

	for name, who := range map[string]identity{"not a member": stranger, "another CA": other} {
		t.Run(name, func(t *testing.T) {
			cert := who.cert
			conf := (&Client{cfg: ClientConfig{Cert: func() *tls.Certificate { return &cert }, CAPool: tc.pool}}).clientTLS(r.id)
			c, err := tls.Dial("tcp", tr.addr, conf)
			if err == nil {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, _, err = readFrame(c, make([]byte, 0xffff))
				c.Close()
			}
			if err == nil {
				t.Fatal("got a relay session")
			}
		})
	}
	if st := tr.srv.Stats(); st.Sessions != 0 {
		t.Fatalf("sessions %d after refusals", st.Sessions)
	}

	// A client refuses a relay that is not the node the map names.
	wa := newFakeWG(t)
	wrong := tr.relay
	wrong.ID = "some-other-node"
	ca := startClient(t, tc, a, wa, wrong)
	time.Sleep(time.Second)
	if st := ca.Status(); st.Up {
		t.Fatalf("client accepted a relay with another node's certificate: %+v", st)
	}

	// Removing a member closes its session.
	cb := startClient(t, tc, a, newFakeWG(t), tr.relay)
	waitEndpoint(t, cb, r.wg)
	tr.srv.SetMembers([]Member{r.member()})
	waitFor(t, "session of a removed member closed", 5*time.Second, func() error {
		if st := tr.srv.Stats(); st.Sessions != 0 {
			return fmt.Errorf("%d sessions", st.Sessions)
		}
		return nil
	})
}

func TestRelayDropsForgedAndReplayedDatagrams(t *testing.T) {
	tc := newTestCluster(t)
	r, a, b := tc.node(t, "relay1"), tc.node(t, "node-a"), tc.node(t, "node-b")
	tr := startRelay(t, tc, r, ServerConfig{}, false, a, b)
	wb := newFakeWG(t)
	cb := startClient(t, tc, b, wb, tr.relay)
	waitTransport(t, cb, TransportUDP)

	// A's session, driven by hand.
	cert := a.cert
	c := &Client{cfg: ClientConfig{Cert: func() *tls.Certificate { return &cert }, CAPool: tc.pool}, log: testLogger(t)}
	cc, err := c.dial(context.Background(), tr.relay)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.close()
	send := func(dg []byte) {
		if _, err := cc.udp.Write(dg); err != nil {
			t.Fatal(err)
		}
	}
	expectNothing := func(what string) {
		t.Helper()
		if got, _, err := wb.recv(t, 500*time.Millisecond); err == nil {
			t.Fatalf("%s reached B: %q", what, got)
		}
	}
	good := cc.key.seal(nil, dirToServer, typeData, 100, b.wg[:], []byte("genuine"))
	send(good)
	if got, _, err := wb.recv(t, 5*time.Second); err != nil || string(got) != "genuine" {
		t.Fatalf("a genuine datagram: %q, %v", got, err)
	}
	send(good)
	expectNothing("a replayed datagram")

	forgedKey := testKey(t)
	forgedKey.id = cc.key.id // the session id is not secret; its key is
	send(forgedKey.seal(nil, dirToServer, typeData, 101, b.wg[:], []byte("forged")))
	expectNothing("a datagram with a forged MAC")

	tampered := cc.key.seal(nil, dirToServer, typeData, 102, b.wg[:], []byte("tampered"))
	tampered[len(tampered)-tagLen-1] ^= 1
	send(tampered)
	expectNothing("a tampered datagram")

	var nobody wgkey.Key
	nobody[0] = 1
	send(cc.key.seal(nil, dirToServer, typeData, 103, nobody[:], []byte("to a stranger")))
	st := tr.srv.Stats()
	waitFor(t, "drops counted", 5*time.Second, func() error {
		st = tr.srv.Stats()
		if st.Dropped["auth"] < 3 || st.Dropped["not_member"] < 1 {
			return fmt.Errorf("dropped %v", st.Dropped)
		}
		return nil
	})
}

func TestRelayBounds(t *testing.T) {
	tc := newTestCluster(t)
	r, a, b, d := tc.node(t, "relay1"), tc.node(t, "node-a"), tc.node(t, "node-b"), tc.node(t, "node-d")

	t.Run("max sessions", func(t *testing.T) {
		tr := startRelay(t, tc, r, ServerConfig{MaxSessions: 2}, false, a, b, d)
		ca := startClient(t, tc, a, newFakeWG(t), tr.relay)
		cb := startClient(t, tc, b, newFakeWG(t), tr.relay)
		waitEndpoint(t, ca, b.wg)
		waitEndpoint(t, cb, a.wg)
		cd := startClient(t, tc, d, newFakeWG(t), tr.relay)
		time.Sleep(time.Second)
		if cd.Status().Up {
			t.Fatal("a third session was admitted with max_sessions = 2")
		}
		if n := tr.srv.Stats().Sessions; n != 2 {
			t.Fatalf("%d sessions, want 2", n)
		}
	})

	t.Run("rate per member", func(t *testing.T) {
		tr := startRelay(t, tc, r, ServerConfig{PeerRate: 1000, PeerBurst: 1}, false, a, b)
		wa, wb := newFakeWG(t), newFakeWG(t)
		ca := startClient(t, tc, a, wa, tr.relay)
		cb := startClient(t, tc, b, wb, tr.relay)
		waitTransport(t, ca, TransportUDP)
		waitTransport(t, cb, TransportUDP)
		ep := waitEndpoint(t, ca, b.wg)
		pkt := bytes.Repeat([]byte{1}, 1000)
		// The burst holds one largest packet (64 KiB); 200 KB at once
		// must exceed it.
		for range 200 {
			wa.conn.WriteToUDPAddrPort(pkt, ep)
			time.Sleep(200 * time.Microsecond)
		}
		got := 0
		for {
			if _, _, err := wb.recv(t, time.Second); err != nil {
				break
			}
			got++
		}
		st := tr.srv.Stats()
		if got == 0 || got >= 200 || st.Dropped["rate"] == 0 {
			t.Fatalf("%d of 200 packets arrived, dropped %v: want the rate limit to cut some, not all", got, st.Dropped)
		}
	})

	t.Run("queued bytes", func(t *testing.T) {
		srv := NewServer(ServerConfig{QueueBytes: 4000, QueueFrames: 100, Logger: testLogger(t)})
		srv.SetMembers([]Member{a.member()})
		c1, c2 := net.Pipe() // nobody reads: the writer would block
		defer c2.Close()
		ss, err := srv.open(c1, a.id)
		if err != nil {
			t.Fatal(err)
		}
		frame := make([]byte, 1000)
		n := 0
		for range 10 {
			if ss.enqueue(frame) {
				n++
			}
		}
		if n != 4 || srv.queued.Load() != 4000 {
			t.Fatalf("queued %d frames (%d bytes) under a 4000-byte budget", n, srv.queued.Load())
		}
		srv.remove(ss)
		if q := srv.queued.Load(); q != 0 {
			t.Fatalf("%d bytes still counted after the session went", q)
		}
	})
}

func TestClientFailsOverToTheNextRelay(t *testing.T) {
	tc := newTestCluster(t)
	r1, r2, a, b := tc.node(t, "relay1"), tc.node(t, "relay2"), tc.node(t, "node-a"), tc.node(t, "node-b")
	t1 := startRelay(t, tc, r1, ServerConfig{}, false, a, b, r2)
	t2 := startRelay(t, tc, r2, ServerConfig{}, false, a, b, r1)
	dead := Relay{ID: "relay0", Name: "name-relay0", Addr: "127.0.0.1:1", Manager: true}
	wa, wb := newFakeWG(t), newFakeWG(t)
	// relay0 refuses connections; relay2 is not a manager: both clients
	// settle on relay1.
	r2relay := t2.relay
	r2relay.Manager = false
	ca := startClient(t, tc, a, wa, r2relay, t1.relay, dead)
	cb := startClient(t, tc, b, wb, t1.relay, dead, r2relay)
	waitEndpoint(t, ca, b.wg)
	if s := ca.Status(); s.Relay.ID != "relay1" {
		t.Fatalf("client uses %q, want relay1", s.Relay.ID)
	}
	exchange(t, a, b, ca, cb, wa, wb)

	// relay1 leaves the map: both move to relay2 and the endpoints stay.
	epB, _, _ := ca.Endpoint(b.wg)
	ca.SetRelays([]Relay{r2relay, dead})
	cb.SetRelays([]Relay{r2relay, dead})
	waitFor(t, "failover to relay2", 15*time.Second, func() error {
		if sa, sb := ca.Status(), cb.Status(); sa.Relay.ID != "relay2" || sb.Relay.ID != "relay2" {
			return fmt.Errorf("a on %q, b on %q", sa.Relay.ID, sb.Relay.ID)
		}
		return nil
	})
	if ep, _, _ := ca.Endpoint(b.wg); ep != epB {
		t.Fatalf("endpoint changed from %s to %s on failover: WireGuard's endpoint would go stale", epB, ep)
	}
	exchange(t, a, b, ca, cb, wa, wb)
}

// TestRelayBoundsUnauthenticatedHandshakes: connections that never finish
// their TLS handshake hold at most MaxHandshakes slots; the next one is
// closed at once, and a member still gets in once the slots free up.
func TestRelayBoundsUnauthenticatedHandshakes(t *testing.T) {
	tc := newTestCluster(t)
	r, a := tc.node(t, "relay1"), tc.node(t, "node-a")
	tr := startRelay(t, tc, r, ServerConfig{MaxHandshakes: 3}, false, a)
	var idle []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", tr.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	waitFor(t, "a fourth unauthenticated connection closed at once", 5*time.Second, func() error {
		c, err := net.Dial("tcp", tr.addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			return fmt.Errorf("the fourth connection stayed open (%v)", err)
		}
		return nil
	})
	if st := tr.srv.Stats(); st.Dropped["handshakes"] == 0 {
		t.Fatalf("dropped %v: want the refused handshakes counted", st.Dropped)
	}
	for _, c := range idle {
		c.Close()
	}
	ca := startClient(t, tc, a, newFakeWG(t), tr.relay)
	waitEndpoint(t, ca, r.wg)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestProxyTakesOnlyTheLocalWireGuard: a relayed peer's local endpoint
// relays only what comes from the local WireGuard port; Via recognises the
// endpoint (status: the peer is relayed, and how).
func TestProxyTakesOnlyTheLocalWireGuard(t *testing.T) {
	tc := newTestCluster(t)
	r, a, b := tc.node(t, "relay1"), tc.node(t, "node-a"), tc.node(t, "node-b")
	tr := startRelay(t, tc, r, ServerConfig{}, false, a, b)
	wa, wb := newFakeWG(t), newFakeWG(t)
	ca := startClient(t, tc, a, wa, tr.relay)
	startClient(t, tc, b, wb, tr.relay)
	waitTransport(t, ca, TransportUDP)
	ep := waitEndpoint(t, ca, b.wg)

	other := newFakeWG(t) // another local program
	if _, err := other.conn.WriteToUDPAddrPort([]byte("not from wireguard"), ep); err != nil {
		t.Fatal(err)
	}
	if got, _, err := wb.recv(t, time.Second); err == nil {
		t.Fatalf("a packet from another local port was relayed: %q", got)
	}
	if _, err := wa.conn.WriteToUDPAddrPort([]byte("from wireguard"), ep); err != nil {
		t.Fatal(err)
	}
	if got, _, err := wb.recv(t, 5*time.Second); err != nil || string(got) != "from wireguard" {
		t.Fatalf("the local WireGuard's packet: %q, %v", got, err)
	}

	rl, transport, ok := ca.Via(ep)
	if !ok || rl.ID != "relay1" || transport != TransportUDP {
		t.Fatalf("Via(%s) = %+v, %q, %v: want relay1 over udp", ep, rl, transport, ok)
	}
	if _, _, ok := ca.Via(netip.MustParseAddrPort("127.0.0.1:1")); ok {
		t.Fatal("Via recognised an endpoint that is not the client's")
	}
}
