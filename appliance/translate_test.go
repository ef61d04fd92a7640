package appliance

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/nat"
	"github.com/warren-appliance/warren/tunnel"
)

func testMap(t *testing.T) (*clustermap.Map, [3]tunnel.Key) {
	var keys [3]tunnel.Key
	for i := range keys {
		k, err := tunnel.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k.PublicKey()
	}
	a := netip.MustParseAddr
	m := &clustermap.Map{
		Domain: "warren.local",
		Nodes: []clustermap.Node{
			{ID: "m", Name: "manager-1", PublicKey: keys[0].String(), Endpoint: netip.MustParseAddrPort("192.168.100.10:51820"), OverlayIP: a("10.0.0.1"), ContainerBlock: netip.MustParsePrefix("10.0.1.0/24")},
			{ID: "w1", Name: "worker-1", PublicKey: keys[1].String(), Endpoint: netip.MustParseAddrPort("192.168.100.11:51820"), OverlayIP: a("10.0.0.2"), ContainerBlock: netip.MustParsePrefix("10.0.2.0/24")},
			{ID: "w2", Name: "worker-2", PublicKey: "not-a-key", OverlayIP: a("10.0.0.3")},
		},
		Services: []clustermap.Service{
			{Name: "web", VIP: a("10.1.0.1"), Ports: []clustermap.Port{{Protocol: "tcp", Target: 80, Published: 8080}}},
			{Name: "novip"},
		},
		Tasks: []clustermap.Task{
			{Name: "web-1", Service: "web", NodeID: "m", IP: a("10.0.1.2"), DesiredState: "running", State: "running"},
			{Name: "web-2", Service: "web", NodeID: "w1", IP: a("10.0.2.2"), DesiredState: "running", State: "starting"},
			{Name: "web-3", Service: "web", NodeID: "w1", IP: a("10.0.2.3"), DesiredState: "shutdown", State: "running"},
		},
	}
	return m, keys
}

