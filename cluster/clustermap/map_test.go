package clustermap

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
)

func TestEndpointsOnlyRunningAndSorted(t *testing.T) {
	m := Map{Tasks: []Task{
		{Name: "web-2", Service: "web", IP: netip.MustParseAddr("10.0.2.2"), DesiredState: TaskRunning, State: TaskRunning},
		{Name: "web-1", Service: "web", IP: netip.MustParseAddr("10.0.1.2"), DesiredState: TaskRunning, State: TaskRunning},
		{Name: "web-3", Service: "web", IP: netip.MustParseAddr("10.0.3.2"), DesiredState: TaskRunning, State: TaskStarting},
		{Name: "web-4", Service: "web", IP: netip.MustParseAddr("10.0.3.3"), DesiredState: TaskShutdown, State: TaskRunning},
		{Name: "db-1", Service: "db", IP: netip.MustParseAddr("10.0.1.3"), DesiredState: TaskRunning, State: TaskRunning},
	}}
	var names []string
	for _, e := range m.Endpoints("web") {
		names = append(names, e.Name)
	}
	if want := []string{"web-1", "web-2"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("endpoints = %v, want %v", names, want)
	}
}

func TestMapJSONRoundTrip(t *testing.T) {
	m := Map{
		Version: 7, ClusterID: "c1", Domain: "warren.local",
		WireGuardSubnet: netip.MustParsePrefix("10.0.0.0/24"), ContainerBlockBits: 24,
		Nodes: []Node{{ID: "n1", Name: "m1", Role: RoleManager, OverlayIP: netip.MustParseAddr("10.0.0.1"),
			ContainerBlock: netip.MustParsePrefix("10.0.1.0/24"), Endpoint: netip.MustParseAddrPort("192.0.2.1:51820")}},
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back Map
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, back) {
		t.Fatalf("round trip changed the map:\n%+v\n%+v", m, back)
	}
	if n, ok := back.Node("n1"); !ok || n.Name != "m1" {
		t.Fatalf("Node(n1) = %+v, %v", n, ok)
	}
}
