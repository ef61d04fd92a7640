package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// The agent's behaviour against a real manager (package cluster, through
// its exported API), where the test needs the agent's clock. The manager's
// own tests, with agents joining it, are in package cluster.

// testManager is a manager serving its node API on a loopback port.
type testManager struct {
	addr string
	m    *cluster.Manager
}

// startManager starts a manager whose node certificates live lifetime (0:
// the default).
func startManager(t *testing.T, lifetime time.Duration) *testManager {
	t.Helper()
	ln := clustertest.Listen(t, "127.0.0.1:0")
	m, err := cluster.OpenManager(cluster.ManagerConfig{
		StateDir:  t.TempDir(),
		Advertise: ln.Addr().String(),
		Node: api.NodeInfo{Name: "manager-1", Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"),
			PublicKey: clustertest.WGKey(t)},
		DownAfter:    time.Hour,
		CertLifetime: lifetime,
		Logger:       clustertest.Logger(t),
	})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.ServeListener(ctx, ln); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if err := m.Close(); err != nil {
			t.Errorf("close manager: %v", err)
		}
	})
	return &testManager{addr: ln.Addr().String(), m: m}
}

func agentConfig(t *testing.T, tm *testManager, name string) Config {
	token, _ := tm.m.JoinTokens()
	return Config{
		StateDir: t.TempDir(),
		Manager:  tm.addr,
		Token:    token,
		Node: api.NodeInfo{Name: name, Role: clustermap.RoleWorker, PublicKey: clustertest.WGKey(t),
			Endpoint: netip.MustParseAddrPort("192.0.2.10:51820")},
		Logger: clustertest.Logger(t),
	}
}

func join(t *testing.T, cfg Config) *Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := Join(ctx, cfg)
	if err != nil {
		t.Fatalf("join %s: %v", cfg.Node.Name, err)
	}
	return a
}

func certSerial(t *testing.T, dir string) string {
	return clustertest.ReadCert(t, filepath.Join(dir, FileTLSCert)).SerialNumber.Text(16)
}

// offsetClock is a clock a test moves forward while agents run.
type offsetClock struct{ off atomic.Int64 }

func (c *offsetClock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *offsetClock) advance(d time.Duration) { c.off.Add(int64(d)) }

func TestNewerLineBuffered(t *testing.T) {
	for in, want := range map[string]bool{
		"{\"v\":1}\n{\"v\":2}\n": true,  // a whole newer map is waiting
		"{\"v\":1}\n{\"v\":2":    false, // the next one is incomplete
		"{\"v\":1}\n\n":          false, // only a keepalive follows
		"{\"v\":1}\n":            false,
	} {
		r := bufio.NewReaderSize(strings.NewReader(in), 1024)
		if _, err := r.ReadBytes('\n'); err != nil {
			t.Fatal(err)
		}
		if got := newerLineBuffered(r); got != want {
			t.Errorf("%q: newerLineBuffered = %v, want %v", in, got, want)
		}
	}
}

func TestJoinRefusesClockBeforeCA(t *testing.T) {
	tm := startManager(t, 0)
	cfg := agentConfig(t, tm, "worker-1")
	cfg.now = func() time.Time { return time.Date(1970, 1, 1, 0, 0, 42, 0, time.UTC) }
	_, err := Join(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "clock is wrong") {
		t.Fatalf("join with the clock in 1970: %v", err)
	}
	t.Logf("refused as expected: %v", err)
}

