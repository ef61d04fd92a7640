package cluster

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// Finding 6: a service's env (a secret, often) reached every node's map and
// disk. Now a node receives and stores it only if it runs one of the
// service's tasks.
func TestServiceEnvReachesOnlyNodesRunningItsTasks(t *testing.T) {
	tm := startManager(t)
	c1, c2 := agentConfig(t, tm, "worker-1"), agentConfig(t, tm, "worker-2")
	a1, a2 := join(t, c1), join(t, c2)
	r1, r2 := clustertest.Watch(t, a1), clustertest.Watch(t, a2)
	const secret = "DB_PASSWORD=s3cr3t-value-42"
	spec := api.ServiceSpec{Name: "db", Image: "img", Replicas: intp(1), Env: []string{secret},
		Constraints: []string{"node.name==worker-1"}}
	if _, err := tm.m.CreateService(spec); err != nil {
		t.Fatal(err)
	}
	hasDB := func(m *clustermap.Map) bool {
		for _, s := range m.Services {
			if s.Name == "db" {
				return true
			}
		}
		return false
	}
	envOf := func(m *clustermap.Map) []string {
		for _, s := range m.Services {
			if s.Name == "db" {
				return s.Env
			}
		}
		return nil
	}
	m1 := r1.WaitFor(t, "the db service", hasDB)
	m2 := r2.WaitFor(t, "the db service", hasDB)
	if !slices.Equal(envOf(m1), []string{secret}) {
		t.Fatalf("worker-1 runs db but got env %q", envOf(m1))
	}
	if env := envOf(m2); len(env) != 0 {
		t.Fatalf("worker-2 runs no db task but got env %q", env)
	}
	for dir, want := range map[string]bool{c1.StateDir: true, c2.StateDir: false} {
		b, err := os.ReadFile(filepath.Join(dir, agent.FileMap))
		if err != nil {
			t.Fatal(err)
		}
		if got := bytes.Contains(b, []byte("s3cr3t-value-42")); got != want {
			t.Errorf("env on disk in %s: %v, want %v", dir, got, want)
		}
	}
}
