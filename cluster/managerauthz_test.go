package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
)

// raftClient speaks hashicorp's Raft protocol to a manager with one
// client certificate, over the API port's ALPN, as a removed or stolen
// manager board would.
type raftClient struct {
	conf  *tls.Config
	trans *raft.NetworkTransport
}

func (c *raftClient) Accept() (net.Conn, error) { select {} }
func (c *raftClient) Close() error              { return nil }
func (c *raftClient) Addr() net.Addr            { return &net.TCPAddr{} }
func (c *raftClient) Dial(a raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(a), c.conf)
}

func newRaftClient(t *testing.T, cert *tls.Certificate) *raftClient {
	c := &raftClient{conf: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpnRaft}}}
	if cert != nil {
		c.conf.Certificates = []tls.Certificate{*cert}
	}
	c.trans = raft.NewNetworkTransport(c, 1, 5*time.Second, io.Discard)
	t.Cleanup(func() { c.trans.Close() })
	return c
}

// heartbeat sends an AppendEntries of term 0: a live manager answers it
// (refusing the stale term), which proves the connection was accepted.
func (c *raftClient) heartbeat(addr string) error {
	var resp raft.AppendEntriesResponse
	return c.trans.AppendEntries("manager-1", raft.ServerAddress(addr),
		&raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("x"), Addr: []byte("x")}}, &resp)
}

// The managers' side of the authorization matrix (finding 2 of
// hardening-2): the internal routes and Raft, for current, removed and
// superseded manager certificates (node certificates from join, and the
// session certificates managers issue themselves for Raft).
func TestManagerAuthorizationMatrix(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	_, mtoken := m.JoinTokens()
	mkManager := func(name string) (*agent.Agent, agent.Config) {
		cfg := agentConfig(t, tm, name)
		cfg.Node.Role, cfg.Token = clustermap.RoleManager, mtoken
		return join(t, cfg), cfg
	}
	session := func(cfg agent.Config, id string) *tls.Certificate {
		key := agentKey(t, cfg.StateDir)
		csr, _ := pki.NewCSR(key, id)
		cert, err := m.ca.SignManagerSession(csr, id, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key}
	}
	wcfg := agentConfig(t, tm, "worker-1")
	join(t, wcfg)
	worker := ptr(agentCert(t, wcfg.StateDir))
	cur, ccfg := mkManager("manager-2")
	curNode := ptr(agentCert(t, ccfg.StateDir))
	curSession := session(ccfg, cur.Self().ID)
	// Superseded: manager-3's certificate from before it joined again.
	_, scfg := mkManager("manager-3")
	superseded := ptr(agentCert(t, scfg.StateDir))
	os.Remove(filepath.Join(scfg.StateDir, agent.FileTLSCert))
	join(t, scfg)
	// Removed: manager-4, with its node and a session certificate; one
	// Raft connection it opened before the removal stays open.
	gone, gcfg := mkManager("manager-4")
	goneNode := ptr(agentCert(t, gcfg.StateDir))
	goneSession := session(gcfg, gone.Self().ID)
	held := newRaftClient(t, goneSession)
	if err := held.heartbeat(tm.addr); err != nil {
		t.Fatalf("raft as manager-4 before its removal: %v", err)
	}
	if err := m.RemoveNode("manager-4", true); err != nil {
		t.Fatal(err)
	}
	if err := held.heartbeat(tm.addr); err == nil {
		t.Errorf("raft connection opened by manager-4 before `node rm` still works after it")
	}

	// Forged with a copy of the CA key (what a retired manager board
	// holds): the current manager's ID and recorded serial, another key.
	forge := func(unit []string) *tls.Certificate {
		key, _ := pki.NewKey()
		m.mu.Lock()
		serial, _ := new(big.Int).SetString(m.st.nodes[cur.Self().ID].CertSerial, 16)
		m.mu.Unlock()
		tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cur.Self().ID, OrganizationalUnit: unit},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, m.ca.Cert, &key.PublicKey, m.ca.Key)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	type ident struct {
		name string
		cert *tls.Certificate
		ok   bool
	}
	ids := []ident{
		{"current manager (node certificate)", curNode, true},
		{"current manager (session certificate)", curSession, true},
		{"no certificate", nil, false},
		{"worker", worker, false},
		{"superseded manager certificate", superseded, false},
		{"removed manager (node certificate)", goneNode, false},
		{"removed manager (session certificate)", goneSession, false},
		{"CA-key forgery of the current manager's node certificate", forge([]string{pki.ManagerUnit}), false},
		{"CA-key forgery of the current manager's session certificate", forge([]string{pki.ManagerUnit, pki.SessionUnit}), false},
	}
	fwdWorker := base64.StdEncoding.EncodeToString(worker.Certificate[0])
	type route struct {
		method, path, body string
		header             map[string]string
		ok                 int
	}
	routes := []route{
		{"GET", pathInternalAdmin + "/v1/nodes", "", nil, 200},
		{"POST", pathInternalStatus, `{}`, nil, 204},
		{"POST", pathInternalNode + api.PathStatus, `{}`, map[string]string{headerNodeCert: fwdWorker}, 204},
		{"POST", pathInternalJoin, "not json", nil, 400},
		{"POST", pathInternalPromote, "not json", nil, 400},
	}
	for _, id := range ids {
		for _, r := range routes {
			got := internalCall(t, tm.addr, r.method, r.path, r.body, r.header, id.cert)
			switch {
			case id.ok && got != r.ok:
				t.Errorf("%s %s as %s: %d, want %d", r.method, r.path, id.name, got, r.ok)
			case !id.ok && got != http.StatusUnauthorized && got != http.StatusForbidden:
				t.Errorf("%s %s as %s: %d, want 401 or 403", r.method, r.path, id.name, got)
			}
		}
		err := newRaftClient(t, id.cert).heartbeat(tm.addr)
		switch {
		case id.ok && err != nil:
			t.Errorf("raft as %s: %v", id.name, err)
		case !id.ok && err == nil:
			t.Errorf("raft as %s: accepted", id.name)
		}
	}
}

