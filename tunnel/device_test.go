package tunnel

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
)

// TestTwoDevicesPingTCPAndWgShow: two TUN devices in two namespaces, each
// the other's static peer, exchange ICMP and TCP; the real `wg` binary and
// wgctrl read the peer through the UAPI socket.
func TestTwoDevicesPingTCPAndWgShow(t *testing.T) {
	tp := newTopo(t)
	ca, cb := tp.pairConfigs(t, ModeTUN, ModeTUN)
	// Forwards also work in tun mode, dialling through the kernel route.
	ca.Forwards = []Forward{{Proto: "tcp", Listen: netip.MustParseAddrPort("127.0.0.1:9100"), Target: netip.MustParseAddrPort("10.0.0.2:7000")}}
	a := startNode(t, tp.a, ca)
	b := startNode(t, tp.b, cb)
	if a.Mode != ModeTUN || b.Mode != ModeTUN {
		t.Fatalf("modes %s/%s, want tun", a.Mode, b.Mode)
	}

	out := runIn(t, tp.a, "busybox", "ping", "-c", "3", "-W", "5", "10.0.0.2")
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping across the tunnel:\n%s", out)
	}
	tcpEcho(t, tp.b, "10.0.0.2:7000")
	if err := echoRoundTrip(t, tp.a, "10.0.0.2:7000", "hello through wireguard"); err != nil {
		t.Fatalf("tcp across the tunnel: %v", err)
	}
	if err := echoRoundTrip(t, tp.a, "127.0.0.1:9100", "through a tun-mode forward"); err != nil {
		t.Fatalf("tcp through the forward: %v", err)
	}

	// wg show, the real wireguard-tools binary, finds the userspace socket.
	show := runIn(t, tp.a, "wg", "show", tp.ifA)
	for _, want := range []string{"public key: " + a.Pub.String(), "peer: " + b.Pub.String(), "endpoint: 192.168.77.2:51820",
		"allowed ips: 10.0.0.2/32, 10.0.2.0/24", "latest handshake:", "persistent keepalive: every 25 seconds"} {
		if !strings.Contains(show, want) {
			t.Errorf("wg show lacks %q:\n%s", want, show)
		}
	}
	hs := strings.Fields(runIn(t, tp.a, "wg", "show", tp.ifA, "latest-handshakes"))
	if len(hs) != 2 || hs[0] != b.Pub.String() {
		t.Fatalf("wg show latest-handshakes = %q", hs)
	}
	sec, _ := strconv.ParseInt(hs[1], 10, 64)
	if age := time.Since(time.Unix(sec, 0)); sec == 0 || age > 2*time.Minute {
		t.Fatalf("latest handshake %d is not recent (age %s)", sec, age)
	}

	// wgctrl, as other Go tools would use it. Under qemu-user (the
	// GOARCH=arm run) the test process cannot open generic netlink
	// sockets, which wgctrl asks for first; the device is not involved.
	if os.Getenv("WARREN_TEST_EMULATOR") == "" {
		wc, err := wgctrl.New()
		if err != nil {
			t.Fatal(err)
		}
		defer wc.Close()
		dev, err := wc.Device(tp.ifB)
		if err != nil {
			t.Fatalf("wgctrl device %s: %v", tp.ifB, err)
		}
		if Key(dev.PublicKey) != b.Pub || len(dev.Peers) != 1 || Key(dev.Peers[0].PublicKey) != a.Pub {
			t.Fatalf("wgctrl sees %+v", dev)
		}
		if dev.Peers[0].LastHandshakeTime.IsZero() || dev.Peers[0].ReceiveBytes == 0 {
			t.Fatalf("wgctrl peer has no handshake or traffic: %+v", dev.Peers[0])
		}
	}

	// Health agrees.
	h := a.health()
	if len(h) != 1 || h[0].PublicKey != b.Pub || !h[0].Healthy || h[0].RxBytes == 0 || h[0].TxBytes == 0 ||
		h[0].Endpoint != netip.AddrPortFrom(tp.underB, 51820) {
		t.Fatalf("health = %+v", h)
	}

	// Routes: the peer's block goes via the interface with the overlay source;
	// its /32 is covered by the interface subnet and needs none.
	routes := runIn(t, tp.a, "ip", "route", "show", "dev", tp.ifA)
	if !strings.Contains(routes, "10.0.2.0/24 proto 87 scope link src 10.0.0.1") {
		t.Fatalf("routes on %s:\n%s", tp.ifA, routes)
	}
	if strings.Contains(routes, "10.0.0.2 ") {
		t.Fatalf("redundant /32 route:\n%s", routes)
	}
}

