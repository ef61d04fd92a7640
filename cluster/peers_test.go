package cluster

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/federation"
	"github.com/warren-appliance/warren/cluster/store"
)

// startManagerRanges starts a manager creating a cluster with the given
// ranges ("" keeps the defaults).
func startManagerRanges(t *testing.T, wg, ct, vip string) *testManager {
	t.Helper()
	tm := &testManager{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	tm.cfg = startManagerConfig(t, tm.dir)
	if wg != "" {
		tm.cfg.WireGuardSubnet = netip.MustParsePrefix(wg)
		tm.cfg.ContainerSubnet = netip.MustParsePrefix(ct)
		tm.cfg.VIPSubnet = netip.MustParsePrefix(vip)
	}
	tm.start()
	t.Cleanup(tm.stop)
	return tm
}

func waitPeer(t *testing.T, m *Manager, name string, ok func(api.PeerView) bool) api.PeerView {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last api.PeerView
	for time.Now().Before(deadline) {
		m.kickPeers()
		if v, err := m.Peer(name); err == nil {
			last = v
			if ok(v) {
				return v
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("peer %s never reached the wanted state; last %+v", name, last)
	return last
}

func importOf(m *clustermap.Map, peer, svc string) clustermap.Import {
	for _, i := range m.Imports {
		if i.Peer == peer && i.Service == svc {
			return i
		}
	}
	return clustermap.Import{}
}

func waitMap(t *testing.T, m *Manager, ok func(*clustermap.Map) bool) *clustermap.Map {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		m.kickPeers()
		if cur := m.Map(); ok(cur) {
			return cur
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the map never reached the wanted state; last imports %+v federation %+v", m.Map().Imports, m.Map().Federation)
	return nil
}

func runTasksOnManager(t *testing.T, m *Manager) {
	t.Helper()
	var st NodeStatus
	for _, tk := range m.Map().TasksOn(m.selfID) {
		st.Tasks = append(st.Tasks, taskRunning(tk))
	}
	if err := m.Report(context.Background(), st); err != nil {
		t.Fatal(err)
	}
}

func TestPeeringBothWaysExportsAndRemove(t *testing.T) {
	a := startManagerRanges(t, "", "", "")
	b := startManagerRanges(t, "10.20.0.0/24", "10.20.0.0/16", "10.21.0.0/16")
	c := startManagerRanges(t, "", "", "") // A's ranges

	tok, err := b.m.PeerToken()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := b.m.PeerToken(); again != tok {
		t.Fatal("a second `peer token` printed another token")
	}
	parsed, err := federation.ParseToken(tok)
	if err != nil || parsed.CAHash != b.m.ca.Hash() || !slices.Contains(parsed.Managers, b.addr) {
		t.Fatalf("token %+v (%v): want B's CA hash and manager %s", parsed, err, b.addr)
	}
	ctx := context.Background()

	// C has A's ranges: refused on both sides' checks, naming the ranges,
	// and nothing recorded on either.
	ctok, _ := c.m.PeerToken()
	_, err = a.m.AddPeer(ctx, api.PeerAdd{Name: "c", Token: ctok, As: "a"})
	if err == nil || !strings.Contains(err.Error(), "WireGuard subnet 10.0.0.0/24") || !strings.Contains(err.Error(), "VIP subnet 10.1.0.0/16") {
		t.Fatalf("peering with overlapping C: %v", err)
	}
	if len(a.m.Peers()) != 0 || len(c.m.Peers()) != 0 {
		t.Fatal("a refused peering left a record")
	}
	// A wrong secret is refused by B and records nothing.
	bad := parsed
	bad.Secret = strings.Repeat("b", 26)
	if _, err := a.m.AddPeer(ctx, api.PeerAdd{Name: "b", Token: bad.String(), As: "a"}); err == nil || !strings.Contains(err.Error(), "secret") {
		t.Fatalf("wrong secret: %v", err)
	}
	// A token whose CA hash is not B's: the TLS pin fails before anything is sent.
	wrongCA := parsed
	wrongCA.CAHash = strings.Repeat("0", 64)
	if _, err := a.m.AddPeer(ctx, api.PeerAdd{Name: "b", Token: wrongCA.String(), As: "a"}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("wrong CA: %v", err)
	}
	if len(a.m.Peers()) != 0 || len(b.m.Peers()) != 0 {
		t.Fatal("a refused peering left a record")
	}

	if _, err := a.m.AddPeer(ctx, api.PeerAdd{Name: "b", Token: tok, As: "a"}); err != nil {
		t.Fatal(err)
	}
	va := waitPeer(t, a.m, "b", func(v api.PeerView) bool { return v.Status == api.PeerConnected })
	vb := waitPeer(t, b.m, "a", func(v api.PeerView) bool { return v.Status == api.PeerConnected })
	if va.CAHash != b.m.ca.Hash() || vb.CAHash != a.m.ca.Hash() || va.LastContact == nil {
		t.Fatalf("peer views: %+v / %+v", va, vb)
	}

	// B exports web (2 tasks serving): A imports it behind a VIP of A's range.
	if _, err := b.m.CreateService(apiSpec("web", 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.m.CreateService(apiSpec("hidden", 1)); err != nil {
		t.Fatal(err)
	}
	runTasksOnManager(t, b.m)
	if err := b.m.SetExported("web", true); err != nil {
		t.Fatal(err)
	}
	if v, err := b.m.Service("web"); err != nil || !v.Exported {
		t.Errorf("service inspect after export: exported=%v %v", v.Exported, err)
	}
	if err := b.m.SetExported("nope", true); err == nil || !strings.Contains(err.Error(), `no service named "nope"`) {
		t.Fatalf("export of an unknown service: %v", err)
	}
	va = waitPeer(t, a.m, "b", func(v api.PeerView) bool { return len(v.Imports) == 1 && len(v.Imports[0].Endpoints) == 2 })
	im := va.Imports[0]
	if im.Service != "web" || !a.m.Network().VIPSubnet.Contains(im.VIP) {
		t.Fatalf("import %+v: want web with a VIP of A's range %s", im, a.m.Network().VIPSubnet)
	}
	for _, ep := range im.Endpoints {
		if !b.m.Network().ContainerSubnet.Contains(ep) {
			t.Errorf("endpoint %s outside B's container subnet", ep)
		}
	}
	if len(va.Exports) != 1 || va.Exports[0].Service != "web" {
		t.Errorf("A sees B's exports %+v, want only web", va.Exports)
	}
	// The maps: A's nodes get the import and web.global over B's tasks
	// (A has no web), and the link to B's gateway; B's gateway link to A
	// exposes only web's tasks.
	am := waitMap(t, a.m, func(m *clustermap.Map) bool {
		return len(importOf(m, "global", "web").Endpoints) == 2 && m.Federation != nil && len(m.Federation.Gateways) == 1
	})
	if g := importOf(am, "global", "web"); !slices.Equal(g.Endpoints, im.Endpoints) || g.VIP == im.VIP || !a.m.Network().VIPSubnet.Contains(g.VIP) {
		t.Errorf("web.global %+v: want B's endpoints %v behind its own VIP of A's range", g, im.Endpoints)
	}
	gw := am.Federation.Gateways[0]
	if am.Federation.GatewayID != a.m.selfID || gw.Peer != "b" || gw.PublicKey != b.m.Self().PublicKey || gw.ContainerSubnet != b.m.Network().ContainerSubnet {
		t.Errorf("A's federation map %+v", am.Federation)
	}
	bm := waitMap(t, b.m, func(m *clustermap.Map) bool {
		return m.Federation != nil && len(m.Federation.Gateways) == 1 && len(m.Federation.Gateways[0].Exposed) == 2
	})
	for _, tk := range bm.Tasks {
		if exposed := slices.Contains(bm.Federation.Gateways[0].Exposed, tk.IP); exposed != (tk.Service == "web") {
			t.Errorf("task %s of %s: exposed to the peer = %v", tk.Name, tk.Service, exposed)
		}
	}
	// A local web takes web.global over while it serves, and gives it back.
	replicas := 1
	if _, err := a.m.CreateService(api.ServiceSpec{Name: "web", Image: "img", Replicas: &replicas}); err != nil {
		t.Fatal(err)
	}
	runTasksOnManager(t, a.m)
	localWeb := a.m.Map().Endpoints("web")
	if len(localWeb) != 1 {
		t.Fatalf("A's web endpoints %+v", localWeb)
	}
	waitMap(t, a.m, func(m *clustermap.Map) bool {
		return slices.Equal(importOf(m, "global", "web").Endpoints, []netip.Addr{localWeb[0].IP})
	})
	if _, err := a.m.ScaleService("web", 0); err != nil {
		t.Fatal(err)
	}
	waitMap(t, a.m, func(m *clustermap.Map) bool {
		return slices.Equal(importOf(m, "global", "web").Endpoints, im.Endpoints)
	})

	// A service created on A afterwards does not take the import's VIP.
	sv, err := a.m.CreateService(apiSpec("local", 1))
	if err != nil {
		t.Fatal(err)
	}
	if sv.VIP == im.VIP {
		t.Fatalf("local service got the imported service's VIP %s", im.VIP)
	}

	// Unexport: the import leaves.
	if err := b.m.SetExported("web", false); err != nil {
		t.Fatal(err)
	}
	waitPeer(t, a.m, "b", func(v api.PeerView) bool { return len(v.Imports) == 0 })

	// rm on A removes the peer on both sides.
	if err := a.m.RemovePeer(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if len(a.m.Peers()) != 0 || len(b.m.Peers()) != 0 {
		t.Fatalf("after rm: A %+v, B %+v", a.m.Peers(), b.m.Peers())
	}
	if err := a.m.RemovePeer(ctx, "b"); err == nil || !strings.Contains(err.Error(), `no peer named "b"`) {
		t.Fatalf("rm twice: %v", err)
	}
}

// The replicas refuse a peer record that is not valid (checkChange).
func TestCheckChangeRefusesBadPeerRecords(t *testing.T) {
	a := startManagerRanges(t, "", "", "")
	good := peerRecord{Name: "b", ClusterID: "x", CAHash: a.m.ca.Hash(), CACert: string(a.m.ca.CertPEM()),
		Managers: []string{"192.0.2.1:7946"}, Network: startManagerRanges(t, "10.20.0.0/24", "10.20.0.0/16", "10.21.0.0/16").m.Network()}
	enc := func(r peerRecord) []byte { b, _ := json.Marshal(r); return b }
	if err := checkChange(store.Change{Put: map[string]map[string][]byte{bucketPeers: {"b": enc(good)}}}); err != nil {
		t.Fatalf("good record refused: %v", err)
	}
	for name, c := range map[string]struct {
		key string
		mut func(*peerRecord)
	}{
		"other key":   {"c", func(*peerRecord) {}},
		"bad name":    {"B!", func(r *peerRecord) { r.Name = "B!" }},
		"no managers": {"b", func(r *peerRecord) { r.Managers = nil }},
		"ca hash":     {"b", func(r *peerRecord) { r.CAHash = strings.Repeat("0", 64) }},
		"no vip":      {"b", func(r *peerRecord) { r.Network.VIPSubnet = netip.Prefix{} }},
	} {
		r := good
		c.mut(&r)
		if err := checkChange(store.Change{Put: map[string]map[string][]byte{bucketPeers: {c.key: enc(r)}}}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPeerStopsAnswering(t *testing.T) {
	a := startManagerRanges(t, "", "", "")
	b := startManagerRanges(t, "10.20.0.0/24", "10.20.0.0/16", "10.21.0.0/16")
	tok, err := b.m.PeerToken()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.AddPeer(context.Background(), api.PeerAdd{Name: "b", Token: tok, As: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.m.CreateService(apiSpec("web", 1)); err != nil {
		t.Fatal(err)
	}
	runTasksOnManager(t, b.m)
	if err := b.m.SetExported("web", true); err != nil {
		t.Fatal(err)
	}
	waitPeer(t, a.m, "b", func(v api.PeerView) bool { return len(v.Imports) == 1 && len(v.Imports[0].Endpoints) == 1 })
	b.stop()
	v := waitPeer(t, a.m, "b", func(v api.PeerView) bool { return v.Status == api.PeerFailed })
	if v.Reason == "" || !strings.Contains(v.Reason, b.addr) {
		t.Errorf("failed without a reason naming the manager: %q", v.Reason)
	}
	v = waitPeer(t, a.m, "b", func(v api.PeerView) bool { return len(v.Imports) == 1 && len(v.Imports[0].Endpoints) == 0 })
	if v.Imports[0].VIP == (netip.Addr{}) {
		t.Error("the import lost its VIP while its peer is away")
	}
}

// A federated secret made in B reaches A, sealed with A's key, read-only
// there; an update and the removal follow; a local object of the same name
// is never replaced; peer rm takes the copies away.
func TestFederatedObjects(t *testing.T) {
	a := startManagerRanges(t, "", "", "")
	b := startManagerRanges(t, "10.20.0.0/24", "10.20.0.0/16", "10.21.0.0/16")
	tok, err := b.m.PeerToken()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.AddPeer(context.Background(), api.PeerAdd{Name: "b", Token: tok, As: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.m.CreateObject(api.KindSecret, api.ObjectSpec{Name: "dbpass", Data: []byte("s3cret"), Federated: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.m.CreateObject(api.KindConfig, api.ObjectSpec{Name: "local.conf", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.m.CreateObject(api.KindConfig, api.ObjectSpec{Name: "clash", Data: []byte("from b"), Federated: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.CreateObject(api.KindConfig, api.ObjectSpec{Name: "clash", Data: []byte("a's own")}); err != nil {
		t.Fatal(err)
	}
	value := func(kind, name string) (string, objectRecord) {
		a.m.mu.Lock()
		defer a.m.mu.Unlock()
		r, ok := a.m.st.objects(kind)[name]
		if !ok {
			return "", r
		}
		v, err := a.m.dataKey.Open(kind, name, r.Version, r.Sealed)
		if err != nil {
			t.Fatalf("A cannot open its copy of %s: %v", name, err)
		}
		return string(v), r
	}
	wait := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s", what)
			}
			a.m.kickPeers()
			time.Sleep(50 * time.Millisecond)
		}
	}
	wait("A holds B's federated secret", func() bool { v, _ := value(api.KindSecret, "dbpass"); return v == "s3cret" })
	_, rec := value(api.KindSecret, "dbpass")
	if rec.From != "b" || rec.Version != 1 {
		t.Errorf("A's copy %+v: want From b, version 1", rec)
	}
	if v, _ := value(api.KindConfig, "local.conf"); v != "" {
		t.Error("an object not federated reached the peer")
	}
	if v, _ := value(api.KindConfig, "clash"); v != "a's own" {
		t.Errorf("A's own config was replaced by the peer's: %q", v)
	}
	if _, err := a.m.UpdateObject(api.KindSecret, "dbpass", []byte("x")); err == nil || !strings.Contains(err.Error(), "federated from peer b") {
		t.Errorf("update of a peer's secret on A: %v", err)
	}
	if err := a.m.RemoveObject(api.KindSecret, "dbpass"); err == nil || !strings.Contains(err.Error(), "federated from peer b") {
		t.Errorf("rm of a peer's secret on A: %v", err)
	}
	if _, err := b.m.UpdateObject(api.KindSecret, "dbpass", []byte("n3w")); err != nil {
		t.Fatal(err)
	}
	wait("A follows B's update", func() bool { v, r := value(api.KindSecret, "dbpass"); return v == "n3w" && r.Version == 2 })
	if err := b.m.RemoveObject(api.KindSecret, "dbpass"); err != nil {
		t.Fatal(err)
	}
	wait("A's copy goes with B's removal", func() bool { _, r := value(api.KindSecret, "dbpass"); return r.Name == "" })

	if _, err := b.m.CreateObject(api.KindSecret, api.ObjectSpec{Name: "token", Data: []byte("t"), Federated: true}); err != nil {
		t.Fatal(err)
	}
	wait("A holds token", func() bool { v, _ := value(api.KindSecret, "token"); return v == "t" })
	if err := a.m.RemovePeer(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	if _, r := value(api.KindSecret, "token"); r.Name != "" {
		t.Error("peer rm left the peer's federated secret")
	}
}
