package packaging_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const unitPath = "packaging/systemd/warren-appliance.service"

// parseUnit returns each "Section.Key" of a unit file with its values in order.
func parseUnit(t *testing.T, text string) map[string][]string {
	t.Helper()
	keys := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("unit line %q is not key=value", line)
			}
			keys[section+"."+k] = append(keys[section+"."+k], v)
		}
	}
	return keys
}

// The settings issue 9 asks for; each one changes how the node behaves.
func TestUnitSettings(t *testing.T) {
	unit := parseUnit(t, readRepoFile(t, unitPath))
	for key, want := range map[string]string{
		"Unit.Wants":        "network-online.target",
		"Service.Type":      "notify", // READY=1 once tunnel and reconcilers are up
		"Service.ExecStart": "/usr/bin/warren-appliance --config /etc/warren/warren.toml",
		"Service.Restart":   "always",
		// A refused config (exit 2) is not retried in a loop.
		"Service.RestartPreventExitStatus": "2",
		"Service.KillMode":                 "process", // tasks survive restarts and upgrades
		"Service.StateDirectory":           "warren",
		"Service.StateDirectoryMode":       "0700",
		"Service.RuntimeDirectory":         "warren",
		// The admin socket lives there: private, as the code says.
		"Service.RuntimeDirectoryMode": "0700",
		"Service.LimitNOFILE":          "1048576",
		"Install.WantedBy":             "multi-user.target",
	} {
		if got := strings.Join(unit[key], " "); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if after := strings.Fields(strings.Join(unit["Unit.After"], " ")); !contains(after, "network-online.target") {
		t.Errorf("After=%v lacks network-online.target", after)
	}
	if len(unitCapabilities(t)) == 0 {
		t.Error("CapabilityBoundingSet is empty")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// unitCapabilities is the unit's CapabilityBoundingSet, e.g. CAP_NET_ADMIN.
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	unit := parseUnit(t, readRepoFile(t, unitPath))
	return strings.Fields(strings.Join(unit["Service.CapabilityBoundingSet"], " "))
}

// verifyUnit runs systemd-analyze verify on unitText in a scratch root that
// holds the host's system units (for the targets it names) and an executable
// at /usr/bin/warren-appliance, and returns what it printed. verify exits 0
// even for bad settings it ignores, so any output counts as a failure.
func verifyUnit(t *testing.T, unitText string) string {
	t.Helper()
	root := t.TempDir()
	sysdir := filepath.Join(root, "usr/lib/systemd/system")
	if err := os.MkdirAll(sysdir, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "cp", "-a", "/usr/lib/systemd/system/.", sysdir)
	writeFile(t, filepath.Join(sysdir, "warren-appliance.service"), unitText)
	exe := filepath.Join(root, "usr/bin/warren-appliance")
	writeFile(t, exe, "#!/bin/sh\n")
	if err := os.Chmod(exe, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", "--root="+root, "warren-appliance.service").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s(exit: %v)", out, err)
	}
	return string(out)
}

func TestUnitPassesSystemdAnalyzeVerify(t *testing.T) {
	requireTool(t, "systemd-analyze", "systemd")
	if out := verifyUnit(t, readRepoFile(t, unitPath)); out != "" {
		t.Errorf("systemd-analyze verify:\n%s", out)
	}
	// The check can fail: a misspelt value is reported.
	broken := strings.Replace(readRepoFile(t, unitPath), "Restart=always", "Restart=allways", 1)
	if out := verifyUnit(t, broken); !strings.Contains(out, "allways") {
		t.Errorf("systemd-analyze verify did not report Restart=allways; printed %q", out)
	}
}

// capsScript does, in a fresh network namespace, the kinds of kernel work the
// daemon does: create and enter a namespace (task networks), create a TUN
// device (wireguard-go), a bridge and a veth pair, set a sysctl, load
// iptables NAT rules in one iptables-restore transaction and list conntrack.
const capsScript = `set -e
ip netns add "$NS"
nsenter --net="/run/netns/$NS" sh -ec '
ip link set lo up
ip tuntap add dev pkgtun0 mode tun
ip link add pkgbr0 type bridge
ip link add pkgveth0 type veth peer name pkgveth1
ip link set pkgveth1 master pkgbr0
ip addr add 10.250.0.1/24 dev pkgbr0
ip link set pkgbr0 up
echo 1 > /proc/sys/net/ipv4/ip_forward
printf "*nat\n:WARREN-PKGTEST - [0:0]\n-A OUTPUT -d 10.251.0.1/32 -j WARREN-PKGTEST\n-A WARREN-PKGTEST -p tcp --dport 80 -j DNAT --to-destination 10.250.0.2:80\nCOMMIT\n" | iptables-restore -w --noflush
iptables -w -t nat -S WARREN-PKGTEST | grep -q DNAT
conntrack -L >/dev/null 2>&1
'
`

// runWithCapabilities runs capsScript as root limited to caps (the way
// systemd applies CapabilityBoundingSet and NoNewPrivileges) in a namespace
// named ns, and always deletes the namespace afterwards.
func runWithCapabilities(t *testing.T, ns string, caps []string) (string, error) {
	t.Helper()
	defer exec.Command("ip", "netns", "del", ns).Run()
	cmd := exec.Command("setpriv", "--no-new-privs", "--bounding-set", boundingSet(caps),
		"--inh-caps", "-all", "--", "sh", "-c", capsScript)
	cmd.Env = append(os.Environ(), "NS="+ns)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The unit drops every capability but its CapabilityBoundingSet; the daemon's
// kernel work must still succeed under it, and the check must notice a
// missing capability.
func TestUnitCapabilitiesSufficeForKernelWork(t *testing.T) {
	requireRoot(t)
	for _, tool := range [][2]string{{"setpriv", "util-linux"}, {"iptables-restore", "iptables"}, {"conntrack", "conntrack"}, {"ip", "iproute2"}} {
		requireTool(t, tool[0], tool[1])
	}
	caps := unitCapabilities(t)
	ns := fmt.Sprintf("pkgcap%d", os.Getpid())
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := runWithCapabilities(t, ns, caps); err != nil {
		t.Fatalf("kernel work under CapabilityBoundingSet=%v failed: %v\n%s", caps, err, out)
	}

	var withoutNetAdmin []string
	for _, c := range caps {
		if c != "CAP_NET_ADMIN" {
			withoutNetAdmin = append(withoutNetAdmin, c)
		}
	}
	if out, err := runWithCapabilities(t, ns, withoutNetAdmin); err == nil {
		t.Fatalf("kernel work succeeded without CAP_NET_ADMIN; the check proves nothing\n%s", out)
	}
}
