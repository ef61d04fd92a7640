package cluster

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
	"github.com/warren-appliance/warren/cluster/pki"
)

func TestCreateClusterAndJoinTwoWorkers(t *testing.T) {
	tm := startManager(t)
	self := tm.m.Self()
	if self.OverlayIP.String() != "10.0.0.1" || self.ContainerBlock.String() != "10.0.1.0/24" || self.Role != clustermap.RoleManager {
		t.Fatalf("manager node = %+v, want manager on 10.0.0.1 with 10.0.1.0/24", self)
	}
	worker, manager := tm.m.JoinTokens()
	for _, tok := range []string{worker, manager} {
		if _, err := pki.ParseToken(tok); err != nil {
			t.Fatalf("token %q does not parse: %v", tok, err)
		}
	}
	if worker == manager {
		t.Fatal("worker and manager tokens must differ")
	}

	cfg1 := agentConfig(t, tm, "worker-1")
	a1 := join(t, cfg1)
	a2 := join(t, agentConfig(t, tm, "worker-2"))
	for i, c := range []struct {
		a         *agent.Agent
		ip, block string
	}{{a1, "10.0.0.2", "10.0.2.0/24"}, {a2, "10.0.0.3", "10.0.3.0/24"}} {
		n := c.a.Self()
		if n.OverlayIP.String() != c.ip || n.ContainerBlock.String() != c.block || n.Role != clustermap.RoleWorker {
			t.Fatalf("worker %d = %+v, want %s and %s", i+1, n, c.ip, c.block)
		}
	}
	// The TLS key is private to the node.
	st, err := os.Stat(filepath.Join(cfg1.StateDir, agent.FileTLSKey))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", agent.FileTLSKey, st.Mode().Perm())
	}

	r := clustertest.Watch(t, a1)
	m := r.WaitFor(t, "three nodes", clustertest.HasNodes(3))
	if m.ClusterID != tm.m.ClusterID() || m.Nodes[0].Name != "manager-1" {
		t.Fatalf("map = %+v", m)
	}
	cached, err := a1.CachedMap()
	if err != nil || cached == nil || cached.Version != m.Version {
		t.Fatalf("cached map = %+v, %v; want version %d", cached, err, m.Version)
	}
	// The manager's in-process watch sees the same map.
	mr := clustertest.Watch(t, tm.m)
	mr.WaitFor(t, "the manager's own map", func(got *clustermap.Map) bool { return got.Version >= m.Version && len(got.Nodes) == 3 })
}

func TestWatchPushesChangesWithoutPolling(t *testing.T) {
	tm := startManager(t)
	a := join(t, agentConfig(t, tm, "worker-1"))
	r := clustertest.Watch(t, a)
	before := r.WaitFor(t, "first map", clustertest.HasNodes(2))
	start := time.Now()
	if _, err := tm.m.CreateService(api.ServiceSpec{Name: "web", Image: "busybox"}); err != nil {
		t.Fatal(err)
	}
	// The stream's keepalive is api.WatchKeepalive (15 s): a map that arrives
	// well before that was pushed, not picked up by a periodic poll.
	done := make(chan *clustermap.Map, 1)
	go func() {
		done <- r.WaitFor(t, "the map with the service", func(m *clustermap.Map) bool { return len(m.Services) == 1 })
	}()
	select {
	case m := <-done:
		if m.Version <= before.Version {
			t.Fatalf("version did not increase: %d -> %d", before.Version, m.Version)
		}
		t.Logf("change reached the agent in %v (version %d -> %d)", time.Since(start), before.Version, m.Version)
	case <-time.After(api.WatchKeepalive - 2*time.Second):
		t.Fatal("the change did not reach the agent before the keepalive interval: the map is not pushed")
	}
}

func TestManagerRestartKeepsIdentityAndWatchResumes(t *testing.T) {
	tm := startManager(t)
	a := join(t, agentConfig(t, tm, "worker-1"))
	r := clustertest.Watch(t, a)
	r.WaitFor(t, "two nodes", clustertest.HasNodes(2))
	nodesBefore := tm.m.Map().Nodes
	caBefore := tm.m.Info().CAHash
	worker, manager := tm.m.JoinTokens()
	versionBefore := tm.m.Map().Version

	tm.restart()

	if got := tm.m.Info().CAHash; got != caBefore {
		t.Fatalf("CA changed across restart: %s -> %s", caBefore, got)
	}
	if w, m := tm.m.JoinTokens(); w != worker || m != manager {
		t.Fatal("join tokens changed across restart")
	}
	after := tm.m.Map()
	if after.Version != versionBefore {
		t.Fatalf("an unchanged cluster's map version moved on restart: %d -> %d", versionBefore, after.Version)
	}
	for i, n := range after.Nodes {
		b := nodesBefore[i]
		if n.ID != b.ID || n.OverlayIP != b.OverlayIP || n.ContainerBlock != b.ContainerBlock || n.PublicKey != b.PublicKey {
			t.Fatalf("node changed across restart:\n%+v\n%+v", b, n)
		}
	}
	if _, err := tm.m.CreateService(api.ServiceSpec{Name: "after-restart", Image: "busybox"}); err != nil {
		t.Fatal(err)
	}
	r.WaitFor(t, "the map made after the restart", func(m *clustermap.Map) bool { return len(m.Services) == 1 })
	if n := a.Self(); n.OverlayIP.String() != "10.0.0.2" {
		t.Fatalf("worker address changed: %v", n.OverlayIP)
	}
}

