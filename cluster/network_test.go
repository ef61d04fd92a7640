package cluster

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// The cluster-wide values are decided at creation and reach a joining
// node in the join answer (kept in its identity) and in every map; an
// identity stored before they were kept gets them from the manager.
func TestNetworkReachesNodesFromTheCluster(t *testing.T) {
	tm := &testManager{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	tm.cfg = ManagerConfig{
		StateDir: tm.dir,
		Node: NodeInfo{Name: "manager-1", Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"),
			PublicKey: clustertest.WGKey(t)},
		WireGuardSubnet: netip.MustParsePrefix("172.16.0.0/24"), ContainerSubnet: netip.MustParsePrefix("172.17.0.0/16"),
		ContainerBlockBits: 25, VIPSubnet: netip.MustParsePrefix("172.18.0.0/16"), Domain: "edge.lan",
		Logger: clustertest.Logger(t),
	}
	tm.start()
	t.Cleanup(tm.stop)
	want := clustermap.Network{Domain: "edge.lan", WireGuardSubnet: netip.MustParsePrefix("172.16.0.0/24"),
		ContainerSubnet: netip.MustParsePrefix("172.17.0.0/16"), ContainerBlockBits: 25, VIPSubnet: netip.MustParsePrefix("172.18.0.0/16")}
	if got := tm.m.Network(); got != want {
		t.Fatalf("manager network = %+v, want %+v", got, want)
	}
	// A restart with other values keeps the cluster's.
	tm.stop()
	tm.cfg.VIPSubnet, tm.cfg.Domain = netip.MustParsePrefix("10.1.0.0/16"), "warren.local"
	tm.start()
	if got := tm.m.Network(); got != want {
		t.Fatalf("manager network after a restart with other config = %+v, want %+v", got, want)
	}

	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	if got := a.Network(); got != want {
		t.Fatalf("agent network from the join = %+v, want %+v", got, want)
	}
	m := clustertest.Watch(t, a).WaitFor(t, "a map", clustertest.HasNodes(2))
	if got := m.Network(); got != want {
		t.Fatalf("map network = %+v, want %+v", got, want)
	}

	// An identity stored without the network, and no cached map: the next
	// start asks the manager.
	idPath := filepath.Join(cfg.StateDir, agent.FileIdentity)
	var id map[string]any
	b, err := os.ReadFile(idPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &id); err != nil {
		t.Fatal(err)
	}
	delete(id, "network")
	b, _ = json.Marshal(id)
	if err := os.WriteFile(idPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(cfg.StateDir, agent.FileMap))
	if got := join(t, cfg).Network(); got != want {
		t.Fatalf("agent network recovered from the manager = %+v, want %+v", got, want)
	}
	b, _ = os.ReadFile(idPath)
	if err := json.Unmarshal(b, &id); err != nil || id["network"] == nil {
		t.Fatalf("recovered network not saved in %s: %s", agent.FileIdentity, b)
	}
}
