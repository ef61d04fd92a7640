package packaging_test

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// tools/install-deps.sh installs for `make demo` only what the demo needs,
// and for `make test` every package a test asks for (requireTool's second
// argument, promtool's prometheus); apt-missing.sh keeps what it installs
// from starting or being enabled as a service.
func TestInstallDepsLists(t *testing.T) {
	list := func(what string) []string {
		t.Helper()
		out, err := exec.Command("sh", filepath.Join(repoRoot, "tools", "install-deps.sh"), what, "--list").Output()
		if err != nil {
			t.Fatalf("install-deps.sh %s --list: %v", what, err)
		}
		return strings.Fields(string(out))
	}
	demo, test := list("demo"), list("test")
	for _, p := range []string{"prometheus", "cloud-init", "debootstrap", "qemu-user-static", "rpm", "dpkg-dev", "iperf3", "python3-yaml"} {
		if slices.Contains(demo, p) {
			t.Errorf("the demo installs %s, which only tests need", p)
		}
	}
	for _, p := range demo {
		if !slices.Contains(test, p) {
			t.Errorf("the tests do not get the demo's %s (the integration lab runs the same nodes)", p)
		}
	}
	// Every package a test names when its tool is missing.
	out, err := exec.Command("git", "-C", repoRoot, "grep", "-h", "-o", `requireTool(t, [^,]*, "[a-z0-9.+-]*")`, "--", "*_test.go").Output()
	if err != nil {
		t.Fatalf("git grep: %v", err)
	}
	re := regexp.MustCompile(`"([a-z0-9.+-]+)"\)$`)
	needed := []string{"prometheus", "iperf3", "wireguard-tools"} // promtool (metrics), iperf3 and wg (tunnel) are looked up directly
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			needed = append(needed, m[1])
		}
	}
	if len(needed) < 8 {
		t.Fatalf("only %d packages found in the tests: %v", len(needed), needed)
	}
	for _, p := range needed {
		if p == "util-linux" || p == "dpkg" || p == "systemd" {
			continue // essential or always present on Debian
		}
		if !slices.Contains(test, p) {
			t.Errorf("a test needs %s, but install-deps.sh test does not install it", p)
		}
	}
	// apt-missing.sh: starts denied while installing, units disabled after.
	apt := readRepoFile(t, "tools/apt-missing.sh")
	for _, want := range []string{"policy-rc.d", "exit 101", "systemctl disable", "cloud-init.disabled"} {
		if !strings.Contains(apt, want) {
			t.Errorf("tools/apt-missing.sh lacks %q", want)
		}
	}
	if mk := readRepoFile(t, "Makefile"); !strings.Contains(mk, "demo: demo-deps build") || strings.Contains(mk, "go run ./integration/demo") {
		t.Errorf("make demo must install the demo's packages only and run the demo binary (go run exits 1 on Ctrl-C)")
	}
}
