package cluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
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
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/cluster/secretbox"
)

// identity is one kind of caller of the node API.
type authzIdentity struct {
	name string
	cert *tls.Certificate // nil: no client certificate
	key  *ecdsa.PrivateKey
}

// authzStatus sends one request and returns the status; streams (watch)
// are closed once the status is known.
func authzStatus(t *testing.T, addr, method, path string, body any, id authzIdentity) int {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	conf := &tls.Config{InsecureSkipVerify: true}
	if id.cert != nil {
		conf.Certificates = []tls.Certificate{*id.cert}
	}
	tr := &http.Transport{TLSClientConfig: conf}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, "https://"+addr+path, rd)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("%s %s as %s: %v", method, path, id.name, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func agentKey(t *testing.T, dir string) *ecdsa.PrivateKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, agent.FileTLSKey))
	if err != nil {
		t.Fatal(err)
	}
	k, err := pki.ParseKeyPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The authorization matrix: every node API route × every kind of caller →
// the expected status.
func TestAuthorizationMatrix(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	mkAgent := func(name, role string) (*agent.Agent, agent.Config) {
		cfg := agentConfig(t, tm, name)
		cfg.Node.Role = role
		if role == clustermap.RoleManager {
			_, cfg.Token = m.JoinTokens()
		}
		return join(t, cfg), cfg
	}
	idOf := func(name string, cfg agent.Config) authzIdentity {
		c := agentCert(t, cfg.StateDir)
		return authzIdentity{name: name, cert: &c, key: agentKey(t, cfg.StateDir)}
	}
	w, wcfg := mkAgent("worker-1", clustermap.RoleWorker)
	_, mcfg := mkAgent("manager-2", clustermap.RoleManager)
	_, gcfg := mkAgent("gone", clustermap.RoleWorker)
	removed := idOf("removed node", gcfg)
	if err := m.RemoveNode("gone", true); err != nil {
		t.Fatal(err)
	}
	// Superseded: a certificate from before the node joined again.
	_, ocfg := mkAgent("rejoined", clustermap.RoleWorker)
	superseded := idOf("superseded certificate", ocfg)
	os.Remove(filepath.Join(ocfg.StateDir, agent.FileTLSCert))
	join(t, ocfg)
	// Expired: the node's current certificate, past its NotAfter.
	sl, scfg := mkAgent("sleeper", clustermap.RoleWorker)
	skey := agentKey(t, scfg.StateDir)
	csr, _ := pki.NewCSR(skey, "sleeper")
	expiredCert, err := m.ca.SignNodeFor(csr, sl.Self().ID, time.Now().Add(-50*time.Minute), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.update(func(s *state) error {
		rec := s.nodes[sl.Self().ID]
		rec.CertSerial, rec.PrevSerial = pki.Serial(expiredCert), ""
		s.nodes[rec.ID] = rec
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	expired := authzIdentity{name: "expired certificate", cert: &tls.Certificate{Certificate: [][]byte{expiredCert.Raw}, PrivateKey: skey}, key: skey}
	// Forged: a self-signed certificate naming worker-1.
	fkey, _ := pki.NewKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: w.Self().ID},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	fder, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &fkey.PublicKey, fkey)
	forged := authzIdentity{name: "forged certificate of another node", cert: &tls.Certificate{Certificate: [][]byte{fder}, PrivateKey: fkey}, key: fkey}
	// Forged with a copy of the CA key (a retired manager board's): worker-1's
	// ID and recorded serial, another key.
	m.mu.Lock()
	wserial, _ := new(big.Int).SetString(m.st.nodes[w.Self().ID].CertSerial, 16)
	m.mu.Unlock()
	ckey, _ := pki.NewKey()
	ctmpl := &x509.Certificate{SerialNumber: wserial, Subject: pkix.Name{CommonName: w.Self().ID},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	cder, err := x509.CreateCertificate(rand.Reader, ctmpl, m.ca.Cert, &ckey.PublicKey, m.ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	caForged := authzIdentity{name: "CA-key forgery of worker-1", cert: &tls.Certificate{Certificate: [][]byte{cder}, PrivateKey: ckey}, key: ckey}
	// Wrong cluster: a real member of another cluster.
	other := startManager(t)
	ocfg2 := agentConfig(t, other, "worker-1")
	join(t, ocfg2)
	okey := agentKey(t, ocfg2.StateDir)
	oc := agentCert(t, ocfg2.StateDir)
	wrong := authzIdentity{name: "member of another cluster", cert: &oc, key: okey}

	ids := []authzIdentity{
		{name: "no certificate"},
		idOf("worker", wcfg),
		idOf("manager", mcfg),
		removed, expired, superseded, forged, caForged, wrong,
	}
	type route struct {
		method, path string
		body         func(id authzIdentity) any
		want         map[string]int // by identity name
	}
	self := func(id authzIdentity) any {
		return api.SelfUpdate{Endpoint: mustAddrPort("192.0.2.77:51820"), PublicKey: clustertest.WGKey(t)}
	}
	renew := func(id authzIdentity) any {
		key := id.key
		if key == nil {
			key, _ = pki.NewKey()
		}
		csr, _ := pki.NewCSR(key, "x")
		return api.RenewRequest{CSR: csr}
	}
	status := func(id authzIdentity) any { return NodeStatus{} }
	badJoin := func(id authzIdentity) any {
		req, _ := rawJoinRequest(t, "not-the-secret", "newcomer", clustermap.RoleWorker, clustertest.WGKey(t))
		return req
	}
	std := func(ok int) map[string]int {
		return map[string]int{
			"no certificate": 401, "worker": ok, "manager": ok, "removed node": 403, "expired certificate": 401,
			"superseded certificate": 401, "forged certificate of another node": 401, "member of another cluster": 401,
			"CA-key forgery of worker-1": 401,
		}
	}
	renewWant := std(200)
	renewWant["expired certificate"] = 200 // a node back after its expiry proves its key
	all := func(s int) map[string]int {
		out := map[string]int{}
		for _, id := range ids {
			out[id.name] = s
		}
		return out
	}
	// worker-1 runs a task of a service with a secret; manager-2 none.
	if _, err := m.CreateObject(api.KindSecret, api.ObjectSpec{Name: "dbpass", Data: []byte("pw")}); err != nil {
		t.Fatal(err)
	}
	dbSpec := api.ServiceSpec{Name: "db", Image: "img", Replicas: intp(1), Constraints: []string{"node.name==worker-1"}, Secrets: []string{"dbpass"}}
	if _, err := m.CreateService(dbSpec); err != nil {
		t.Fatal(err)
	}
	values := func(id authzIdentity) any {
		return api.ValuesRequest{Refs: []api.ValueRef{{Kind: api.KindSecret, Name: "dbpass"}}}
	}
	valuesWant := std(200)
	valuesWant["manager"] = 403 // a manager's certificate reads only the values of its own tasks too
	dataKeyWant := all(403)
	dataKeyWant["manager"] = 200
	nextKey := func(id authzIdentity) any { k, _ := secretbox.NewKey(); return nextKeyRequest{KeyGen: 0, Key: k} }
	nextKeyWant := all(403)
	nextKeyWant["manager"] = 409
	routes := []route{
		{"POST", api.PathJoin, badJoin, all(401)}, // join looks at the token only
		{"GET", api.PathJoin, nil, all(405)},
		// The data key goes to managers only, as the Raft log does. Before
		// renew: a renewal supersedes the manager's certificate, and manager
		// routes take only a member's newest one.
		{"GET", pathInternalDataKey, nil, dataKeyWant},
		// A re-key's new data key is taken from managers only; a
		// manager's stale generation (0 is the current one, not the next)
		// is refused after authorization, so nothing is kept.
		{"POST", pathInternalNextKey, nextKey, nextKeyWant},
		{"PUT", api.PathSelf, self, std(200)},
		{"POST", api.PathRenew, renew, renewWant},
		{"GET", api.PathWatch, nil, std(200)},
		{"POST", api.PathStatus, status, std(204)},
		{"POST", api.PathValues, values, valuesWant},
		{"GET", api.PathValues, nil, all(405)},
		{"GET", "/v1/nodes", nil, all(404)}, // the admin API is not on this port
	}
	for _, r := range routes {
		for _, id := range ids {
			var body any
			if r.body != nil {
				body = r.body(id)
			}
			got := authzStatus(t, tm.addr, r.method, r.path, body, id)
			if want := r.want[id.name]; got != want {
				t.Errorf("%s %s as %s: %d, want %d", r.method, r.path, id.name, got, want)
			}
		}
	}
}

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
	// Renewed: the certificate from before the renewal stays valid on the
	// node API (its serial is kept, in case the answer was lost), never on
	// the managers' routes.
	renewedFrom := ptr(agentCert(t, ccfg.StateDir))
	ckey := agentKey(t, ccfg.StateDir)
	rcsr, _ := pki.NewCSR(ckey, "manager-2")
	code, rbody := nodeAPICall(t, tm.addr, http.MethodPost, api.PathRenew, api.RenewRequest{CSR: rcsr}, certs(*renewedFrom))
	if code != http.StatusOK {
		t.Fatalf("renew manager-2: %d %s", code, rbody)
	}
	var renewed api.RenewResponse
	mustJSON(t, rbody, &renewed)
	curNode := &tls.Certificate{Certificate: [][]byte{renewed.Certificate}, PrivateKey: ckey}
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
		{"manager certificate from before a renewal", renewedFrom, false},
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
