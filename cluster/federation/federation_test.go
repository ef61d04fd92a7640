package federation

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func netw(wg, ct, vip string) clustermap.Network {
	return clustermap.Network{Domain: "warren.local", WireGuardSubnet: netip.MustParsePrefix(wg),
		ContainerSubnet: netip.MustParsePrefix(ct), ContainerBlockBits: 24, VIPSubnet: netip.MustParsePrefix(vip)}
}

var (
	defA = netw("10.0.0.0/24", "10.0.0.0/16", "10.1.0.0/16")
	defB = netw("10.20.0.0/24", "10.20.0.0/16", "10.21.0.0/16")
)

func TestTokenRoundTrip(t *testing.T) {
	tok := Token{ClusterID: "abc", CAHash: strings.Repeat("ab", 32), Managers: []string{"192.0.2.1:7946"},
		Network: defB, Secret: strings.Repeat("a", 26)}
	s := tok.String()
	if !strings.HasPrefix(s, TokenPrefix) {
		t.Fatalf("token %q lacks prefix", s)
	}
	got, err := ParseToken(" " + s + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if got.CAHash != tok.CAHash || got.Secret != tok.Secret || got.Managers[0] != "192.0.2.1:7946" || got.Network != defB {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestParseTokenRefuses(t *testing.T) {
	good := Token{ClusterID: "abc", CAHash: strings.Repeat("ab", 32), Managers: []string{"192.0.2.1:7946"}, Network: defB, Secret: strings.Repeat("a", 26)}
	mut := func(f func(*Token)) string {
		c := good
		c.Managers = append([]string(nil), good.Managers...)
		f(&c)
		return c.String()
	}
	for name, c := range map[string]struct{ tok, want string }{
		"join token":  {"WRN-1-" + strings.Repeat("a", 64) + "-" + strings.Repeat("a", 26), "join token, not a peer token"},
		"no prefix":   {"hello", "must start with"},
		"truncated":   {good.String()[:40], "malformed"},
		"bad hash":    {mut(func(t *Token) { t.CAHash = "xyz" }), "CA hash"},
		"bad secret":  {mut(func(t *Token) { t.Secret = "short" }), "secret"},
		"no managers": {mut(func(t *Token) { t.Managers = nil }), "no manager address"},
		"bad manager": {mut(func(t *Token) { t.Managers = []string{"host:1"} }), `"host:1" is not IP:port`},
		"no vip":      {mut(func(t *Token) { t.Network.VIPSubnet = netip.Prefix{} }), "VIP subnet missing"},
		"host bits":   {mut(func(t *Token) { t.Network.ContainerSubnet = netip.MustParsePrefix("10.20.0.1/16") }), "host bits"},
	} {
		_, err := ParseToken(c.tok)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", name, err, c.want)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"b", "eu-west", "b2"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "B", "-b", "b.c", "global", strings.Repeat("a", 33)} {
		if err := CheckName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCheckPeeringOverlap(t *testing.T) {
	if err := CheckPeering("b", "A", defA, "B", defB, nil); err != nil {
		t.Fatalf("disjoint ranges refused: %v", err)
	}
	// C has A's ranges: every range of A overlaps one of C's.
	err := CheckPeering("c", "A", defA, "C", defA, nil)
	if err == nil {
		t.Fatal("peering with the same ranges accepted")
	}
	for _, want := range []string{"WireGuard subnet 10.0.0.0/24", "container subnet 10.0.0.0/16", "VIP subnet 10.1.0.0/16"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	// Only the VIP range collides: only it is named.
	d := netw("10.30.0.0/24", "10.30.0.0/16", "10.1.128.0/17")
	err = CheckPeering("d", "A", defA, "D", d, nil)
	if err == nil || !strings.Contains(err.Error(), "this cluster's VIP subnet 10.1.0.0/16 overlaps the peer's VIP subnet 10.1.128.0/17") ||
		strings.Contains(err.Error(), "container subnet 10.0.0.0/16 overlaps") {
		t.Errorf("VIP overlap: %v", err)
	}
	// A range of another peer.
	e := netw("10.20.5.0/24", "10.40.0.0/16", "10.41.0.0/16")
	err = CheckPeering("e", "A", defA, "E", e, []Existing{{Name: "b", ClusterID: "B", Network: defB}})
	if err == nil || !strings.Contains(err.Error(), "peer b's container subnet 10.20.0.0/16 overlaps the peer's WireGuard subnet 10.20.5.0/24") {
		t.Errorf("overlap with another peer: %v", err)
	}
	if err := CheckPeering("b", "A", defA, "A", defB, nil); err == nil || !strings.Contains(err.Error(), "own") {
		t.Errorf("own token: %v", err)
	}
	if err := CheckPeering("b", "A", defA, "B2", netw("10.50.0.0/24", "10.50.0.0/16", "10.51.0.0/16"), []Existing{{Name: "b", ClusterID: "B", Network: defB}}); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Errorf("same name: %v", err)
	}
	if err := CheckPeering("b2", "A", defA, "B", defB, []Existing{{Name: "b", ClusterID: "B", Network: defB}}); err == nil || !strings.Contains(err.Error(), `already, as "b"`) {
		t.Errorf("same cluster twice: %v", err)
	}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestExportsOf(t *testing.T) {
	m := &clustermap.Map{
		Services: []clustermap.Service{{Name: "web", Ports: []clustermap.Port{{Protocol: "tcp", Target: 80}}}, {Name: "db"}, {Name: "idle"}},
		Tasks: []clustermap.Task{
			{Service: "web", IP: netip.MustParseAddr("10.20.1.3"), State: "running", DesiredState: "running"},
			{Service: "web", IP: netip.MustParseAddr("10.20.1.2"), State: "running", DesiredState: "running"},
			{Service: "web", IP: netip.MustParseAddr("10.20.1.4"), State: "starting", DesiredState: "running"},
			{Service: "web", IP: netip.MustParseAddr("10.20.1.5"), State: "running", DesiredState: "running", Health: clustermap.HealthUnhealthy},
			{Service: "db", IP: netip.MustParseAddr("10.20.1.9"), State: "running", DesiredState: "running"},
		},
	}
	got := ExportsOf(m, func(s string) bool { return s != "db" })
	if len(got) != 2 || got[0].Service != "idle" || len(got[0].Endpoints) != 0 || got[1].Service != "web" {
		t.Fatalf("exports: %+v", got)
	}
	if want := addrs("10.20.1.2", "10.20.1.3"); !slicesEqual(got[1].Endpoints, want) {
		t.Errorf("web endpoints %v, want %v (only serving tasks, sorted)", got[1].Endpoints, want)
	}
}

func slicesEqual(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCheckExports(t *testing.T) {
	ok := []Export{{Service: "web", Endpoints: addrs("10.20.1.2"), Ports: []clustermap.Port{{Protocol: "tcp", Target: 80}}}}
	if err := CheckExports(ok, defB); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		ex   []Export
		want string
	}{
		"outside": {[]Export{{Service: "web", Endpoints: addrs("10.0.1.2")}}, "outside the peer's container subnet 10.20.0.0/16"},
		"twice":   {[]Export{{Service: "web"}, {Service: "web"}}, "given twice"},
		"name":    {[]Export{{Service: "Web!"}}, "not a service name"},
		"port":    {[]Export{{Service: "web", Ports: []clustermap.Port{{Protocol: "sctp", Target: 1}}}}, "bad port"},
	} {
		if err := CheckExports(c.ex, defB); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

func TestPlanImports(t *testing.T) {
	vips := netip.MustParsePrefix("10.1.0.0/16")
	local := map[netip.Addr]bool{netip.MustParseAddr("10.1.0.1"): true} // a local service's VIP
	taken := func(a netip.Addr) bool { return local[a] }
	ex := map[string][]Export{
		"b": {{Service: "web", Endpoints: addrs("10.20.1.3", "10.20.1.2")}, {Service: "api", Endpoints: addrs("10.20.2.2")}},
	}
	got, err := PlanImports(ex, nil, vips, taken)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || Key(got[0]) != "b/api" || Key(got[1]) != "b/web" {
		t.Fatalf("imports %+v", got)
	}
	if got[0].VIP != netip.MustParseAddr("10.1.0.2") || got[1].VIP != netip.MustParseAddr("10.1.0.3") {
		t.Errorf("VIPs %s %s: want the lowest free addresses of this cluster's VIP range, skipping the local service's", got[0].VIP, got[1].VIP)
	}
	if !slicesEqual(got[1].Endpoints, addrs("10.20.1.2", "10.20.1.3")) {
		t.Errorf("endpoints %v not sorted", got[1].Endpoints)
	}
	// api is no longer exported; web's endpoints change; c exports web too.
	ex = map[string][]Export{
		"b": {{Service: "web", Endpoints: addrs("10.20.1.4")}},
		"c": {{Service: "web", Endpoints: addrs("10.30.1.2")}},
	}
	got2, err := PlanImports(ex, got, vips, taken)
	if err != nil {
		t.Fatal(err)
	}
	if len(got2) != 2 || Key(got2[0]) != "b/web" || Key(got2[1]) != "c/web" {
		t.Fatalf("imports %+v", got2)
	}
	if got2[0].VIP != got[1].VIP {
		t.Errorf("b/web moved from VIP %s to %s: VIPs must be stable", got[1].VIP, got2[0].VIP)
	}
	if got2[1].VIP != netip.MustParseAddr("10.1.0.2") {
		t.Errorf("c/web got %s, want api's freed 10.1.0.2", got2[1].VIP)
	}
	// Peer removed: nothing imported.
	got3, err := PlanImports(nil, got2, vips, taken)
	if err != nil || len(got3) != 0 {
		t.Fatalf("after removal %+v %v", got3, err)
	}
	// A full range is an error naming the import.
	_, err = PlanImports(ex, nil, netip.MustParsePrefix("10.1.0.0/31"), func(netip.Addr) bool { return true })
	if err == nil || !strings.Contains(err.Error(), "imported from peer b") {
		t.Errorf("full range: %v", err)
	}
}

func TestGlobalEndpoints(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	remotes := []Remote{
		{Peer: "b", Endpoints: addrs("10.20.1.3", "10.20.1.2"), Seen: now.Add(-5 * time.Second), Connected: true},
		{Peer: "c", Endpoints: addrs("10.30.1.2"), Seen: now.Add(-time.Minute), Connected: true}, // stale
		{Peer: "d", Endpoints: addrs("10.40.1.2"), Seen: now, Connected: false},                  // link down
	}
	eps, local := GlobalEndpoints(addrs("10.0.1.5"), remotes, now)
	if !local || !slicesEqual(eps, addrs("10.0.1.5")) {
		t.Errorf("with a local task: %v local=%v, want only the local task", eps, local)
	}
	eps, local = GlobalEndpoints(nil, remotes, now)
	if local || !slicesEqual(eps, addrs("10.20.1.2", "10.20.1.3")) {
		t.Errorf("without local tasks: %v local=%v, want b's live endpoints only", eps, local)
	}
	eps, _ = GlobalEndpoints(nil, remotes, now.Add(RemoteStaleAfter))
	if len(eps) != 0 {
		t.Errorf("after every peer went stale: %v, want none (no black hole)", eps)
	}
}
