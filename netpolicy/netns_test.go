package netpolicy

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// Test namespaces are named wnat<pid>-<n>-<role> so parallel runs and
// other packages never collide; all are deleted in Cleanup.
var nsCounter atomic.Int32

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates network namespaces and iptables rules")
	}
}

// newNetns creates a named network namespace and deletes it when the test ends.
func newNetns(tb testing.TB, role string) string {
	tb.Helper()
	name := fmt.Sprintf("wpol%d-%d-%s", os.Getpid(), nsCounter.Add(1), role)
	mustRun(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Logf("delete netns %s: %v: %s", name, err, out)
		}
	})
	mustRun(tb, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func mustRun(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNetns runs fn on an OS thread switched into the named namespace.
// Processes fn starts (iptables, iptables-restore) and sockets it opens
// belong to that namespace. Goroutines fn starts do not.
func inNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	defer func() {
		// A thread that cannot go back stays locked and dies with the goroutine.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// mustInNetns is inNetns failing the test on error.
func mustInNetns(tb testing.TB, name string, fn func() error) {
	tb.Helper()
	if err := inNetns(name, fn); err != nil {
		tb.Fatal(err)
	}
}

// nsRun runs a command inside the namespace through nsenter.
func nsRun(tb testing.TB, ns string, name string, args ...string) string {
	tb.Helper()
	return mustRun(tb, "nsenter", append([]string{"--net=/run/netns/" + ns, name}, args...)...)
}