// TestInteropWithWireGuardGo: our device and the upstream wireguard-go
// program, configured with wg and ip like an operator would, exchange traffic.
func TestInteropWithWireGuardGo(t *testing.T) {
	tp := newTopo(t)
	wgGo := buildWireGuardGo(t)
	ca, cb := tp.pairConfigs(t, ModeTUN, ModeTUN)
	a := startNode(t, tp.a, ca)
	startWireGuardGo(t, wgGo, tp.b, tp.ifB, cb)

	out := runIn(t, tp.a, "busybox", "ping", "-c", "3", "-W", "5", "10.0.0.2")
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping to wireguard-go:\n%s", out)
	}
	tcpEcho(t, tp.a, "10.0.0.1:7001")
	if err := echoRoundTrip(t, tp.b, "10.0.0.1:7001", "from upstream wireguard-go"); err != nil {
		t.Fatalf("tcp from wireguard-go: %v", err)
	}
	h := a.health()
	if len(h) != 1 || !h[0].Healthy {
		t.Fatalf("health = %+v", h)
	}
}

var wireGuardGoBin struct {
	path string
	err  error
	done bool
}

// buildWireGuardGo builds the upstream wireguard-go program at the version
// go.mod pins, once per test binary run.
func buildWireGuardGo(t testing.TB) string {
	t.Helper()
	if !wireGuardGoBin.done {
		wireGuardGoBin.done = true
		dir, err := os.MkdirTemp("", "tunnel-wggo-")
		if err == nil {
			wireGuardGoBin.path = dir + "/wireguard-go"
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			out, berr := exec.CommandContext(ctx, "go", "build", "-o", wireGuardGoBin.path, "golang.zx2c4.com/wireguard").CombinedOutput()
			if berr != nil {
				err = fmt.Errorf("go build wireguard-go: %v\n%s", berr, out)
			}
		}
		wireGuardGoBin.err = err
	}
	if wireGuardGoBin.err != nil {
		t.Fatal(wireGuardGoBin.err)
	}
	return wireGuardGoBin.path
}

