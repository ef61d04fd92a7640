package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
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
	"github.com/warren-appliance/warren/cluster/store"
)

// testTrustState is a state with a real CA and serving certificate.
func testTrustState(t *testing.T) *state {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA("c1", now)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := ca.KeyPEM()
	der, key, err := ca.IssueServer("warren-manager", nil, now)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, _ := pki.EncodeKeyPEM(key)
	s := &state{meta: meta{ClusterID: "c1", CACert: ca.CertPEM(), CAKey: keyPEM, ServerCert: pki.EncodeCertPEM(der), ServerKey: srvKey,
		WorkerSecret: "w", ManagerSecret: "m"}, nodes: map[string]nodeRecord{}}
	h := ca.Hash()
	s.nodes["m1"] = nodeRecord{Node: clustermap.Node{ID: "m1", Name: "manager-1", Role: clustermap.RoleManager}}
	s.nodes["w1"] = nodeRecord{Node: clustermap.Node{ID: "w1", Name: "worker-1", Role: clustermap.RoleWorker}, CAHash: h}
	s.nodes["w2"] = nodeRecord{Node: clustermap.Node{ID: "w2", Name: "worker-2", Role: clustermap.RoleWorker}}
	return s
}

func rotate(t *testing.T, s *state, now time.Time, grace time.Duration, force bool) error {
	t.Helper()
	ca, err := pki.NewRotatedCA(s.meta.ClusterID, s.meta.CAGeneration+1, now)
	if err != nil {
		t.Fatal(err)
	}
	der, key, err := ca.IssueServer("warren-manager", nil, now)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.EncodeKeyPEM(key)
	return startRotation(s, ca, der, keyPEM, now, grace, force)
}

