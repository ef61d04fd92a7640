package cluster

import (
	"context"
	"testing"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

// A heartbeat whose Tasks is nil (a restarted node that has not looked at
// its tasks yet) keeps the task states; an empty list says the node runs
// none of them.
func TestReportWithoutTaskInfoKeepsStates(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	if _, err := m.CreateService(api.ServiceSpec{Name: "web", Image: "x", Replicas: intp(1)}); err != nil {
		t.Fatal(err)
	}
	reportAll(t, m, m.Self().ID)
	state := func() string {
		for _, task := range m.Map().TasksOn(m.Self().ID) {
			return task.State
		}
		return "none"
	}
	if got := state(); got != clustermap.TaskRunning {
		t.Fatalf("task state %s after reporting it running", got)
	}
	if err := m.Report(context.Background(), NodeStatus{Tasks: nil}); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != clustermap.TaskRunning {
		t.Fatalf("a heartbeat without task info changed the task to %s", got)
	}
	if err := m.Report(context.Background(), NodeStatus{Tasks: []api.TaskStatus{}}); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != clustermap.TaskPending {
		t.Fatalf("a node reporting no tasks left the task %s, want pending", got)
	}
}
