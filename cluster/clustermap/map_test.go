package clustermap

import (
	"bytes"
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

// FuzzMapDecode: whatever a manager (or a damaged map.json) sends, decoding
// never panics, what decodes re-encodes stably, and the lookups nodes run
// on it do not panic.
func FuzzMapDecode(f *testing.F) {
	f.Add([]byte(`{"version":3,"cluster_id":"c","domain":"warren.local","wireguard_subnet":"10.0.0.0/24","container_subnet":"10.0.0.0/16","vip_subnet":"10.1.0.0/16","nodes":[{"id":"a","name":"n","role":"worker","public_key":"k","endpoint":"192.0.2.1:51820","overlay_ip":"10.0.0.2","container_block":"10.0.2.0/24","status":"ready"}],"services":[{"name":"web","image":"i","replicas":1,"vip":"10.1.0.1","env":["A=1"]}],"tasks":[{"name":"web-1","service":"web","slot":1,"node_id":"a","ip":"10.0.2.2","desired_state":"running","state":"running"}]}`))
	f.Add([]byte(`{"nodes":null,"tasks":[{}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Map
		if json.Unmarshal(b, &m) != nil {
			return
		}
		enc1, err := json.Marshal(&m)
		if err != nil {
			t.Fatalf("decoded map does not encode: %v", err)
		}
		var m2 Map
		if err := json.Unmarshal(enc1, &m2); err != nil {
			t.Fatalf("re-encoded map does not decode: %v\n%s", err, enc1)
		}
		enc2, _ := json.Marshal(&m2)
		if !bytes.Equal(enc1, enc2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", enc1, enc2)
		}
		for _, n := range m.Nodes {
			m.Node(n.ID)
			m.TasksOn(n.ID)
		}
		for _, s := range m.Services {
			m.Endpoints(s.Name)
		}
	})
}

func TestEndpointsOnlyHealthyAndNotDraining(t *testing.T) {
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	m := Map{Tasks: []Task{
		{Name: "web-1", Service: "web", IP: ip("10.0.1.2"), DesiredState: TaskRunning, State: TaskRunning},
		{Name: "web-2", Service: "web", IP: ip("10.0.1.3"), DesiredState: TaskRunning, State: TaskRunning, Health: HealthHealthy},
		{Name: "web-3", Service: "web", IP: ip("10.0.1.4"), DesiredState: TaskRunning, State: TaskRunning, Health: HealthStarting},
		{Name: "web-4", Service: "web", IP: ip("10.0.1.5"), DesiredState: TaskRunning, State: TaskRunning, Health: HealthUnhealthy},
		{Name: "web-5", Service: "web", IP: ip("10.0.1.6"), DesiredState: TaskRunning, State: TaskRunning, Health: HealthHealthy, Draining: true},
	}}
	var names []string
	for _, e := range m.Endpoints("web") {
		names = append(names, e.Name)
	}
	if want := []string{"web-1", "web-2"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("endpoints = %v, want %v", names, want)
	}
}
