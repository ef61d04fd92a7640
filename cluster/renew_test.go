package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
	"github.com/warren-appliance/warren/cluster/pki"
)

func startManagerWithLifetime(t *testing.T, lifetime time.Duration) *testManager {
	t.Helper()
	tm := &testManager{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	tm.cfg = ManagerConfig{
		StateDir: tm.dir,
		Node: NodeInfo{Name: "manager-1", Endpoint: mustAddrPort("192.0.2.1:51820"),
			PublicKey: clustertest.WGKey(t)},
		DownAfter:    time.Hour,
		CertLifetime: lifetime,
		Logger:       clustertest.Logger(t),
	}
	tm.start()
	t.Cleanup(tm.stop)
	return tm
}

// A node switched off past its certificate's expiry comes back by proving
// its key: /v1/renew alone accepts its expired certificate (the agent's
// side, renewing first when it starts, is in cluster/agent).
func TestRenewAcceptsAMembersExpiredCertificate(t *testing.T) {
	tm := startManagerWithLifetime(t, time.Minute)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	old := agentCert(t, cfg.StateDir)
	// Switched off for five minutes: the manager's clock is past the expiry.
	later := func() time.Time { return time.Now().Add(5 * time.Minute) }
	tm.m.mu.Lock()
	tm.m.now = later
	tm.m.mu.Unlock()
	status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathStatus, NodeStatus{}, certs(old))
	if status != http.StatusUnauthorized || !strings.Contains(msg, "expired") {
		t.Fatalf("report with the expired certificate: %d %q, want 401", status, msg)
	}
	key := agentKey(t, cfg.StateDir)
	csr, err := pki.NewCSR(key, "worker-1")
	if err != nil {
		t.Fatal(err)
	}
	status, body := nodeAPICall(t, tm.addr, http.MethodPost, api.PathRenew, api.RenewRequest{CSR: csr}, certs(old))
	if status != http.StatusOK {
		t.Fatalf("renew with the expired certificate: %d %q, want 200", status, body)
	}
	var out api.RenewResponse
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatal(err)
	}
	renewed, err := x509.ParseCertificate(out.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Subject.CommonName != a.Self().ID || !renewed.NotAfter.After(later()) {
		t.Fatalf("renewed certificate for %q expires %v, want %q after %v", renewed.Subject.CommonName, renewed.NotAfter, a.Self().ID, later())
	}
	fresh := tls.Certificate{Certificate: [][]byte{renewed.Raw}, PrivateKey: key}
	if status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathStatus, NodeStatus{}, certs(fresh)); status != http.StatusNoContent {
		t.Fatalf("report with the renewed certificate: %d %q", status, msg)
	}
}

// A removed node cannot use an expired certificate to come back.
func TestRemovedNodeCannotRenew(t *testing.T) {
	tm := startManagerWithLifetime(t, time.Minute)
	cfg := agentConfig(t, tm, "worker-1")
	join(t, cfg)
	old := agentCert(t, cfg.StateDir)
	if err := tm.m.RemoveNode("worker-1", true); err != nil {
		t.Fatal(err)
	}
	status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathRenew, api.RenewRequest{}, certs(old))
	if status != http.StatusForbidden || !strings.Contains(msg, "removed") {
		t.Fatalf("renew of a removed node: %d %q", status, msg)
	}
}