func TestWorkerRestartWithManagerDownUsesCachedMap(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	r := clustertest.Watch(t, a)
	want := r.WaitFor(t, "two nodes", clustertest.HasNodes(2))
	r.Stop()
	tm.stop()

	// A rebooted node: new agent, same state dir, no token, manager down.
	cfg.Token = ""
	a2 := join(t, cfg)
	if a2.Self().ID != a.Self().ID {
		t.Fatalf("identity changed: %s -> %s", a.Self().ID, a2.Self().ID)
	}
	r2 := clustertest.Watch(t, a2)
	got := r2.WaitFor(t, "the cached map", func(m *clustermap.Map) bool { return true })
	if got.Version != want.Version || len(got.Nodes) != 2 {
		t.Fatalf("cached map = version %d with %d nodes, want version %d with 2", got.Version, len(got.Nodes), want.Version)
	}
}

func TestNodeRemoveDropsItFromMap(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	r := clustertest.Watch(t, a)
	r.WaitFor(t, "two nodes", clustertest.HasNodes(2))

	err := tm.m.RemoveNode("worker-1", false)
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("removing a ready node without force: %v, want a refusal naming --force", err)
	}
	if err := tm.m.RemoveNode(tm.m.Self().Name, true); err == nil || !strings.Contains(err.Error(), "cannot remove itself") {
		t.Fatalf("removing the manager itself: %v", err)
	}
	if err := tm.m.RemoveNode("worker-1", true); err != nil {
		t.Fatal(err)
	}
	if len(tm.m.Map().Nodes) != 1 {
		t.Fatalf("map still has %d nodes", len(tm.m.Map().Nodes))
	}
	select {
	case err := <-r.Err():
		if !errors.Is(err, agent.ErrRemoved) {
			t.Fatalf("watch of a removed node ended with %v, want agent.ErrRemoved", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the removed node's watch did not end")
	}
	if err := a.Report(context.Background(), NodeStatus{}); err == nil || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("report of a removed node: %v", err)
	}
}

func TestJoinRefusesBadSecret(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	tok, _ := pki.ParseToken(cfg.Token)
	tok.Secret = pki.NewSecret()
	cfg.Token = tok.String()
	_, err := agent.Join(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "secret is not valid") {
		t.Fatalf("join with a wrong secret: %v", err)
	}
	t.Logf("refused as expected: %v", err)
}

func TestJoinRefusesRotatedToken(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	fresh, err := tm.m.RotateJoinToken(clustermap.RoleWorker)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Join(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "secret is not valid") {
		t.Fatalf("join with the rotated-out token: %v", err)
	}
	cfg.Token = fresh
	join(t, cfg)
}

func TestJoinRefusesTokenOfAnotherCluster(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	tok, _ := pki.ParseToken(cfg.Token)
	tok.CAHash = strings.Repeat("ab", 32)
	cfg.Token = tok.String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := agent.Join(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "does not match the token") || ctx.Err() != nil {
		t.Fatalf("join with a tampered CA hash: %v (must fail at once, not retry)", err)
	}
	t.Logf("refused as expected: %v", err)
	if len(tm.m.Map().Nodes) != 1 {
		t.Fatal("a node with a mismatched CA was admitted")
	}
}

func TestJoinRefusesTakenNameWithAnotherKey(t *testing.T) {
	tm := startManager(t)
	join(t, agentConfig(t, tm, "worker-1"))
	cfg := agentConfig(t, tm, "worker-1") // same name, new key
	_, err := agent.Join(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), `node name "worker-1" is already taken`) {
		t.Fatalf("join under a taken name: %v", err)
	}
	if !agent.IsNameTaken(err) {
		t.Fatalf("agent.IsNameTaken does not recognise %v", err)
	}
	t.Logf("refused as expected: %v", err)
}

func TestOpenManagerRefusesBadSubnets(t *testing.T) {
	base := ManagerConfig{
		StateDir: t.TempDir(), Logger: clustertest.Logger(t),
		Node: NodeInfo{Name: "m", Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), PublicKey: clustertest.WGKey(t)},
	}
	for _, c := range []struct {
		name string
		edit func(*ManagerConfig)
		want string
	}{
		{"host bits", func(c *ManagerConfig) { c.WireGuardSubnet = netip.MustParsePrefix("10.0.0.1/24") }, "canonical"},
		{"block too big", func(c *ManagerConfig) { c.ContainerBlockBits = 8 }, "does not fit"},
		{"VIP overlap", func(c *ManagerConfig) { c.VIPSubnet = netip.MustParsePrefix("10.0.5.0/24") }, "overlaps"},
	} {
		cfg := base
		cfg.StateDir = t.TempDir()
		c.edit(&cfg)
		m, err := OpenManager(cfg)
		if err == nil {
			m.Close()
			t.Fatalf("%s: accepted", c.name)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: %v, want it to say %q", c.name, err, c.want)
		}
	}
}
