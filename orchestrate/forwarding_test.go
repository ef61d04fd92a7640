package orchestrate

import (
	"os"
	"path/filepath"
	"testing"
)

// ip_forward is put back as it was by cleanup when we turned it on, and
// left alone when it was on already.
func TestForwardingRestoredOnlyIfWeChangedIt(t *testing.T) {
	dir := t.TempDir()
	sysctl, orig := filepath.Join(dir, "ip_forward"), filepath.Join(dir, "ip_forward.orig")
	read := func() string { b, _ := os.ReadFile(sysctl); return string(b) }

	os.WriteFile(sysctl, []byte("0\n"), 0o644)
	for range 2 { // the second pass finds it on and records nothing new
		if err := enableForwarding(sysctl, orig); err != nil {
			t.Fatal(err)
		}
	}
	if read() != "1\n" {
		t.Fatalf("ip_forward = %q after enable", read())
	}
	if err := restoreForwarding(sysctl, orig); err != nil {
		t.Fatal(err)
	}
	if read() != "0\n" {
		t.Fatalf("ip_forward = %q after cleanup, want the original 0", read())
	}
	if _, err := os.Stat(orig); !os.IsNotExist(err) {
		t.Fatalf("the saved value stays after cleanup: %v", err)
	}
	// On already: nothing saved, cleanup leaves it on.
	os.WriteFile(sysctl, []byte("1\n"), 0o644)
	if err := enableForwarding(sysctl, orig); err != nil {
		t.Fatal(err)
	}
	if err := restoreForwarding(sysctl, orig); err != nil {
		t.Fatal(err)
	}
	if read() != "1\n" {
		t.Fatalf("ip_forward = %q, want it left on", read())
	}
}
