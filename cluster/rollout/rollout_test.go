package rollout

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// sim plays the manager and the nodes around Plan: the scheduler's surge
// slots, nodes starting a retargeted task (running next step, then
// healthy unless its image is bad), and the manager's rollback.
type sim struct {
	t        *testing.T
	svc      clustermap.Service
	st       *Status
	tasks    []clustermap.Task
	now      time.Time
	bad      map[string]bool // images whose tasks never turn healthy
	age      map[string]int  // steps since a task was (re)started
	minServe int             // fewest serving tasks seen
	outcomes []string
}

func newSim(t *testing.T, replicas int, cfg *clustermap.UpdateConfig, from string) *sim {
	s := &sim{t: t, svc: clustermap.Service{Name: "web", Image: from, Replicas: replicas, UpdateConfig: cfg,
		HealthCheck: &clustermap.HealthCheck{Test: []string{"CMD-SHELL", "true"}}},
		now: t0, bad: map[string]bool{}, age: map[string]int{}, minServe: replicas}
	for i := 1; i <= replicas; i++ {
		s.tasks = append(s.tasks, s.newTask(i, from, true))
	}
	return s
}

func (s *sim) newTask(slot int, image string, healthy bool) clustermap.Task {
	t := clustermap.Task{Name: fmt.Sprintf("web-%d", slot), Service: "web", Slot: slot, NodeID: "n1",
		IP: netip.AddrFrom4([4]byte{10, 0, 1, byte(1 + slot)}), Image: image, DesiredState: clustermap.TaskRunning, State: clustermap.TaskPending}
	if healthy {
		t.State, t.Health = clustermap.TaskRunning, clustermap.HealthHealthy
	}
	return t
}

func (s *sim) update(image string) {
	prev := s.svc.Image
	s.svc.Image = image
	s.st = Begin(s.svc, prev, s.svc.HealthCheck, s.svc.SpecVersion, s.now)
}

// step advances one second: nodes act, then the manager plans.
func (s *sim) step() {
	s.now = s.now.Add(time.Second)
	// Nodes.
	for i := range s.tasks {
		t := &s.tasks[i]
		switch {
		case t.State == clustermap.TaskPending:
			t.State, t.Health = clustermap.TaskRunning, clustermap.HealthStarting
			s.age[t.Name] = 0
		case t.Health == clustermap.HealthStarting:
			s.age[t.Name]++
			if s.bad[t.Image] && s.age[t.Name] >= 2 {
				t.Health = clustermap.HealthUnhealthy
			} else if !s.bad[t.Image] {
				t.Health = clustermap.HealthHealthy
			}
		}
	}
	// Scheduler: surge slots come and go.
	surge := Surge(s.svc, s.st)
	var kept []clustermap.Task
	have := map[int]bool{}
	for _, t := range s.tasks {
		if t.Slot > s.svc.Replicas+surge {
			continue // retired
		}
		have[t.Slot] = true
		kept = append(kept, t)
	}
	for slot := 1; slot <= s.svc.Replicas+surge; slot++ {
		if !have[slot] {
			nt := s.newTask(slot, s.svc.Image, false)
			nt.SpecVersion = s.svc.SpecVersion
			kept = append(kept, nt)
		}
	}
	s.tasks = kept
	// Manager.
	tasks, st, out := Plan(s.svc, s.st, s.tasks, s.now)
	if out == RollBack {
		s.outcomes = append(s.outcomes, st.Message)
		s.svc.Image, s.svc.HealthCheck = st.Previous, st.PreviousHealth
		st = StartRollback(st, s.svc.HealthCheck, s.svc.SpecVersion, st.Message, s.now)
		tasks, st, _ = Plan(s.svc, st, s.tasks, s.now)
	}
	s.tasks, s.st = tasks, st
	serving := 0
	for _, t := range s.tasks {
		if t.Serves() {
			serving++
		}
	}
	s.minServe = min(s.minServe, serving)
}

func (s *sim) run(maxSteps int) {
	for i := 0; i < maxSteps && s.st.Active(); i++ {
		s.step()
	}
	if s.st.Active() {
		s.t.Fatalf("update still %s after %d steps: %s", s.st.State, maxSteps, s.st.Message)
	}
	s.step() // the scheduler retires the surge tasks

}

