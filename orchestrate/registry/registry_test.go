package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
)

// fakeRegistry answers /v2/ as distribution does with htpasswd auth
// (basic challenge) or, with bearer, via a token realm on the same server.
func fakeRegistry(t *testing.T, bearer bool) (*httptest.Server, []byte) {
	t.Helper()
	mux := http.NewServeMux()
	var srv *httptest.Server
	ok := func(r *http.Request) bool {
		u, p, has := r.BasicAuth()
		return has && u == "alice" && p == "s3cret"
	}
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		if !ok(r) {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}`)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"token": "tok123"})
	})
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		authed := ok(r)
		if bearer {
			authed = r.Header.Get("Authorization") == "Bearer tok123"
		}
		if authed {
			if r.URL.Path == "/v2/" {
				w.WriteHeader(http.StatusOK)
				return
			}
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
			return
		}
		if bearer {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, srv.URL))
		} else {
			w.Header().Set("WWW-Authenticate", `Basic realm="Registry Realm"`)
		}
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
	})
	srv = httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return srv, ca
}

func hostOf(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "https://") }

func TestCheckLogin(t *testing.T) {
	for _, bearer := range []bool{false, true} {
		t.Run(fmt.Sprintf("bearer=%v", bearer), func(t *testing.T) {
			srv, ca := fakeRegistry(t, bearer)
			host := hostOf(srv)
			if err := CheckLogin(context.Background(), Config{Host: host, CA: ca, Username: "alice", Password: "s3cret"}); err != nil {
				t.Fatalf("right credentials refused: %v", err)
			}
			err := CheckLogin(context.Background(), Config{Host: host, CA: ca, Username: "alice", Password: "wrong"})
			if err == nil {
				t.Fatal("wrong password accepted")
			}
			if !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), "refused the credentials") {
				t.Fatalf("error does not name the registry's refusal: %v", err)
			}
			if bearer && !strings.Contains(err.Error(), "401 Unauthorized") {
				t.Fatalf("error does not carry the registry's answer: %v", err)
			}
			if !bearer && !strings.Contains(err.Error(), "authentication required") {
				t.Fatalf("error does not carry the registry's answer: %v", err)
			}
			// Without its CA the certificate is refused, and the error says how to fix it.
			err = CheckLogin(context.Background(), Config{Host: host, Username: "alice", Password: "s3cret"})
			if err == nil || !strings.Contains(err.Error(), "unknown authority") || !strings.Contains(err.Error(), "--ca-file") {
				t.Fatalf("untrusted certificate: got %v", err)
			}
		})
	}
}

func TestHostsMirrorsFirst(t *testing.T) {
	regs := []Config{
		{Host: "m1.local:5000", MirrorOf: "reg.local"},
		{Host: "reg.local", Insecure: true},
		{Host: "m2.local", MirrorOf: "reg.local"},
		{Host: "other.local", MirrorOf: "docker.io"},
	}
	hosts, err := Hosts(regs)("reg.local")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hosts {
		got = append(got, h.Scheme+"://"+h.Host)
	}
	want := []string{"https://m1.local:5000", "https://m2.local", "http://reg.local"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("hosts = %v, want %v", got, want)
	}
	if hosts[0].Capabilities.Has(docker.HostCapabilityPush) || !hosts[2].Capabilities.Has(docker.HostCapabilityPush) {
		t.Fatalf("mirrors pull and resolve only; the registry itself also pushes")
	}
	hosts, err = Hosts(regs)("docker.io")
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 || hosts[0].Host != "other.local" || hosts[1].Host != "registry-1.docker.io" {
		t.Fatalf("docker.io hosts = %+v", hosts)
	}
	hosts, _ = Hosts(nil)("localhost:5000")
	if hosts[0].Scheme != "http" {
		t.Fatalf("localhost registry scheme = %s, want http (as Docker)", hosts[0].Scheme)
	}
	if _, err := Hosts([]Config{{Host: "bad.local", CA: []byte("nope")}})("bad.local"); err == nil {
		t.Fatal("a CA without a PEM certificate was taken")
	}
}

// resolveErr resolves ref with the node's resolver for regs: the error
// containerd gives a pull.
func resolveErr(t *testing.T, regs []Config, ref string) error {
	t.Helper()
	r := docker.NewResolver(docker.ResolverOptions{Hosts: Hosts(regs)})
	_, _, err := r.Resolve(context.Background(), ref)
	if err == nil {
		t.Fatalf("resolve %s: no error", ref)
	}
	return err
}

func TestClassifyRealErrors(t *testing.T) {
	srv, ca := fakeRegistry(t, false)
	host := hostOf(srv)
	ref := host + "/app:1"

	err := resolveErr(t, []Config{{Host: host}}, ref)
	if c := Classify(err); c != TLS {
		t.Fatalf("no CA: class %q (%v)", c, err)
	}
	if msg := Explain(err, host); !strings.Contains(msg, "unknown authority") || !strings.Contains(msg, "warren registry add "+host+" --ca-file") {
		t.Fatalf("no CA: %s", msg)
	}

	err = resolveErr(t, []Config{{Host: host, CA: ca}}, ref)
	if c := Classify(err); c != Unauthorized {
		t.Fatalf("no credentials: class %q (%v)", c, err)
	}
	if msg := Explain(err, host); !strings.Contains(msg, "unauthorized") || !strings.Contains(msg, "warren registry login "+host) {
		t.Fatalf("no credentials: %s", msg)
	}

	err = resolveErr(t, []Config{{Host: host, CA: ca, Username: "alice", Password: "wrong"}}, ref)
	if c := Classify(err); c != Unauthorized {
		t.Fatalf("wrong password: class %q (%v)", c, err)
	}

	err = resolveErr(t, []Config{{Host: host, CA: ca, Username: "alice", Password: "s3cret"}}, ref)
	if c := Classify(err); c != NotFound {
		t.Fatalf("missing manifest: class %q (%v)", c, err)
	}
	if msg := Explain(err, host); !strings.Contains(msg, "manifest not found") {
		t.Fatalf("missing manifest: %s", msg)
	}

	// Plain HTTP server spoken to in TLS.
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	ph := strings.TrimPrefix(plain.URL, "http://")
	err = resolveErr(t, []Config{{Host: ph}}, ph+"/app:1")
	if Classify(err) != TLS || !strings.Contains(Explain(err, ph), "--insecure") {
		t.Fatalf("plain HTTP registry: %s", Explain(err, ph))
	}

	// Nobody listening.
	l, _ := net.Listen("tcp", "127.0.0.2:0")
	closed := l.Addr().String()
	l.Close()
	err = resolveErr(t, []Config{{Host: closed, CA: ca}}, closed+"/app:1")
	if c := Classify(err); c != Unreachable {
		t.Fatalf("closed port: class %q (%v)", c, err)
	}
}

func TestClassifyWrapped(t *testing.T) {
	dns := fmt.Errorf("failed to resolve reference: failed to do request: Head: %w",
		&net.DNSError{Err: "no such host", Name: "reg.invalid", IsNotFound: true})
	if Classify(dns) != UnknownHost || !strings.Contains(Explain(dns, "reg.invalid"), "unknown host reg.invalid") {
		t.Fatalf("dns: %s", Explain(dns, "reg.invalid"))
	}
	// As containerd's images.Manifest words it.
	plat := fmt.Errorf("image reg/app:1: no match for platform in manifest sha256:ab: %w", errdefs.ErrNotFound)
	if Classify(plat) != NoPlatform || !strings.Contains(Explain(plat, "reg"), "this board's platform") {
		t.Fatalf("platform: %s", Explain(plat, "reg"))
	}
}

func TestCheckHost(t *testing.T) {
	for _, ok := range []string{"reg.example.com", "reg.example.com:5000", "10.0.0.9:443", "[::1]:5000", "localhost"} {
		if err := CheckHost(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "https://reg", "reg/path", "reg:0", "reg:99999", "-reg", "re g", "user@reg"} {
		if err := CheckHost(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

type remoteAdvice struct{}

func (remoteAdvice) Error() string  { return "node manager-1 answered 502" }
func (remoteAdvice) Advice() string { return "node manager-1 could not: unauthorized" }

// Another node's answer (the coordinator's view of the registry) wins
// over this node's own "cannot reach it".
func TestExplainPrefersRemoteAdvice(t *testing.T) {
	err := errors.Join(remoteAdvice{}, fmt.Errorf("dial: %w", syscall.ECONNREFUSED))
	if msg := Explain(err, "reg"); !strings.HasPrefix(msg, "node manager-1 could not: unauthorized") {
		t.Fatalf("got %s", msg)
	}
}

// TLS failures name the certificate's problem: a name it is not valid
// for, and a validity that does not cover now (a board's clock).
func TestExplainCertificateProblems(t *testing.T) {
	srv, ca := fakeRegistry(t, false)
	_, port, _ := net.SplitHostPort(hostOf(srv))
	byName := "localhost:" + port // the test certificate holds 127.0.0.1, not localhost
	err := resolveErr(t, []Config{{Host: byName, CA: ca}}, byName+"/app:1")
	if msg := Explain(err, byName); Classify(err) != TLS || !strings.Contains(msg, "not valid for "+byName) {
		t.Fatalf("wrong name: %s", msg)
	}

	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(48 * time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour), // expired yesterday
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	old := httptest.NewUnstartedServer(http.NotFoundHandler())
	old.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	old.StartTLS()
	defer old.Close()
	h := hostOf(old)
	err = resolveErr(t, []Config{{Host: h, CA: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}}, h+"/app:1")
	if msg := Explain(err, h); Classify(err) != TLS || !strings.Contains(msg, "expired or not yet valid") || !strings.Contains(msg, "clock") {
		t.Fatalf("expired: %s", msg)
	}
}
