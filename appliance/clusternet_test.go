package appliance

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/configs"
)

var edgeNet = clustermap.Network{
	Domain:             "edge.lan",
	WireGuardSubnet:    netip.MustParsePrefix("172.16.0.0/24"),
	ContainerSubnet:    netip.MustParsePrefix("172.17.0.0/16"),
	ContainerBlockBits: 24,
	VIPSubnet:          netip.MustParsePrefix("172.18.0.0/16"),
}

func loadConfig(t *testing.T, text string) *configs.Loaded {
	t.Helper()
	l, err := configs.Parse([]byte(text), "warren.toml")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestIgnoredClusterKeysOnlyNamesWrittenKeysThatDiffer(t *testing.T) {
	// Defaults differ from the cluster's values but were not written: a
	// worker with a default config hears nothing.
	if got := ignoredClusterKeys(loadConfig(t, "[node]\nrole = \"worker\"\n"), edgeNet); got != nil {
		t.Errorf("default config: %v, want no warning", got)
	}
	// Written and equal: nothing; written and different: named, with both values.
	cfg := loadConfig(t, `
[wireguard]
subnet = "172.16.0.0/24"
[network]
vip_subnet = "10.1.0.0/16"
dns_domain = "warren.local"
container_block = 26
`)
	want := []string{
		"network.container_block = 26 (cluster: 24)",
		"network.vip_subnet = 10.1.0.0/16 (cluster: 172.18.0.0/16)",
		"network.dns_domain = warren.local (cluster: edge.lan)",
	}
	if got := ignoredClusterKeys(cfg, edgeNet); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	// A flag counts as written.
	cfg = loadConfig(t, "")
	cfg.Network.ContainerSubnet.Set("10.9.0.0/16")
	cfg.SetByFlag("network.container_subnet")
	if got := ignoredClusterKeys(cfg, edgeNet); len(got) != 1 || !strings.HasPrefix(got[0], "network.container_subnet = 10.9.0.0/16") {
		t.Errorf("flag: got %q", got)
	}
}

func TestClusterOverlapErrorNamesTheClusterRangeAndTheHostNetwork(t *testing.T) {
	host := []netip.Prefix{netip.MustParsePrefix("192.168.100.5/24"), netip.MustParsePrefix("172.18.4.1/24")}
	err := clusterOverlapError(configs.HostOverlaps(clusterRanges(edgeNet), host))
	if err == nil || !strings.Contains(err.Error(), "the cluster's network.vip_subnet 172.18.0.0/16 overlaps 172.18.4.0/24") {
		t.Fatalf("err = %v", err)
	}
	if err := clusterOverlapError(configs.HostOverlaps(clusterRanges(edgeNet), host[:1])); err != nil {
		t.Fatalf("no overlap, got %v", err)
	}
}