func (s *sim) images() string {
	var out []string
	for _, t := range s.tasks {
		out = append(out, fmt.Sprintf("%s:%s", t.Name, t.Image))
	}
	return strings.Join(out, " ")
}

func TestStartFirstKeepsEveryReplicaServing(t *testing.T) {
	s := newSim(t, 3, nil, "app:1")
	s.update("app:2")
	s.run(200)
	if s.st.State != api.UpdateCompleted {
		t.Fatalf("state %s: %s", s.st.State, s.st.Message)
	}
	if s.minServe < 3 {
		t.Fatalf("serving tasks fell to %d of 3 during a start-first update", s.minServe)
	}
	if len(s.tasks) != 3 || s.images() != "web-1:app:2 web-2:app:2 web-3:app:2" {
		t.Fatalf("tasks after the update: %s", s.images())
	}
}

func TestStopFirstLosesAtMostParallelism(t *testing.T) {
	s := newSim(t, 3, &clustermap.UpdateConfig{Order: clustermap.OrderStopFirst, Parallelism: 2}, "app:1")
	s.update("app:2")
	s.run(200)
	if s.st.State != api.UpdateCompleted {
		t.Fatalf("state %s", s.st.State)
	}
	if s.minServe != 1 {
		t.Fatalf("fewest serving = %d, want 1 (3 replicas, 2 at a time, stop-first)", s.minServe)
	}
}

func TestUnhealthyUpdateRollsBackByItself(t *testing.T) {
	s := newSim(t, 3, nil, "app:1")
	s.bad["app:bad"] = true
	s.update("app:bad")
	s.run(200)
	if s.st.State != api.UpdateRollbackCompleted {
		t.Fatalf("state %s: %s", s.st.State, s.st.Message)
	}
	if len(s.outcomes) != 1 || !strings.Contains(s.outcomes[0], "web-4") && !strings.Contains(s.outcomes[0], "web-1") {
		t.Fatalf("rollback reason %q should name the failing task", s.outcomes)
	}
	if !strings.Contains(s.st.Message, "failed: unhealthy") {
		t.Fatalf("final message %q", s.st.Message)
	}
	if s.images() != "web-1:app:1 web-2:app:1 web-3:app:1" {
		t.Fatalf("tasks after the rollback: %s", s.images())
	}
	if s.minServe < 3 {
		t.Fatalf("serving tasks fell to %d of 3", s.minServe)
	}
}

func TestPauseStopsTheUpdate(t *testing.T) {
	s := newSim(t, 3, &clustermap.UpdateConfig{FailureAction: clustermap.ActionPause, Order: clustermap.OrderStopFirst}, "app:1")
	s.bad["app:bad"] = true
	s.update("app:bad")
	s.run(200)
	if s.st.State != api.UpdatePaused || !strings.Contains(s.st.Message, "web-1") {
		t.Fatalf("state %s: %q", s.st.State, s.st.Message)
	}
	onBad := 0
	for _, t := range s.tasks {
		if t.Image == "app:bad" {
			onBad++
		}
	}
	if onBad != 1 {
		t.Fatalf("%d tasks on the bad image after pausing, want 1: %s", onBad, s.images())
	}
	// Nothing moves while paused.
	before := s.images()
	for range 10 {
		s.step()
	}
	if s.images() != before {
		t.Fatalf("paused update moved: %s -> %s", before, s.images())
	}
}

func TestContinueIgnoresFailures(t *testing.T) {
	s := newSim(t, 3, &clustermap.UpdateConfig{FailureAction: clustermap.ActionContinue, Order: clustermap.OrderStopFirst}, "app:1")
	s.bad["app:bad"] = true
	s.update("app:bad")
	s.run(200)
	if s.st.State != api.UpdateCompleted || len(s.st.Failures) != 3 || s.images() != "web-1:app:bad web-2:app:bad web-3:app:bad" {
		t.Fatalf("state %s failures %v tasks %s", s.st.State, s.st.Failures, s.images())
	}
}