func TestAgentRenewsCertificateNearExpiry(t *testing.T) {
	tm := startManager(t, 0)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	before := clustertest.ReadCert(t, filepath.Join(cfg.StateDir, FileTLSCert))
	// Restart the agent with its clock 300 days ahead: less than a third of
	// the certificate's year is left.
	cfg.Token = ""
	cfg.now = func() time.Time { return time.Now().Add(300 * 24 * time.Hour) }
	a2 := join(t, cfg)
	r := clustertest.Watch(t, a2)
	r.WaitFor(t, "a map", clustertest.HasNodes(2))
	after := clustertest.ReadCert(t, filepath.Join(cfg.StateDir, FileTLSCert))
	if after.SerialNumber.Cmp(before.SerialNumber) == 0 || after.NotAfter.Before(before.NotAfter) {
		t.Fatalf("certificate not renewed: %v -> %v", before.NotAfter, after.NotAfter)
	}
	if after.Subject.CommonName != a.Self().ID {
		t.Fatalf("renewed certificate names %q, want %q", after.Subject.CommonName, a.Self().ID)
	}
}

// waitCertChange waits until the agent's certificate file holds another
// serial than before.
func waitCertChange(t *testing.T, dir, before string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if s := certSerial(t, dir); s != before {
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("certificate in %s still has serial %s after 30 s", dir, before)
	return ""
}

// Finding 1: with a stream that stays up, the certificate was never
// renewed; now a timer renews it at about two thirds of its lifetime.
func TestCertificateRenewsOnATimerWhileTheStreamStaysUp(t *testing.T) {
	tm := startManager(t, time.Minute)
	clock := &offsetClock{}
	cfg := agentConfig(t, tm, "worker-1")
	cfg.now, cfg.renewCheck = clock.now, 20*time.Millisecond
	a := join(t, cfg)
	first := clustertest.ReadCert(t, filepath.Join(cfg.StateDir, FileTLSCert))
	if life := first.NotAfter.Sub(first.NotBefore); life > time.Minute+time.Hour+time.Second {
		t.Fatalf("certificate lives %s, want cluster.cert_lifetime 1m (+1h backdate)", life)
	}
	r := clustertest.Watch(t, a)
	r.WaitFor(t, "the map", clustertest.HasNodes(2))
	clock.advance(45 * time.Second) // past 0.7 of the minute
	second := waitCertChange(t, cfg.StateDir, first.SerialNumber.Text(16))
	if err := a.Report(context.Background(), api.NodeStatus{}); err != nil {
		t.Fatalf("report with the renewed certificate: %v", err)
	}
	v, err := tm.m.Node("worker-1")
	if err != nil {
		t.Fatal(err)
	}
	cur := clustertest.ReadCert(t, filepath.Join(cfg.StateDir, FileTLSCert))
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
// without a token, with its ID, IP and block: it renews before anything
// else. (That the manager accepts the expired certificate for /v1/renew
// alone, with its own clock past the expiry, is package cluster's
// TestRenewAcceptsAMembersExpiredCertificate.)
func TestExpiredNodeComesBackByProvingItsKey(t *testing.T) {
	tm := startManager(t, time.Minute)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	self := a.Self()
	old := certSerial(t, cfg.StateDir)
	// Switched off for five minutes: by its clock, its certificate expired.
	later := func() time.Time { return time.Now().Add(5 * time.Minute) }
	cfg.Token, cfg.now, cfg.renewCheck = "", later, 20*time.Millisecond
	back := join(t, cfg)
	if !back.certExpired() {
		t.Fatal("the stored certificate is not expired by the agent's clock: the test proves nothing")
	}
	r := clustertest.Watch(t, back)
	m := r.WaitFor(t, "the map", clustertest.HasNodes(2))
	n, _ := m.Node(self.ID)
	if n.OverlayIP != self.OverlayIP || n.ContainerBlock != self.ContainerBlock || back.Self().ID != self.ID {
		t.Fatalf("came back as %+v, was %+v", n, self)
	}
	cur := clustertest.ReadCert(t, filepath.Join(cfg.StateDir, FileTLSCert))
	if cur.SerialNumber.Text(16) == old || cur.Subject.CommonName != self.ID {
		t.Fatalf("certificate not renewed: serial %s (was %s) for %q", cur.SerialNumber.Text(16), old, cur.Subject.CommonName)
	}
	if err := back.Report(context.Background(), api.NodeStatus{}); err != nil {
		t.Fatalf("report after coming back: %v", err)
	}
}
