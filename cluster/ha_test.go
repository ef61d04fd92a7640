package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// haManager is one manager of a multi-manager test cluster, restartable
// on the same address and state dir.
type haManager struct {
	t      testing.TB
	name   string
	addr   string
	cfg    ManagerConfig
	agent  *agent.Config // joined managers join like any node first
	m      *Manager
	cancel context.CancelFunc
	done   chan struct{}
}

func (h *haManager) start() {
	h.t.Helper()
	ln := clustertest.Listen(h.t, h.addr)
	h.addr = ln.Addr().String()
	h.cfg.Advertise = h.addr
	ctx, cancel := context.WithCancel(context.Background())
	if h.agent != nil {
		a := join(h.t, *h.agent)
		mj, err := a.ManagerJoin(ctx)
		if err != nil {
			h.t.Fatal(err)
		}
		h.cfg.Join = mj
	}
	m, err := OpenManager(h.cfg)
	if err != nil {
		ln.Close()
		cancel()
		h.t.Fatalf("%s: %v", h.name, err)
	}
	h.m, h.cancel, h.done = m, cancel, make(chan struct{})
	go func() {
		defer close(h.done)
		if err := m.ServeListener(ctx, ln); err != nil {
			h.t.Errorf("serve: %v", err)
		}
	}()
	select {
	case <-m.Ready():
	case <-time.After(30 * time.Second):
		h.t.Fatalf("%s did not get the state", h.name)
	}
}

// kill stops the manager abruptly: no leadership transfer, its peers
// notice by missing heartbeats.
func (h *haManager) kill() {
	if h.m == nil {
		return
	}
	h.cancel()
	<-h.done
	h.m.Close()
	h.m = nil
}

func haConfig(t testing.TB, name string, i int) ManagerConfig {
	return ManagerConfig{
		StateDir: t.TempDir(),
		Node: NodeInfo{Name: name, Role: clustermap.RoleManager, PublicKey: clustertest.WGKey(t),
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 51820)},
		DownAfter: time.Hour,
		Logger:    clustertest.Logger(t),
		raftTune:  fastRaft,
	}
}

// startHA starts n managers: the first creates the cluster, the others
// join with the manager token and become voters.
func startHA(t testing.TB, n int) []*haManager { return startHAWith(t, n, fastRaft) }

// startHAWith is startHA with Raft tuned by tune (nil: the production
// timing, for benchmarks).
func startHAWith(t testing.TB, n int, tune func(*raft.Config)) []*haManager {
	t.Helper()
	first := &haManager{t: t, name: "manager-1", addr: "127.0.0.1:0", cfg: haConfig(t, "manager-1", 1)}
	first.cfg.raftTune = tune
	first.start()
	out := []*haManager{first}
	t.Cleanup(func() {
		for _, h := range out {
			h.kill()
		}
	})
	_, token := first.m.JoinTokens()
	for i := 2; i <= n; i++ {
		name := fmt.Sprintf("manager-%d", i)
		cfg := haConfig(t, name, i)
		cfg.raftTune = tune
		ac := &agent.Config{StateDir: cfg.StateDir, Manager: first.addr, Token: token, Node: cfg.Node, Logger: cfg.Logger}
		h := &haManager{t: t, name: name, addr: "127.0.0.1:0", cfg: cfg, agent: ac}
		h.start()
		out = append(out, h)
	}
	waitUntil(t, "every manager votes", func() bool {
		l := leaderOf(out)
		return l != nil && len(l.m.Info().Voters) == n
	})
	return out
}

func leaderOf(hs []*haManager) *haManager {
	for _, h := range hs {
		if h.m != nil && h.m.isLeader() {
			return h
		}
	}
	return nil
}

