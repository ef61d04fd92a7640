package relay

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/warren-appliance/warren/internal/wgkey"
)

// The relay speaks two framings of the same messages.
//
// On the TLS leg (a stream) every frame is
//
//	length uint16 (of what follows) | type byte | body
//
// On the UDP leg every datagram is
//
//	version byte | type byte | session id [8] | counter uint64 | body | tag [16]
//
// where tag authenticates everything before it with the session's key
// (ChaCha20-Poly1305 over an empty plaintext, the datagram as additional
// data; the nonce is the direction and the counter, so no nonce repeats
// under one key). The session id and key come from the server over the
// TLS leg, which is the cluster's mTLS: a UDP datagram is only accepted
// when it is tied to a member's live TLS session, and the counter, checked
// against a sliding window, refuses replays.
//
// Bodies: data = peer key [32] | WireGuard packet (the destination when a
// client sends, the source when the server delivers); session = id [8] |
// key [32]; ping and pong = flags byte.
const (
	typeSession byte = 1
	typeData    byte = 2
	typePing    byte = 3
	typePong    byte = 4
)

const (
	udpVersion   = 1
	udpHeaderLen = 2 + 8 + 8
	tagLen       = chacha20poly1305.Overhead
	keyLen       = 32
	sessionIDLen = 8
	// MaxPacket is the largest WireGuard packet the relay carries: a
	// stream frame's length field is 16 bits. The default MTU (1420)
	// makes packets of at most 1452 bytes.
	MaxPacket = 65535 - 1 - keyLen
	// maxDatagram is the largest UDP datagram of the relay.
	maxDatagram = udpHeaderLen + keyLen + MaxPacket + tagLen
)

// Ping flags.
const (
	// flagUDPActive: the client receives over UDP; without it the server
	// delivers to the client over TLS.
	flagUDPActive byte = 1
)

// Directions, in the nonce: the two directions of a session share its key.
const (
	dirToServer uint32 = 1
	dirToClient uint32 = 2
)

// Errors of the decoders.
var (
	errShort   = errors.New("relay frame too short")
	errVersion = errors.New("relay datagram of an unknown version")
	errType    = errors.New("relay frame of an unknown type")
	errTag     = errors.New("relay datagram fails authentication")
	errLong    = errors.New("relay packet too long")
)

// writeFrame writes one stream frame.
func writeFrame(w io.Writer, typ byte, parts ...[]byte) error {
	n := 1
	for _, p := range parts {
		n += len(p)
	}
	if n > 0xffff {
		return errLong
	}
	buf := make([]byte, 0, 2+n)
	buf = binary.BigEndian.AppendUint16(buf, uint16(n))
	buf = append(buf, typ)
	for _, p := range parts {
		buf = append(buf, p...)
	}
	_, err := w.Write(buf)
	return err
}

// encodeFrame is writeFrame into a new buffer (for queues).
func encodeFrame(typ byte, key wgkey.Key, payload []byte) ([]byte, error) {
	n := 1 + keyLen + len(payload)
	if n > 0xffff {
		return nil, errLong
	}
	buf := make([]byte, 0, 2+n)
	buf = binary.BigEndian.AppendUint16(buf, uint16(n))
	buf = append(buf, typ)
	buf = append(buf, key[:]...)
	return append(buf, payload...), nil
}

// readFrame reads one stream frame into buf (which must hold 0xffff bytes)
// and returns its type and body, a slice of buf.
func readFrame(r io.Reader, buf []byte) (byte, []byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n < 1 {
		return 0, nil, errShort
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return 0, nil, fmt.Errorf("relay frame of %d bytes: %w", n, err)
	}
	typ, body := buf[0], buf[1:n]
	if err := checkBody(typ, body); err != nil {
		return 0, nil, err
	}
	return typ, body, nil
}

// checkBody checks a body's length for its type.
func checkBody(typ byte, body []byte) error {
	switch typ {
	case typeSession:
		if len(body) != sessionIDLen+keyLen {
			return errShort
		}
	case typeData:
		if len(body) < keyLen {
			return errShort
		}
		if len(body)-keyLen > MaxPacket {
			return errLong
		}
	case typePing, typePong:
		if len(body) != 1 {
			return errShort
		}
	default:
		return errType
	}
	return nil
}

// splitData splits a data body into the peer key and the packet.
func splitData(body []byte) (wgkey.Key, []byte) {
	return wgkey.Key(body[:keyLen]), body[keyLen:]
}

// udpKey is one session's UDP authentication.
type udpKey struct {
	id   [sessionIDLen]byte
	aead cipher.AEAD
}

func newUDPKey(id [sessionIDLen]byte, key []byte) (*udpKey, error) {
	a, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, fmt.Errorf("relay session key: %w", err)
	}
	return &udpKey{id: id, aead: a}, nil
}

func nonce(dir uint32, counter uint64) []byte {
	var n [chacha20poly1305.NonceSize]byte
	binary.BigEndian.PutUint32(n[:4], dir)
	binary.BigEndian.PutUint64(n[4:], counter)
	return n[:]
}

// seal appends one datagram to dst: header, body parts, tag.
func (k *udpKey) seal(dst []byte, dir uint32, typ byte, counter uint64, parts ...[]byte) []byte {
	start := len(dst)
	dst = append(dst, udpVersion, typ)
	dst = append(dst, k.id[:]...)
	dst = binary.BigEndian.AppendUint64(dst, counter)
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return k.aead.Seal(dst, nonce(dir, counter), nil, dst[start:])
}

// udpHeader is a datagram's clear header.
type udpHeader struct {
	typ     byte
	session [sessionIDLen]byte
	counter uint64
}

// parseUDP reads a datagram's header without authenticating it: the
// session id says which key to check it with (open).
func parseUDP(b []byte) (udpHeader, error) {
	var h udpHeader
	if len(b) < udpHeaderLen+tagLen {
		return h, errShort
	}
	if b[0] != udpVersion {
		return h, errVersion
	}
	h.typ = b[1]
	copy(h.session[:], b[2:10])
	h.counter = binary.BigEndian.Uint64(b[10:18])
	if h.typ == typeSession {
		return h, errType // only ever sent over TLS
	}
	if err := checkBody(h.typ, b[udpHeaderLen:len(b)-tagLen]); err != nil {
		return h, err
	}
	return h, nil
}

// open authenticates a parsed datagram and returns its body.
func (k *udpKey) open(b []byte, dir uint32, h udpHeader) ([]byte, error) {
	n := len(b) - tagLen
	if _, err := k.aead.Open(nil, nonce(dir, h.counter), b[n:], b[:n]); err != nil {
		return nil, errTag
	}
	return b[udpHeaderLen:n], nil
}
