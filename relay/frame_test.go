package relay

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/warren-appliance/warren/internal/wgkey"
)

func testKey(t testing.TB) *udpKey {
	t.Helper()
	var id [sessionIDLen]byte
	secret := make([]byte, keyLen)
	rand.Read(id[:])
	rand.Read(secret)
	k, err := newUDPKey(id, secret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestStreamFrameRoundTrip(t *testing.T) {
	var peer wgkey.Key
	rand.Read(peer[:])
	pkt := bytes.Repeat([]byte{0xab}, 1452)
	var buf bytes.Buffer
	if err := writeFrame(&buf, typeData, peer[:], pkt); err != nil {
		t.Fatal(err)
	}
	enc, err := encodeFrame(typeData, peer, pkt)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, buf.Bytes()) {
		t.Fatal("encodeFrame and writeFrame disagree")
	}
	if err := writeFrame(&buf, typePing, []byte{0}); err != nil {
		t.Fatal(err)
	}
	rb := make([]byte, 0xffff)
	typ, body, err := readFrame(&buf, rb)
	if err != nil || typ != typeData {
		t.Fatalf("read data frame: type %d, %v", typ, err)
	}
	k, p := splitData(body)
	if k != peer || !bytes.Equal(p, pkt) {
		t.Fatal("data frame body changed in transit")
	}
	if typ, _, err := readFrame(&buf, rb); err != nil || typ != typePing {
		t.Fatalf("read ping frame: type %d, %v", typ, err)
	}
	if _, _, err := readFrame(&buf, rb); !errors.Is(err, io.EOF) {
		t.Fatalf("read past the end: %v, want EOF", err)
	}
	if _, err := encodeFrame(typeData, peer, make([]byte, MaxPacket+1)); !errors.Is(err, errLong) {
		t.Fatalf("a packet over MaxPacket: %v, want errLong", err)
	}
}

func TestStreamFrameRefusesMalformed(t *testing.T) {
	rb := make([]byte, 0xffff)
	for name, raw := range map[string][]byte{
		"empty length":      {0, 0},
		"unknown type":      {0, 2, 99, 0},
		"short data":        append([]byte{0, 5, typeData}, 1, 2, 3, 4),
		"ping without flag": {0, 1, typePing},
		"session too short": {0, 3, typeSession, 1, 2},
		"truncated":         {0, 40, typeData, 1},
	} {
		if _, _, err := readFrame(bytes.NewReader(raw), rb); err == nil {
			t.Errorf("%s: decoded, want an error", name)
		}
	}
}

func TestDatagramSealOpen(t *testing.T) {
	k := testKey(t)
	var peer wgkey.Key
	rand.Read(peer[:])
	pkt := []byte("wireguard ciphertext")
	dg := k.seal(nil, dirToServer, typeData, 7, peer[:], pkt)
	h, err := parseUDP(dg)
	if err != nil {
		t.Fatal(err)
	}
	if h.typ != typeData || h.counter != 7 || h.session != k.id {
		t.Fatalf("header %+v", h)
	}
	body, err := k.open(dg, dirToServer, h)
	if err != nil {
		t.Fatal(err)
	}
	if got, p := splitData(body); got != peer || !bytes.Equal(p, pkt) {
		t.Fatal("body changed")
	}

	// The other direction, another key, any flipped bit: refused.
	if _, err := k.open(dg, dirToClient, h); !errors.Is(err, errTag) {
		t.Fatalf("opened with the wrong direction: %v", err)
	}
	if _, err := testKey(t).open(dg, dirToServer, h); !errors.Is(err, errTag) {
		t.Fatalf("opened with another session's key: %v", err)
	}
	for i := range dg {
		bad := bytes.Clone(dg)
		bad[i] ^= 0x40
		hb, err := parseUDP(bad)
		if err != nil {
			continue
		}
		if _, err := k.open(bad, dirToServer, hb); err == nil {
			t.Fatalf("a datagram with byte %d flipped authenticates", i)
		}
	}
	// A forged counter with the original tag fails too.
	forged := bytes.Clone(dg)
	binary.BigEndian.PutUint64(forged[10:18], 8)
	hf, _ := parseUDP(forged)
	if _, err := k.open(forged, dirToServer, hf); err == nil {
		t.Fatal("a datagram with a changed counter authenticates")
	}
}

func TestDatagramRefusesMalformed(t *testing.T) {
	k := testKey(t)
	good := k.seal(nil, dirToServer, typePing, 1, []byte{0})
	for name, dg := range map[string][]byte{
		"short":          good[:udpHeaderLen+tagLen-1],
		"version":        append([]byte{9}, good[1:]...),
		"session type":   k.seal(nil, dirToServer, typeSession, 1, make([]byte, sessionIDLen+keyLen)),
		"unknown type":   k.seal(nil, dirToServer, 77, 1, []byte{0}),
		"data w/o key":   k.seal(nil, dirToServer, typeData, 1, []byte{1, 2}),
		"ping long body": k.seal(nil, dirToServer, typePing, 1, []byte{0, 0}),
	} {
		if _, err := parseUDP(dg); err == nil {
			t.Errorf("%s: parsed, want an error", name)
		}
	}
}

// FuzzReadFrame: the stream decoder never panics, reads no more than the
// frame's length, and what it accepts has a body valid for its type.
func FuzzReadFrame(f *testing.F) {
	var peer wgkey.Key
	f.Add([]byte{0, 2, typePing, 0})
	d, _ := encodeFrame(typeData, peer, []byte("x"))
	f.Add(d)
	f.Add([]byte{0, 41, typeSession})
	f.Add([]byte{0xff, 0xff, typeData})
	rb := make([]byte, 0xffff)
	f.Fuzz(func(t *testing.T, raw []byte) {
		r := bytes.NewReader(raw)
		typ, body, err := readFrame(r, rb)
		if err != nil {
			return
		}
		if err := checkBody(typ, body); err != nil {
			t.Fatalf("accepted a frame whose body is invalid: %v", err)
		}
		n := int(binary.BigEndian.Uint16(raw[:2]))
		if consumed := len(raw) - r.Len(); consumed != 2+n {
			t.Fatalf("consumed %d bytes of a %d-byte frame", consumed, 2+n)
		}
	})
}

// FuzzParseUDP: the datagram decoder never panics, and nothing but a
// datagram sealed with the session's key opens.
func FuzzParseUDP(f *testing.F) {
	k, err := newUDPKey([sessionIDLen]byte{1, 2, 3, 4, 5, 6, 7, 8}, bytes.Repeat([]byte{7}, keyLen))
	if err != nil {
		f.Fatal(err)
	}
	var peer wgkey.Key
	f.Add(k.seal(nil, dirToServer, typeData, 3, peer[:], []byte("pkt")))
	f.Add(k.seal(nil, dirToServer, typePing, 1, []byte{1}))
	f.Add([]byte{udpVersion, typeData})
	f.Fuzz(func(t *testing.T, raw []byte) {
		h, err := parseUDP(raw)
		if err != nil {
			return
		}
		body, err := k.open(raw, dirToServer, h)
		if err != nil {
			return
		}
		// It authenticated: it must be exactly what sealing gives.
		resealed := k.seal(nil, dirToServer, h.typ, h.counter, body)
		if !bytes.Equal(resealed, raw) {
			t.Fatal("a datagram authenticated that sealing does not produce")
		}
	})
}
