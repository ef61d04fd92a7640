package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// registry verbs refuse bad input with exit 2 before anything reaches
// the daemon; a password is never taken as an argument.
func TestRegistryVerbsRejectBadInputWithExit2(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "none.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"registry", "add", "reg.local", "--ca-file", filepath.Join(dir, "missing.pem")}, "no such file"},
		{[]string{"registry", "login", "reg.local", "--password-stdin"}, "--username"},
		{[]string{"registry", "login", "reg.local", "--username", "ci"}, "--password-stdin"},
	} {
		_, err := execute(append(c.args, "--socket", sock)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), c.want) {
			t.Errorf("warren %v: got %v, want exit 2 containing %q", c.args, err, c.want)
		}
	}
	if _, err := execute("registry", "login", "reg.local", "--username", "ci", "--password", "x", "--socket", sock); err == nil {
		t.Fatal("a --password argument was taken")
	}
	_, err := execute("registry", "ls", "--socket", sock)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the warren daemon") {
		t.Fatalf("registry ls: %v", err)
	}
}
