// Package secretbox seals the values of secrets and configs with the
// cluster's data key before they enter the manager's store (and so the
// Raft log, its snapshots and backups): AES-256-GCM from Go's standard
// library, a random 96-bit nonce per seal, and the object's kind, name and
// version as additional data, so a sealed value cannot be moved to another
// object or version unnoticed.
//
// The data key is 32 random bytes in a file of its own (KeyFile in the
// manager's state dir, mode 0600), never in the store: a copy of the store
// (raft.db, a snapshot, a backup) alone does not reveal a value.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/warren-appliance/warren/internal/atomicfile"
)

// KeyFile is the data key's file name in a manager's state dir.
const KeyFile = "secrets.key"

// KeySize is the data key's length (AES-256).
const KeySize = 32

// Key is a cluster data key.
type Key []byte

// NewKey returns a fresh random data key.
func NewKey() (Key, error) {
	k := make(Key, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("data key: %w", err)
	}
	return k, nil
}

// Check reports whether k has the right size.
func (k Key) Check() error {
	if len(k) != KeySize {
		return fmt.Errorf("data key has %d bytes, want %d", len(k), KeySize)
	}
	return nil
}

// Load reads the data key of stateDir; os.ErrNotExist if there is none.
func Load(stateDir string) (Key, error) {
	p := filepath.Join(stateDir, KeyFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	k := Key(b)
	if err := k.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return k, nil
}

// LoadFile reads a data key from path (a copy kept beside a backup).
func LoadFile(path string) (Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k := Key(b)
	if err := k.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Save writes k as stateDir's data key (0600, atomically).
func Save(stateDir string, k Key) error {
	if err := k.Check(); err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("save data key: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(stateDir, KeyFile), k, 0o600); err != nil {
		return fmt.Errorf("save data key: %w", err)
	}
	return nil
}

// ErrOpen is returned for a sealed value that does not open with the key
// (another cluster's key, a value moved between objects, corruption).
var ErrOpen = errors.New("sealed value does not open with this cluster's data key")

// additional binds a sealed value to its object and version.
func additional(kind, name string, version uint64) []byte {
	return []byte("warren/" + kind + "/" + name + "/" + strconv.FormatUint(version, 10))
}

func (k Key) aead() (cipher.AEAD, error) {
	if err := k.Check(); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Seal encrypts value for object kind/name at version: nonce || ciphertext.
func (k Key) Seal(kind, name string, version uint64, value []byte) ([]byte, error) {
	a, err := k.aead()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, a.NonceSize(), a.NonceSize()+len(value)+a.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return a.Seal(nonce, nonce, value, additional(kind, name, version)), nil
}

// Open decrypts what Seal returned for the same kind, name and version.
func (k Key) Open(kind, name string, version uint64, sealed []byte) ([]byte, error) {
	a, err := k.aead()
	if err != nil {
		return nil, err
	}
	if len(sealed) < a.NonceSize()+a.Overhead() {
		return nil, ErrOpen
	}
	out, err := a.Open(nil, sealed[:a.NonceSize()], sealed[a.NonceSize():], additional(kind, name, version))
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}

// NextKeyFile holds a data key a manager received during a re-key (the
// leader replaces the key when a manager is removed) until the entry
// sealing the state with it applies: it then becomes KeyFile.
const NextKeyFile = "secrets.next.key"

// SaveNext writes k as stateDir's next data key (0600, atomically).
func SaveNext(stateDir string, k Key) error {
	if err := k.Check(); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(stateDir, NextKeyFile), k, 0o600); err != nil {
		return fmt.Errorf("save next data key: %w", err)
	}
	return nil
}

// LoadNext reads stateDir's next data key; os.ErrNotExist if there is none.
func LoadNext(stateDir string) (Key, error) { return LoadFile(filepath.Join(stateDir, NextKeyFile)) }

// RemoveNext deletes stateDir's next data key, if any.
func RemoveNext(stateDir string) error {
	err := os.Remove(filepath.Join(stateDir, NextKeyFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
