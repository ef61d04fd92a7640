package paths

import (
	"crypto/rand"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/warren-appliance/warren/internal/wgkey"
)

// udpDevice is a Device on a real loopback UDP socket: what the engine
// sends goes out of it, what arrives is handed to the engine.
type udpDevice struct {
	conn *net.UDPConn
	mu   sync.Mutex
	set  map[wgkey.Key]netip.AddrPort
}

func (d *udpDevice) SendPacket(b []byte, to netip.AddrPort) error {
	_, err := d.conn.WriteToUDPAddrPort(b, to)
	return err
}

func (d *udpDevice) SetEndpoint(k wgkey.Key, ep netip.AddrPort) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.set[k] = ep
	return nil
}

func (d *udpDevice) endpoint(k wgkey.Key) netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.set[k]
}

func (d *udpDevice) PeerStats() map[wgkey.Key]PeerStats { return nil }

func (d *udpDevice) addr() netip.AddrPort { return d.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

type node struct {
	e     *Engine
	dev   *udpDevice
	pub   wgkey.Key
	mu    sync.Mutex
	cands []netip.AddrPort
}

func (n *node) reported() []netip.AddrPort {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.cands)
}

func newNode(t *testing.T) *node {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var priv [32]byte
	if _, err := rand.Read(priv[:]); err != nil {
		t.Fatal(err)
	}
	n := &node{dev: &udpDevice{conn: c, set: map[wgkey.Key]netip.AddrPort{}}}
	n.e, err = New(Config{PrivateKey: priv, Device: n.dev, OnCandidates: func(c []netip.AddrPort) {
		n.mu.Lock()
		n.cands = c
		n.mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	n.pub = n.e.pub
	go func() {
		buf := make([]byte, 1500)
		for {
			k, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			n.e.HandlePacket(buf[:k], from)
		}
	}()
	t.Cleanup(func() { c.Close() })
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// Two nodes learn their address from a third (the manager's STUN answer on
// its WireGuard socket), exchange candidates as the map would, probe each
// other with authenticated pings and set each other's endpoint.
func TestEngineDiscoversAndGoesDirectOverRealSockets(t *testing.T) {
	m, a, b := newNode(t), newNode(t), newNode(t)
	servers := []netip.AddrPort{m.dev.addr()}
	a.e.SetPeers(nil, servers)
	b.e.SetPeers(nil, servers)
	waitFor(t, "STUN answers", func() bool {
		a.e.step()
		b.e.step()
		return len(a.reported()) == 1 && len(b.reported()) == 1
	})
	if got := a.reported()[0]; got != a.dev.addr() {
		t.Fatalf("a learned %v, its socket is %v", got, a.dev.addr())
	}
	// The map carries the candidates; a third node unknown to a is not
	// answered.
	a.e.SetPeers([]Peer{{Key: b.pub, Name: "b", Candidates: b.reported()}}, servers)
	b.e.SetPeers([]Peer{{Key: a.pub, Name: "a", Candidates: a.reported()}}, servers)
	waitFor(t, "both directions direct", func() bool {
		a.e.step()
		b.e.step()
		return a.dev.endpoint(b.pub) == b.dev.addr() && b.dev.endpoint(a.pub) == a.dev.addr()
	})
	p := a.e.Paths()
	if len(p) != 1 || p[0].Path != PathDirect || p[0].Endpoint != b.dev.addr() || p[0].Name != "b" {
		t.Fatalf("a's paths: %+v", p)
	}
}

func TestEngineIgnoresProbesFromStrangers(t *testing.T) {
	a, b := newNode(t), newNode(t)
	// b knows a, a does not know b: b's pings stay unanswered.
	b.e.SetPeers([]Peer{{Key: a.pub, Name: "a", Candidates: []netip.AddrPort{a.dev.addr()}}}, nil)
	for range 6 {
		b.e.step()
		time.Sleep(50 * time.Millisecond)
	}
	if p := b.e.Paths(); p[0].Path != PathNone {
		t.Fatalf("a stranger's ping was answered: %+v", p)
	}
	a.e.SetPeers([]Peer{{Key: b.pub, Name: "b"}}, nil)
	b.e.mu.Lock()
	b.e.peers[a.pub].reprobe = true
	b.e.mu.Unlock()
	waitFor(t, "answer once known", func() bool {
		b.e.step()
		return b.e.Paths()[0].Path == PathDirect
	})
}

// A ping from a peer we have no path to is answered with a pong and a ping
// of ours to where it came from: the side that did not probe yet learns the
// path from the other's probe alone, at its first decision.
func TestEnginePingsBackWithoutAPath(t *testing.T) {
	a, b := newNode(t), newNode(t)
	a.e.SetPeers([]Peer{{Key: b.pub, Name: "b", Candidates: []netip.AddrPort{b.dev.addr()}}}, nil)
	b.e.SetPeers([]Peer{{Key: a.pub, Name: "a", Candidates: []netip.AddrPort{a.dev.addr()}}}, nil)
	// Only b probes; a never runs a round of its own.
	waitFor(t, "b direct", func() bool {
		b.e.step()
		return b.e.Paths()[0].Path == PathDirect
	})
	waitFor(t, "a's ping back answered", func() bool {
		a.e.mu.Lock()
		defer a.e.mu.Unlock()
		_, ok := a.e.peers[b.pub].pongs[b.dev.addr()]
		return ok
	})
	a.e.step()
	if p := a.e.Paths()[0]; p.Path != PathDirect || p.Endpoint != b.dev.addr() {
		t.Fatalf("a after its first decision: %+v, want direct to %v", p, b.dev.addr())
	}
}

type fakeRelay struct{ ep netip.AddrPort }

func (r fakeRelay) Endpoint(wgkey.Key) (netip.AddrPort, string, bool) { return r.ep, "manager-1", true }

// The relay hook: a peer none of whose candidates answers is given the
// relay's endpoint after RelayAfter; the relayed pair keeps probing and
// goes direct, with WireGuard's endpoint moved back, once a candidate
// answers.
func TestEngineFallsBackToTheRelayAndBack(t *testing.T) {
	a, b := newNode(t), newNode(t)
	clock := time.Now()
	var mu sync.Mutex
	a.e.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	relayEP := netip.MustParseAddrPort("127.0.0.1:9") // WireGuard's side of the relay proxy
	a.e.cfg.Relay = fakeRelay{relayEP}

	dead, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	dead.Close() // nothing answers there
	b.e.SetPeers([]Peer{{Key: a.pub, Name: "a"}}, nil)
	a.e.SetPeers([]Peer{{Key: b.pub, Name: "b", Candidates: []netip.AddrPort{deadAddr}}}, nil)
	a.e.step()
	advance(RelayAfter - time.Second)
	a.e.step()
	if p := a.e.Paths()[0]; p.Path != PathNone {
		t.Fatalf("before RelayAfter: %+v", p)
	}
	advance(2 * time.Second)
	a.e.step()
	if p := a.e.Paths()[0]; p.Path != PathRelay || p.Via != "manager-1" || a.dev.endpoint(b.pub) != relayEP {
		t.Fatalf("after RelayAfter: %+v, WireGuard endpoint %v; want relay via manager-1 at %v", p, a.dev.endpoint(b.pub), relayEP)
	}
	// b becomes reachable (a NAT opened): the next relayed probe round
	// finds it.
	a.e.SetPeers([]Peer{{Key: b.pub, Name: "b", Candidates: []netip.AddrPort{deadAddr, b.dev.addr()}}}, nil)
	waitFor(t, "direct again", func() bool {
		advance(RelayProbeInterval)
		a.e.step()
		return a.e.Paths()[0].Path == PathDirect
	})
	if got := a.dev.endpoint(b.pub); got != b.dev.addr() {
		t.Fatalf("WireGuard endpoint %v after going direct, want %v", got, b.dev.addr())
	}
}
