package appliance

import (
	"net/http"
	"net/netip"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestSharingForPicksPeersAndCoordinator(t *testing.T) {
	m := &clustermap.Map{Nodes: []clustermap.Node{
		{ID: "w1", Name: "worker-1", Role: clustermap.RoleWorker, OverlayIP: netip.MustParseAddr("10.0.0.3"), Status: clustermap.NodeReady},
		{ID: "m2", Name: "manager-2", Role: clustermap.RoleManager, OverlayIP: netip.MustParseAddr("10.0.0.2"), Status: clustermap.NodeReady},
		{ID: "m1", Name: "manager-1", Role: clustermap.RoleManager, OverlayIP: netip.MustParseAddr("10.0.0.1"), Status: "down"},
		{ID: "w2", Name: "worker-2", Role: clustermap.RoleWorker, OverlayIP: netip.MustParseAddr("10.0.0.4"), Status: clustermap.NodeReady},
	}}
	client := func(string) *http.Client { return http.DefaultClient }
	sh := sharingFor(m, "w1", client)
	if len(sh.Peers) != 2 || sh.Peers[0].Name != "manager-2" || sh.Peers[1].Name != "worker-2" {
		t.Fatalf("peers %+v", sh.Peers)
	}
	if sh.Coordinator == nil || sh.Coordinator.Name != "manager-2" || sh.Coordinator.Base != "https://10.0.0.2:7948" {
		t.Fatalf("coordinator %+v, want the first ready manager", sh.Coordinator)
	}
	if sh := sharingFor(m, "m2", client); sh.Coordinator != nil {
		t.Fatalf("the coordinator itself got coordinator %+v", sh.Coordinator)
	}
}

func TestRunsImageOnlyForTasksOfTheNode(t *testing.T) {
	m := &clustermap.Map{
		Services: []clustermap.Service{{Name: "app", Image: "reg.local:5000/team/app:1"}, {Name: "web", Image: "nginx"}},
		Tasks: []clustermap.Task{
			{Name: "app-1", Service: "app", NodeID: "w1", DesiredState: clustermap.TaskRunning},
			{Name: "web-1", Service: "web", NodeID: "w2", DesiredState: clustermap.TaskRunning, Image: "nginx"},
			{Name: "app-2", Service: "app", NodeID: "w3", DesiredState: clustermap.TaskShutdown},
		},
	}
	for _, c := range []struct {
		node, ref string
		want      bool
	}{
		{"w1", "reg.local:5000/team/app:1", true},
		{"w2", "docker.io/library/nginx:latest", true},
		{"w2", "reg.local:5000/team/app:1", false},
		{"w3", "reg.local:5000/team/app:1", false},
		{"w1", "", false},
	} {
		if got := runsImage(m, c.node, c.ref); got != c.want {
			t.Errorf("runsImage(%s, %q) = %v, want %v", c.node, c.ref, got, c.want)
		}
	}
}
