package cluster

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
)

// basicAuthRegistry answers GET /v2/ as distribution with htpasswd auth.
func basicAuthRegistry(t *testing.T, user, pass string) (host string, caPEM string) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); ok && u == user && p == pass {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="Registry Realm"`)
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "https://"), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
}

func TestRegistryAddValidation(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	for _, bad := range []api.RegistrySpec{
		{Host: "https://reg.local"},
		{Host: "reg.local:99999"},
		{Host: "reg.local", CA: "not a pem"},
		{Host: "reg.local", CA: "x", Insecure: true},
		{Host: "reg.local", MirrorOf: "reg.local"},
		{Host: "reg.local", MirrorOf: "bad/host"},
	} {
		if _, err := m.AddRegistry(bad); statusOf(err) != http.StatusBadRequest {
			t.Errorf("%+v: %v, want 400", bad, err)
		}
	}
	if len(m.Registries()) != 0 {
		t.Fatal("a refused add stored something")
	}
	if _, err := m.AddRegistry(api.RegistrySpec{Host: "mirror.local:5000", MirrorOf: "index.docker.io"}); err != nil {
		t.Fatal(err)
	}
	v, _ := m.Registry("mirror.local:5000")
	if v.MirrorOf != "docker.io" {
		t.Fatalf("mirror of %q, want docker.io", v.MirrorOf)
	}
	if _, err := m.AddRegistry(api.RegistrySpec{Host: "docker.io", MirrorOf: "mirror.local:5000"}); statusOf(err) != http.StatusBadRequest {
		t.Fatalf("two registries mirroring each other: %v", err)
	}
	if _, err := m.LoginRegistry(context.Background(), "nope.local", api.RegistryLogin{Username: "a", Password: "b"}); statusOf(err) != http.StatusNotFound ||
		!strings.Contains(err.Error(), "warren registry add nope.local") {
		t.Fatalf("login to a registry not added: %v", err)
	}
}

func TestRegistryLoginSealedAndOnlyToPullingNodes(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	host, ca := basicAuthRegistry(t, "ci", "pw-marker-7f3a")
	if _, err := m.AddRegistry(api.RegistrySpec{Host: host, CA: ca}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddRegistry(api.RegistrySpec{Host: "mirror.local", MirrorOf: host}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err := m.LoginRegistry(ctx, host, api.RegistryLogin{Username: "ci", Password: "wrong"})
	if err == nil || !strings.Contains(err.Error(), "refused the credentials") || !strings.Contains(err.Error(), "401 Unauthorized") ||
		!strings.Contains(err.Error(), "authentication required") {
		t.Fatalf("wrong password: %v", err)
	}
	if v, _ := m.Registry(host); v.LoggedIn {
		t.Fatal("a refused login was stored")
	}
	v, err := m.LoginRegistry(ctx, host, api.RegistryLogin{Username: "ci", Password: "pw-marker-7f3a"})
	if err != nil || !v.LoggedIn || v.Username != "ci" {
		t.Fatalf("login: %+v %v", v, err)
	}
	if files := filesHolding(t, tm.dir, []byte("pw-marker-7f3a")); len(files) > 0 {
		t.Fatalf("the password is in plaintext in %v", files)
	}
	mp, _ := json.Marshal(m.Map())
	if strings.Contains(string(mp), "pw-marker") || !strings.Contains(string(mp), `"auth":true`) {
		t.Fatalf("map: %s", mp)
	}

	a1, a2 := join(t, agentConfig(t, tm, "worker-1")), join(t, agentConfig(t, tm, "worker-2"))
	spec := apiSpec("app", 1)
	spec.Image = host + "/team/app:1"
	spec.Constraints = []string{"node.name==worker-1"}
	if _, err := m.CreateService(spec); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ref := api.ValueRef{Kind: api.KindRegistry, Name: host}
	vals, err := a1.FetchValues(fctx, []api.ValueRef{ref, {Kind: api.KindRegistry, Name: "mirror.local"}})
	if apicall.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("mirror without login: %v, want 404", err)
	}
	vals, err = a1.FetchValues(fctx, []api.ValueRef{ref})
	if err != nil {
		t.Fatalf("worker-1 pulls from %s: %v", host, err)
	}
	var creds api.RegistryCredentials
	if err := json.Unmarshal(vals[0].Data, &creds); err != nil || creds.Password != "pw-marker-7f3a" || vals[0].Version != 1 {
		t.Fatalf("worker-1 got %+v %v", vals, err)
	}
	if _, err := a2.FetchValues(fctx, []api.ValueRef{ref}); apicall.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("worker-2 runs nothing from %s: %v, want 403", host, err)
	}
	if _, err := m.LogoutRegistry(host); err != nil {
		t.Fatal(err)
	}
	if _, err := a1.FetchValues(fctx, []api.ValueRef{ref}); apicall.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("after logout: %v, want 404", err)
	}
	if err := m.RemoveRegistry(host); err != nil {
		t.Fatal(err)
	}
	if len(m.Registries()) != 1 {
		t.Fatalf("after rm: %+v", m.Registries())
	}
}

// statusOf is the HTTP status an error of the manager is answered with.
func statusOf(err error) int {
	var e *apiError
	if errors.As(err, &e) {
		return e.status
	}
	return apicall.StatusOf(err)
}
