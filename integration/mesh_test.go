package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// startCluster brings up a manager and n workers, failing the test (with
// the nodes' logs) if they do not all turn ready.
func startCluster(t *testing.T, l *lab.Lab, opts lab.ClusterOptions) *lab.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := l.StartCluster(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Seed "WireGuard Configuration (Automatic)" and "Manual WireGuard
// Inspection": cluster init + token join give a full mesh with no
// hand-written peer config.
func TestClusterFormsFullMesh(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2})
	ctx := ctxFor(t, 2*time.Minute)

	nodes, err := c.NodeList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		"manager-1": {"10.0.0.1", "10.0.1.0/24"},
		"worker-1":  {"10.0.0.2", "10.0.2.0/24"},
		"worker-2":  {"10.0.0.3", "10.0.3.0/24"},
	}
	for _, n := range nodes {
		w, ok := want[n.Name]
		if !ok || n.OverlayIP != w[0] || n.ContainerBlock != w[1] || n.Status != "ready" {
			t.Errorf("node ls: %+v, want overlay %s block %s ready", n, w[0], w[1])
		}
	}
	// `warren node ls` shows the manager's last handshake with each worker
	// (reported with the heartbeat, so it may take one report interval).
	eventually(t, 30*time.Second, "node ls shows handshakes with the workers", func() error {
		out, err := c.Manager.Exec(ctx, "warren", "node", "ls")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "worker-") && !strings.HasSuffix(strings.TrimSpace(line), "ago") {
				return fmt.Errorf("no handshake yet: %q", line)
			}
		}
		return nil
	})
	overlay := map[string]string{"manager-1": "10.0.0.1", "worker-1": "10.0.0.2", "worker-2": "10.0.0.3"}
	for _, n := range c.Nodes() {
		for name, ip := range overlay {
			if name == n.Name {
				continue
			}
			eventually(t, 30*time.Second, fmt.Sprintf("%s pings %s (%s)", n.Name, name, ip), func() error {
				_, err := n.Exec(ctx, "ping", "-c1", "-W1", ip)
				return err
			})
		}
		show, err := n.Exec(ctx, "wg", "show", "warren0")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Count(show, "peer: "); got != 2 {
			t.Errorf("%s: wg show lists %d peers, want 2:\n%s", n.Name, got, show)
		}
		if strings.Count(show, "latest handshake:") != 2 {
			t.Errorf("%s: not every peer has a handshake:\n%s", n.Name, show)
		}
		routes, err := n.Sh(ctx, "ip route show table main | grep warren0")
		if err != nil {
			t.Fatal(err)
		}
		for _, block := range []string{"10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"} {
			if want[n.Name][1] == block {
				continue
			}
			if !strings.Contains(routes, block) {
				t.Errorf("%s: no route to %s via warren0:\n%s", n.Name, block, routes)
			}
		}
	}
}