func TestPlanRotation(t *testing.T) {
	now := time.Now()
	s := testTrustState(t)
	if p := planRotation(s.meta, s.nodes, now); p.Action != rotationNone {
		t.Fatalf("no rotation: %+v", p)
	}
	oldCA, oldSecret := s.meta.CACert, s.meta.WorkerSecret
	if err := rotate(t, s, now, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	if string(s.meta.CARotation.PrevCACert) != string(oldCA) || s.meta.WorkerSecret == oldSecret || s.meta.CAGeneration != 1 {
		t.Fatalf("rotation did not keep the old CA or rotate the secrets: %+v", s.meta.CARotation)
	}
	cur := caHashOf(s.meta.CACert)
	// Both workers hold old-CA certificates (w2's record predates CA hashes).
	p := planRotation(s.meta, s.nodes, now.Add(time.Minute))
	if p.Action != rotationWait || strings.Join(p.Pending, ",") != "worker-1,worker-2" {
		t.Fatalf("plan: %+v, want wait for worker-1,worker-2", p)
	}
	w1 := s.nodes["w1"]
	w1.CAHash = cur
	s.nodes["w1"] = w1
	if p := planRotation(s.meta, s.nodes, now.Add(time.Minute)); p.Action != rotationWait || strings.Join(p.Pending, ",") != "worker-2" {
		t.Fatalf("plan: %+v, want wait for worker-2", p)
	}
	if p := planRotation(s.meta, s.nodes, now.Add(time.Hour)); p.Action != rotationExpired || strings.Join(p.Pending, ",") != "worker-2" {
		t.Fatalf("plan after the grace: %+v, want expired with worker-2 pending", p)
	}
	w2 := s.nodes["w2"]
	w2.CAHash = cur
	s.nodes["w2"] = w2
	if p := planRotation(s.meta, s.nodes, now.Add(time.Minute)); p.Action != rotationFinish {
		t.Fatalf("plan with every worker renewed: %+v, want finish", p)
	}
	if err := finishRotation(s); err != nil {
		t.Fatal(err)
	}
	if s.meta.CARotation != nil || strings.Contains(string(s.meta.trustBundle()), string(oldCA)) {
		t.Fatal("finish left the old CA in the state or the bundle")
	}
	if err := finishRotation(s); err == nil {
		t.Fatal("finish without a rotation succeeded")
	}
}

func TestRotationRefusedWhileInProgressUnlessForced(t *testing.T) {
	now := time.Now()
	s := testTrustState(t)
	first := caHashOf(s.meta.CACert)
	if err := rotate(t, s, now, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	second := s.meta.CACert
	err := rotate(t, s, now, time.Hour, false)
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != http.StatusConflict || !strings.Contains(ae.msg, "--force") {
		t.Fatalf("second rotation: %v, want 409 naming --force", err)
	}
	if string(s.meta.CACert) != string(second) {
		t.Fatal("a refused rotation changed the CA")
	}
	if err := rotate(t, s, now, time.Hour, true); err != nil {
		t.Fatal(err)
	}
	// The CA managers serve (and nodes may hold alone) stays the first one.
	if got := caHashOf(s.meta.CARotation.PrevCACert); got != first || s.meta.CAGeneration != 2 {
		t.Fatalf("forced rotation retires %s (generation %d), want the first CA %s", got, s.meta.CAGeneration, first)
	}
	if err := rotate(t, s, now, 0, true); err == nil {
		t.Fatal("a rotation with no grace period was accepted")
	}
}

// Raft entries carrying CA material are checked on apply.
func TestCheckChangeRefusesBadCAMaterial(t *testing.T) {
	now := time.Now()
	good := testTrustState(t)
	if err := rotate(t, good, now, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	other := testTrustState(t)
	cases := map[string]func(*meta){
		"key of another CA":      func(m *meta) { m.CAKey = other.meta.CAKey },
		"previous key mismatch":  func(m *meta) { r := *m.CARotation; r.PrevCAKey = other.meta.CAKey; m.CARotation = &r },
		"previous is current":    func(m *meta) { r := *m.CARotation; r.PrevCACert, r.PrevCAKey = m.CACert, m.CAKey; m.CARotation = &r },
		"empty grace":            func(m *meta) { r := *m.CARotation; r.GraceUntil = r.Started; m.CARotation = &r },
		"server of another CA":   func(m *meta) { m.ServerCert, m.ServerKey = other.meta.ServerCert, other.meta.ServerKey },
		"old server of other CA": func(m *meta) { r := *m.CARotation; r.PrevServerCert = other.meta.ServerCert; m.CARotation = &r },
		"garbage CA":             func(m *meta) { m.CACert = []byte("not pem") },
	}
	ok, err := good.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkChange(store.Diff(store.Snapshot{}, ok)); err != nil {
		t.Fatalf("a valid rotation was refused: %v", err)
	}
	for name, spoil := range cases {
		s := good.clone()
		spoil(&s.meta)
		snap, err := s.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if err := checkChange(store.Diff(store.Snapshot{}, snap)); err == nil {
			t.Errorf("%s: entry accepted", name)
		}
	}
}

// In process: a rotation re-issues a worker's certificate through its
// normal renewal, finishes by itself once every member renewed, and
// then the worker's old-CA certificate and the old join token are refused.
func TestCARotationRenewsAndRetires(t *testing.T) {
	tm := &testManager{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	base := startManager(t)
	tm.cfg = base.cfg
	base.stop()
	tm.cfg.StateDir = tm.dir
	tm.cfg.caRotationCheck = 100 * time.Millisecond
	tm.start()
	t.Cleanup(tm.stop)

	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Watch(ctx, func(*clustermap.Map) {}) }()
	t.Cleanup(func() { cancel(); <-done })
	old := agentCert(t, cfg.StateDir)
	oldToken := tm.workerToken()

	st, err := tm.m.RotateCA(api.CARotateRequest{Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Rotating || st.Previous == "" || st.Previous == st.Fingerprint {
		t.Fatalf("status after rotate: %+v", st)
	}
	if _, err := tm.m.RotateCA(api.CARotateRequest{}); err == nil {
		t.Fatal("a second rotation without --force was accepted")
	}
	newTok := tm.workerToken()
	if newTok == oldToken {
		t.Fatal("join token did not rotate")
	}
	// The worker renews with the new CA and the rotation finishes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st = tm.m.CAStatus()
		if !st.Rotating {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotation did not finish: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, n := range st.Nodes {
		if !n.NewCA {
			t.Fatalf("node %s not on the new CA after finish: %+v", n.Name, st)
		}
	}
	renewed := agentCert(t, cfg.StateDir)
	if renewed.Leaf.Issuer.CommonName == old.Leaf.Issuer.CommonName {
		t.Fatalf("worker certificate still issued by %q", old.Leaf.Issuer.CommonName)
	}
	// The finish reaches the worker with its next map.
	for {
		bundle, err := os.ReadFile(filepath.Join(cfg.StateDir, agent.FileCA))
		if err != nil {
			t.Fatal(err)
		}
		cas, err := pki.ParseCertsPEM(bundle)
		if err == nil && len(cas) == 1 && pki.CertHash(cas[0].Raw) == st.Fingerprint {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker's trust bundle after finish: %d CA(s), err %v; want the new CA alone", len(cas), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The old CA's certificate is refused; the renewed one works.
	if status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathStatus, NodeStatus{}, certs(old)); status != http.StatusUnauthorized {
		t.Fatalf("report with the old-CA certificate: %d %q, want 401", status, msg)
	}
	if status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathStatus, NodeStatus{}, certs(renewed)); status != http.StatusNoContent {
		t.Fatalf("report with the renewed certificate: %d %q", status, msg)
	}
	// Joining with the token from before the rotation fails; the new one
	// (printed after finish, pinning the new CA) works.
	c2 := agentConfig(t, tm, "worker-2")
	c2.Token = oldToken
	jctx, jcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer jcancel()
	if _, err := agent.Join(jctx, c2); err == nil {
		t.Fatal("join with the pre-rotation token succeeded")
	}
	c3 := agentConfig(t, tm, "worker-3")
	join(t, c3)
}

// During a rotation a manager holds session certificates of both CAs and,
// as a client, presents the one the other manager accepts: a manager that
// has not applied the rotation yet (its certificate request names the old
// CA only) still takes the leader's connections.
func TestManagerSessionCertFollowsPeersAcceptableCAs(t *testing.T) {
	tm := startManager(t)
	old := tm.m.managerCert().Leaf
	if _, err := tm.m.RotateCA(api.CARotateRequest{Grace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	tm.m.mu.Lock()
	newCA, prevCA := tm.m.ca.Cert, tm.m.prevCA.Cert
	tm.m.mu.Unlock()
	cur := tm.m.managerCert()
	if cur.Leaf.CheckSignatureFrom(newCA) != nil || old.CheckSignatureFrom(prevCA) != nil {
		t.Fatal("session certificate not re-issued from the new CA")
	}
	for name, c := range map[string]struct {
		cas  [][]byte
		want *x509.Certificate
	}{
		"no hint":     {nil, newCA},
		"both":        {[][]byte{newCA.RawSubject, prevCA.RawSubject}, newCA},
		"old CA only": {[][]byte{prevCA.RawSubject}, prevCA},
		"new CA only": {[][]byte{newCA.RawSubject}, newCA},
		"another CA":  {[][]byte{[]byte("nobody")}, newCA},
	} {
		got := tm.m.managerClientCert(&tls.CertificateRequestInfo{AcceptableCAs: c.cas, Version: tls.VersionTLS13,
			SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}})
		if got.Leaf.CheckSignatureFrom(c.want) != nil {
			t.Errorf("%s: presented a certificate of %q, want %q", name, got.Leaf.Issuer.CommonName, c.want.Subject.CommonName)
		}
	}
	if _, err := tm.m.RotateCA(api.CARotateRequest{Finish: true}); err != nil {
		t.Fatal(err)
	}
	if tm.m.mcertPrev.Load() != nil {
		t.Fatal("a session certificate of the retired CA is still held")
	}
	got := tm.m.managerClientCert(&tls.CertificateRequestInfo{AcceptableCAs: [][]byte{prevCA.RawSubject}, Version: tls.VersionTLS13})
	if got.Leaf.CheckSignatureFrom(newCA) != nil {
		t.Fatal("after the finish a manager still presents the old CA's session certificate")
	}
}

// A rotation lives in the replicated state: a manager restarted in the
// middle takes it up (both CAs trusted, the old one served and pinned by
// tokens), and a node restarted in the middle keeps its two-CA bundle.
func TestCARotationSurvivesRestarts(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	join(t, cfg)
	// worker-2 never renews: the rotation cannot finish by itself here.
	join(t, agentConfig(t, tm, "worker-2"))
	before, err := tm.m.RotateCA(api.CARotateRequest{Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tm.restart()
	after := tm.m.CAStatus()
	if !after.Rotating || after.Fingerprint != before.Fingerprint || after.Previous != before.Previous || !after.GraceUntil.Equal(before.GraceUntil) {
		t.Fatalf("after restart: %+v, want the rotation of %+v", after, before)
	}
	if tok := tm.workerToken(); !strings.Contains(tok, before.Previous) {
		t.Fatalf("token %s does not pin the CA managers serve during the rotation (%s)", tok, before.Previous)
	}
	// The node, restarted before it could renew, still reaches the
	// manager (which serves the old CA's certificate) and takes the map's
	// bundle.
	a := join(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Watch(ctx, func(*clustermap.Map) {}) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(cfg.StateDir, agent.FileCA))
		if err != nil {
			t.Fatal(err)
		}
		cas, _ := pki.ParseCertsPEM(b)
		if len(cas) == 2 && pki.CertHash(cas[0].Raw) == before.Fingerprint && pki.CertHash(cas[1].Raw) == before.Previous {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node's bundle: %d CA(s), want new then old", len(cas))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := tm.m.RotateCA(api.CARotateRequest{Finish: true}); err != nil {
		t.Fatal(err)
	}
	tm.restart()
	if st := tm.m.CAStatus(); st.Rotating || st.Fingerprint != before.Fingerprint {
		t.Fatalf("after finish and restart: %+v", st)
	}
	if tok := tm.workerToken(); !strings.Contains(tok, before.Fingerprint) {
		t.Fatalf("token %s does not pin the new CA after the finish", tok)
	}
}
