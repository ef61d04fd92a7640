// Package netnstest holds what kernel tests need to work in network
// namespaces of their own: create one (deleted when the test ends), run a
// command or a function inside it, serve and reach a TCP echo in it, and
// split rendered iptables rules into arguments. Only tests import it.
package netnstest

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

var counter atomic.Int32

// RequireRoot skips the test when it does not run as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates network namespaces and iptables rules")
	}
}

// New creates a named network namespace with lo up and deletes it when the
// test ends. Names are <prefix><pid>-<n>-<role>, so parallel runs and other
// packages never collide.
func New(tb testing.TB, prefix, role string) string {
	tb.Helper()
	name := fmt.Sprintf("%s%d-%d-%s", prefix, os.Getpid(), counter.Add(1), role)
	MustRun(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Logf("delete netns %s: %v: %s", name, err, out)
		}
	})
	MustRun(tb, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// MustRun runs a command and returns its output, failing the test on error.
func MustRun(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Run runs a command inside the namespace ns through nsenter.
func Run(tb testing.TB, ns string, name string, args ...string) string {
	tb.Helper()
	return MustRun(tb, "nsenter", append([]string{"--net=/run/netns/" + ns, name}, args...)...)
}

// In runs fn on an OS thread switched into the named namespace. Processes
// fn starts (iptables, iptables-restore) and sockets it opens belong to
// that namespace. Goroutines fn starts do not.
func In(name string, fn func() error) error {
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

// MustIn is In failing the test on error.
func MustIn(tb testing.TB, name string, fn func() error) {
	tb.Helper()
	if err := In(name, fn); err != nil {
		tb.Fatal(err)
	}
}

// SplitRule splits rendered rule text into iptables arguments; quotes only
// appear around comments, which hold no escapes.
func SplitRule(rule string) []string {
	var args []string
	for rule != "" {
		rule = strings.TrimLeft(rule, " ")
		if strings.HasPrefix(rule, `"`) {
			end := strings.Index(rule[1:], `"`) + 1
			args = append(args, rule[1:end])
			rule = rule[end+1:]
			continue
		}
		word, rest, _ := strings.Cut(rule, " ")
		if word != "" {
			args = append(args, word)
		}
		rule = rest
	}
	return args
}
