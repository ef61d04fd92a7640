package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// A worker relays ([relay] enable = true, on relay.port) where the manager
// does not ([relay] enable = false): two workers behind symmetric NATs meet
// through the worker relay, over UDP, and over TLS once one site drops its
// outgoing UDP. The manager's own relay is off: its API port refuses the
// relay protocol, and nothing is relayed there.
func TestWorkerRelayWhenTheManagerDoesNotRelay(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, WorkersBehindNAT: true, ManagerExtra: "[relay]\nenable = false\n"})
	w1, w2 := c.Workers[0], c.Workers[1]
	r1, r2 := c.Routers[0], c.Routers[1]
	ctx := ctxFor(t, 10*time.Minute)

	// relay-1: a worker on the LAN that relays on 7947 (TCP and UDP).
	rl, err := l.AddNode("relay-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := rl.StartContainerd(ctx); err != nil {
		t.Fatal(err)
	}
	token, err := c.Manager.Exec(ctx, "warren", "cluster", "join-token", "worker", "-q")
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("[node]\nname = \"relay-1\"\nrole = \"worker\"\nadvertise_address = %q\n\n[cluster]\nmanager = \"%s:7946\"\ntoken = %q\n\n"+
		"[wireguard]\nmode = \"tun\"\n\n[runtime]\ncgroup_parent = %q\n\n[relay]\nenable = true\nport = 7947\n",
		rl.LANIP, c.Manager.LANIP, strings.TrimSpace(token), rl.CgroupParent())
	if err := rl.WriteConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if err := rl.StartAppliance("warren-appliance"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "relay-1 ready", func() error {
		nodes, err := c.NodeList(ctx)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if n.Name == "relay-1" && n.Status == "ready" {
				return nil
			}
		}
		return fmt.Errorf("nodes %+v", nodes)
	})

	for _, r := range []*lab.Router{r1, r2} {
		if err := r.SetNAT(ctx, lab.NATSymmetric); err != nil {
			t.Fatal(err)
		}
	}
	waitRelayed(t, w1, w2, "relay-1", "udp", 2*time.Minute)
	waitRelayed(t, w2, w1, "relay-1", "udp", 30*time.Second)
	pingOverlay(t, ctx, w1, overlayIP(t, ctx, w2), 30*time.Second)
	if n := relayedBytes(t, ctx, rl, "udp"); n == 0 {
		t.Fatal("relay-1 counts no bytes relayed over UDP")
	}

	if err := r1.BlockUDP(ctx, true); err != nil {
		t.Fatal(err)
	}
	waitRelayed(t, w1, w2, "relay-1", "tls", 90*time.Second)
	// The relay answers w1 over TLS once w1's UDP went silent for 15 s
	// (its NAT mapping may still let the relay's UDP in until then).
	w2IP := overlayIP(t, ctx, w2)
	eventually(t, 30*time.Second, "relay-1 relays to worker-1 over TLS", func() error {
		if _, err := w1.Exec(ctx, "ping", "-c1", "-W1", w2IP); err != nil {
			return err
		}
		if n := relayedBytes(t, ctx, rl, "tls"); n == 0 {
			return fmt.Errorf("relay-1 counts no bytes relayed over TLS")
		}
		return nil
	})

	// The manager does not relay: no relay metrics, and its API port
	// refuses the relay's protocol (the handshake fails: no common ALPN).
	if out, err := c.Manager.Exec(ctx, "curl", "-sS", "-m", "5", "http://127.0.0.1:9586/metrics"); err != nil || strings.Contains(out, "warren_relay_") {
		t.Fatalf("the manager's /metrics (%v) has relay series though it does not relay", err)
	}
	out, err := w2.Sh(context.Background(), fmt.Sprintf("echo | timeout 10 openssl s_client -connect %s:7946 -alpn warren-relay/1 2>&1 || true", c.Manager.LANIP))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "alert no application protocol") {
		t.Fatalf("the manager's API port did not refuse the relay protocol though it does not relay:\n%s", out)
	}
}

// overlayIP is node n's overlay address, from its warren0 interface.
func overlayIP(t *testing.T, ctx context.Context, n *lab.Node) string {
	t.Helper()
	out, err := n.Sh(ctx, "ip -4 -o addr show dev warren0 | awk '{print $4}' | cut -d/ -f1")
	if err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("overlay address of %s: %q, %v", n.Name, out, err)
	}
	return strings.TrimSpace(out)
}
