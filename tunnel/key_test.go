package tunnel

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateKeyCreates0600AndReuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "wireguard.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %04o, want 0600", st.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if string(data) != k1.String()+"\n" {
		t.Fatalf("file = %q, want base64 key and newline", data)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1 != k2 {
		t.Fatal("second load returned a different key")
	}
	if k1.IsZero() || k1.PublicKey() == k1 {
		t.Fatal("key or public key degenerate")
	}
}

func TestLoadOrCreateKeyAcceptsOperatorKey(t *testing.T) {
	// The key and its public key as `wg genkey | tee k | wg pubkey` print them.
	const priv = "AFisDgtYJlwKg8+1VVH0eqM1glhOWZByt1eOWiNYLXw="
	const pub = "sbhCWnCSg3m605UzzkWM8Bnc2ghnxNnO5deRpDxO5io="
	path := filepath.Join(t.TempDir(), "wireguard.key")
	if err := os.WriteFile(path, []byte(priv+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k.String() != priv {
		t.Fatalf("key = %s, want %s", k, priv)
	}
	if k.PublicKey().String() != pub {
		t.Fatalf("public key = %s, want %s", k.PublicKey(), pub)
	}
	if wg, err := exec.LookPath("wg"); err == nil {
		cmd := exec.Command(wg, "pubkey")
		cmd.Stdin = strings.NewReader(priv + "\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("wg pubkey: %v", err)
		}
		if strings.TrimSpace(string(out)) != k.PublicKey().String() {
			t.Fatalf("wg pubkey = %s, ours = %s", out, k.PublicKey())
		}
	}
}

func TestLoadOrCreateKeyRefusesReadableByOthers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wireguard.key")
	k, _ := GenerateKey()
	if err := os.WriteFile(path, []byte(k.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateKey(path)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("err = %v, want refusal naming chmod 600", err)
	}
}

func TestLoadOrCreateKeyRefusesGarbage(t *testing.T) {
	for name, content := range map[string]string{
		"text":      "not a key\n",
		"short":     "AAAA\n",
		"zero":      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
		"empty":     "",
		"hexformat": strings.Repeat("ab", 32) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "wireguard.key")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateKey(path)
			if err == nil {
				t.Fatal("garbage key accepted")
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
			// The file must not have been replaced by a fresh key.
			got, _ := os.ReadFile(path)
			if string(got) != content {
				t.Fatal("garbage key file was overwritten")
			}
		})
	}
}

func TestLoadOrCreateKeyRefusesUnreadable(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateKey(dir); err == nil {
		t.Fatal("a directory was accepted as key file")
	}
}
