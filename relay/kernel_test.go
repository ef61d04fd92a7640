package relay

// Kernel tests: two real WireGuard devices (TUN, wireguard-go, each in its
// own process inside its own network namespace) whose only way to each
// other is a relay running in a third namespace.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/internal/helperproc"
	"github.com/warren-appliance/warren/internal/netnstest"
	"github.com/warren-appliance/warren/internal/wgkey"
	"github.com/warren-appliance/warren/tunnel"
)

const relayPort = 7946

// kernelTopo: namespaces a and b, each joined to r by a veth (10.77.1.0/24
// and 10.77.2.0/24, r holding .1 on both). r does not forward unless
// forward is set, so a and b reach nothing but r: the relay in r is their
// only path.
type kernelTopo struct {
	a, b, r   string
	relayA    netip.Addr // r's address on a's side
	relayB    netip.Addr
	underA    netip.Addr
	underB    netip.Addr
	ifA, ifB  string
	tc        *testCluster
	idA, idB  identity
	idR       identity
	keyA      tunnel.Key // private
	keyB      tunnel.Key
	srv       *Server
	serverCtx context.CancelFunc
}

var kernelSeq int

func newKernelTopo(t testing.TB, forward bool, cfg ServerConfig) *kernelTopo {
	t.Helper()
	netnstest.RequireRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
	kernelSeq++
	tag := fmt.Sprintf("%d%c", os.Getpid()%100000, 'a'+kernelSeq%26)
	kt := &kernelTopo{
		a: netnstest.New(t, "rl", "a"), b: netnstest.New(t, "rl", "b"), r: netnstest.New(t, "rl", "r"),
		relayA: netip.MustParseAddr("10.77.1.1"), relayB: netip.MustParseAddr("10.77.2.1"),
		underA: netip.MustParseAddr("10.77.1.2"), underB: netip.MustParseAddr("10.77.2.2"),
		ifA: "wr" + tag + "a", ifB: "wr" + tag + "b",
	}
	t.Cleanup(func() {
		os.Remove("/var/run/wireguard/" + kt.ifA + ".sock")
		os.Remove("/var/run/wireguard/" + kt.ifB + ".sock")
	})
	for _, side := range []struct {
		ns, vethNS, vethR, addr, raddr, other string
	}{
		{kt.a, "ra" + tag, "rra" + tag, "10.77.1.2/24", "10.77.1.1/24", "10.77.2.0/24"},
		{kt.b, "rb" + tag, "rrb" + tag, "10.77.2.2/24", "10.77.2.1/24", "10.77.1.0/24"},
	} {
		netnstest.MustRun(t, "ip", "link", "add", side.vethNS, "netns", side.ns, "type", "veth", "peer", "name", side.vethR, "netns", kt.r)
		netnstest.Run(t, side.ns, "ip", "addr", "add", side.addr, "dev", side.vethNS)
		netnstest.Run(t, side.ns, "ip", "link", "set", side.vethNS, "up")
		netnstest.Run(t, kt.r, "ip", "addr", "add", side.raddr, "dev", side.vethR)
		netnstest.Run(t, kt.r, "ip", "link", "set", side.vethR, "up")
		if forward {
			netnstest.Run(t, side.ns, "ip", "route", "add", side.other, "via", strings.TrimSuffix(side.raddr, "/24"))
		}
	}
	fwd := "0"
	if forward {
		fwd = "1"
	}
	netnstest.Run(t, kt.r, "sysctl", "-qw", "net.ipv4.ip_forward="+fwd)

	kt.tc = newTestCluster(t)
	kt.idA, kt.idB, kt.idR = kt.tc.node(t, "node-a"), kt.tc.node(t, "node-b"), kt.tc.node(t, "relay-r")
	var err error
	if kt.keyA, err = tunnel.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	if kt.keyB, err = tunnel.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	kt.idA.wg, kt.idB.wg = wgkey.Key(kt.keyA.PublicKey()), wgkey.Key(kt.keyB.PublicKey())

	// The relay: this process, its sockets in r.
	cfg.Logger = testLogger(t)
	kt.srv = NewServer(cfg)
	kt.srv.SetMembers([]Member{kt.idA.member(), kt.idB.member(), kt.idR.member()})
	var ln net.Listener
	var uc *net.UDPConn
	netnstest.MustIn(t, kt.r, func() error {
		if ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", relayPort)); err != nil {
			return err
		}
		uc, err = net.ListenUDP("udp4", &net.UDPAddr{Port: relayPort})
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	kt.serverCtx = cancel
	t.Cleanup(cancel)
	cert := kt.idR.cert
	go kt.srv.ServeUDP(ctx, uc)
	go kt.srv.ServeTLS(ctx, ln, func() *tls.Certificate { return &cert }, kt.srv.VerifyMember(kt.tc.pool))
	return kt
}

// helperConfig is what a device process is started with.
type kernelHelperConfig struct {
	Interface string
	Private   tunnel.Key
	Address   netip.Prefix
	Peer      wgkey.Key
	Allowed   []netip.Prefix
	// Direct, when set, is the peer's endpoint: no relay.
	Direct netip.AddrPort
	Relay  Relay
	Cert   []byte // PEM
	Key    []byte // PEM
	CA     []byte // PEM
}

type kernelHelperReply struct {
	Err       string
	Status    Status
	Endpoint  netip.AddrPort
	Handshake time.Time
}

const kernelHelperEnv = "RELAY_TEST_HELPER_NODE"

func (kt *kernelTopo) helperConfig(t testing.TB, side string, direct bool) kernelHelperConfig {
	t.Helper()
	self, peer, priv := kt.idA, kt.idB, kt.keyA
	iface, addr, allowed, relayAddr, peerUnder := kt.ifA, "10.0.0.1/24", "10.0.0.2/32", kt.relayA, kt.underB
	if side == "b" {
		self, peer, priv = kt.idB, kt.idA, kt.keyB
		iface, addr, allowed, relayAddr, peerUnder = kt.ifB, "10.0.0.2/24", "10.0.0.1/32", kt.relayB, kt.underA
	}
	keyPEM, err := pki.EncodeKeyPEM(self.cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	hc := kernelHelperConfig{
		Interface: iface, Private: priv, Address: netip.MustParsePrefix(addr), Peer: peer.wg,
		Allowed: []netip.Prefix{netip.MustParsePrefix(allowed)},
		Relay:   Relay{ID: kt.idR.id, Name: "relay-r", Addr: netip.AddrPortFrom(relayAddr, relayPort).String(), Manager: true},
		Cert:    pki.EncodeCertPEM(self.cert.Certificate[0]), Key: keyPEM, CA: kt.tc.ca.CertPEM(),
	}
	if direct {
		hc.Direct = netip.AddrPortFrom(peerUnder, tunnel.DefaultListenPort)
	}
	return hc
}

// TestRelayHelperNode is not a test: it is the device process the kernel
// tests start inside a namespace: a TUN device and, unless the peer is
// direct, a relay client whose endpoint becomes the peer's. It answers one
// "HELPER {json}" line per line on stdin; EOF ends it.
func TestRelayHelperNode(t *testing.T) {
	raw := os.Getenv(kernelHelperEnv)
	if raw == "" {
		t.Skip("runs only as a re-executed device process")
	}
	os.Exit(kernelHelperMain(raw))
}

func kernelHelperMain(raw string) int {
	reply := helperproc.NewReplier(os.Stdout).Reply
	fail := func(err error) int { reply(kernelHelperReply{Err: err.Error()}); return 1 }
	var hc kernelHelperConfig
	if err := json.Unmarshal([]byte(raw), &hc); err != nil {
		return fail(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	dev, err := tunnel.Open(tunnel.Config{Interface: hc.Interface, Mode: tunnel.ModeTUN, Address: hc.Address, PrivateKey: hc.Private, Logger: log})
	if err != nil {
		return fail(err)
	}
	defer dev.Close()
	peer := tunnel.Peer{PublicKey: tunnel.Key(hc.Peer), AllowedIPs: hc.Allowed, Endpoint: hc.Direct}
	var client *Client
	if !hc.Direct.IsValid() {
		cert, err := tls.X509KeyPair(hc.Cert, hc.Key)
		if err != nil {
			return fail(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(hc.CA)
		client = NewClient(ClientConfig{Cert: func() *tls.Certificate { return &cert }, CAPool: func() *x509.CertPool { return pool },
			WireGuardPort: tunnel.DefaultListenPort, Logger: log})
		client.SetRelays([]Relay{hc.Relay})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go client.Run(ctx)
		deadline := time.Now().Add(30 * time.Second)
		for {
			if ep, _, ok := client.Endpoint(hc.Peer); ok {
				peer.Endpoint = ep
				break
			}
			if time.Now().After(deadline) {
				return fail(errors.New("no relay session within 30s"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err := dev.SetPeers([]tunnel.Peer{peer}); err != nil {
		return fail(err)
	}
	reply(kernelHelperReply{Endpoint: peer.Endpoint})
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var r kernelHelperReply
		if client != nil {
			r.Status = client.Status()
		}
		for _, h := range dev.Health() {
			r.Handshake = h.LastHandshake
		}
		r.Endpoint = peer.Endpoint
		reply(r)
	}
	return 0
}

// kernelHelper is a running device process.
type kernelHelper struct {
	t    testing.TB
	proc *helperproc.Proc
}

func startKernelHelper(t testing.TB, ns string, hc kernelHelperConfig) *kernelHelper {
	t.Helper()
	raw, err := json.Marshal(hc)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, os.Args[0], "-test.run=^TestRelayHelperNode$")
	cmd.Env = append(os.Environ(), kernelHelperEnv+"="+string(raw))
	cmd.Stderr = &lineLogger{t: t, prefix: hc.Interface + ": "}
	h := &kernelHelper{t: t, proc: helperproc.Start(t, cmd)}
	if r := h.read(); r.Err != "" {
		t.Fatalf("device process in %s: %s", ns, r.Err)
	}
	return h
}

func (h *kernelHelper) read() kernelHelperReply {
	h.t.Helper()
	var r kernelHelperReply
	if err := h.proc.Read(&r); err != nil {
		h.t.Fatal(err)
	}
	return r
}

func (h *kernelHelper) status() kernelHelperReply {
	h.t.Helper()
	io.WriteString(h.proc.Stdin(), "status\n")
	return h.read()
}

type lineLogger struct {
	t      testing.TB
	prefix string
}

func (l *lineLogger) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		func() {
			defer func() { recover() }() // the test may have finished
			l.t.Log(l.prefix + line)
		}()
	}
	return len(p), nil
}

// TestKernelTunnelsThroughRelay: two TUN devices that cannot reach each
// other handshake and pass TCP through the relay, over UDP, and over TLS
// when both namespaces drop their outgoing UDP to the relay.
func TestKernelTunnelsThroughRelay(t *testing.T) {
	for _, transport := range []string{TransportUDP, TransportTLS} {
		t.Run(transport, func(t *testing.T) {
			kt := newKernelTopo(t, false, ServerConfig{})
			// No direct path: a's underlay has no route to b's.
			if c, err := netnstest.DialTCP(kt.a, netip.AddrPortFrom(kt.underB, 22).String(), time.Second); err == nil {
				c.Close()
				t.Fatal("a reaches b's underlay directly: the test would prove nothing")
			}
			if transport == TransportTLS {
				for _, ns := range []string{kt.a, kt.b} {
					netnstest.Run(t, ns, "iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--dport", fmt.Sprint(relayPort), "-j", "DROP")
				}
			}
			a := startKernelHelper(t, kt.a, kt.helperConfig(t, "a", false))
			b := startKernelHelper(t, kt.b, kt.helperConfig(t, "b", false))
			netnstest.TCPEcho(t, kt.b, "10.0.0.2:7000")
			waitFor(t, "TCP through the relay", 60*time.Second, func() error {
				return netnstest.EchoRoundTrip(kt.a, "10.0.0.2:7000", strings.Repeat("through the relay ", 2000))
			})
			for _, h := range []*kernelHelper{a, b} {
				waitFor(t, "transport "+transport, 20*time.Second, func() error {
					st := h.status()
					if st.Handshake.IsZero() {
						return errors.New("no handshake")
					}
					if !st.Status.Up || st.Status.Transport != transport || st.Status.Relay.Name != "relay-r" {
						return fmt.Errorf("status %+v", st.Status)
					}
					return nil
				})
			}
			st := kt.srv.Stats()
			if st.RelayedBytes[transport] < 36000 || st.Sessions != 2 {
				t.Fatalf("relay stats %+v: want both sessions, and the echo's bytes relayed over %s", st, transport)
			}
			t.Logf("relay stats: %+v", st)
		})
	}
}

// throughput sends TCP from a to b's overlay address for d and returns
// what b received, in Mbit/s.
func throughput(t testing.TB, kt *kernelTopo, d time.Duration) float64 {
	t.Helper()
	var l net.Listener
	netnstest.MustIn(t, kt.b, func() (err error) { l, err = net.Listen("tcp", "10.0.0.2:7001"); return err })
	defer l.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	c, err := netnstest.DialTCP(kt.a, "10.0.0.2:7001", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	start := time.Now()
	c.SetWriteDeadline(start.Add(d))
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			break
		}
	}
	c.Close()
	n := <-got
	return float64(n) * 8 / time.Since(start).Seconds() / 1e6
}

// BenchmarkRelayedTCP measures TCP throughput between two TUN devices
// whose namespaces are joined through a router namespace r, in one run:
// direct (r routes their WireGuard packets), relayed over UDP and relayed
// over TLS (the relay in r; UDP to it dropped), each against direct.
func BenchmarkRelayedTCP(b *testing.B) {
	const d = 5 * time.Second
	run := func(name string) float64 {
		// The relay's own cost: without the per-member rate limit
		// (DefaultPeerRate, 100 Mbit/s, would cap both relayed runs).
		kt := newKernelTopo(b, true, ServerConfig{PeerRate: 1e12})
		direct := name == "direct"
		if name == "relay-tls" {
			for _, ns := range []string{kt.a, kt.b} {
				netnstest.Run(b, ns, "iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--dport", fmt.Sprint(relayPort), "-j", "DROP")
			}
		}
		ha := startKernelHelper(b, kt.a, kt.helperConfig(b, "a", direct))
		startKernelHelper(b, kt.b, kt.helperConfig(b, "b", direct))
		netnstest.TCPEcho(b, kt.b, "10.0.0.2:7000")
		waitFor(b, "TCP through the tunnel", 60*time.Second, func() error { return netnstest.EchoRoundTrip(kt.a, "10.0.0.2:7000", "warm up") })
		if !direct {
			want := TransportUDP
			if name == "relay-tls" {
				want = TransportTLS
			}
			waitFor(b, "transport", 20*time.Second, func() error {
				if st := ha.status(); st.Status.Transport != want {
					return fmt.Errorf("transport %q", st.Status.Transport)
				}
				return nil
			})
		}
		mbps := throughput(b, kt, d)
		b.Logf("%s: %.0f Mbit/s, relay stats %+v", name, mbps, kt.srv.Stats())
		if !direct {
			if st := kt.srv.Stats(); st.RelayedBytes[map[string]string{"relay-udp": "udp", "relay-tls": "tls"}[name]] == 0 {
				b.Fatalf("%s: nothing relayed: %+v", name, st)
			}
		}
		return mbps
	}
	for i := 0; i < b.N; i++ {
		// Direct first and last: the shared machine's load drifts.
		d1 := run("direct")
		udp := run("relay-udp")
		tlsMbps := run("relay-tls")
		d2 := run("direct")
		direct := (d1 + d2) / 2
		fmt.Printf("\nTCP a -> b through WireGuard, %s each, Mbit/s:\n", d)
		fmt.Printf("  direct      %8.0f  (%.0f, %.0f)\n", direct, d1, d2)
		fmt.Printf("  relay-udp   %8.0f  %.2f of direct\n", udp, udp/direct)
		fmt.Printf("  relay-tls   %8.0f  %.2f of direct\n\n", tlsMbps, tlsMbps/direct)
		b.ReportMetric(direct, "direct-Mbit/s")
		b.ReportMetric(udp/direct, "relay-udp-ratio")
		b.ReportMetric(tlsMbps/direct, "relay-tls-ratio")
	}
}
