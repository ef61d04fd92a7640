package cluster

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("WARREN_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newWGKey(t testing.TB) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

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
	tm.cfg = ManagerConfig{
		StateDir: tm.dir,
		Node: NodeInfo{Name: "manager-1", Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"),
			PublicKey: newWGKey(t), Labels: map[string]string{"zone": "a"}},
		DownAfter: time.Hour,
		Logger:    testLogger(t),
		raftTune:  fastRaft,
	}
	tm.start()
	t.Cleanup(tm.stop)
	return tm
}

func (tm *testManager) start() {
	tm.t.Helper()
	var ln net.Listener
	var err error
	for i := 0; ; i++ { // the old socket may linger a moment after a restart
		ln, err = net.Listen("tcp", tm.addr)
		if err == nil || i > 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		tm.t.Fatal(err)
	}
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

func agentConfig(t testing.TB, tm *testManager, name string) AgentConfig {
	return AgentConfig{
		StateDir: t.TempDir(),
		Manager:  tm.addr,
		Token:    tm.workerToken(),
		Node: NodeInfo{Name: name, Role: clustermap.RoleWorker, PublicKey: newWGKey(t),
			Endpoint: netip.MustParseAddrPort("192.0.2.10:51820")},
		Logger: testLogger(t),
	}
}

func join(t testing.TB, cfg AgentConfig) *Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := Join(ctx, cfg)
	if err != nil {
		t.Fatalf("join %s: %v", cfg.Node.Name, err)
	}
	return a
}

// mapRecorder runs a Watch and keeps every map it applied.
type mapRecorder struct {
	mu     sync.Mutex
	maps   []*clustermap.Map
	notify chan struct{}
	err    chan error
	cancel context.CancelFunc
}

func watch(t testing.TB, w interface {
	Watch(context.Context, func(*clustermap.Map)) error
}) *mapRecorder {
	ctx, cancel := context.WithCancel(context.Background())
	r := &mapRecorder{notify: make(chan struct{}, 1), err: make(chan error, 1), cancel: cancel}
	go func() {
		r.err <- w.Watch(ctx, func(m *clustermap.Map) {
			r.mu.Lock()
			r.maps = append(r.maps, m)
			r.mu.Unlock()
			select {
			case r.notify <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(cancel)
	return r
}

func (r *mapRecorder) latest() *clustermap.Map {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.maps) == 0 {
		return nil
	}
	return r.maps[len(r.maps)-1]
}

// waitFor waits (generously) until cond holds for the latest map.
func (r *mapRecorder) waitFor(t testing.TB, what string, cond func(*clustermap.Map) bool) *clustermap.Map {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if m := r.latest(); m != nil && cond(m) {
			return m
		}
		select {
		case <-r.notify:
		case err := <-r.err:
			t.Fatalf("watch ended while waiting for %s: %v", what, err)
		case <-deadline:
			t.Fatalf("timed out waiting for %s; latest map: %+v", what, r.latest())
		}
	}
}

func hasNodes(n int) func(*clustermap.Map) bool {
	return func(m *clustermap.Map) bool { return len(m.Nodes) == n }
}

func apiSpec(name string, replicas int) api.ServiceSpec {
	return api.ServiceSpec{Name: name, Image: "img", Replicas: &replicas}
}

func taskRunning(t clustermap.Task) api.TaskStatus {
	return api.TaskStatus{Name: t.Name, State: clustermap.TaskRunning, Image: t.Image}
}
