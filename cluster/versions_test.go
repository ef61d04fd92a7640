package cluster

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// Finding 1 of hardening-2: one `GET /v1/watch?after=2^64-2` from any
// joined node set the map version to 2^64-1; the next change wrapped it to
// 0 and no worker ever took a map again. A node's `after` must never move
// the version, and every change moves it by exactly one.
func TestWatchAfterNeverMovesTheMapVersion(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	r := clustertest.Watch(t, a)
	r.WaitFor(t, "two nodes", clustertest.HasNodes(2))
	before := tm.m.Map().Version
	id := authzIdentity{name: "worker", cert: ptr(agentCert(t, cfg.StateDir))}
	for _, after := range []uint64{1<<64 - 2, 1<<64 - 1, before + 5, 1 << 40} {
		if got := authzStatus(t, tm.addr, http.MethodGet, fmt.Sprintf("%s?after=%d", api.PathWatch, after), nil, id); got != http.StatusOK {
			t.Fatalf("watch after=%d: %d", after, got)
		}
	}
	// The watch handler runs on after the client hung up; a change made
	// now is ordered after whatever those requests did.
	if _, err := tm.m.CreateService(apiSpec("web", 1)); err != nil {
		t.Fatal(err)
	}
	got := r.WaitFor(t, "the new service on the worker", func(m *clustermap.Map) bool { return len(m.Services) == 1 })
	if v := tm.m.Map().Version; v != before+1 || got.Version != v {
		t.Fatalf("versions: before %d, manager now %d, worker got %d; want %d everywhere (one change, one step)", before, v, got.Version, before+1)
	}
}

// A node whose cached map.json holds an absurd version (written while the
// bug above was live) must take the manager's maps again, restarts included.
func TestAgentRecoversFromAnAbsurdCachedVersion(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	poisoned := *tm.m.Map()
	poisoned.Version = 1<<64 - 1
	b, _ := json.Marshal(poisoned)
	if err := os.WriteFile(filepath.Join(cfg.StateDir, agent.FileMap), b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := clustertest.Watch(t, a)
	m := r.WaitFor(t, "the manager's map", func(m *clustermap.Map) bool { return m.Version < poisoned.Version && len(m.Nodes) == 2 })
	if _, err := tm.m.CreateService(apiSpec("web", 0)); err != nil {
		t.Fatal(err)
	}
	m2 := r.WaitFor(t, "the next change", func(m *clustermap.Map) bool { return len(m.Services) == 1 })
	if m2.Version != m.Version+1 {
		t.Fatalf("versions %d then %d", m.Version, m2.Version)
	}
	if c, err := a.CachedMap(); err != nil || c.Version != m2.Version {
		t.Fatalf("cache after recovery: %v, %v", c, err)
	}
}

func ptr[T any](v T) *T { return &v }
