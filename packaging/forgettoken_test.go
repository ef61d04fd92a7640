package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// warren-forget-token on a temporary root (WARREN_ROOT): after the join it
// deletes /etc/warren/token and overwrites the token, keeping every file's
// length, wherever cloud-init left a copy, cloud-config.txt included
// (finding 7 of hardening-2: that one kept it).
func TestForgetTokenScrubsCloudInitCopies(t *testing.T) {
	root := t.TempDir()
	const token = "WRN-1-0123456789abcdef0123456789abcdef-s3cr3tS3CR3Ts3cr3t"
	put := func(rel, content string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cloudConfig := "#cloud-config\nwrite_files:\n  - path: /etc/warren/token\n    content: |\n      " + token + "\n"
	copies := []string{
		"boot/firmware/user-data",
		"var/lib/cloud/instances/rpi-1/cloud-config.txt",
		"var/lib/cloud/instances/rpi-1/user-data.txt",
		"var/lib/cloud/instances/rpi-1/user-data.txt.i",
		"var/lib/cloud/instances/old-1/cloud-config.txt",
		"var/lib/cloud/seed/nocloud/user-data",
	}
	for _, c := range copies {
		put(c, cloudConfig)
	}
	// cloud-init's instance is a link to the current instance's directory.
	if err := os.Symlink("instances/rpi-1", filepath.Join(root, "var/lib/cloud/instance")); err != nil {
		t.Fatal(err)
	}
	put("etc/warren/token", token+"\n")
	put("var/lib/cloud/instances/rpi-1/unrelated.txt", "nothing here\n")

	run := func() string {
		cmd := exec.Command("sh", "scripts/warren-forget-token")
		cmd.Env = append(os.Environ(), "WARREN_ROOT="+root)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("warren-forget-token: %v\n%s", err, out)
		}
		return string(out)
	}
	// Before the join: nothing changes.
	run()
	if _, err := os.Stat(filepath.Join(root, "etc/warren/token")); err != nil {
		t.Fatalf("token removed before the join: %v", err)
	}
	put("var/lib/warren/setup.json", "{}")
	out := run()
	if _, err := os.Stat(filepath.Join(root, "etc/warren/token")); !os.IsNotExist(err) {
		t.Errorf("/etc/warren/token still there: %v", err)
	}
	for _, c := range append(copies, "var/lib/cloud/instance/cloud-config.txt") {
		b, err := os.ReadFile(filepath.Join(root, c))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(token)) || bytes.Contains(b, []byte("s3cr3t")) {
			t.Errorf("%s still holds the token", c)
		}
		if len(b) != len(cloudConfig) {
			t.Errorf("%s changed length: %d, was %d", c, len(b), len(cloudConfig))
		}
	}
	if !strings.Contains(out, "cloud-config.txt") {
		t.Errorf("output does not name cloud-config.txt:\n%s", out)
	}
}
