package cluster

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

func versionsOf(m *clustermap.Map, service string) map[string]string {
	out := map[string]string{}
	for _, task := range m.Tasks {
		if task.Service == service && task.DesiredState == clustermap.TaskRunning {
			out[task.Name] = fmt.Sprintf("v%d/%s", task.SpecVersion, task.State)
		}
	}
	return out
}

// A spec update (env, limits, mounts) rolls out one task at a time, as an
// image update: tasks not yet moved keep running the previous spec, and a
// report about the previous spec does not count for the new one.
func TestSpecUpdateRollsOneTaskAtATime(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	self := m.Self().ID
	if _, err := m.CreateService(api.ServiceSpec{Name: "db", Image: "db:1", Replicas: intp(3), Env: []string{"A=1"}, Ports: []string{"5432:5432"}}); err != nil {
		t.Fatal(err)
	}
	reportAll(t, m, self)
	limited := clustermap.Workload{Resources: &clustermap.Resources{Limits: clustermap.ResourceAmounts{MemoryBytes: 64 << 20}},
		Mounts: []clustermap.Mount{{Type: "volume", Source: "data", Target: "/data"}}}
	v, err := m.UpdateService("db", api.ServiceSpec{Name: "db", Image: "db:1", Env: []string{"A=2"}, Ports: []string{"5432:5432"}, Workload: limited})
	if err != nil {
		t.Fatal(err)
	}
	if v.Replicas != 3 || !v.Updating || v.Resources == nil || len(v.Mounts) != 1 {
		t.Fatalf("after update: %+v", v)
	}
	svc := m.Map().Services[0]
	if svc.SpecVersion != 1 || svc.Previous == nil || svc.Previous.Env[0] != "A=1" {
		t.Fatalf("service = %+v", svc)
	}
	// Tasks not yet moved run the previous spec.
	for _, task := range m.Map().Tasks {
		env, _, w := svc.TaskSpecOf(task.SpecVersion)
		want := "A=1"
		if task.SpecVersion == 1 {
			want = "A=2"
		}
		if env[0] != want || (task.SpecVersion == 0) != (w.Resources == nil) {
			t.Errorf("task %s at v%d runs env %v resources %v", task.Name, task.SpecVersion, env, w.Resources)
		}
	}
	want := []map[string]string{
		{"db-1": "v1/pending", "db-2": "v0/running", "db-3": "v0/running"},
		{"db-1": "v1/running", "db-2": "v1/pending", "db-3": "v0/running"},
		{"db-1": "v1/running", "db-2": "v1/running", "db-3": "v1/pending"},
	}
	for step, w := range want {
		got := versionsOf(m.Map(), "db")
		for name, s := range w {
			if got[name] != s {
				t.Fatalf("step %d: tasks = %v, want %v", step, got, w)
			}
		}
		// A report about the previous spec moves nothing.
		var stale []api.TaskStatus
		for _, task := range m.Map().TasksOn(self) {
			stale = append(stale, api.TaskStatus{Name: task.Name, State: clustermap.TaskRunning, Image: task.Image, SpecVersion: 0})
		}
		if err := m.Report(context.Background(), NodeStatus{Tasks: stale}); err != nil {
			t.Fatal(err)
		}
		if got := versionsOf(m.Map(), "db"); got["db-1"] == "v1/running" && step == 0 {
			t.Fatalf("a report of the previous spec counted for the new one: %v", got)
		}
		reportAll(t, m, self)
	}
	if v, _ := m.Service("db"); v.Updating || v.Running != 3 {
		t.Fatalf("after the rollout: %+v", v)
	}
	// Ports and replicas alone apply at once, without a new version.
	if v, err = m.UpdateService("db", api.ServiceSpec{Image: "db:1", Env: []string{"A=2"}, Ports: []string{"6432:5432"}, Workload: limited, Replicas: intp(2)}); err != nil {
		t.Fatal(err)
	}
	if m.Map().Services[0].SpecVersion != 1 || v.Replicas != 2 || v.Ports[0].Published != 6432 {
		t.Fatalf("port/replica update: %+v", v)
	}
	// Removing the updated service: the node's report of the removed task
	// (no image: the task is gone) lets the manager forget it.
	if err := m.RemoveService("db"); err != nil {
		t.Fatal(err)
	}
	var gone []api.TaskStatus
	for _, task := range m.Map().TasksOn(self) {
		gone = append(gone, api.TaskStatus{Name: task.Name, State: clustermap.TaskShutdown})
	}
	if err := m.Report(context.Background(), NodeStatus{Tasks: gone}); err != nil {
		t.Fatal(err)
	}
	if left := m.Tasks("db"); len(left) != 0 {
		t.Fatalf("tasks of the removed service after their shutdown report: %+v", left)
	}
	if _, err := m.CreateService(api.ServiceSpec{Name: "db", Image: "db:1", Replicas: intp(3), Env: []string{"A=1"}, Ports: []string{"5432:5432"}}); err != nil {
		t.Fatal(err)
	}

	// Refusals change nothing.
	_, err = m.UpdateService("db", api.ServiceSpec{Image: "db:1", Workload: clustermap.Workload{Mode: "global"}})
	if err == nil || err.(*apiError).status != http.StatusBadRequest {
		t.Fatalf("mode change: %v", err)
	}
	_, err = m.UpdateService("nope", api.ServiceSpec{Image: "x"})
	if err == nil || err.(*apiError).status != http.StatusNotFound {
		t.Fatalf("unknown service: %v", err)
	}
	_, err = m.UpdateService("db", api.ServiceSpec{Name: "other", Image: "x"})
	if err == nil || err.(*apiError).status != http.StatusBadRequest {
		t.Fatalf("rename: %v", err)
	}
}
