package tunnel

import (
	"context"
	"fmt"
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

	// wgctrl, as other Go tools would use it.
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
	cmd := inNSCmd(ns, bin, iface)
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
