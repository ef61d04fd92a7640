package tunnel

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/warren-appliance/warren/internal/atomicfile"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Key is a Curve25519 WireGuard key, private or public.
type Key [32]byte

// ParseKey parses a base64 key as `wg genkey` and `wg pubkey` print it.
func ParseKey(s string) (Key, error) {
	k, err := wgtypes.ParseKey(strings.TrimSpace(s))
	if err != nil {
		return Key{}, fmt.Errorf("parse wireguard key: %w", err)
	}
	return Key(k), nil
}

// GenerateKey returns a new random private key, clamped as WireGuard expects.
func GenerateKey() (Key, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return Key{}, fmt.Errorf("generate wireguard key: %w", err)
	}
	return Key(k), nil
}

// String is the base64 form used by `wg` and the cluster map.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// MarshalText encodes the key as base64, so keys read naturally in JSON.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText parses a base64 key.
func (k *Key) UnmarshalText(b []byte) error {
	parsed, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = parsed
	return nil
}

// hex is the form the UAPI protocol speaks.
func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether k is the zero key (unset).
func (k Key) IsZero() bool { return k == Key{} }

// PublicKey derives the public key of private key k.
func (k Key) PublicKey() Key { return Key(wgtypes.Key(k).PublicKey()) }

// LoadOrCreateKey returns the private key stored at path, creating it (mode
// 0600, base64 plus newline as `wg genkey` writes it) on first use so that an
// operator may also provide their own. A key file that other users can read
// is refused: the key is the node's identity in the mesh.
func LoadOrCreateKey(path string) (Key, error) {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return createKeyFile(path)
	case err != nil:
		return Key{}, fmt.Errorf("wireguard key %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return Key{}, fmt.Errorf("wireguard key %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return Key{}, fmt.Errorf("wireguard key %s: mode %04o lets group or others read it; chmod 600 %s", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("wireguard key %s: %w", path, err)
	}
	k, err := ParseKey(string(bytes.TrimSpace(data)))
	if err != nil {
		return Key{}, fmt.Errorf("wireguard key %s: not a base64 WireGuard private key (as `wg genkey` writes): %w", path, err)
	}
	if k.IsZero() {
		return Key{}, fmt.Errorf("wireguard key %s: key is all zeros", path)
	}
	return k, nil
}

func createKeyFile(path string) (Key, error) {
	k, err := GenerateKey()
	if err != nil {
		return Key{}, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Key{}, fmt.Errorf("wireguard key %s: %w", path, err)
	}
	if err := atomicfile.Write(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return Key{}, fmt.Errorf("wireguard key: %w", err)
	}
	return k, nil
}
