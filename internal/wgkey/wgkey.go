// Package wgkey checks WireGuard public keys before they reach a peer set:
// an all-zero or low-order Curve25519 point gives an all-zero shared secret,
// so WireGuard refuses the peer, and a peer set holding one must not be
// trusted blindly.
package wgkey

import (
	"crypto/ecdh"
	"errors"
	"fmt"
)

// probe is a fixed private key: X25519 scalars are clamped to multiples of
// 8, so any point of order dividing 8 (the low-order points, in any
// encoding) multiplies to zero, which crypto/ecdh reports as an error.
var probe = func() *ecdh.PrivateKey {
	k, err := ecdh.X25519().NewPrivateKey([]byte("warren wgkey low-order probe key"))
	if err != nil {
		panic(err)
	}
	return k
}()

// Check returns an error if pub cannot be a WireGuard peer's public key:
// not 32 bytes, all zero, or a low-order point.
func Check(pub []byte) error {
	if len(pub) != 32 {
		return fmt.Errorf("want 32 bytes, got %d", len(pub))
	}
	zero := true
	for _, b := range pub {
		zero = zero && b == 0
	}
	if zero {
		return errors.New("all-zero key")
	}
	p, err := ecdh.X25519().NewPublicKey(pub)
	if err != nil {
		return fmt.Errorf("not a Curve25519 point: %w", err)
	}
	if _, err := probe.ECDH(p); err != nil {
		return errors.New("low-order Curve25519 point (no shared secret is possible)")
	}
	return nil
}
