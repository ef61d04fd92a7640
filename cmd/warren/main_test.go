package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func execute(args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// Every verb answers --help with its usage, and no verb is a placeholder.
func TestEveryVerbHasHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	count := 0
	walk = func(c *cobra.Command) {
		if c.Name() == "help" || c.Name() == "completion" {
			return
		}
		path := strings.Fields(c.CommandPath())[1:]
		out, err := execute(append(path, "--help")...)
		if err != nil || !strings.Contains(out, "Usage:") {
			t.Errorf("warren %s --help: %v\n%s", strings.Join(path, " "), err, out)
		}
		if strings.Contains(strings.ToLower(c.Short), "not built") {
			t.Errorf("warren %s is still a placeholder", strings.Join(path, " "))
		}
		count++
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot())
	if count < 20 {
		t.Fatalf("only %d verbs found", count)
	}
}

func TestDaemonNotReachableSaysSo(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{{"node", "ls"}, {"service", "ls"}, {"network", "status"}, {"cluster", "info"}} {
		_, err := execute(append(args, "--socket", sock)...)
		if err == nil || !strings.Contains(err.Error(), "cannot reach the warren daemon at "+sock) {
			t.Errorf("warren %v with no daemon: %v", args, err)
		}
	}
	t.Setenv("WARREN_SOCKET", sock)
	if _, err := execute("node", "ls"); err == nil || !strings.Contains(err.Error(), sock) {
		t.Errorf("WARREN_SOCKET not used: %v", err)
	}
}

func TestDaemonVerbsRejectBadFlagsWithExit2(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "missing.toml")
	for _, args := range [][]string{
		{"worker", "start", "--config", cfg},
		{"worker", "start", "--name", "w1", "--manager", "192.0.2.1:7946"},
		{"cluster", "init", "--name", "m1", "--vip-subnet", "10.1.0.1/16"},
	} {
		_, err := execute(args...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 {
			t.Errorf("warren %v: want exit 2 with a config error, got %v", args, err)
		}
	}
	_, err := execute("cluster", "init", "--name", "m1", "--vip-subnet", "10.1.0.1/16")
	if err == nil || !strings.Contains(err.Error(), "host bits set, did you mean 10.1.0.0/16?") {
		t.Errorf("bad --vip-subnet: %v", err)
	}
}

// Bad policy files and labels are refused before the daemon is asked
// (exit 2), naming the file and line.
func TestPolicyApplyAndLabelsRejectBadInputWithExit2(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(file, []byte("apiVersion: warren.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec:\n  podSelector: {}\n  ingres: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "none.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"policy", "apply", "-f", file}, file + `: line 7: unknown field "ingres" in spec`},
		{[]string{"policy", "apply", "-f", filepath.Join(dir, "missing.yaml")}, "no such file"},
		{[]string{"service", "create", "web", "--image", "x", "--label", "app"}, `label "app": want KEY=VALUE`},
		{[]string{"service", "update", "web", "--label-rm", "bad key"}, `label key "bad key"`},
		{[]string{"service", "update", "web"}, "nothing to update"},
	} {
		_, err := execute(append(c.args, "--socket", sock)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), c.want) {
			t.Errorf("warren %v: got %v, want exit 2 containing %q", c.args, err, c.want)
		}
	}
}
