package integration

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// Seed section "WireGuard Overlay Network" for the standalone role: two
// appliances with each other as static peers, configured only from TOML.
func TestStandalonePairPingsAndWgShow(t *testing.T) {
	l := newLab(t)
	ctx := ctxFor(t, 2*time.Minute)
	a, err := l.AddNode("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.AddNode("b")
	if err != nil {
		t.Fatal(err)
	}
	// A range that shadows the LAN the node is on is refused at start,
	// naming both ranges, before anything is created.
	if err := a.WriteConfig(standaloneConfig("a", "10.0.0.1/24", "", nil) + "\n[network]\nvip_subnet = \"192.168.100.0/24\"\n"); err != nil {
		t.Fatal(err)
	}
	out, err := a.Exec(ctx, "warren-appliance")
	if err == nil || !strings.Contains(out, "network.vip_subnet: 192.168.100.0/24 overlaps 192.168.100.0/24") {
		t.Fatalf("a VIP range over the node's LAN was not refused clearly: %v\n%s", err, out)
	}
	if _, err := a.Exec(ctx, "ip", "link", "show", "warren0"); err == nil {
		t.Fatal("warren0 created although the config was refused")
	}

	keys := map[*lab.Node]string{}
	for _, n := range []*lab.Node{a, b} {
		// The first call creates the key; the second must print the same one.
		if err := n.WriteConfig(standaloneConfig(n.Name, "10.0.0.1/24", "", nil)); err != nil {
			t.Fatal(err)
		}
		k1, err := n.Exec(ctx, "warren-appliance", "--show-public-key")
		if err != nil {
			t.Fatal(err)
		}
		k2, _ := n.Exec(ctx, "warren-appliance", "--show-public-key")
		if trim(k1) != trim(k2) || len(trim(k1)) != 44 {
			t.Fatalf("%s: public key not stable: %q vs %q", n.Name, k1, k2)
		}
		keys[n] = trim(k1)
	}
	if err := a.WriteConfig(standaloneConfig("a", "10.0.0.1/24", keys[b], []string{b.LANIP.String() + ":51820", "10.0.0.2/32"})); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteConfig(standaloneConfig("b", "10.0.0.2/24", keys[a], []string{a.LANIP.String() + ":51820", "10.0.0.1/32"})); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*lab.Node{a, b} {
		if err := n.StartAppliance("warren-appliance"); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "a pings b over warren0", func() error {
		_, err := a.Exec(ctx, "ping", "-c1", "-W1", "10.0.0.2")
		return err
	})
	out, err = b.Exec(ctx, "ping", "-c3", "-i0.2", "-W2", "10.0.0.1")
	if err != nil {
		t.Fatalf("b pings a: %v\n%s", err, out)
	}
	// TCP across the tunnel: busybox nc serves a line, the other side reads it.
	if _, err := b.Background("nc.log", "busybox", "nc", "-l", "-p", "7000", "-e", "echo", "hello-over-wireguard"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "TCP across the tunnel", func() error {
		got, err := a.Exec(ctx, "busybox", "nc", "-w", "2", "10.0.0.2", "7000")
		if err != nil {
			return err
		}
		if !strings.Contains(got, "hello-over-wireguard") {
			return fmt.Errorf("got %q", got)
		}
		return nil
	})
	// `wg show warren0` (wireguard-tools) works against the embedded device.
	show, err := a.Exec(ctx, "wg", "show", "warren0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"interface: warren0", "listening port: 51820", "peer: " + keys[b], "latest handshake:", "allowed ips: 10.0.0.2/32"} {
		if !strings.Contains(show, want) {
			t.Errorf("wg show warren0 lacks %q:\n%s", want, show)
		}
	}
	hs, err := a.Exec(ctx, "wg", "show", "warren0", "latest-handshakes")
	if err != nil || !strings.Contains(hs, keys[b]) || strings.Contains(hs, "\t0\n") {
		t.Errorf("latest-handshakes shows no handshake with b: %q %v", hs, err)
	}
	if out, err := a.Exec(ctx, "ip", "link", "show", "warren0"); err != nil || !strings.Contains(out, "mtu 1420") {
		t.Errorf("ip link show warren0: %q %v", out, err)
	}
	// SIGHUP re-reads the peers: a new third peer appears, and the session
	// with b is not disturbed (same handshake time, traffic still flows).
	third, err := a.Exec(ctx, "wg", "genkey")
	if err != nil {
		t.Fatal(err)
	}
	thirdPub, err := a.Sh(ctx, "echo "+trim(third)+" | wg pubkey")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := a.Exec(ctx, "wg", "show", "warren0", "latest-handshakes")
	cfg := standaloneConfig("a", "10.0.0.1/24", keys[b], []string{b.LANIP.String() + ":51820", "10.0.0.2/32"}) +
		fmt.Sprintf("\n[[wireguard.peer]]\npublic_key = %q\nallowed_ips = [\"10.0.0.3/32\"]\n", trim(thirdPub))
	if err := a.WriteConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if err := a.SignalAppliance(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "SIGHUP adds the third peer", func() error {
		peers, err := a.Exec(ctx, "wg", "show", "warren0", "peers")
		if err != nil {
			return err
		}
		if !strings.Contains(peers, trim(thirdPub)) || !strings.Contains(peers, keys[b]) {
			return fmt.Errorf("peers: %s", peers)
		}
		return nil
	})
	after, _ := a.Exec(ctx, "wg", "show", "warren0", "latest-handshakes")
	if !strings.Contains(after, strings.TrimSpace(strings.Split(before, "\n")[0])) {
		t.Errorf("the session with b was re-keyed by the reload:\nbefore %q\nafter %q", before, after)
	}
	if _, err := a.Exec(ctx, "ping", "-c1", "-W2", "10.0.0.2"); err != nil {
		t.Errorf("b unreachable after SIGHUP: %v", err)
	}

	// SIGTERM removes the interface and the UAPI socket.
	if err := a.StopAppliance(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "ip", "link", "show", "warren0"); err == nil {
		t.Error("warren0 still exists after SIGTERM")
	}
	if _, err := a.Exec(ctx, "test", "-e", "/var/run/wireguard/warren0.sock"); err == nil {
		t.Error("UAPI socket still exists after SIGTERM")
	}
}

func standaloneConfig(name, addr, peerKey string, peer []string) string {
	s := fmt.Sprintf("[node]\nname = %q\nrole = \"standalone\"\n\n[wireguard]\nmode = \"tun\"\naddress = %q\n", name, addr)
	if peerKey != "" {
		s += fmt.Sprintf("\n[[wireguard.peer]]\npublic_key = %q\nendpoint = %q\nallowed_ips = [%q]\n", peerKey, peer[0], peer[1])
	}
	return s
}
