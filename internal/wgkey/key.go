package wgkey

import "encoding/base64"

// Key is a WireGuard (Curve25519) public key: the identity of a peer across
// packages (the path machine, the relay client) without importing tunnel.
type Key [32]byte

// String is the base64 form `wg` prints.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Parse decodes a base64 public key and checks it (see Check).
func Parse(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return k, err
	}
	if err := Check(b); err != nil {
		return k, err
	}
	copy(k[:], b)
	return k, nil
}