func TestMeshPeersSkipsSelfAndBadKeys(t *testing.T) {
	m, keys := testMap(t)
	got := meshPeers(m, "m", 25*time.Second)
	want := []tunnel.Peer{{
		PublicKey:  keys[1],
		Endpoint:   netip.MustParseAddrPort("192.168.100.11:51820"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32"), netip.MustParsePrefix("10.0.2.0/24")},
		Keepalive:  25 * time.Second,
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("peers = %+v\nwant %+v", got, want)
	}
}

func TestNatServicesOnlyRunningEndpoints(t *testing.T) {
	m, _ := testMap(t)
	got := natServices(m, "m")
	want := []nat.Service{{
		Name: "web", VIP: netip.MustParseAddr("10.1.0.1"),
		Ports:     []nat.Port{{Protocol: "tcp", Port: 80, TargetPort: 80, Published: 8080}},
		Endpoints: []nat.Endpoint{{Name: "web-1", IP: netip.MustParseAddr("10.0.1.2"), Local: true}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("services = %+v\nwant %+v", got, want)
	}
}

// Issue 26: the VIP, its published ports (and with them the UDP
// conntrack cleanup, which follows the endpoint set) and the DNS names
// take only serving tasks: running and healthy, or without a check.
func TestNatServicesOnlyHealthyEndpoints(t *testing.T) {
	m, _ := testMap(t)
	a := netip.MustParseAddr
	m.Tasks = []clustermap.Task{
		{Name: "web-1", Service: "web", NodeID: "m", IP: a("10.0.1.2"), DesiredState: "running", State: "running", Health: clustermap.HealthHealthy},
		{Name: "web-2", Service: "web", NodeID: "m", IP: a("10.0.1.3"), DesiredState: "running", State: "running", Health: clustermap.HealthStarting},
		{Name: "web-3", Service: "web", NodeID: "w1", IP: a("10.0.2.2"), DesiredState: "running", State: "running", Health: clustermap.HealthUnhealthy},
		{Name: "web-4", Service: "web", NodeID: "w1", IP: a("10.0.2.3"), DesiredState: "running", State: "running", Health: clustermap.HealthHealthy, Draining: true},
	}
	got := natServices(m, "m")
	if len(got) != 1 || len(got[0].Endpoints) != 1 || got[0].Endpoints[0].Name != "web-1" {
		t.Fatalf("endpoints = %+v, want web-1 alone", got)
	}
	// Task specs still include every task meant to run: health decides
	// traffic, not whether the node runs the task.
	if specs := taskSpecs(m, "m"); len(specs) != 2 {
		t.Fatalf("task specs on m = %+v", specs)
	}
}

func TestFederationTranslation(t *testing.T) {
	m, keys := testMap(t)
	bk, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	bSubnet := netip.MustParsePrefix("10.20.0.0/16")
	m.ContainerSubnet = netip.MustParsePrefix("10.0.0.0/16")
	m.Federation = &clustermap.Federation{GatewayID: "m", Gateways: []clustermap.Gateway{{Peer: "b", PublicKey: bk.PublicKey().String(),
		Endpoint: netip.MustParseAddrPort("192.168.100.20:51820"), OverlayIP: a("10.20.0.1"), ContainerSubnet: bSubnet, Exposed: []netip.Addr{a("10.0.1.2")}}}}
	m.Imports = []clustermap.Import{{Peer: "b", Service: "web", VIP: a("10.1.0.7"), Ports: []clustermap.Port{{Protocol: "tcp", Target: 80}},
		Endpoints: []netip.Addr{a("10.20.1.2"), a("10.20.2.2")}}}

	// A worker routes B's container subnet to the gateway (manager-1).
	peers := meshPeers(m, "w1", 0)
	if len(peers) != 1 || peers[0].PublicKey != keys[0] || !reflect.DeepEqual(peers[0].AllowedIPs,
		[]netip.Prefix{netip.MustParsePrefix("10.0.0.1/32"), netip.MustParsePrefix("10.0.1.0/24"), bSubnet}) {
		t.Fatalf("worker's peers %+v", peers)
	}
	if g := natGateways(m, "w1"); g != nil {
		t.Errorf("a worker got gateway rules %+v", g)
	}
	// The gateway holds the link to B's gateway.
	peers = meshPeers(m, "m", 0)
	last := peers[len(peers)-1]
	if last.PublicKey != bk.PublicKey() || last.Endpoint != netip.MustParseAddrPort("192.168.100.20:51820") ||
		!reflect.DeepEqual(last.AllowedIPs, []netip.Prefix{netip.MustParsePrefix("10.20.0.1/32"), bSubnet}) {
		t.Fatalf("gateway's link to B %+v", last)
	}
	if g := natGateways(m, "m"); len(g) != 1 || g[0].Subnet != bSubnet {
		t.Errorf("gateway rules %+v", g)
	}
	if p := policyPeers(m, "m"); len(p) != 1 || p[0].Subnet != bSubnet || p[0].Exposed[0] != a("10.0.1.2") {
		t.Errorf("gateway's peer filter %+v", p)
	}
	if p := policyPeers(m, "w1"); p != nil {
		t.Errorf("a worker got a peer filter %+v", p)
	}
	// Every node DNATs the import's VIP to B's tasks.
	var imp *nat.Service
	svcs := natServices(m, "w1")
	for i := range svcs {
		if svcs[i].VIP == a("10.1.0.7") {
			imp = &svcs[i]
		}
	}
	if imp == nil || imp.Name != "web.b" || len(imp.Endpoints) != 2 || imp.Endpoints[0].IP != a("10.20.1.2") || imp.Ports[0].Port != 80 {
		t.Fatalf("import's NAT service %+v", imp)
	}
	if err := nat.Validate(svcs, nat.Options{}); err != nil {
		t.Fatalf("NAT refuses the import: %v", err)
	}
	if n := importRuleName(clustermap.Import{Peer: "p2345678901234567890123456789012", Service: "s234567890123456789012345678901234567890123456789"}); len(n) > 63 {
		t.Errorf("rule name %q too long", n)
	}
}
