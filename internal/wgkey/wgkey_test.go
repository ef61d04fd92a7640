package wgkey

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"testing"
)

// The Curve25519 points of small order as X25519 reads them (bit 255
// ignored, so p-1, p and p+1 are the encodings of order 2, 4 and 1 too).
var lowOrder = []string{
	"0000000000000000000000000000000000000000000000000000000000000000",
	"0100000000000000000000000000000000000000000000000000000000000000",
	"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
	"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"0000000000000000000000000000000000000000000000000000000000000080",
	"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
}

func TestCheckRefusesLowOrderPoints(t *testing.T) {
	for _, h := range lowOrder {
		b, _ := hex.DecodeString(h)
		if err := Check(b); err == nil {
			t.Errorf("%s accepted", h)
		}
	}
	if err := Check(make([]byte, 31)); err == nil {
		t.Error("31-byte key accepted")
	}
}

func TestCheckAcceptsRealKeys(t *testing.T) {
	for range 200 {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if err := Check(k.PublicKey().Bytes()); err != nil {
			t.Fatalf("real key %x refused: %v", k.PublicKey().Bytes(), err)
		}
	}
}
