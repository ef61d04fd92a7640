package cluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
	"github.com/warren-appliance/warren/cluster/pki"
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
		removed, expired, superseded, forged, wrong,
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
	routes := []route{
		{"POST", api.PathJoin, badJoin, all(401)}, // join looks at the token only
		{"GET", api.PathJoin, nil, all(405)},
		{"PUT", api.PathSelf, self, std(200)},
		{"POST", api.PathRenew, renew, renewWant},
		{"GET", api.PathWatch, nil, std(200)},
		{"POST", api.PathStatus, status, std(204)},
		{"POST", api.PathValues, values, valuesWant},
		{"GET", api.PathValues, nil, all(405)},
		// The data key goes to managers only, as the Raft log does.
		{"GET", pathInternalDataKey, nil, dataKeyWant},
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
