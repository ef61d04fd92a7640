package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Secrets, configs and the service flags that use them refuse bad input
// with exit 2 before anything reaches the daemon.
func TestSecretAndConfigVerbsRejectBadInputWithExit2(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 500<<10+1), 0o600); err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "none.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"secret", "create", "dbpass"}, "-f FILE"},
		{[]string{"config", "create", "app.conf", "-f", filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"secret", "create", "dbpass", "-f", big}, "larger than 500 KiB"},
		{[]string{"secret", "create", "dbpass", "-f", small, small}, "not both"},
		{[]string{"secret", "update", "dbpass"}, "-f FILE"},
		{[]string{"service", "create", "web", "--image", "x", "--secret", "source=dbpass,mode=999"}, "octal"},
		{[]string{"service", "create", "web", "--image", "x", "--config", "source=c,target=etc/x"}, "absolute"},
		{[]string{"service", "create", "web", "--image", "x", "--secret", "source=dbpass,target=../x"}, "file name"},
	} {
		_, err := execute(append(c.args, "--socket", sock)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), c.want) {
			t.Errorf("warren %v: got %v, want exit 2 containing %q", c.args, err, c.want)
		}
	}
	// A good value reaches the daemon (which is not there).
	_, err := execute("secret", "create", "dbpass", small, "--socket", sock)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the warren daemon") {
		t.Fatalf("secret create with a positional FILE: %v", err)
	}
}
