package pki

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTokenRoundTripAndErrors(t *testing.T) {
	tok := Token{CAHash: strings.Repeat("0f", 32), Secret: NewSecret()}
	got, err := ParseToken(" " + tok.String() + "\n")
	if err != nil || got != tok {
		t.Fatalf("ParseToken(%q) = %+v, %v", tok.String(), got, err)
	}
	if NewSecret() == NewSecret() {
		t.Fatal("secrets repeat")
	}
	for in, want := range map[string]string{
		"SWMTKN-1-abc-def":                      "must start with",
		"WRN-1-abc-def":                         "malformed",
		tok.String()[:len(tok.String())-3]:      "truncated",
		strings.ToUpper(tok.String()[:6]) + "x": "malformed",
	} {
		if _, err := ParseToken(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseToken(%q) = %v, want an error containing %q", in, err, want)
		}
	}
	if !SecretEqual("abc", "abc") || SecretEqual("abc", "abd") || SecretEqual("abc", "ab") {
		t.Fatal("SecretEqual is wrong")
	}
}

func TestCASignsNodeFromCSRAndNamesIt(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("c1", now)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(ca.CertPEM(), keyPEM)
	if err != nil || loaded.Hash() != ca.Hash() || len(ca.Hash()) != 64 {
		t.Fatalf("LoadCA: %v, hash %q vs %q", err, loaded.Hash(), ca.Hash())
	}
	key, _ := NewKey()
	csr, _ := NewCSR(key, "whatever-the-node-claims")
	cert, err := ca.SignNode(csr, "node-id-1", now)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "node-id-1" {
		t.Fatalf("CN = %q: the manager's node ID must win over the CSR's subject", cert.Subject.CommonName)
	}
	if err := VerifyChain(cert, ca.Pool(), x509.ExtKeyUsageClientAuth, now); err != nil {
		t.Fatal(err)
	}
	if err := VerifyChain(cert, ca.Pool(), x509.ExtKeyUsageServerAuth, now); err == nil {
		t.Fatal("a node certificate must not serve as a server certificate")
	}
	if _, err := ca.SignNode([]byte("garbage"), "x", now); err == nil {
		t.Fatal("a garbage CSR was signed")
	}
	other, _ := NewCA("c2", now)
	if err := VerifyChain(cert, other.Pool(), x509.ExtKeyUsageClientAuth, now); err == nil {
		t.Fatal("a certificate verified against another cluster's CA")
	}
}

func TestVerifyChainExplainsAWrongClock(t *testing.T) {
	now := time.Now()
	ca, _ := NewCA("c1", now)
	key, _ := NewKey()
	csr, _ := NewCSR(key, "n")
	cert, _ := ca.SignNode(csr, "n", now)
	err := VerifyChain(cert, ca.Pool(), x509.ExtKeyUsageClientAuth, time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC))
	var ce *ClockError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "clock is wrong") {
		t.Fatalf("1970: %v", err)
	}
	err = VerifyChain(cert, ca.Pool(), x509.ExtKeyUsageClientAuth, now.Add(2*NodeValidity))
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("after expiry: %v", err)
	}
}
