package tunnel

import (
	"crypto/rand"
	"encoding/binary"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

// BenchmarkWireGuardCrypto measures the AEAD every WireGuard data packet
// goes through (ChaCha20-Poly1305 from x/crypto, as wireguard-go uses it)
// on a full 1420-byte packet, sealing and opening. Run it natively, with
// -tags purego (x/crypto without assembly: what 32-bit ARM gets) and under
// qemu-user for arm64 and arm (tunnel/BENCHMARKS.md, "ARM").
func BenchmarkWireGuardCrypto(b *testing.B) {
	key := make([]byte, chacha20poly1305.KeySize)
	rand.Read(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		b.Fatal(err)
	}
	packet := make([]byte, 1420)
	rand.Read(packet)
	nonce := make([]byte, chacha20poly1305.NonceSize)
	sealed := make([]byte, 0, len(packet)+aead.Overhead())
	opened := make([]byte, 0, len(packet))
	b.Run("seal-1420", func(b *testing.B) {
		b.SetBytes(int64(len(packet)))
		for i := 0; i < b.N; i++ {
			binary.LittleEndian.PutUint64(nonce[4:], uint64(i))
			sealed = aead.Seal(sealed[:0], nonce, packet, nil)
		}
	})
	binary.LittleEndian.PutUint64(nonce[4:], 1)
	sealed = aead.Seal(sealed[:0], nonce, packet, nil)
	b.Run("open-1420", func(b *testing.B) {
		b.SetBytes(int64(len(packet)))
		for i := 0; i < b.N; i++ {
			if opened, err = aead.Open(opened[:0], nonce, sealed, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
