package cluster

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// An encrypted backup restores with its passphrase only, and any change
// to the file is refused (age authenticates it); a plain file given with a
// passphrase is refused too (it may have been swapped).
func TestEncryptedBackupRestoresAndRefusesChanges(t *testing.T) {
	tm := startManager(t)
	if _, err := tm.m.CreateService(apiSpec("web", 1)); err != nil {
		t.Fatal(err)
	}
	code, body := adminDo(tm.m, http.MethodGet, "/v1/backup", nil)
	if code != http.StatusOK {
		t.Fatalf("backup: %d %s", code, body)
	}
	pass := []byte("correct horse battery staple")
	enc, err := EncryptBackup([]byte(body), pass)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(enc, []byte("web")) || !IsEncryptedBackup(enc) {
		t.Fatal("the encrypted backup shows its content")
	}
	dir := t.TempDir()
	key := tm.m.DataKey()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		// The data key beside it, as `warren cluster backup` writes it.
		if err := os.WriteFile(p+BackupKeySuffix, key, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tampered := bytes.Clone(enc)
	tampered[len(tampered)-20] ^= 1
	for _, tc := range []struct {
		name, file string
		pass       []byte
		want       string
	}{
		{"wrong passphrase", write("enc", enc), []byte("not the passphrase at all"), "wrong passphrase"},
		{"changed file", write("tampered", tampered), pass, "changed"},
		{"no passphrase", write("enc", enc), nil, "give its passphrase"},
		{"plain file with a passphrase", write("plain", []byte(body)), pass, "not encrypted"},
	} {
		err := ForceNewCluster(t.TempDir(), tm.addr, "", Restore{File: tc.file, Passphrase: tc.pass}, clustertest.Logger(t))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	tm.stop()
	tm.dir = t.TempDir()
	tm.cfg.StateDir = tm.dir
	if err := ForceNewCluster(tm.dir, tm.addr, "", Restore{File: write("enc", enc), Passphrase: pass}, clustertest.Logger(t)); err != nil {
		t.Fatal(err)
	}
	tm.start()
	if got := tm.m.Map(); len(got.Services) != 1 || got.Services[0].Name != "web" {
		t.Fatalf("restored: %+v", got.Services)
	}
}

func TestReadPassphraseFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pass")
	os.WriteFile(p, []byte("short\n"), 0o600)
	if _, err := ReadPassphraseFile(p); err == nil || !strings.Contains(err.Error(), "at least 12") {
		t.Fatalf("short passphrase: %v", err)
	}
	os.WriteFile(p, []byte("a long enough passphrase\r\nsecond line\n"), 0o600)
	if got, err := ReadPassphraseFile(p); err != nil || string(got) != "a long enough passphrase" {
		t.Fatalf("got %q, %v", got, err)
	}
}