func TestContinueStartFirstDoesNotWaitForAFailedSurge(t *testing.T) {
	s := newSim(t, 2, &clustermap.UpdateConfig{FailureAction: clustermap.ActionContinue}, "app:1")
	s.bad["app:bad"] = true
	s.update("app:bad")
	s.run(200)
	if s.st.State != api.UpdateCompleted || s.images() != "web-1:app:bad web-2:app:bad" {
		t.Fatalf("state %s tasks %s", s.st.State, s.images())
	}
}

func TestMaxFailureRatio(t *testing.T) {
	s := newSim(t, 4, &clustermap.UpdateConfig{FailureAction: clustermap.ActionPause, MaxFailureRatio: 0.5, Order: clustermap.OrderStopFirst}, "app:1")
	s.bad["app:bad"] = true
	s.update("app:bad")
	s.run(200)
	// 3 failures of 4 replicas > 0.5: paused after the third.
	if s.st.State != api.UpdatePaused || len(s.st.Failures) != 3 {
		t.Fatalf("state %s failures %v", s.st.State, s.st.Failures)
	}
}

func TestDelayBetweenSlots(t *testing.T) {
	s := newSim(t, 3, &clustermap.UpdateConfig{Delay: 10 * time.Second, Order: clustermap.OrderStopFirst}, "app:1")
	s.update("app:2")
	starts := map[string]time.Time{}
	for i := 0; i < 200 && s.st.Active(); i++ {
		s.step()
		for _, t := range s.tasks {
			if t.Draining {
				if _, ok := starts[t.Name]; !ok {
					starts[t.Name] = s.now
				}
			}
		}
	}
	if s.st.State != api.UpdateCompleted || len(starts) != 3 {
		t.Fatalf("state %s, slots started %v", s.st.State, starts)
	}
	if gap := starts["web-2"].Sub(starts["web-1"]); gap < 10*time.Second {
		t.Fatalf("slot 2 started %s after slot 1, want >= the 10s delay", gap)
	}
}

func TestMonitorCountsALateFailure(t *testing.T) {
	s := newSim(t, 2, &clustermap.UpdateConfig{Monitor: 30 * time.Second, FailureAction: clustermap.ActionPause, Order: clustermap.OrderStopFirst}, "app:1")
	s.update("app:2")
	for range 8 {
		s.step()
	}
	// web-1 serves on app:2; now it dies inside the monitor window.
	for i := range s.tasks {
		if s.tasks[i].Name == "web-1" {
			if !s.tasks[i].Serves() || s.tasks[i].Image != "app:2" {
				t.Fatalf("web-1 should serve app:2 by now: %+v", s.tasks[i])
			}
			s.tasks[i].State, s.tasks[i].Error = clustermap.TaskFailed, "exited with status 1"
		}
	}
	s.step()
	if s.st.State != api.UpdatePaused || !strings.Contains(s.st.Message, "web-1 failed: exited with status 1") {
		t.Fatalf("state %s: %q", s.st.State, s.st.Message)
	}
}

func TestPlanLeavesInactiveServicesAlone(t *testing.T) {
	svc := clustermap.Service{Name: "web", Image: "app:2", Replicas: 1}
	tasks := []clustermap.Task{{Name: "web-1", Service: "web", Slot: 1, Image: "app:1", DesiredState: clustermap.TaskRunning, State: clustermap.TaskRunning}}
	for _, st := range []*Status{nil, {UpdateStatus: api.UpdateStatus{State: api.UpdatePaused}}} {
		out, next, o := Plan(svc, st, tasks, t0)
		if out[0].Image != "app:1" || next != st || o != Continue {
			t.Fatalf("inactive update changed things: %+v %+v", out, next)
		}
	}
}

func TestValidate(t *testing.T) {
	bad := []struct {
		c     clustermap.UpdateConfig
		which string
	}{
		{clustermap.UpdateConfig{Order: "sideways"}, "update"},
		{clustermap.UpdateConfig{FailureAction: "explode"}, "update"},
		{clustermap.UpdateConfig{FailureAction: clustermap.ActionRollback}, "rollback"},
		{clustermap.UpdateConfig{MaxFailureRatio: 1.5}, "update"},
		{clustermap.UpdateConfig{Parallelism: -1}, "update"},
	}
	for _, b := range bad {
		if err := Validate(&b.c, b.which); err == nil {
			t.Errorf("Validate(%+v, %s) accepted", b.c, b.which)
		}
	}
}