func followersOf(hs []*haManager) []*haManager {
	var out []*haManager
	for _, h := range hs {
		if h.m != nil && !h.m.isLeader() {
			out = append(out, h)
		}
	}
	return out
}

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// adminDo calls a manager's admin API as the CLI does (its local socket).
func adminDo(m *Manager, method, path string, body any) (int, string) {
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	req := httptest.NewRequest(method, path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	m.AdminHandler().ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func serviceNames(m *Manager) map[string]bool {
	out := map[string]bool{}
	for _, s := range m.Services() {
		out[s.Name] = true
	}
	return out
}

func TestManagersReplicateAndFollowersForwardWrites(t *testing.T) {
	hs := startHA(t, 3)
	leader, f := leaderOf(hs), followersOf(hs)[0]
	code, body := adminDo(f.m, http.MethodPost, "/v1/services", apiSpec("web", 0))
	if code != http.StatusCreated {
		t.Fatalf("create through a follower: %d %s", code, body)
	}
	// Read your writes: the follower answers once its copy has the write.
	if _, err := f.m.Service("web"); err != nil {
		t.Fatalf("the follower's copy right after the forwarded create: %v", err)
	}
	// The leader's answer, errors included, comes back through the follower.
	code, body = adminDo(f.m, http.MethodPost, "/v1/services", apiSpec("web", 0))
	if code != http.StatusConflict || !strings.Contains(body, "already exists") {
		t.Fatalf("duplicate through a follower: %d %s", code, body)
	}
	for _, h := range hs {
		waitUntil(t, h.name+" has the service", func() bool { return serviceNames(h.m)["web"] })
	}
	info := f.m.Info()
	if info.Leader != leader.name || len(info.Voters) != 3 || len(info.NonVoters) != 0 || info.RaftTerm == 0 || info.RaftLastIndex == 0 {
		t.Fatalf("cluster info on a follower: leader %q voters %v non-voters %v term %d index %d", info.Leader, info.Voters, info.NonVoters, info.RaftTerm, info.RaftLastIndex)
	}
	statuses := map[string]string{}
	for _, n := range f.m.Nodes() {
		statuses[n.Name] = n.ManagerStatus
	}
	want := map[string]string{leader.name: "leader"}
	for _, h := range followersOf(hs) {
		want[h.name] = "reachable"
	}
	for name, st := range want {
		if statuses[name] != st {
			t.Fatalf("manager status of %s = %q, want %q (all: %v)", name, statuses[name], st, statuses)
		}
	}
	// Every manager is in the map with its API address.
	apis := 0
	for _, n := range f.m.Map().Nodes {
		if n.Role == clustermap.RoleManager && n.API != "" {
			apis++
		}
	}
	if apis != 3 {
		t.Fatalf("map lists %d manager API addresses, want 3: %+v", apis, f.m.Map().Nodes)
	}
}

func TestLeaderKilledDuringWritesLosesNoAcknowledgedWrite(t *testing.T) {
	hs := startHA(t, 3)
	leader := leaderOf(hs)
	// A worker that joined through the leader and watches it.
	wcfg := agent.Config{StateDir: t.TempDir(), Manager: leader.addr, Token: func() string { w, _ := leader.m.JoinTokens(); return w }(),
		Node:   NodeInfo{Name: "worker-1", Role: clustermap.RoleWorker, PublicKey: clustertest.WGKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.10:51820")},
		Logger: clustertest.Logger(t)}
	worker := join(t, wcfg)
	r := clustertest.Watch(t, worker)
	r.WaitFor(t, "the worker's first map", clustertest.HasNodes(4))

	survivors := followersOf(hs)
	var mu sync.Mutex
	var acked []string
	var failed int
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a burst of writes through both followers
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("svc-%d", i)
			code, _ := adminDo(survivors[i%2].m, http.MethodPost, "/v1/services", apiSpec(name, 0))
			mu.Lock()
			if code == http.StatusCreated {
				acked = append(acked, name)
			} else {
				failed++
			}
			mu.Unlock()
		}
	}()
	waitUntil(t, "some writes acknowledged", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 20 })
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	killedAt := time.Now()
	leader.kill()
	// A survivor accepts a write within 10 s of the kill.
	deadline := killedAt.Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n > before+5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write acknowledged within 10 s of killing the leader (%d failed)", failed)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("first write after the kill accepted within %s; %d writes acknowledged, %d refused during the election", time.Since(killedAt).Round(time.Millisecond), len(acked), failed)
	newLeader := leaderOf(survivors)
	if newLeader == nil {
		t.Fatal("no new leader")
	}
	for _, h := range survivors {
		waitUntil(t, h.name+" holds every acknowledged write", func() bool {
			have := serviceNames(h.m)
			for _, n := range acked {
				if !have[n] {
					return false
				}
			}
			return true
		})
	}
	// The worker follows the new leader with no config change.
	if code, body := adminDo(newLeader.m, http.MethodPost, "/v1/services", apiSpec("after-failover", 0)); code != http.StatusCreated {
		t.Fatalf("write on the new leader: %d %s", code, body)
	}
	r.WaitFor(t, "the worker gets maps from a surviving manager", func(m *clustermap.Map) bool {
		for _, s := range m.Services {
			if s.Name == "after-failover" {
				return true
			}
		}
		return false
	})
	// The survivors hold the CA key: a new node joins through either one.
	for i, h := range survivors {
		cfg := agent.Config{StateDir: t.TempDir(), Manager: h.addr, Token: wcfg.Token, Logger: clustertest.Logger(t),
			Node: NodeInfo{Name: fmt.Sprintf("late-%d", i), Role: clustermap.RoleWorker, PublicKey: clustertest.WGKey(t),
				Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(30 + i)}), 51820)}}
		join(t, cfg)
	}
	// The old leader restarts, rejoins as a follower and catches up.
	leader.start()
	waitUntil(t, "the old leader catches up", func() bool { return serviceNames(leader.m)["after-failover"] && !leader.m.isLeader() })
	if got := len(serviceNames(leader.m)); got != len(serviceNames(newLeader.m)) {
		t.Fatalf("old leader has %d services, leader %d", got, len(serviceNames(newLeader.m)))
	}
}

