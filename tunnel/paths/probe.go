// Package paths finds a working underlay path between two WireGuard nodes
// that may sit behind NATs: STUN binding requests give a node the public
// address:port of its WireGuard socket, both sides of a pair probe each
// other's candidates with small authenticated pings sent from that same
// socket (so the NAT mapping they open is the one WireGuard uses), and a
// pure decision function (Decide) turns probe results, handshakes and time
// into the endpoint WireGuard should use: a direct candidate, or a relay.
//
// The packets share the WireGuard UDP socket: tunnel's bind hands every
// datagram that is not WireGuard to Engine.HandlePacket.
package paths

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/warren-appliance/warren/internal/wgkey"
)

// probeMagic starts every path probe. Its first byte is not a WireGuard
// message type (1-4) and its second is not 0x01 as a STUN binding message's
// is, so the bind tells the three kinds apart from the first bytes.
var probeMagic = [8]byte{'W', 'R', 'N', 'p', 'a', 't', 'h', 1}

// Probe message types.
const (
	probePing = 1
	probePong = 2
)

const (
	txIDLen     = 12
	addrLen     = 18 // 16-byte address (IPv4-mapped) + 2-byte port
	headerLen   = len(probeMagic) + 32 + chacha20poly1305.NonceSizeX
	pingPlain   = 1 + txIDLen
	pongPlain   = 1 + txIDLen + addrLen
	maxProbeLen = headerLen + pongPlain + chacha20poly1305.Overhead
)

// TxID identifies one ping; its pong carries it back.
type TxID [txIDLen]byte

// IsProbe reports whether a datagram is a path probe (by its magic).
func IsProbe(b []byte) bool {
	return len(b) >= headerLen && bytes.Equal(b[:len(probeMagic)], probeMagic[:])
}

// pairKey derives the key that authenticates probes between two nodes from
// their WireGuard static keys: X25519 of one side's private and the other's
// public key is the same on both sides; HKDF-SHA256 turns it into an
// XChaCha20-Poly1305 key used for nothing else.
func pairKey(private *ecdh.PrivateKey, peer wgkey.Key) ([]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(peer[:])
	if err != nil {
		return nil, fmt.Errorf("peer key: %w", err)
	}
	shared, err := private.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("peer key %s: %w", peer, err)
	}
	return hkdf.Key(sha256.New, shared, []byte("warren path probe"), "v1 ping/pong", chacha20poly1305.KeySize)
}

// probe is a decoded ping or pong.
type probe struct {
	kind   byte
	sender wgkey.Key
	tx     TxID
	// observed is, in a pong, the source address the ping arrived from: the
	// pinger's address as the ponger sees it.
	observed netip.AddrPort
}

// sealProbe encodes p, sealed with key (the pair key of p.sender and the
// receiver).
func sealProbe(key []byte, p probe) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, headerLen, maxProbeLen)
	copy(out, probeMagic[:])
	copy(out[len(probeMagic):], p.sender[:])
	nonce := out[len(probeMagic)+32 : headerLen]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	plain := make([]byte, 0, pongPlain)
	plain = append(plain, p.kind)
	plain = append(plain, p.tx[:]...)
	if p.kind == probePong {
		a := p.observed.Addr().As16()
		plain = append(plain, a[:]...)
		plain = binary.BigEndian.AppendUint16(plain, p.observed.Port())
	}
	return aead.Seal(out, nonce, plain, out[:len(probeMagic)+32]), nil
}

// probeSender returns the claimed sender key of a probe, to look up the
// pair key before opening it.
func probeSender(b []byte) (wgkey.Key, bool) {
	var k wgkey.Key
	if !IsProbe(b) {
		return k, false
	}
	copy(k[:], b[len(probeMagic):])
	return k, true
}

var errBadProbe = errors.New("path probe does not authenticate")

// openProbe authenticates and decodes a probe sealed with key.
func openProbe(key []byte, b []byte) (probe, error) {
	var p probe
	if !IsProbe(b) || len(b) > maxProbeLen {
		return p, errBadProbe
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return p, err
	}
	nonce := b[len(probeMagic)+32 : headerLen]
	plain, err := aead.Open(nil, nonce, b[headerLen:], b[:len(probeMagic)+32])
	if err != nil {
		return p, errBadProbe
	}
	copy(p.sender[:], b[len(probeMagic):])
	switch {
	case len(plain) == pingPlain && plain[0] == probePing:
	case len(plain) == pongPlain && plain[0] == probePong:
		var a [16]byte
		copy(a[:], plain[1+txIDLen:])
		p.observed = netip.AddrPortFrom(netip.AddrFrom16(a).Unmap(), binary.BigEndian.Uint16(plain[1+txIDLen+16:]))
	default:
		return p, errBadProbe
	}
	p.kind = plain[0]
	copy(p.tx[:], plain[1:])
	return p, nil
}
