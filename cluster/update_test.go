package cluster

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

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

// A spec update (env, limits, mounts) rolls out as an image update does
// (rollout.Plan: here stop-first, one task at a time): tasks not yet
// moved keep running the previous spec, and a report about the previous
// spec does not count for the new one.
func TestSpecUpdateRollsOneTaskAtATime(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	clock := &fakeClock{now: time.Now()}
	m.mu.Lock()
	m.now = clock.Now
	m.mu.Unlock()
	self := m.Self().ID
	stopFirst := api.HealthSpec{UpdateConfig: &clustermap.UpdateConfig{Order: clustermap.OrderStopFirst, Monitor: time.Second}}
	if _, err := m.CreateService(api.ServiceSpec{Name: "db", Image: "db:1", Replicas: intp(3), Env: []string{"A=1"}, Ports: []string{"5432:5432"},
		HealthSpec: stopFirst}); err != nil {
		t.Fatal(err)
	}
	reportAll(t, m, self)
	limited := clustermap.Workload{Resources: &clustermap.Resources{Limits: clustermap.ResourceAmounts{MemoryBytes: 64 << 20}},
		Mounts: []clustermap.Mount{{Type: "volume", Source: "data", Target: "/data"}}}
	v, err := m.UpdateService("db", api.ServiceSpec{Name: "db", Image: "db:1", Env: []string{"A=2"}, Ports: []string{"5432:5432"}, Workload: limited,
		HealthSpec: stopFirst})
	if err != nil {
		t.Fatal(err)
	}
	if v.Replicas != 3 || !v.Updating || v.Resources == nil || len(v.Mounts) != 1 || v.UpdateStatus == nil || v.UpdateStatus.State != api.UpdateUpdating {
		t.Fatalf("after update: %+v", v)
	}
	svc := m.Map().Services[0]
	if svc.SpecVersion != 1 || svc.Previous == nil || svc.Previous.Env[0] != "A=1" {
		t.Fatalf("service = %+v", svc)
	}
	completed := false
	for step := 0; step < 200 && !completed; step++ {
		// Tasks not yet moved run the previous spec.
		moving := 0
		for _, task := range m.Map().Tasks {
			env, _, w := svc.TaskSpecOf(task.SpecVersion)
			want := "A=1"
			if task.SpecVersion == 1 {
				want = "A=2"
			}
			if env[0] != want || (task.SpecVersion == 0) != (w.Resources == nil) {
				t.Errorf("task %s at v%d runs env %v resources %v", task.Name, task.SpecVersion, env, w.Resources)
			}
			if task.State != clustermap.TaskRunning || task.Draining {
				moving++
			}
		}
		if moving > 1 {
			t.Fatalf("step %d: more than one task moving at a time: %v", step, versionsOf(m.Map(), "db"))
		}
		// A report about the previous spec does not count for a task the
		// node has not started on the new one yet.
		before := versionsOf(m.Map(), "db")
		var stale []api.TaskStatus
		for _, task := range m.Map().TasksOn(self) {
			r := api.TaskStatus{Name: task.Name, State: task.State, Image: task.Image, SpecVersion: task.SpecVersion}
			if task.State == clustermap.TaskPending {
				r.State, r.SpecVersion = clustermap.TaskRunning, 0
			}
			stale = append(stale, r)
		}
		if err := m.Report(context.Background(), NodeStatus{Tasks: stale}); err != nil {
			t.Fatal(err)
		}
		for name, s := range versionsOf(m.Map(), "db") {
			if strings.HasPrefix(s, "v1/") && before[name] != s {
				t.Fatalf("a report of the previous spec counted for the new one: %v, was %v", s, before[name])
			}
		}
		reportAll(t, m, self)
		v, _ := m.Service("db")
		completed = v.UpdateStatus.State == api.UpdateCompleted
		clock.Add(500 * time.Millisecond)
		m.advanceUpdates()
	}
	if got := versionsOf(m.Map(), "db"); !completed || len(got) != 3 || got["db-1"] != "v1/running" || got["db-2"] != "v1/running" || got["db-3"] != "v1/running" {
		t.Fatalf("after the rollout (completed %v): %v", completed, got)
	}
	if v, _ := m.Service("db"); v.Updating || v.Running != 3 {
		t.Fatalf("after the rollout: %+v", v)
	}
	// Ports and replicas alone apply at once, without a new version.
	if v, err = m.UpdateService("db", api.ServiceSpec{Image: "db:1", Env: []string{"A=2"}, Ports: []string{"6432:5432"}, Workload: limited, Replicas: intp(2), HealthSpec: stopFirst}); err != nil {
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

// A spec update whose new tasks fail rolls back by itself: env, command
// and workload come back with the spec version, and every task runs the
// previous spec again.
func TestSpecUpdateRollsBackEnvAndWorkload(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	clock := &fakeClock{now: time.Now()}
	m.mu.Lock()
	m.now = clock.Now
	m.mu.Unlock()
	self := m.Self().ID
	if _, err := m.CreateService(api.ServiceSpec{Name: "db", Image: "db:1", Replicas: intp(2), Env: []string{"A=1"}}); err != nil {
		t.Fatal(err)
	}
	reportAll(t, m, self)
	limited := clustermap.Workload{Resources: &clustermap.Resources{Limits: clustermap.ResourceAmounts{MemoryBytes: 64 << 20}}}
	if _, err := m.UpdateService("db", api.ServiceSpec{Image: "db:1", Env: []string{"A=2"}, Command: []string{"false"}, Workload: limited}); err != nil {
		t.Fatal(err)
	}
	// The node: tasks at the new spec version fail, others run.
	var st api.UpdateStatus
	for range 200 {
		var reports []api.TaskStatus
		for _, task := range m.Map().TasksOn(self) {
			if task.DesiredState != clustermap.TaskRunning {
				continue
			}
			r := api.TaskStatus{Name: task.Name, State: clustermap.TaskRunning, Image: task.Image, SpecVersion: task.SpecVersion}
			if task.SpecVersion == 1 {
				r.State, r.Error = clustermap.TaskFailed, "exited with status 1"
			}
			reports = append(reports, r)
		}
		if err := m.Report(context.Background(), NodeStatus{Tasks: reports}); err != nil {
			t.Fatal(err)
		}
		v, _ := m.Service("db")
		if st = *v.UpdateStatus; st.State != api.UpdateUpdating && st.State != api.UpdateRollbackStarted {
			break
		}
		clock.Add(500 * time.Millisecond)
		m.advanceUpdates()
	}
	if st.State != api.UpdateRollbackCompleted {
		t.Fatalf("update ended %s: %s", st.State, st.Message)
	}
	v, _ := m.Service("db")
	if len(v.Env) != 1 || v.Env[0] != "A=1" || len(v.Command) != 0 || v.Resources != nil {
		t.Fatalf("after the rollback: env %v command %v resources %+v", v.Env, v.Command, v.Resources)
	}
	svc := m.Map().Services[0]
	if svc.SpecVersion != 0 || svc.Previous == nil || svc.Previous.Env[0] != "A=2" {
		t.Fatalf("service after the rollback: version %d previous %+v", svc.SpecVersion, svc.Previous)
	}
	for _, task := range m.Map().Tasks {
		if task.DesiredState == clustermap.TaskRunning && task.SpecVersion != 0 {
			t.Errorf("task %s still at spec version %d", task.Name, task.SpecVersion)
		}
	}
	// The next spec update takes a version no task ever had.
	if _, err := m.UpdateService("db", api.ServiceSpec{Image: "db:1", Env: []string{"A=3"}}); err != nil {
		t.Fatal(err)
	}
	if got := m.Map().Services[0].SpecVersion; got != 2 {
		t.Fatalf("spec version after a rollback and a new update = %d, want 2", got)
	}
}