// startWireGuardGo runs upstream wireguard-go as interface iface in ns and
// configures it from hc with wg and ip. It returns the process.
func startWireGuardGo(t testing.TB, bin, ns, iface string, hc helperConfig) *os.Process {
	t.Helper()
	cmd := inNSCmd(ns, emulated(bin, iface)...)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
	cmd.Stderr = &testLogWriter{t: t, prefix: "wireguard-go " + iface + ": "}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	waitFor(t, "wireguard-go socket", 30*time.Second, func() error {
		_, err := os.Stat(uapiSocketPath(iface))
		return err
	})
	keyFile := t.TempDir() + "/key"
	if err := os.WriteFile(keyFile, []byte(hc.Private.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"wg", "set", iface, "private-key", keyFile, "listen-port", strconv.Itoa(hc.Port)}
	for _, p := range hc.Peers {
		var ips []string
		for _, ip := range p.AllowedIPs {
			ips = append(ips, ip.String())
		}
		args = append(args, "peer", p.PublicKey.String(), "allowed-ips", strings.Join(ips, ","),
			"endpoint", p.Endpoint.String(), "persistent-keepalive", "25")
	}
	runIn(t, ns, args...)
	runIn(t, ns, "ip", "addr", "add", hc.Address.String(), "dev", iface)
	runIn(t, ns, "ip", "link", "set", iface, "mtu", "1420", "up")
	return cmd.Process
}

// TestNetstackForwardReachesTUNDevice: a netstack device (no kernel
// interface) reaches a TCP echo server on the TUN device's overlay address
// through a Forward listening on the netstack node's loopback.
func TestNetstackForwardReachesTUNDevice(t *testing.T) {
	tp := newTopo(t)
	ca, cb := tp.pairConfigs(t, ModeNetstack, ModeTUN)
	ca.Forwards = []Forward{
		{Proto: "tcp", Listen: netip.MustParseAddrPort("127.0.0.1:9000"), Target: netip.MustParseAddrPort("10.0.0.2:7002")},
		{Proto: "udp", Listen: netip.MustParseAddrPort("127.0.0.1:9001"), Target: netip.MustParseAddrPort("10.0.0.2:7004")},
	}
	a := startNode(t, tp.a, ca)
	startNode(t, tp.b, cb)
	tcpEcho(t, tp.b, "10.0.0.2:7002")
	if a.Mode != ModeNetstack {
		t.Fatalf("mode %s, want netstack", a.Mode)
	}
	// No kernel interface in netstack mode.
	if out, err := inNSCmd(tp.a, "ip", "link", "show", tp.ifA).CombinedOutput(); err == nil {
		t.Fatalf("netstack mode created a kernel interface:\n%s", out)
	}
	waitFor(t, "echo through the forward", 30*time.Second, func() error {
		return echoRoundTrip(t, tp.a, "127.0.0.1:9000", "via gvisor netstack")
	})
	// A larger payload, both directions, to exercise the copy loops.
	big := strings.Repeat("0123456789abcdef", 64<<10)
	if err := echoRoundTrip(t, tp.a, "127.0.0.1:9000", big); err != nil {
		t.Fatalf("1 MiB echo through the forward: %v", err)
	}
	// UDP: datagrams relayed per client, replies come back to the client.
	udpEcho(t, tp.b, "10.0.0.2:7004")
	var uc *net.UDPConn
	if err := withNetns(t, tp.a, func() (err error) {
		uc, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:9001")))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("datagram %d", i)
		waitFor(t, "udp echo through the forward", 30*time.Second, func() error {
			if _, err := uc.Write([]byte(msg)); err != nil {
				return err
			}
			uc.SetReadDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 64)
			n, err := uc.Read(buf)
			if err != nil {
				return err
			}
			if string(buf[:n]) != msg {
				return fmt.Errorf("got %q, want %q", buf[:n], msg)
			}
			return nil
		})
	}

	// The UAPI socket works in netstack mode too.
	show := runIn(t, tp.a, "wg", "show", tp.ifA)
	if !strings.Contains(show, "peer: "+cb.Private.PublicKey().String()) || !strings.Contains(show, "latest handshake:") {
		t.Fatalf("wg show in netstack mode:\n%s", show)
	}
}

// TestAutoFallsBackToNetstack: with /dev/net/tun hidden (a private mount
// namespace with an empty /dev/net), auto mode runs on netstack.
func TestAutoFallsBackToNetstack(t *testing.T) {
	tp := newTopo(t)
	ca, _ := tp.pairConfigs(t, ModeAuto, ModeTUN)
	raw, _ := jsonMarshal(ca)
	cmd := exec.Command("unshare", append([]string{"-m", "--propagation", "private", "sh", "-c",
		`ns=$1; shift; mount -t tmpfs tmpfs /dev/net && exec nsenter --net=/run/netns/"$ns" "$@" -test.run='^TestHelperNode$'`,
		"sh", tp.a}, emulated(os.Args[0])...)...)
	cmd.Env = append(os.Environ(), helperEnv+"="+raw)
	n := startNodeCmd(t, cmd, ca.Interface)
	if n.Mode != ModeNetstack {
		t.Fatalf("auto mode without /dev/net/tun = %s, want netstack", n.Mode)
	}
	// The log comes on stderr, copied apart from the reply on stdout: it
	// is complete only once the process has exited (exec.Cmd.Wait returns
	// after the copy), so the device is closed before the log is read.
	n.close()
	if !strings.Contains(n.log.String(), "cannot open /dev/net/tun") {
		t.Fatalf("no fallback log line; log:\n%s", n.log.String())
	}
	// And auto with the device present picks tun.
	_, cb := tp.pairConfigs(t, ModeAuto, ModeAuto)
	if b := startNode(t, tp.b, cb); b.Mode != ModeTUN {
		t.Fatalf("auto mode with /dev/net/tun = %s, want tun", b.Mode)
	}
}

// TestBadPeerDoesNotBlockTheOthers: a peer set holding an all-zero key (a
// member that joined with a broken key) still brings up every other peer.
func TestBadPeerDoesNotBlockTheOthers(t *testing.T) {
	tp := newTopo(t)
	ca, cb := tp.pairConfigs(t, ModeTUN, ModeTUN)
	ca.Peers = append([]Peer{{AllowedIPs: pfx("10.0.0.9/32")}}, ca.Peers...)
	startNode(t, tp.a, ca)
	b := startNode(t, tp.b, cb)
	out := runIn(t, tp.a, "busybox", "ping", "-c", "2", "-W", "5", "10.0.0.2")
	if !strings.Contains(out, "2 packets received") {
		t.Fatalf("ping across the tunnel with a bad peer in the set:\n%s", out)
	}
	show := runIn(t, tp.a, "wg", "show", tp.ifA, "peers")
	if strings.TrimSpace(show) != b.Pub.String() {
		t.Fatalf("device peers = %q, want only %s", show, b.Pub)
	}
}

// TestPeerChurnKeepsStream: adding and removing a third peer (and its
// route) on both ends while a TCP stream runs does not interrupt it.
func TestPeerChurnKeepsStream(t *testing.T) {
	tp := newTopo(t)
	ca, cb := tp.pairConfigs(t, ModeTUN, ModeTUN)
	a := startNode(t, tp.a, ca)
	b := startNode(t, tp.b, cb)

	// Sink in b counting bytes; stream from a.
	var received atomicCounter
	sinkDone := make(chan error, 1)
	var ln net.Listener
	if err := withNetns(t, tp.b, func() (err error) { ln, err = net.Listen("tcp", "10.0.0.2:7003"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sinkDone <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			received.add(n)
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				sinkDone <- err
				return
			}
		}
	}()
	var c net.Conn
	waitFor(t, "stream connects", 30*time.Second, func() (err error) { c, err = dialIn(t, tp.a, "10.0.0.2:7003"); return err })
	stop := make(chan struct{})
	sendDone := make(chan error, 1)
	var sent atomicCounter
	go func() {
		chunk := make([]byte, 16<<10)
		for {
			select {
			case <-stop:
				sendDone <- c.(*net.TCPConn).CloseWrite()
				return
			default:
			}
			c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			n, err := c.Write(chunk)
			sent.add(n)
			if err != nil {
				sendDone <- err
				return
			}
		}
	}()
	defer c.Close()

	third, _ := GenerateKey()
	thirdPeer := Peer{PublicKey: third.PublicKey(), Endpoint: netip.MustParseAddrPort("192.168.77.3:51820"), AllowedIPs: pfx("10.0.0.3/32", "10.0.3.0/24")}
	progress := func(what string) {
		before := received.get()
		waitFor(t, "stream progresses after "+what, 30*time.Second, func() error {
			if received.get() <= before {
				return fmt.Errorf("received stuck at %d", before)
			}
			return nil
		})
	}
	progress("start")
	handshakeBefore := a.health()[0].LastHandshake
	for round := 0; round < 3; round++ {
		a.setPeers(append(ca.Peers, thirdPeer)...)
		b.setPeers(append(cb.Peers, thirdPeer)...)
		routes := runIn(t, tp.a, "ip", "route", "show", "dev", tp.ifA)
		if !strings.Contains(routes, "10.0.3.0/24") {
			t.Fatalf("third peer's route missing:\n%s", routes)
		}
		if h := a.health(); len(h) != 2 {
			t.Fatalf("a has %d peers, want 2", len(h))
		}
		progress("adding the third peer")
		a.setPeers(ca.Peers...)
		b.setPeers(cb.Peers...)
		routes = runIn(t, tp.a, "ip", "route", "show", "dev", tp.ifA)
		if strings.Contains(routes, "10.0.3.0/24") {
			t.Fatalf("third peer's route left behind:\n%s", routes)
		}
		progress("removing the third peer")
	}
	// The unchanged peer was never re-created (replace_peers would have
	// dropped its session and forced a fresh handshake).
	if h := a.health(); len(h) != 1 || !h[0].LastHandshake.Equal(handshakeBefore) {
		t.Fatalf("peer b's session changed during churn: handshake %v, before %v", h, handshakeBefore)
	}
	// And the stream ends cleanly with every byte delivered.
	close(stop)
	if err := <-sendDone; err != nil {
		t.Fatalf("stream sender: %v", err)
	}
	select {
	case err := <-sinkDone:
		if err != nil {
			t.Fatalf("stream receiver: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("receiver did not see the end of the stream")
	}
	if received.get() != sent.get() {
		t.Fatalf("sent %d bytes, received %d", sent.get(), received.get())
	}
	t.Logf("streamed %d bytes across 3 add/remove rounds of a third peer", sent.get())
}

// TestCloseRemovesEverythingAndStaleSocketIsReplaced.
func TestCloseRemovesEverythingAndStaleSocketIsReplaced(t *testing.T) {
	tp := newTopo(t)
	ca, cb := tp.pairConfigs(t, ModeTUN, ModeTUN)

	// A stale socket, as a crashed process leaves it: a socket file nobody listens on.
	os.MkdirAll("/var/run/wireguard", 0o755)
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: uapiSocketPath(ca.Interface), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Stat(uapiSocketPath(ca.Interface)); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}

	a := startNode(t, tp.a, ca)
	startNode(t, tp.b, cb)
	runIn(t, tp.a, "wg", "show", tp.ifA) // the replaced socket answers

	// A second device with the same name must not steal the live socket.
	other := ca
	other.Port = 51821
	if _, err := tryStartNode(t, tp.b, other); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second device on a live socket: err = %v, want 'in use'", err)
	}
	runIn(t, tp.a, "wg", "show", tp.ifA) // and the first one still answers

	waitFor(t, "route installed", 10*time.Second, func() error {
		if !strings.Contains(runIn(t, tp.a, "ip", "route", "show", "dev", tp.ifA), "10.0.2.0/24") {
			return fmt.Errorf("no route")
		}
		return nil
	})
	a.close()
	if out, err := inNSCmd(tp.a, "ip", "link", "show", tp.ifA).CombinedOutput(); err == nil {
		t.Fatalf("interface still present after Close:\n%s", out)
	}
	if out := runIn(t, tp.a, "ip", "route", "show", "table", "all"); strings.Contains(out, "10.0.2.0/24") || strings.Contains(out, tp.ifA) {
		t.Fatalf("routes left after Close:\n%s", out)
	}
	if _, err := os.Stat(uapiSocketPath(tp.ifA)); !os.IsNotExist(err) {
		t.Fatalf("uapi socket left after Close: %v", err)
	}
}

// TestSetRoutesAndRemove: extra routes (the cluster's VIP range) are owned
// like the peers' ones: replaced by the next set, gone with the interface;
// Remove deletes an interface and socket a dead process left behind.
func TestSetRoutesAndRemove(t *testing.T) {
	tp := newTopo(t)
	ca, _ := tp.pairConfigs(t, ModeTUN, ModeTUN)
	a := startNode(t, tp.a, ca)
	a.setRoutes(pfx("172.18.0.0/16")...)
	routes := runIn(t, tp.a, "ip", "route", "show", "dev", tp.ifA)
	if !strings.Contains(routes, "172.18.0.0/16 proto 87 scope link src 10.0.0.1") || !strings.Contains(routes, "10.0.2.0/24") {
		t.Fatalf("routes on %s after SetRoutes:\n%s", tp.ifA, routes)
	}
	// Peer changes keep the extra route; a new set replaces it.
	a.setPeers(ca.Peers...)
	a.setRoutes(pfx("172.19.0.0/16")...)
	routes = runIn(t, tp.a, "ip", "route", "show", "dev", tp.ifA)
	if strings.Contains(routes, "172.18.0.0/16") || !strings.Contains(routes, "172.19.0.0/16 proto 87") || !strings.Contains(routes, "10.0.2.0/24") {
		t.Fatalf("routes on %s after a second SetRoutes:\n%s", tp.ifA, routes)
	}
	a.close()
	if out := runIn(t, tp.a, "ip", "route", "show", "table", "all"); strings.Contains(out, "172.19.0.0/16") {
		t.Fatalf("routes left after Close:\n%s", out)
	}

	// What a killed process with a persistent interface leaves: the
	// interface and a socket file. Remove takes both; a second Remove
	// finds nothing and is not an error.
	runIn(t, tp.a, "ip", "tuntap", "add", "mode", "tun", "name", tp.ifA)
	os.MkdirAll("/var/run/wireguard", 0o755)
	if err := os.WriteFile(uapiSocketPath(tp.ifA), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := withNetns(t, tp.a, func() error { return Remove(tp.ifA, slog.Default()) }); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if out, err := inNSCmd(tp.a, "ip", "link", "show", tp.ifA).CombinedOutput(); err == nil {
		t.Fatalf("interface still present after Remove:\n%s", out)
	}
	if _, err := os.Stat(uapiSocketPath(tp.ifA)); !os.IsNotExist(err) {
		t.Fatalf("uapi socket left after Remove: %v", err)
	}
}

// TestRoamedEndpointSurvivesStaleConfig: b is configured with a wrong
// endpoint for a; a reaches b, so b learns a's real endpoint from the
// handshake. Re-applying b's stale configuration must keep the learned one.
func TestRoamedEndpointSurvivesStaleConfig(t *testing.T) {
	tp := newTopo(t)
	ca, cb := tp.pairConfigs(t, ModeTUN, ModeTUN)
	stale := netip.AddrPortFrom(tp.underA, 51999) // nothing listens there
	cb.Peers[0].Endpoint = stale
	startNode(t, tp.a, ca)
	b := startNode(t, tp.b, cb)

	out := runIn(t, tp.a, "busybox", "ping", "-c", "3", "-W", "5", "10.0.0.2")
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping a->b:\n%s", out)
	}
	learned := netip.AddrPortFrom(tp.underA, 51820)
	h := b.health()
	if len(h) != 1 || h[0].Endpoint != learned || !h[0].Healthy {
		t.Fatalf("b did not learn a's endpoint: %+v", h)
	}
	b.setPeers(cb.Peers...) // the stale endpoint again
	if h := b.health(); h[0].Endpoint != learned {
		t.Fatalf("stale configured endpoint overwrote the roamed one: %s", h[0].Endpoint)
	}
	out = runIn(t, tp.b, "busybox", "ping", "-c", "3", "-W", "5", "10.0.0.1")
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping b->a after re-applying config:\n%s", out)
	}
}

// TestOpenFailureLeavesNothingBehind: when the listen port is taken, Open
// fails with the reason and removes the interface and socket it created.
func TestOpenFailureLeavesNothingBehind(t *testing.T) {
	tp := newTopo(t)
	_, cb := tp.pairConfigs(t, ModeTUN, ModeTUN)
	var squatter net.PacketConn
	if err := withNetns(t, tp.b, func() (err error) { squatter, err = net.ListenPacket("udp", ":51820"); return err }); err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	_, err := tryStartNode(t, tp.b, cb)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("open with the port taken: err = %v, want address already in use", err)
	}
	if out, err := inNSCmd(tp.b, "ip", "link", "show", tp.ifB).CombinedOutput(); err == nil {
		t.Fatalf("interface left behind after failed Open:\n%s", out)
	}
	if _, err := os.Stat(uapiSocketPath(tp.ifB)); !os.IsNotExist(err) {
		t.Fatalf("uapi socket left behind after failed Open: %v", err)
	}
}
