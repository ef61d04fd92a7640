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