func internalCall(t *testing.T, addr, method, path, body string, header map[string]string, cert *tls.Certificate) int {
	t.Helper()
	conf := &tls.Config{InsecureSkipVerify: true}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: conf}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var rd io.Reader = bytes.NewReader(nil)
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequestWithContext(ctx, method, "https://"+addr+path, rd)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// One undecodable entry in the Raft log (appended by a manager that still
// spoke Raft) panicked every manager on apply, and again at every restart.
func TestBadRaftEntryIsRefusedAndTheManagerStaysUp(t *testing.T) {
	tm := startManager(t)
	for _, data := range [][]byte{{1, '{', 'x'}, {0x7f}, []byte(`` + "\x01" + `{"put":{"nodes":{"n":"bm90IGpzb24="}}}`)} {
		f := tm.m.replica.Raft.Apply(data, 5*time.Second)
		if err := f.Error(); err != nil {
			t.Fatalf("commit: %v", err)
		}
		if resp, _ := f.Response().(error); resp == nil {
			t.Errorf("entry %q: applied without an error", data)
		}
	}
	if _, err := tm.m.CreateService(apiSpec("web", 1)); err != nil {
		t.Fatalf("write after bad entries: %v", err)
	}
	tm.restart() // the log replays the bad entries
	if got := tm.m.Map(); len(got.Services) != 1 || len(got.Nodes) != 1 {
		t.Fatalf("after restart: %+v", got)
	}
	if _, err := tm.m.CreateService(apiSpec("db", 1)); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
}

func TestNodeKeyFileIsTheAgents(t *testing.T) {
	if nodeKeyFile != agent.FileTLSKey {
		t.Fatalf("nodeKeyFile %q, agent.FileTLSKey %q", nodeKeyFile, agent.FileTLSKey)
	}
}

// A node call a follower forwards without a client certificate (a join,
// or a caller that sent none) must not run as the follower itself: the
// leader saw the follower's manager certificate on the connection.
func TestForwardedCallWithoutNodeCertificateIsAnonymous(t *testing.T) {
	tm := startManager(t)
	mcert := tm.m.managerCert()
	for _, path := range []string{api.PathStatus, api.PathSelf} {
		method := http.MethodPost
		body := `{}`
		if path == api.PathSelf {
			method, body = http.MethodPut, `{"endpoint":"192.0.2.99:51820"}`
		}
		if got := internalCall(t, tm.addr, method, pathInternalNode+path, body, nil, mcert); got != http.StatusUnauthorized {
			t.Errorf("%s %s forwarded without a node certificate: %d, want 401", method, path, got)
		}
	}
	if ep := tm.m.Self().Endpoint.String(); ep == "192.0.2.99:51820" {
		t.Errorf("the forwarded call changed the manager's own endpoint")
	}
}

// A manager the operator demoted must stay a non-voter: it may not promote
// itself through /v1/internal/raft/promote, nor again when it restarts
// (its joinRaft used to ask for a vote at every start).
func TestDemotedManagerDoesNotPromoteItself(t *testing.T) {
	hs := startHA(t, 3)
	leader := leaderOf(hs)
	f := followersOf(hs)[0]
	if code, body := adminDo(leader.m, http.MethodPost, "/v1/nodes/"+f.name+"/demote", nil); code != http.StatusNoContent {
		t.Fatalf("demote: %d %s", code, body)
	}
	self := `{"id":"` + f.m.selfID + `","addr":"` + f.addr + `"}`
	if got := internalCall(t, leader.addr, http.MethodPost, pathInternalPromote, self, nil, f.m.managerCert()); got != http.StatusConflict {
		t.Errorf("self-promotion of a demoted manager: %d, want 409", got)
	}
	f.kill()
	f.start()
	select {
	case <-f.m.joinDone:
	case <-time.After(60 * time.Second):
		t.Fatal("the restarted manager's Raft join did not finish")
	}
	if _, voter := leader.m.raftSuffrage(f.m.selfID); voter {
		t.Fatalf("the demoted manager votes again after a restart")
	}
	// The operator's promote still works, and lifts the demotion.
	if code, body := adminDo(leader.m, http.MethodPost, "/v1/nodes/"+f.name+"/promote", nil); code != http.StatusNoContent {
		t.Fatalf("promote: %d %s", code, body)
	}
	if _, voter := leader.m.raftSuffrage(f.m.selfID); !voter {
		t.Fatal("not a voter after the operator's promote")
	}
}
