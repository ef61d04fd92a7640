package appliance

import (
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// A service is updating while a task runs another image or another spec
// version (an env, command or workload update) than the service's.
func TestServiceCountsUpdatingOnSpecVersion(t *testing.T) {
	m := &clustermap.Map{
		Services: []clustermap.Service{{Name: "web", Image: "web:1", Replicas: 2, SpecVersion: 2}},
		Tasks: []clustermap.Task{
			{Name: "web-1", Service: "web", Image: "web:1", SpecVersion: 2, DesiredState: clustermap.TaskRunning, State: clustermap.TaskRunning},
			{Name: "web-2", Service: "web", Image: "web:1", SpecVersion: 1, DesiredState: clustermap.TaskRunning, State: clustermap.TaskRunning},
		},
	}
	got := serviceCounts(m)
	if len(got) != 1 || !got[0].Updating || got[0].Running != 2 || got[0].Desired != 2 {
		t.Fatalf("counts = %+v", got)
	}
	m.Tasks[1].SpecVersion = 2
	if got := serviceCounts(m); got[0].Updating {
		t.Fatalf("every task on the service's spec: %+v", got)
	}
}
