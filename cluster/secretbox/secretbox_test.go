package secretbox

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestSealOpensOnlyForItsObjectVersionAndKey(t *testing.T) {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	value := []byte("hunter2-marker")
	sealed, err := k.Seal("secret", "dbpass", 3, value)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, value) {
		t.Fatal("sealed value holds the plaintext")
	}
	again, _ := k.Seal("secret", "dbpass", 3, value)
	if bytes.Equal(sealed, again) {
		t.Fatal("two seals of one value are equal: the nonce is not random")
	}
	got, err := k.Open("secret", "dbpass", 3, sealed)
	if err != nil || !bytes.Equal(got, value) {
		t.Fatalf("open: %q, %v", got, err)
	}
	other, _ := NewKey()
	for name, open := range map[string]func() ([]byte, error){
		"other version": func() ([]byte, error) { return k.Open("secret", "dbpass", 4, sealed) },
		"other name":    func() ([]byte, error) { return k.Open("secret", "apikey", 3, sealed) },
		"other kind":    func() ([]byte, error) { return k.Open("config", "dbpass", 3, sealed) },
		"other key":     func() ([]byte, error) { return other.Open("secret", "dbpass", 3, sealed) },
		"truncated":     func() ([]byte, error) { return k.Open("secret", "dbpass", 3, sealed[:10]) },
		"flipped bit": func() ([]byte, error) {
			b := bytes.Clone(sealed)
			b[len(b)-1] ^= 1
			return k.Open("secret", "dbpass", 3, b)
		},
	} {
		if _, err := open(); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: %v, want ErrOpen", name, err)
		}
	}
}

func TestKeyFileIsPrivateAndRoundTrips(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("load without a key: %v", err)
	}
	k, _ := NewKey()
	if err := Save(dir, k); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o, want 600", st.Mode().Perm())
	}
	got, err := Load(dir)
	if err != nil || !bytes.Equal(got, k) {
		t.Fatalf("load: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil {
		t.Fatal("a 5-byte key loaded")
	}
}

func TestNextKeyFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadNext(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no next key: %v", err)
	}
	k, _ := NewKey()
	if err := SaveNext(dir, k[:5]); err == nil {
		t.Fatal("a short key was saved")
	}
	if err := SaveNext(dir, k); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, NextKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("next key file: %v %v", err, fi)
	}
	got, err := LoadNext(dir)
	if err != nil || !bytes.Equal(got, k) {
		t.Fatalf("load next: %v", err)
	}
	if err := RemoveNext(dir); err != nil {
		t.Fatal(err)
	}
	if err := RemoveNext(dir); err != nil {
		t.Fatalf("removing an absent next key: %v", err)
	}
	if _, err := LoadNext(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after remove: %v", err)
	}
}
