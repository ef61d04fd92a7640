package integration

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// wgPeers returns `wg show warren0 peers` on n as a set.
func wgPeers(t *testing.T, n *lab.Node) map[string]bool {
	t.Helper()
	out, err := n.Exec(ctxFor(t, 20*time.Second), "wg", "show", "warren0", "peers")
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	for _, k := range strings.Fields(out) {
		set[k] = true
	}
	return set
}

// Issue "cluster": restarting the manager changes no address, block or
// key, and the mesh passes traffic while it is down; a worker restarted
// while the manager is down restores its peers from the cached map.
func TestManagerDownMeshSurvivesAndWorkerRestoresFromCache(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2})
	ctx := ctxFor(t, 3*time.Minute)
	before, err := c.NodeList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w1, w2 := c.Workers[0], c.Workers[1]
	eventually(t, 30*time.Second, "worker-1 reaches worker-2", func() error {
		_, err := w1.Exec(ctx, "ping", "-c1", "-W1", "10.0.0.3")
		return err
	})
	peersBefore := wgPeers(t, w1)

	if err := c.Manager.StopAppliance(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The mesh keeps working without the manager...
	if _, err := w1.Exec(ctx, "ping", "-c2", "-W2", "10.0.0.3"); err != nil {
		t.Fatalf("mesh broke while the manager is down: %v", err)
	}
	// ...and a worker that restarts meanwhile restores it from its cache.
	if err := w2.StopAppliance(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := w2.StartAppliance("warren-appliance"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "worker-1 reaches the restarted worker-2 with the manager down", func() error {
		_, err := w1.Exec(ctx, "ping", "-c1", "-W1", "10.0.0.3")
		return err
	})
	if got := wgPeers(t, w2); len(got) != 2 {
		t.Errorf("restarted worker-2 has %d peers from its cache, want 2", len(got))
	}

	// The manager comes back with the same cluster: same IPs, blocks, keys.
	if err := c.Manager.StartAppliance("warren-appliance"); err != nil {
		t.Fatal(err)
	}
	var after []lab.NodeView
	eventually(t, 60*time.Second, "all nodes ready after the manager restart", func() error {
		var err error
		if after, err = c.NodeList(ctx); err != nil {
			return err
		}
		for _, n := range after {
			if n.Status != "ready" {
				return fmt.Errorf("%s is %s", n.Name, n.Status)
			}
		}
		return nil
	})
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("nodes changed across the manager restart:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := wgPeers(t, w1); fmt.Sprint(got) != fmt.Sprint(peersBefore) {
		t.Errorf("worker-1's peers were re-keyed: before %v after %v", peersBefore, got)
	}
}

// Issue "cluster": `warren node rm` takes the node out of every peer list.
func TestNodeRemoveDropsPeerEverywhere(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2})
	ctx := ctxFor(t, 2*time.Minute)
	w2 := c.Workers[1]
	key, err := w2.Exec(ctx, "warren-appliance", "--show-public-key")
	if err != nil {
		t.Fatal(err)
	}
	key = trim(key)
	if err := w2.StopAppliance(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Manager.Exec(ctx, "warren", "node", "rm", "worker-2"); err != nil {
		// A node that is not down yet may need --force: say so in the error.
		if !strings.Contains(out, "force") {
			t.Fatalf("node rm: %v", err)
		}
		if _, err := c.Manager.Exec(ctx, "warren", "node", "rm", "--force", "worker-2"); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*lab.Node{c.Manager, c.Workers[0]} {
		eventually(t, 20*time.Second, n.Name+" drops worker-2's peer", func() error {
			if wgPeers(t, n)[key] {
				return fmt.Errorf("worker-2 (%s) still a peer", key)
			}
			return nil
		})
	}
	nodes, err := c.NodeList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 {
		t.Errorf("node ls after rm: %+v", nodes)
	}
}
