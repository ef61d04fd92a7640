package cluster

import (
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestApplyTaskStatus(t *testing.T) {
	tasks := []clustermap.Task{
		{Name: "a-1", NodeID: "n1", Image: "v2", DesiredState: clustermap.TaskRunning, State: clustermap.TaskPending},
		{Name: "a-2", NodeID: "n1", Image: "v2", DesiredState: clustermap.TaskRunning, State: clustermap.TaskPending},
		{Name: "a-3", NodeID: "n1", Image: "v1", DesiredState: clustermap.TaskShutdown, State: clustermap.TaskRunning},
		{Name: "a-4", NodeID: "n1", Image: "v1", DesiredState: clustermap.TaskRunning, State: clustermap.TaskRunning},
		{Name: "a-5", NodeID: "n2", Image: "v1", DesiredState: clustermap.TaskRunning, State: clustermap.TaskPending},
	}
	applyTaskStatus(tasks, "n1", []api.TaskStatus{
		{Name: "a-1", State: clustermap.TaskRunning, Image: "v2"},
		{Name: "a-2", State: clustermap.TaskRunning, Image: "v1"}, // still the old container
		{Name: "a-5", State: clustermap.TaskRunning},              // not n1's task
	})
	want := map[string]string{
		"a-1": clustermap.TaskRunning,  // reported with the task's image
		"a-2": clustermap.TaskPending,  // old image: not yet updated
		"a-3": clustermap.TaskShutdown, // gone from the node as desired
		"a-4": clustermap.TaskPending,  // vanished from the node
		"a-5": clustermap.TaskPending,  // another node's task is untouched
	}
	for _, task := range tasks {
		if task.State != want[task.Name] {
			t.Errorf("%s: state %s, want %s", task.Name, task.State, want[task.Name])
		}
	}
	if taskStatusChanges(tasks, "n1", []api.TaskStatus{{Name: "a-1", State: clustermap.TaskRunning, Image: "v2"}, {Name: "a-2", State: clustermap.TaskRunning, Image: "v1"}}) {
		t.Error("the same report again must change nothing")
	}
}

func TestDropFinished(t *testing.T) {
	nodes := map[string]nodeRecord{
		"up":   {Node: clustermap.Node{ID: "up", Status: clustermap.NodeReady}},
		"down": {Node: clustermap.Node{ID: "down", Status: clustermap.NodeDown}},
	}
	tasks := []clustermap.Task{
		{Name: "stopping", NodeID: "up", DesiredState: clustermap.TaskShutdown, State: clustermap.TaskRunning},
		{Name: "stopped", NodeID: "up", DesiredState: clustermap.TaskShutdown, State: clustermap.TaskShutdown},
		{Name: "on-down", NodeID: "down", DesiredState: clustermap.TaskShutdown, State: clustermap.TaskRunning},
		{Name: "on-gone", NodeID: "gone", DesiredState: clustermap.TaskShutdown, State: clustermap.TaskRunning},
		{Name: "running", NodeID: "up", DesiredState: clustermap.TaskRunning, State: clustermap.TaskRunning},
	}
	var names []string
	for _, task := range dropFinished(tasks, nodes) {
		names = append(names, task.Name)
	}
	if strings.Join(names, ",") != "stopping,running" {
		t.Fatalf("kept %v, want stopping,running", names)
	}
}