func TestLostQuorumRefusesWritesAndForceNewClusterKeepsAllocations(t *testing.T) {
	hs := startHA(t, 3)
	leader := leaderOf(hs)
	if _, err := leader.m.CreateService(apiSpec("web", 0)); err != nil {
		t.Fatal(err)
	}
	survivor := followersOf(hs)[0]
	waitUntil(t, "the survivor has the service", func() bool { return serviceNames(survivor.m)["web"] })
	nodesBefore, svcBefore := survivor.m.Map().Nodes, survivor.m.Map().Services
	for _, h := range hs {
		if h != survivor {
			h.kill()
		}
	}
	start := time.Now()
	var err error
	for time.Since(start) < 15*time.Second {
		var code int
		var body string
		code, body = adminDo(survivor.m, http.MethodPost, "/v1/services", apiSpec("more", 0))
		if code == http.StatusCreated {
			t.Fatal("a write succeeded without a quorum")
		}
		err = fmt.Errorf("%d %s", code, body)
		if strings.Contains(body, "no quorum: 1 of 3 managers reachable") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(err.Error(), "no quorum: 1 of 3 managers reachable") {
		t.Fatalf("write without quorum: %v, want it to name the lost quorum", err)
	}
	t.Logf("write refused after %s: %v", time.Since(start).Round(time.Millisecond), err)
	// Reads keep working.
	if !serviceNames(survivor.m)["web"] || len(survivor.m.Nodes()) != 3 {
		t.Fatal("reads failed without quorum")
	}
	// Recovery: the survivor restarts as a one-manager cluster.
	survivor.kill()
	survivor.cfg.ForceNewCluster = true
	survivor.start()
	waitUntil(t, "the survivor leads", survivor.m.isLeader)
	if _, err := survivor.m.CreateService(apiSpec("more", 0)); err != nil {
		t.Fatalf("write after --force-new-cluster: %v", err)
	}
	info := survivor.m.Info()
	if len(info.Voters) != 1 || info.Voters[0] != survivor.name {
		t.Fatalf("voters after --force-new-cluster: %v", info.Voters)
	}
	after := survivor.m.Map()
	for _, n := range nodesBefore {
		got, ok := after.Node(n.ID)
		if !ok || got.OverlayIP != n.OverlayIP || got.ContainerBlock != n.ContainerBlock || got.PublicKey != n.PublicKey {
			t.Fatalf("node %s changed: %+v -> %+v", n.Name, n, got)
		}
	}
	for _, s := range svcBefore {
		found := false
		for _, a := range after.Services {
			found = found || (a.Name == s.Name && a.VIP == s.VIP)
		}
		if !found {
			t.Fatalf("service %s (VIP %s) changed or lost", s.Name, s.VIP)
		}
	}
}

func TestRaftAndInternalAPIRefuseWorkerCertificates(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	join(t, cfg)
	cert := agentCert(t, cfg.StateDir)
	conf := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}, NextProtos: []string{alpnRaft}}
	c, err := tls.Dial("tcp", tm.addr, conf)
	if err == nil {
		// TLS 1.3: the server's verdict arrives with the first read.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("raft with a worker certificate: %v, want the handshake refused", err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}}}
	resp, err := client.Post("https://"+tm.addr+pathInternalAdmin+"/v1/services", "application/json", strings.NewReader(`{"name":"x","image":"y"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("internal API with a worker certificate: %d, want 403", resp.StatusCode)
	}
}

// testdata/manager-v1.db was written by the single-manager version
// (commit cf57dfc: a manager, worker-1, service web with 2 replicas).
func TestUpgradeFromSingleManagerStore(t *testing.T) {
	fixture, err := os.ReadFile("testdata/manager-v1.db")
	if err != nil {
		t.Fatal(err)
	}
	first := &haManager{t: t, name: "manager-1", addr: "127.0.0.1:0", cfg: haConfig(t, "manager-1", 1)}
	if err := os.WriteFile(filepath.Join(first.cfg.StateDir, "manager.db"), fixture, 0o600); err != nil {
		t.Fatal(err)
	}
	first.start()
	t.Cleanup(first.kill)
	m := first.m.Map()
	if len(m.Nodes) != 2 || len(m.Services) != 1 || m.Services[0].Name != "web" || len(m.Tasks) != 2 {
		t.Fatalf("upgraded state: %d nodes, services %+v, %d tasks", len(m.Nodes), m.Services, len(m.Tasks))
	}
	vip := m.Services[0].VIP
	// A manager joining now receives the whole state through Raft.
	_, token := first.m.JoinTokens()
	cfg := haConfig(t, "manager-2", 2)
	second := &haManager{t: t, name: "manager-2", addr: "127.0.0.1:0", cfg: cfg,
		agent: &agent.Config{StateDir: cfg.StateDir, Manager: first.addr, Token: token, Node: cfg.Node, Logger: cfg.Logger}}
	second.start()
	t.Cleanup(second.kill)
	got := second.m.Map()
	if len(got.Nodes) != 3 || len(got.Services) != 1 || got.Services[0].VIP != vip || got.ClusterID != m.ClusterID {
		t.Fatalf("joined manager's state: %d nodes, services %+v", len(got.Nodes), got.Services)
	}
	// Restarting the upgraded manager keeps everything (no second bootstrap).
	second.kill()
	first.kill()
	first.start()
	if got := first.m.Map(); len(got.Services) != 1 || got.Services[0].VIP != vip {
		t.Fatalf("after restart: %+v", got.Services)
	}
}

func TestBackupWipeRestoreBringsBackServicesAndWorkers(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	r := clustertest.Watch(t, a)
	if _, err := tm.m.CreateService(apiSpec("web", 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := tm.m.CreateService(apiSpec("db", 1)); err != nil {
		t.Fatal(err)
	}
	before := r.WaitFor(t, "the services", func(m *clustermap.Map) bool { return len(m.Services) == 2 && len(m.Tasks) == 3 })
	// Online backup through the admin API, as `warren cluster backup` does.
	code, body := adminDo(tm.m, http.MethodGet, "/v1/backup", nil)
	if code != http.StatusOK {
		t.Fatalf("backup: %d %s", code, body)
	}
	file := filepath.Join(t.TempDir(), "backup.json")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	// The data key beside it, as `warren cluster backup` writes it: the
	// CA key and join secrets in the backup are sealed with it.
	if err := os.WriteFile(file+BackupKeySuffix, tm.m.DataKey(), 0o600); err != nil {
		t.Fatal(err)
	}
	// A change after the backup: the restored cluster will not have it,
	// yet the worker, which saw it, must take the restored map.
	if _, err := tm.m.CreateService(apiSpec("late", 0)); err != nil {
		t.Fatal(err)
	}
	r.WaitFor(t, "the late service", func(m *clustermap.Map) bool { return len(m.Services) == 3 })
	tm.stop()
	// The board dies: a fresh one restores on the same address.
	tm.dir = t.TempDir()
	tm.cfg.StateDir = tm.dir
	if err := ForceNewCluster(tm.dir, tm.addr, "", Restore{File: file}, clustertest.Logger(t)); err != nil {
		t.Fatal(err)
	}
	if err := ForceNewCluster(tm.dir, tm.addr, "", Restore{File: file}, clustertest.Logger(t)); err == nil || !strings.Contains(err.Error(), "fresh state dir") {
		t.Fatalf("a second restore over the state: %v", err)
	}
	tm.start()
	after := r.WaitFor(t, "the restored map", func(m *clustermap.Map) bool { return len(m.Services) == 2 })
	if after.Version <= before.Version || after.Version > before.Version+DefaultVersionBump {
		t.Fatalf("restored map version %d not above what the worker held (%d) by at most the bump", after.Version, before.Version)
	}
	for _, s := range before.Services {
		found := false
		for _, x := range after.Services {
			found = found || (x.Name == s.Name && x.VIP == s.VIP)
		}
		if !found {
			t.Fatalf("service %s/%s not restored: %+v", s.Name, s.VIP, after.Services)
		}
	}
	for _, n := range before.Nodes {
		got, ok := after.Node(n.ID)
		if !ok || got.OverlayIP != n.OverlayIP || got.ContainerBlock != n.ContainerBlock {
			t.Fatalf("node %s not restored: %+v", n.Name, got)
		}
	}
	// The worker reconnected by itself: its heartbeats are accepted (same CA, its certificate valid).
	if err := a.Report(context.Background(), NodeStatus{}); err != nil {
		t.Fatalf("worker report after restore: %v", err)
	}
}

// A node that joins through a follower and watches it at once must not be
// told it was removed while the follower applies its join.
func TestNodesJoinAndWatchThroughFollowers(t *testing.T) {
	hs := startHA(t, 3)
	w, _ := hs[0].m.JoinTokens()
	var rs []*clustertest.MapRecorder
	for i := range 6 {
		cfg := agent.Config{StateDir: t.TempDir(), Manager: hs[i%3].addr, Token: w, Logger: clustertest.Logger(t),
			Node: NodeInfo{Name: fmt.Sprintf("node-%d", i), Role: clustermap.RoleWorker, PublicKey: clustertest.WGKey(t),
				Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 20)}), 51820)}}
		rs = append(rs, clustertest.Watch(t, join(t, cfg)))
	}
	for _, r := range rs {
		r.WaitFor(t, "the full map", clustertest.HasNodes(9))
	}
}

func TestPromoteDemoteAndRemoveDeadManager(t *testing.T) {
	hs := startHA(t, 3)
	leader := leaderOf(hs)
	f := followersOf(hs)
	// Through a follower's admin API, as the CLI on any manager does.
	if code, body := adminDo(f[0].m, http.MethodPost, "/v1/nodes/"+f[1].name+"/demote", nil); code != http.StatusNoContent {
		t.Fatalf("demote: %d %s", code, body)
	}
	info := leader.m.Info()
	if len(info.Voters) != 2 || len(info.NonVoters) != 1 || info.NonVoters[0] != f[1].name {
		t.Fatalf("after demote: voters %v non-voters %v", info.Voters, info.NonVoters)
	}
	if code, body := adminDo(f[0].m, http.MethodPost, "/v1/nodes/"+f[1].name+"/promote", nil); code != http.StatusNoContent {
		t.Fatalf("promote: %d %s", code, body)
	}
	if info := leader.m.Info(); len(info.Voters) != 3 {
		t.Fatalf("after promote: voters %v", info.Voters)
	}
	// A worker cannot be promoted.
	wcfg := agent.Config{StateDir: t.TempDir(), Manager: leader.addr, Token: func() string { w, _ := leader.m.JoinTokens(); return w }(),
		Node: NodeInfo{Name: "worker-1", Role: clustermap.RoleWorker, PublicKey: clustertest.WGKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.10:51820")}, Logger: clustertest.Logger(t)}
	join(t, wcfg)
	if code, body := adminDo(leader.m, http.MethodPost, "/v1/nodes/worker-1/promote", nil); code != http.StatusConflict || !strings.Contains(body, "worker") {
		t.Fatalf("promote a worker: %d %s", code, body)
	}
	// A dead manager removed with --force leaves the Raft configuration.
	dead := f[1]
	dead.kill()
	if code, body := adminDo(f[0].m, http.MethodDelete, "/v1/nodes/"+dead.name+"?force=1", nil); code != http.StatusNoContent {
		t.Fatalf("rm --force of a dead manager: %d %s", code, body)
	}
	info = leader.m.Info()
	if len(info.Voters) != 2 || slicesContains(info.Voters, dead.name) || slicesContains(info.Voters, dead.cfg.Join.ID) {
		t.Fatalf("voters after removing %s: %v", dead.name, info.Voters)
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// A follower's own report reaches the leader on the internal status call;
// the leader applies a node report's bounds to it as to any other (merge
// 6f119af moved these reports off handleStatus, which checks them).
func TestLeaderBoundsAFollowerManagersReport(t *testing.T) {
	hs := startHA(t, 2)
	f := followersOf(hs)[0]
	manyPeers := make([]api.PeerHealth, maxTunnelEntries+1)
	for i := range manyPeers {
		manyPeers[i].PublicKey = clustertest.WGKey(t)
	}
	for what, st := range map[string]NodeStatus{
		"unknown state":  {Tasks: []api.TaskStatus{{Name: "web-1", State: "exploded"}}},
		"too many peers": {Tunnel: manyPeers},
	} {
		// Straight to the leader, past the follower's own check (Report).
		err := f.m.reportToLeader(context.Background(), st)
		if err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("follower's report with %s: %v, want 400 from the leader", what, err)
		}
	}
	if err := f.m.reportToLeader(context.Background(), NodeStatus{}); err != nil {
		t.Fatalf("a plain follower heartbeat: %v", err)
	}
}
