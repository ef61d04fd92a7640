package cluster

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"testing"
	"unicode"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// fuzzNodeAPI feeds arbitrary bodies to one node API route through the
// real handler, as a member (the handshake's certificate) or as nobody.
// Whatever the body, the manager answers a 2xx or a 4xx that explains,
// never a 5xx or a panic, and its map stays encodable.
func fuzzNodeAPI(f *testing.F, method, path string, asMember bool, seeds ...[]byte) {
	fuzzNodeAPIWith(f, method, path, asMember, nil, seeds...)
}

// fuzzNodeAPIWith is fuzzNodeAPI with a setup of the manager's state
// after the member (worker-1) joined.
func fuzzNodeAPIWith(f *testing.F, method, path string, asMember bool, setup func(*Manager), seeds ...[]byte) {
	tm := startManager(f)
	var peer *tls.ConnectionState
	if asMember {
		cfg := agentConfig(f, tm, "worker-1")
		join(f, cfg)
		c := agentCert(f, cfg.StateDir)
		peer = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.Leaf}}
	}
	if setup != nil {
		setup(tm.m)
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"tasks": [{"name": "x", "state": "running", "error": "\u00ff"}]}`))
	h := tm.m.nodeHandler()
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(method, path, bytes.NewReader(body))
		r.TLS = peer
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 500 {
			t.Fatalf("%s %s answered %d: %s", method, path, w.Code, w.Body.String())
		}
		if w.Code >= 400 && !bytes.Contains(w.Body.Bytes(), []byte(`"error"`)) {
			t.Fatalf("%s %s answered %d without an explanation: %s", method, path, w.Code, w.Body.String())
		}
		if _, err := json.Marshal(tm.m.Map()); err != nil {
			t.Fatalf("map no longer encodes: %v", err)
		}
	})
}

func mustMarshal(f *testing.F, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func FuzzJoinRequest(f *testing.F) {
	req, _ := rawJoinRequest(f, "secret", "n1", clustermap.RoleWorker, clustertest.WGKey(f))
	fuzzNodeAPI(f, http.MethodPost, api.PathJoin, false, mustMarshal(f, req))
}

func FuzzReportRequest(f *testing.F) {
	fuzzNodeAPI(f, http.MethodPost, api.PathStatus, true, mustMarshal(f, NodeStatus{
		Tunnel: []api.PeerHealth{{PublicKey: clustertest.WGKey(f)}},
		Tasks:  []api.TaskStatus{{Name: "web-1", State: "failed", Error: "boom", Image: "img"}},
	}))
}

func FuzzSelfRequest(f *testing.F) {
	fuzzNodeAPI(f, http.MethodPut, api.PathSelf, true, mustMarshal(f, api.SelfUpdate{
		Labels: map[string]string{"zone": "a"}, Endpoint: mustAddrPort("192.0.2.9:51820"), PublicKey: clustertest.WGKey(f),
	}))
}

// FuzzValuesRequest: the decoder of a node's request for secret values, as
// a member that runs a task using one.
func FuzzValuesRequest(f *testing.F) {
	setup := func(m *Manager) {
		for kind, name := range map[string]string{api.KindSecret: "dbpass", api.KindConfig: "app.conf"} {
			if _, err := m.CreateObject(kind, api.ObjectSpec{Name: name, Data: []byte("v")}); err != nil {
				f.Fatal(err)
			}
		}
		spec := api.ServiceSpec{Name: "db", Image: "img", Replicas: intp(1), Constraints: []string{"node.name==worker-1"},
			Secrets: []string{"dbpass"}, Configs: []string{"app.conf"}}
		if _, err := m.CreateService(spec); err != nil {
			f.Fatal(err)
		}
	}
	fuzzNodeAPIWith(f, http.MethodPost, api.PathValues, true, setup,
		mustMarshal(f, api.ValuesRequest{Refs: []api.ValueRef{{Kind: api.KindSecret, Name: "dbpass"}, {Kind: api.KindConfig, Name: "app.conf"}}}),
		[]byte(`{"refs":[{"kind":"secret","name":"../x"}]}`),
		[]byte(`{"refs":null}`))
}

// FuzzParseFileRef: whatever --secret / --config value comes in, the parser
// does not panic, and what it accepts keeps the task's files in their
// place: a secret's target is a plain file name under /run/secrets, a
// config's a clean absolute path outside it.
func FuzzParseFileRef(f *testing.F) {
	for _, s := range []string{"dbpass", "source=dbpass,target=pw,uid=70,gid=70,mode=0400", "src=c,target=/etc/app.conf,mode=0444",
		"source=x,target=../../etc/passwd", "source=x,target=/run/secrets/../../x", "a,b=c", "source=,target="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, kind := range []string{api.KindSecret, api.KindConfig} {
			ref, err := ParseFileRef(kind, s)
			if err != nil {
				continue
			}
			if !objectNameRE.MatchString(ref.Source) || ref.Mode > 0o777 || strings.ContainsFunc(ref.Target, unicode.IsControl) {
				t.Fatalf("%s %q accepted as %+v", kind, s, ref)
			}
			if kind == api.KindSecret && (strings.Contains(ref.Target, "/") || strings.HasPrefix(ref.Target, "..") || ref.Target == "") {
				t.Fatalf("secret %q: target %q escapes /run/secrets", s, ref.Target)
			}
			if kind == api.KindConfig && (!path.IsAbs(ref.Target) || path.Clean(ref.Target) != ref.Target || strings.HasPrefix(ref.Target, SecretsDir+"/") || ref.Target == SecretsDir) {
				t.Fatalf("config %q: target %q", s, ref.Target)
			}
		}
	})
}
