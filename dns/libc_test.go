package dns

import (
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestLibcResolverWithTaskResolvConf puts the rendered resolv.conf in front
// of glibc's resolver (getent, in a private mount namespace so the host's
// /etc/resolv.conf is untouched) and resolves the way a task would: short
// names through the search domain, tasks.<service> with one dot, and an
// outside name forwarded upstream.
func TestLibcResolverWithTaskResolvConf(t *testing.T) {
	requireRoot(t)
	listen := uniqueLoopback(4)
	up := startFakeUpstream(t, "", answerA("192.0.2.77"))
	s, _ := startServer(t, Config{Listen: []string{listen + ":53"}, Upstreams: []string{up.addr}})
	s.Update(sampleRecords)

	conf := t.TempDir() + "/resolv.conf"
	if err := os.WriteFile(conf, ResolvConf(netip.MustParseAddr(listen), "warren.local"), 0o644); err != nil {
		t.Fatal(err)
	}
	lookup := func(name string) []string {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), "unshare", "--mount", "--propagation", "private", "sh", "-c",
			`mount --bind "$1" /etc/resolv.conf && exec getent ahostsv4 "$2"`, "sh", conf, name)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("getent %s: %v: %s", name, err, out)
			return nil
		}
		var ips []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(line); len(f) > 0 && !slices.Contains(ips, f[0]) {
				ips = append(ips, f[0])
			}
		}
		slices.Sort(ips)
		return ips
	}

	for name, want := range map[string][]string{
		"nginx":            {"10.1.0.5"},
		"nginx-2":          {"10.0.2.2"},
		"tasks.nginx":      {"10.0.1.2", "10.0.2.2"},
		"api.warren.local": {"10.1.0.6"},
		"outside.example":  {"192.0.2.77"},
	} {
		if got := lookup(name); !slices.Equal(got, want) {
			t.Errorf("getent ahostsv4 %s = %v, want %v", name, got, want)
		}
	}
	// With ndots:2, "tasks.nginx" is tried with the search suffix first:
	// answered here, never sent upstream as a top-level name.
	if up.seen("tasks.nginx.") {
		t.Error("tasks.nginx went upstream before the search domain")
	}
}
