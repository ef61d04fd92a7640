package cluster

import (
	"context"
	"net/http"
	"testing"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

// GET /v1/tasks keeps a removed service's tasks until their nodes report
// them stopped: `warren service rm` waits on it.
func TestTasksOfRemovedServiceUntilStopped(t *testing.T) {
	tm := startManager(t)
	a := join(t, agentConfig(t, tm, "worker-1"))
	c := adminClient(t, tm.m)
	ctx := context.Background()
	if _, err := c.CreateService(ctx, api.ServiceSpec{Name: "web", Image: "x", Replicas: intp(1), Constraints: []string{"node.name==worker-1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateService(ctx, api.ServiceSpec{Name: "db", Image: "x", Replicas: intp(0)}); err != nil {
		t.Fatal(err)
	}
	if err := a.Report(ctx, NodeStatus{Tasks: []api.TaskStatus{{Name: "web-1", State: clustermap.TaskRunning, Image: "x"}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveService(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	tasks, err := c.Tasks(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) != 1 || tasks[0].Name != "web-1" || tasks[0].Service != "web" || tasks[0].Node != "worker-1" ||
		tasks[0].DesiredState != clustermap.TaskShutdown || tasks[0].State != clustermap.TaskRunning {
		t.Fatalf("tasks of the removed service: %+v, want web-1 on worker-1 still running, desired shutdown", tasks)
	}
	if err := a.Report(ctx, NodeStatus{Tasks: []api.TaskStatus{{Name: "web-1", State: clustermap.TaskShutdown}}}); err != nil {
		t.Fatal(err)
	}
	if tasks, err := c.Tasks(ctx, "web"); err != nil || len(tasks) != 0 {
		t.Fatalf("after the node reported web-1 stopped: %+v, %v; want none", tasks, err)
	}
}

// The seed's `--constraint "node.id==worker-1"` could never match (IDs are
// random hex): an ID no node has is refused, suggesting node.name when a
// node has that name; a real ID is accepted.
func TestNodeIDConstraintNamesAnExistingNode(t *testing.T) {
	tm := startManager(t)
	a := join(t, agentConfig(t, tm, "worker-1"))
	c := adminClient(t, tm.m)
	ctx := context.Background()
	_, err := c.CreateService(ctx, api.ServiceSpec{Name: "web", Image: "x", Constraints: []string{"node.id==worker-1"}})
	wantAPIError(t, err, http.StatusBadRequest, `constraint node.id==worker-1: no node has the ID "worker-1", but node worker-1 is named so (ID `+a.Self().ID+`): did you mean node.name==worker-1?`)
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "web", Image: "x", Constraints: []string{"node.id!=nobody"}})
	wantAPIError(t, err, http.StatusBadRequest, `constraint node.id!=nobody: no node has the ID "nobody"`)
	if _, err := c.CreateService(ctx, api.ServiceSpec{Name: "web", Image: "x", Constraints: []string{"node.id==" + a.Self().ID}}); err != nil {
		t.Fatalf("node.id== a real ID: %v", err)
	}
}
