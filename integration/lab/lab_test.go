package lab

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestLabNodesTalkAndTeardownLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	l, err := New(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			l.Close()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := l.AddNode("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.AddNode("b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "ping", "-c1", "-W2", b.LANIP.String()); err != nil {
		t.Fatalf("nodes cannot reach each other over the LAN: %v", err)
	}
	if _, err := b.Exec(ctx, "ping", "-c1", "-W2", l.Outside.LANIP.String()); err != nil {
		t.Fatalf("node cannot reach the outside host: %v", err)
	}
	// Private mounts: a file written in a's /run is not in b's or the host's.
	if _, err := a.Sh(ctx, "echo a > /run/warren/marker"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Exec(ctx, "cat", "/run/warren/marker"); err == nil {
		t.Fatal("node b sees node a's /run")
	}
	if _, err := os.Stat("/run/warren/marker"); err == nil {
		t.Fatal("the host sees node a's /run")
	}
	if err := a.WriteConfig("x = 1\n"); err != nil {
		t.Fatal(err)
	}
	if out, err := a.Exec(ctx, "cat", "/etc/warren/warren.toml"); err != nil || out != "x = 1\n" {
		t.Fatalf("config not visible at /etc/warren in the node: %q %v", out, err)
	}
	for _, n := range []*Node{a, b} {
		if err := n.StartContainerd(ctx); err != nil {
			t.Fatalf("%s: %v\n%s", n.Name, err, n.Logs())
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), l.id) {
		t.Fatalf("namespaces left behind:\n%s", out)
	}
	for _, n := range []*Node{a, b} {
		if alive(n.holder.Process.Pid) || alive(n.containerd.Process.Pid) {
			t.Fatalf("%s: processes left behind", n.Name)
		}
	}
}
