package cluster

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
)

// offsetClock is a clock a test moves forward while agents run.
type offsetClock struct{ off atomic.Int64 }

func (c *offsetClock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *offsetClock) advance(d time.Duration) { c.off.Add(int64(d)) }

func startManagerWithLifetime(t *testing.T, lifetime time.Duration) *testManager {
	t.Helper()
	tm := &testManager{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	tm.cfg = ManagerConfig{
		StateDir: tm.dir,
		Node: NodeInfo{Name: "manager-1", Endpoint: mustAddrPort("192.0.2.1:51820"),
			PublicKey: newWGKey(t)},
		DownAfter:    time.Hour,
		CertLifetime: lifetime,
		Logger:       testLogger(t),
	}
	tm.start()
	t.Cleanup(tm.stop)
	return tm
}

// waitCertChange waits until the agent's certificate file holds another
// serial than before.
func waitCertChange(t *testing.T, dir, before string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c := readCert(t, filepath.Join(dir, FileTLSCert)); c.SerialNumber.Text(16) != before {
			return c.SerialNumber.Text(16)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("certificate in %s still has serial %s after 30 s", dir, before)
	return ""
}

// Finding 1: with a stream that stays up, the certificate was never
// renewed; now a timer renews it at about two thirds of its lifetime.
func TestCertificateRenewsOnATimerWhileTheStreamStaysUp(t *testing.T) {
	tm := startManagerWithLifetime(t, time.Minute)
	clock := &offsetClock{}
	cfg := agentConfig(t, tm, "worker-1")
	cfg.now, cfg.renewCheck = clock.now, 20*time.Millisecond
	a := join(t, cfg)
	first := readCert(t, filepath.Join(cfg.StateDir, FileTLSCert))
	if life := first.NotAfter.Sub(first.NotBefore); life > time.Minute+time.Hour+time.Second {
		t.Fatalf("certificate lives %s, want cluster.cert_lifetime 1m (+1h backdate)", life)
	}
	r := watch(t, a)
	r.waitFor(t, "the map", hasNodes(2))
	clock.advance(45 * time.Second) // past 0.7 of the minute
	second := waitCertChange(t, cfg.StateDir, first.SerialNumber.Text(16))
	if err := a.Report(context.Background(), NodeStatus{}); err != nil {
		t.Fatalf("report with the renewed certificate: %v", err)
	}
	v, err := tm.m.Node("worker-1")
	if err != nil {
		t.Fatal(err)
	}
	cur := readCert(t, filepath.Join(cfg.StateDir, FileTLSCert))
	if cur.SerialNumber.Text(16) != second || !v.CertExpires.Equal(cur.NotAfter) {
		t.Fatalf("node view cert_expires %v, want the renewed certificate's %v", v.CertExpires, cur.NotAfter)
	}
	raw, _ := json.Marshal(v)
	var fields map[string]any
	json.Unmarshal(raw, &fields)
	if s, _ := fields["cert_expires"].(string); s == "" {
		t.Fatalf("node JSON lacks cert_expires: %s", raw)
	} else if _, err := time.Parse(time.RFC3339, s); err != nil {
		t.Fatalf("cert_expires %q is not RFC 3339: %v", s, err)
	}
}

// A node switched off past its certificate's expiry comes back by itself,
// without a token, with its ID, IP and block, by proving its key.
func TestExpiredNodeComesBackByProvingItsKey(t *testing.T) {
	tm := startManagerWithLifetime(t, time.Minute)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	self := a.Self()
	old := agentCert(a)
	// Switched off for five minutes: both clocks move past the expiry.
	later := func() time.Time { return time.Now().Add(5 * time.Minute) }
	tm.m.mu.Lock()
	tm.m.now = later
	tm.m.mu.Unlock()
	status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathStatus, NodeStatus{}, certs(old))
	if status != http.StatusUnauthorized || !strings.Contains(msg, "expired") {
		t.Fatalf("report with the expired certificate: %d %q, want 401", status, msg)
	}
	cfg.Token, cfg.now, cfg.renewCheck = "", later, 20*time.Millisecond
	back := join(t, cfg)
	r := watch(t, back)
	m := r.waitFor(t, "the map", hasNodes(2))
	n, _ := m.Node(self.ID)
	if n.OverlayIP != self.OverlayIP || n.ContainerBlock != self.ContainerBlock || back.Self().ID != self.ID {
		t.Fatalf("came back as %+v, was %+v", n, self)
	}
	cur := readCert(t, filepath.Join(cfg.StateDir, FileTLSCert))
	if !cur.NotAfter.After(later()) {
		t.Fatalf("certificate not renewed: expires %v", cur.NotAfter)
	}
	if err := back.Report(context.Background(), NodeStatus{}); err != nil {
		t.Fatalf("report after coming back: %v", err)
	}
}

// A removed node cannot use an expired certificate to come back.
func TestRemovedNodeCannotRenew(t *testing.T) {
	tm := startManagerWithLifetime(t, time.Minute)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	old := agentCert(a)
	if err := tm.m.RemoveNode("worker-1", true); err != nil {
		t.Fatal(err)
	}
	status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathRenew, api.RenewRequest{}, certs(old))
	if status != http.StatusForbidden || !strings.Contains(msg, "removed") {
		t.Fatalf("renew of a removed node: %d %q", status, msg)
	}
}
