package wgkey

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"testing"
)

func TestParseRoundTripsAndRefusesBadKeys(t *testing.T) {
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := base64.StdEncoding.EncodeToString(priv.PublicKey().Bytes())
	k, err := Parse(s)
	if err != nil || k.String() != s {
		t.Fatalf("Parse(%s) = %v, %v", s, k, err)
	}
	for _, bad := range []string{"", "not base64!", base64.StdEncoding.EncodeToString(make([]byte, 32)), base64.StdEncoding.EncodeToString(make([]byte, 31))} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
