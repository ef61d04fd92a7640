package cluster

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/pki"
)

// nodeAPICall calls the node API as an arbitrary client (an attacker's
// view): any method, body and client certificates. It returns the status
// and the body (the error text for non-2xx answers).
func nodeAPICall(t testing.TB, addr, method, path string, body any, certs []tls.Certificate) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: certs}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(method, "https://"+addr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return resp.StatusCode, e.Error
		}
	}
	return resp.StatusCode, string(b)
}

// rawJoinRequest is a well-formed join request with a fresh TLS key.
func rawJoinRequest(t testing.TB, secret, name, role, wgKey string) (api.JoinRequest, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, name)
	if err != nil {
		t.Fatal(err)
	}
	tm := api.JoinRequest{Secret: secret, Name: name, Role: role, PublicKey: wgKey, CSR: csr}
	tm.Endpoint = mustAddrPort("192.0.2.50:51820")
	return tm, key
}

// certPair turns a join or renew answer into a client certificate.
func certPair(der []byte, key *ecdsa.PrivateKey) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func tokenSecret(t testing.TB, token string) string {
	t.Helper()
	tok, err := pki.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Secret
}

func mustJSON(t testing.TB, body string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
}

func certs(c ...tls.Certificate) []tls.Certificate { return c }