// An env/command/workload change (a new spec version, same image) rolls
// as an image update does: a task is on the target only with both, and a
// moved slot gets both.
func TestSpecVersionUpdateRollsEveryTask(t *testing.T) {
	s := newSim(t, 3, &clustermap.UpdateConfig{Order: clustermap.OrderStopFirst}, "web:v1")
	prev := s.svc.SpecVersion
	s.svc.SpecVersion = 1
	s.st = Begin(s.svc, s.svc.Image, s.svc.HealthCheck, prev, s.now)
	if s.st.PreviousSpecVersion != 0 {
		t.Fatalf("status = %+v", s.st)
	}
	s.run(100)
	if s.st.State != api.UpdateCompleted {
		t.Fatalf("update ended %s: %s", s.st.State, s.st.Message)
	}
	for _, task := range s.tasks {
		if task.SpecVersion != 1 || task.Image != "web:v1" || !task.Serves() {
			t.Errorf("task %s: %+v", task.Name, task)
		}
	}
	if s.minServe < 2 {
		t.Errorf("stop-first one at a time fell to %d serving", s.minServe)
	}
}

// A task on the new spec that completed (exit 0, restart condition none)
// is settled: the update completes.
func TestCompletedTaskCountsAsUpdated(t *testing.T) {
	svc := clustermap.Service{Name: "job", Image: "job:v2", Replicas: 2, SpecVersion: 3,
		UpdateConfig: &clustermap.UpdateConfig{Order: clustermap.OrderStopFirst, Monitor: time.Second}}
	st := Begin(svc, "job:v1", nil, 2, t0)
	tasks := []clustermap.Task{
		{Name: "job-1", Service: "job", Slot: 1, Image: "job:v2", SpecVersion: 3, DesiredState: clustermap.TaskRunning, State: clustermap.TaskComplete},
		{Name: "job-2", Service: "job", Slot: 2, Image: "job:v2", SpecVersion: 2, DesiredState: clustermap.TaskRunning, State: clustermap.TaskComplete},
	}
	out, next, _ := Plan(svc, st, tasks, t0)
	if next.State != api.UpdateUpdating || out[1].SpecVersion != 3 || out[1].State != clustermap.TaskPending {
		t.Fatalf("a completed task on the old spec is moved first: %+v, %+v", next, out[1])
	}
	out[1].State = clustermap.TaskComplete
	out, next, _ = Plan(svc, next, out, t0.Add(time.Second))
	if next.State != api.UpdateCompleted {
		t.Fatalf("update with every task complete on the new spec: %s (%s), tasks %+v", next.State, next.Message, out)
	}
}

// A global service (one task per node, no surge slots) rolls stop-first
// whatever its order, every task counting as a slot.
func TestGlobalServiceRollsWithoutSurge(t *testing.T) {
	s := newSim(t, 3, nil, "agent:v1") // start-first by default
	s.svc.Workload.Mode = clustermap.ModeGlobal
	s.svc.Replicas = 0
	s.update("agent:v2")
	if Surge(s.svc, s.st) != 0 {
		t.Fatal("a global service got surge slots")
	}
	for i := 0; i < 100 && s.st.Active(); i++ {
		tasks, st, _ := Plan(s.svc, s.st, s.tasks, s.now)
		s.tasks, s.st = tasks, st
		s.now = s.now.Add(time.Second)
		for i := range s.tasks {
			if tk := &s.tasks[i]; tk.State == clustermap.TaskPending {
				tk.State, tk.Health = clustermap.TaskRunning, clustermap.HealthHealthy
			}
		}
	}
	if s.st.State != api.UpdateCompleted || len(s.tasks) != 3 {
		t.Fatalf("global update ended %s: %s (%d tasks)", s.st.State, s.st.Message, len(s.tasks))
	}
	for _, task := range s.tasks {
		if task.Image != "agent:v2" {
			t.Errorf("task %s still on %s", task.Name, task.Image)
		}
	}
}
