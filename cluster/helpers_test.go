package cluster

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// fastRaft is the production timing (replicate.RaftConfig) with a short
// commit timeout. Shorter timeouts make leaders step down spuriously on
// the shared, loaded machine the tests run on.
func fastRaft(c *raft.Config) {
	c.CommitTimeout = 5 * time.Millisecond
}

// testManager is a manager serving on a loopback port, restartable on the
// same address and state dir.
type testManager struct {
	t      testing.TB
	dir    string
	addr   string
	cfg    ManagerConfig
	m      *Manager
	cancel context.CancelFunc
	done   chan struct{}
}

func startManager(t testing.TB) *testManager {
	t.Helper()
	tm := &testManager{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	tm.cfg = startManagerConfig(t, tm.dir)
	tm.start()
	t.Cleanup(tm.stop)
	return tm
}

// startManagerConfig is startManager's configuration.
func startManagerConfig(t testing.TB, dir string) ManagerConfig {
	return ManagerConfig{
		StateDir: dir,
		Node: NodeInfo{Name: "manager-1", Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"),
			PublicKey: clustertest.WGKey(t), Labels: map[string]string{"zone": "a"}},
		DownAfter: time.Hour,
		Logger:    clustertest.Logger(t),
		raftTune:  fastRaft,
	}
}

func (tm *testManager) start() {
	tm.t.Helper()
	ln := clustertest.Listen(tm.t, tm.addr)
	tm.addr = ln.Addr().String()
	tm.cfg.Advertise = tm.addr
	m, err := OpenManager(tm.cfg)
	if err != nil {
		ln.Close()
		tm.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tm.m, tm.cancel, tm.done = m, cancel, make(chan struct{})
	go func() {
		defer close(tm.done)
		if err := m.ServeListener(ctx, ln); err != nil {
			tm.t.Errorf("serve: %v", err)
		}
	}()
}

func (tm *testManager) stop() {
	if tm.m == nil {
		return
	}
	tm.cancel()
	<-tm.done
	if err := tm.m.Close(); err != nil {
		tm.t.Errorf("close manager: %v", err)
	}
	tm.m = nil
}

func (tm *testManager) restart() {
	tm.stop()
	tm.start()
}

func (tm *testManager) workerToken() string {
	w, _ := tm.m.JoinTokens()
	return w
}

func agentConfig(t testing.TB, tm *testManager, name string) agent.Config {
	return agent.Config{
		StateDir: t.TempDir(),
		Manager:  tm.addr,
		Token:    tm.workerToken(),
		Node: NodeInfo{Name: name, Role: clustermap.RoleWorker, PublicKey: clustertest.WGKey(t),
			Endpoint: netip.MustParseAddrPort("192.0.2.10:51820")},
		Logger: clustertest.Logger(t),
	}
}

func join(t testing.TB, cfg agent.Config) *agent.Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := agent.Join(ctx, cfg)
	if err != nil {
		t.Fatalf("join %s: %v", cfg.Node.Name, err)
	}
	return a
}

func apiSpec(name string, replicas int) api.ServiceSpec {
	return api.ServiceSpec{Name: name, Image: "img", Replicas: &replicas}
}

func taskRunning(t clustermap.Task) api.TaskStatus {
	return api.TaskStatus{Name: t.Name, State: clustermap.TaskRunning, Image: t.Image}
}
