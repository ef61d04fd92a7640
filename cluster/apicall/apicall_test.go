package apicall

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// answer serves a fixed answer on a unix socket, as the daemon does.
func answer(t *testing.T, status int, body string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return sock
}

// The CLI shows the daemon's words; the agent says which manager refused.
func TestErrorsCarryTheAPIsMessage(t *testing.T) {
	for _, c := range []struct {
		name     string
		verbatim bool
		status   int
		body     string
		want     string
	}{
		{"daemon", true, 404, `{"error": "no service \"web\""}`, `no service "web"`},
		{"daemon", true, 502, `not json`, "daemon answered 502 Bad Gateway"},
		{"manager", false, 403, `{"error": "node x was removed from the cluster"}`, "manager refused (403): node x was removed from the cluster"},
		{"manager", false, 405, `Method Not Allowed`, "manager refused (405): Method Not Allowed"},
	} {
		sock := answer(t, c.status, c.body)
		call := Caller{HTTP: Unix(sock, Deadlines{Dial: time.Second, Total: 5 * time.Second}), Scheme: "http", Peer: c.name, Verbatim: c.verbatim}
		err := call.Do(context.Background(), http.MethodGet, "warren", "/v1/x", nil, nil, nil)
		if err == nil || err.Error() != c.want || StatusOf(err) != c.status {
			t.Errorf("%s %d %q: error %v (status %d), want %q", c.name, c.status, c.body, err, StatusOf(err), c.want)
		}
		if Permanent(err) != (c.status < 500) {
			t.Errorf("%d: Permanent = %v", c.status, Permanent(err))
		}
	}
}

func TestDoSendsAndDecodesJSON(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/json" || r.URL.RawQuery != "force=1" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		buf := make([]byte, 100)
		n, _ := r.Body.Read(buf)
		w.Write([]byte(`{"echo": ` + string(buf[:n]) + `}`))
	}))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	call := Caller{HTTP: Unix(sock, Deadlines{Total: 5 * time.Second}), Scheme: "http", Peer: "daemon", Verbatim: true}
	var out struct{ Echo map[string]int }
	if err := call.Do(context.Background(), http.MethodPost, "warren", "/v1/x", url.Values{"force": {"1"}}, map[string]int{"n": 3}, &out); err != nil {
		t.Fatal(err)
	}
	if out.Echo["n"] != 3 {
		t.Fatalf("answer %+v", out)
	}
}

// A peer that does not answer is a *url.Error (the CLI says the daemon is
// not running), not an API error, and worth retrying.
func TestUnreachablePeerIsAURLError(t *testing.T) {
	call := Caller{HTTP: Unix(filepath.Join(t.TempDir(), "absent.sock"), Deadlines{Dial: time.Second}), Scheme: "http", Peer: "daemon"}
	err := call.Do(context.Background(), http.MethodGet, "warren", "/v1/x", nil, nil, nil)
	var ue *url.Error
	if !errors.As(err, &ue) || StatusOf(err) != 0 || Permanent(err) {
		t.Fatalf("error %#v", err)
	}
}

// A manager whose CA is not the pinned one is refused in the handshake,
// before the request is sent, with the pin's advice (not net/url's text).
func TestPinnedCAMismatchIsTheReason(t *testing.T) {
	var got atomic.Bool
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got.Store(true) }))
	defer srv.Close()
	pin := Pin{CAHash: strings.Repeat("ab", 32), By: "the token", Advice: "the token is for another cluster"}
	conf := MTLS(pin.Verify(time.Now), func() *tls.Certificate { return &tls.Certificate{} })
	call := Caller{HTTP: HTTPS(conf, Deadlines{Dial: time.Second, Handshake: 5 * time.Second}), Scheme: "https", Peer: "manager"}
	err := call.Do(context.Background(), http.MethodPost, strings.TrimPrefix(srv.URL, "https://"), "/v1/join", nil, struct{}{}, nil)
	var cm *CAMismatchError
	if !errors.As(err, &cm) || !Permanent(err) || got.Load() {
		t.Fatalf("error %v (request reached the server: %v)", err, got.Load())
	}
	if want := "does not match the token (sha256 abababababab…): the token is for another cluster"; !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "https://") {
		t.Fatalf("error %q, want it to start with the reason %q", err, want)
	}
}
