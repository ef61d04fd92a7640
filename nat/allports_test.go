package nat

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A service that declares no port is reachable on every port of its VIP.
func TestRenderAllPortsGolden(t *testing.T) {
	cases := map[string][]Service{
		"all-ports": {{
			Name: "web", VIP: netip.MustParseAddr("10.1.0.1"),
			Endpoints: []Endpoint{ep("web-2", "10.0.2.2"), ep("web-1", "10.0.1.2")},
		}},
		"all-ports-no-endpoints": {{Name: "web", VIP: netip.MustParseAddr("10.1.0.1")}},
	}
	for name, services := range cases {
		t.Run(name, func(t *testing.T) {
			if err := Validate(services, baseOpts); err != nil {
				t.Fatal(err)
			}
			got := Render(services, baseOpts)
			path := filepath.Join("testdata", name+".golden")
			if *update {
				os.WriteFile(path, got, 0o644)
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Render differs from %s:\n%s", path, got)
			}
		})
	}
	all := string(Render(cases["all-ports"], baseOpts))
	for _, want := range []string{
		"-A WARREN-SERVICES -d 10.1.0.1/32 -m comment",
		"-j DNAT --to-destination 10.0.1.2\n",
		"--probability 0.5000000000",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("all-ports rules lack %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "--dport") {
		t.Errorf("all-ports rules match a port:\n%s", all)
	}
	none := string(Render(cases["all-ports-no-endpoints"], baseOpts))
	if !strings.Contains(none, "-A WARREN-SERVICES -d 10.1.0.1/32 -m comment --comment \"web:all/0 has no endpoints\" -j REJECT") {
		t.Errorf("a service without endpoints must REJECT on its VIP:\n%s", none)
	}
}
