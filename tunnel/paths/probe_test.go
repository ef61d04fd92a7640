package paths

import (
	"crypto/ecdh"
	"crypto/rand"
	"net/netip"
	"testing"

	"github.com/warren-appliance/warren/internal/wgkey"
)

func newKey(t *testing.T) (*ecdh.PrivateKey, wgkey.Key) {
	t.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var pub wgkey.Key
	copy(pub[:], k.PublicKey().Bytes())
	return k, pub
}

func TestProbeSealOpenBothSidesDeriveTheSameKey(t *testing.T) {
	a, aPub := newKey(t)
	b, bPub := newKey(t)
	ka, err := pairKey(a, bPub)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := pairKey(b, aPub)
	if err != nil {
		t.Fatal(err)
	}
	obs := netip.MustParseAddrPort("203.0.113.9:40000")
	msg := probe{kind: probePong, sender: aPub, tx: TxID{1, 2, 3}, observed: obs}
	raw, err := sealProbe(ka, msg)
	if err != nil {
		t.Fatal(err)
	}
	if !IsProbe(raw) || isWGLike(raw) {
		t.Fatalf("a probe must be recognised as one and never as WireGuard: % x", raw[:8])
	}
	got, err := openProbe(kb, raw)
	if err != nil {
		t.Fatalf("the other side cannot open it: %v", err)
	}
	if got != msg {
		t.Fatalf("got %+v, want %+v", got, msg)
	}
	if s, _ := probeSender(raw); s != aPub {
		t.Fatalf("sender %v, want %v", s, aPub)
	}
}

func TestProbeRefusesTamperingAndOtherKeys(t *testing.T) {
	a, _ := newKey(t)
	_, bPub := newKey(t)
	c, cPub := newKey(t)
	ka, _ := pairKey(a, bPub)
	raw, err := sealProbe(ka, probe{kind: probePing, sender: cPub, tx: TxID{9}})
	if err != nil {
		t.Fatal(err)
	}
	// A third node (c) with the pair's claimed sender cannot open it.
	kc, _ := pairKey(c, bPub)
	if _, err := openProbe(kc, raw); err == nil {
		t.Fatal("a probe opened under another pair's key")
	}
	for i := range raw {
		bad := append([]byte(nil), raw...)
		bad[i] ^= 0x40
		if _, err := openProbe(ka, bad); err == nil && IsProbe(bad) {
			t.Fatalf("a probe with byte %d flipped was accepted", i)
		}
	}
	if _, err := openProbe(ka, raw[:len(raw)-1]); err == nil {
		t.Fatal("a truncated probe was accepted")
	}
}

// isWGLike mirrors tunnel's check: type 1-4, then three zero bytes.
func isWGLike(b []byte) bool {
	return len(b) >= 4 && b[0] >= 1 && b[0] <= 4 && b[1] == 0 && b[2] == 0 && b[3] == 0
}
