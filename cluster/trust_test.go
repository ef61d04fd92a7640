package cluster

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
)

// markDown makes the manager see node id as silent for longer than
// DownAfter and mark it down.
func markDown(tm *testManager, id string) {
	tm.m.mu.Lock()
	tm.m.lastSeen[id] = time.Now().Add(-2 * tm.cfg.DownAfter)
	tm.m.mu.Unlock()
	tm.m.markSilentNodesDown()
}

// agentCert is the client certificate an agent holds now: the files in
// its state dir, which it writes before it uses a certificate.
func agentCert(t testing.TB, dir string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(dir, agent.FileTLSCert), filepath.Join(dir, agent.FileTLSKey))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Finding 3: name and WireGuard key are in every map, so with a token
// alone they must not yield a down node's identity.
func TestTokenHolderCannotTakeOverADownNode(t *testing.T) {
	tm := startManager(t)
	victim := join(t, agentConfig(t, tm, "worker-1"))
	self := victim.Self()
	markDown(tm, self.ID)
	req, key := rawJoinRequest(t, tokenSecret(t, tm.workerToken()), self.Name, clustermap.RoleWorker, self.PublicKey)
	status, body := nodeAPICall(t, tm.addr, http.MethodPost, api.PathJoin, req, nil)
	if status != http.StatusConflict || !strings.Contains(body, "private key") {
		t.Fatalf("takeover join with name and WireGuard key from the map: %d %s, want 409 asking for the node's key", status, body)
	}
	_ = key
	// The victim still works with its own certificate.
	if err := victim.Report(context.Background(), NodeStatus{}); err != nil {
		t.Fatalf("victim refused after a failed takeover: %v", err)
	}
}

func TestWorkerTokenNeverYieldsAManager(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "manager-2")
	cfg.Node.Role = clustermap.RoleManager
	_, cfg.Token = tm.m.JoinTokens()
	mgr := join(t, cfg).Self()
	markDown(tm, mgr.ID)
	// Even holding the manager's own TLS key, a worker token is not enough.
	keyPEM, err := os.ReadFile(filepath.Join(cfg.StateDir, agent.FileTLSKey))
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.ParseKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := pki.NewCSR(key, mgr.Name)
	req := api.JoinRequest{Secret: tokenSecret(t, tm.workerToken()), Name: mgr.Name, PublicKey: mgr.PublicKey, Endpoint: mgr.Endpoint, CSR: csr}
	status, body := nodeAPICall(t, tm.addr, http.MethodPost, api.PathJoin, req, nil)
	if status != http.StatusForbidden || !strings.Contains(body, "manager") {
		t.Fatalf("worker-token join of a manager's record: %d %s, want 403", status, body)
	}
	if n, _ := tm.m.Map().Node(mgr.ID); n.Role != clustermap.RoleManager {
		t.Fatalf("manager record became %q", n.Role)
	}
}

// A node that lost its certificate but kept its TLS key rejoins with the
// token and keeps ID, IP and block; its older certificates stop working.
func TestRejoinWithOwnKeyKeepsAddressesAndRevokesOldCertificates(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	first := a.Self()
	old := agentCert(t, cfg.StateDir)
	if err := os.Remove(filepath.Join(cfg.StateDir, agent.FileTLSCert)); err != nil {
		t.Fatal(err)
	}
	// Online or not: the key proves it is the same node.
	again := join(t, cfg)
	if n := again.Self(); n.ID != first.ID || n.OverlayIP != first.OverlayIP || n.ContainerBlock != first.ContainerBlock {
		t.Fatalf("rejoin changed the node: %+v -> %+v", first, n)
	}
	status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathStatus, NodeStatus{}, certs(old))
	if status != http.StatusUnauthorized || !strings.Contains(msg, "superseded") {
		t.Fatalf("certificate from before the rejoin: %d %q, want 401 superseded", status, msg)
	}
	if err := again.Report(context.Background(), NodeStatus{}); err != nil {
		t.Fatalf("the new certificate is refused: %v", err)
	}
	// Another TLS key under the same name (a new state dir) needs the
	// operator: `warren node rm` first.
	cfg2 := cfg
	cfg2.StateDir = t.TempDir()
	_, err := agent.Join(context.Background(), cfg2)
	if err == nil || !strings.Contains(err.Error(), "warren node rm") {
		t.Fatalf("rejoin with another TLS key: %v, want a refusal naming `warren node rm`", err)
	}
}

// Finding 7: removal revokes the node's certificates at once and frees its
// addresses for the next node.
func TestNodeRemoveRevokesCertificatesAndFreesAddresses(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	gone := a.Self()
	old := agentCert(t, cfg.StateDir)
	if err := tm.m.RemoveNode("worker-1", true); err != nil {
		t.Fatal(err)
	}
	status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathStatus, NodeStatus{}, certs(old))
	if status != http.StatusForbidden || !strings.Contains(msg, "removed") {
		t.Fatalf("removed node's certificate: %d %q", status, msg)
	}
	b := join(t, agentConfig(t, tm, "worker-2")).Self()
	if b.OverlayIP != gone.OverlayIP || b.ContainerBlock != gone.ContainerBlock {
		t.Fatalf("newcomer got %v %v, want the removed node's %v %v at once", b.OverlayIP, b.ContainerBlock, gone.OverlayIP, gone.ContainerBlock)
	}
	// Throwaway joins cannot exhaust the subnet either: join and remove
	// more nodes than a /28 holds.
	for i := range 20 {
		name := "tmp-" + string(rune('a'+i))
		n := join(t, agentConfig(t, tm, name)).Self()
		if err := tm.m.RemoveNode(n.Name, true); err != nil {
			t.Fatal(err)
		}
	}
	if c := join(t, agentConfig(t, tm, "worker-3")).Self(); c.OverlayIP.String() != "10.0.0.3" {
		t.Fatalf("after 20 join/remove cycles the next node got %v, want 10.0.0.3", c.OverlayIP)
	}
}
