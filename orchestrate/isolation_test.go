package orchestrate

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/warren-appliance/warren/internal/testimage/testnode"
)

// loadBrNetfilter loads the br_netfilter module when its sysctl is absent
// (a fresh VM without Docker has not loaded it, and a module loaded by
// tools/install-deps.sh --test is gone after a reboot): these tests switch
// it on and off. The product does not need it: it follows whichever.
func loadBrNetfilter(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(brNetfilterSysctl); err == nil {
		return
	}
	out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput()
	if _, serr := os.Stat(brNetfilterSysctl); serr != nil {
		t.Fatalf("br_netfilter is not loaded and `modprobe br_netfilter` did not load it (%v %s): %v", err, strings.TrimSpace(string(out)), serr)
	}
}

// Task ports are isolated, and the host answers ARP between them
// (proxy_arp_pvlan), exactly when br_netfilter is off, and both follow the
// sysctl together: a bridge made while br_netfilter was on, which is then
// switched off, must not get isolated ports that cannot resolve each
// other (found by the policy lab test: same-node tasks cut off until the
// next host check, 10 s later).
func TestTaskPortIsolationFollowsBrNetfilter(t *testing.T) {
	if !testnode.Enter(t, "oiso") {
		return
	}
	loadBrNetfilter(t)
	setBrNetfilter := func(v string) {
		t.Helper()
		if err := os.WriteFile(brNetfilterSysctl, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n := &network{bridge: "warren-br0", overlay: "warren0", block: netip.MustParsePrefix("10.0.1.0/24"), nsDir: filepath.Join(t.TempDir(), "netns")}
	t.Cleanup(func() {
		for _, task := range []string{"a", "b"} {
			n.removeTask(task)
		}
		n.removeHost()
	})
	tasks := map[string]netip.Addr{"a": netip.MustParseAddr("10.0.1.2"), "b": netip.MustParseAddr("10.0.1.3")}
	check := func(when string, isolated bool) {
		t.Helper()
		for task, ip := range tasks {
			if _, err := n.ensureTask(task, ip); err != nil {
				t.Fatalf("%s: ensureTask %s: %v", when, task, err)
			}
		}
		pvlan, err := os.ReadFile("/proc/sys/net/ipv4/conf/warren-br0/proxy_arp_pvlan")
		if err != nil {
			t.Fatal(err)
		}
		want := map[bool]string{true: "1", false: "0"}[isolated]
		if got := strings.TrimSpace(string(pvlan)); got != want {
			t.Errorf("%s: proxy_arp_pvlan = %s, want %s", when, got, want)
		}
		if delay, err := os.ReadFile("/proc/sys/net/ipv4/neigh/warren-br0/proxy_delay"); err != nil || (isolated && strings.TrimSpace(string(delay)) != "0") {
			t.Errorf("%s: proxy_delay = %q (%v), want 0 on an isolated bridge", when, delay, err)
		}
		for task := range tasks {
			link, err := netlink.LinkByName(hostVethName(task))
			if err != nil {
				t.Fatal(err)
			}
			pi, err := netlink.LinkGetProtinfo(link)
			if err != nil {
				t.Fatal(err)
			}
			if pi.Isolated != isolated {
				t.Errorf("%s: port of %s isolated = %v, want %v", when, task, pi.Isolated, isolated)
			}
		}
		for from, to := range map[string]string{"a": "b", "b": "a"} {
			out, err := exec.Command("nsenter", "--net="+n.netnsPath(from), "ping", "-c", "1", "-W", "3", tasks[to].String()).CombinedOutput()
			if err != nil {
				t.Errorf("%s: %s cannot ping %s: %v\n%s", when, from, to, err, out)
			}
		}
	}

	setBrNetfilter("1")
	if err := n.ensureHost(); err != nil {
		t.Fatal(err)
	}
	check("br_netfilter on", false)
	// Switched off after the bridge was made (the host check is not
	// repeated here, as in the reconciler between its host checks).
	setBrNetfilter("0")
	check("br_netfilter switched off", true)
	for task := range tasks { // and tasks made from scratch now
		if err := n.removeTask(task); err != nil {
			t.Fatal(err)
		}
	}
	check("new tasks, br_netfilter off", true)
	setBrNetfilter("1")
	check("br_netfilter switched on again", false)
}

// The bridge keeps its own MAC whatever ports come and go. A bridge whose
// MAC is not set takes the lowest MAC of its ports: a new task's port
// could change it under running tasks, whose neighbour entries for their
// gateway kept the old one, and their traffic was dropped for about 20 s
// (found by the policy lab test: a new api task unreachable from a
// frontend on another node). A bridge made before (an upgrade) gets the
// MAC at the next host check, and its tasks resolve their neighbours
// again at their next pass.
func TestBridgeMACStaysWhenTasksCome(t *testing.T) {
	if !testnode.Enter(t, "omac") {
		return
	}
	block := netip.MustParsePrefix("10.0.1.0/24")
	n := &network{bridge: "warren-br0", overlay: "warren0", block: block, nsDir: filepath.Join(t.TempDir(), "netns")}
	t.Cleanup(func() {
		for _, task := range []string{"a", "b", "c"} {
			n.removeTask(task)
		}
		n.removeHost()
	})
	ip := map[string]netip.Addr{"a": netip.MustParseAddr("10.0.1.2"), "b": netip.MustParseAddr("10.0.1.3"), "c": netip.MustParseAddr("10.0.1.4")}
	bridgeMACNow := func() string {
		t.Helper()
		br, err := netlink.LinkByName("warren-br0")
		if err != nil {
			t.Fatal(err)
		}
		return br.Attrs().HardwareAddr.String()
	}
	ping := func(when, from, to string) {
		t.Helper()
		out, err := exec.Command("nsenter", "--net="+n.netnsPath(from), "ping", "-c", "1", "-W", "2", to).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %s cannot ping %s: %v\n%s", when, from, to, err, out)
		}
	}
	ensure := func(task string) {
		t.Helper()
		if _, err := n.ensureTask(task, ip[task]); err != nil {
			t.Fatal(err)
		}
	}
	loadBrNetfilter(t)
	// Isolated ports (no br_netfilter): every task's neighbour entries,
	// for its gateway and for the other tasks, hold the host's MAC, and
	// task-to-task traffic is forwarded by the host.
	if err := os.WriteFile(brNetfilterSysctl, []byte("0\n"), 0o644); err != nil {
		t.Fatalf("br_netfilter: %v", err)
	}

	// An upgrade: the bridge was made without a MAC (as before); two
	// tasks run and resolved each other and their gateway to the MAC the
	// bridge took from a port.
	for _, args := range [][]string{{"link", "add", "warren-br0", "type", "bridge"}, {"addr", "add", "10.0.1.1/24", "dev", "warren-br0"}, {"link", "set", "warren-br0", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	if err := os.WriteFile(ipForwardSysctl, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(n.nsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ensure("a")
	ensure("b")
	ping("before the upgrade", "a", "10.0.1.1")
	ping("before the upgrade", "a", "10.0.1.3")
	old := bridgeMACNow()
	// The upgraded daemon's host check sets the bridge's MAC; the tasks'
	// next pass makes them resolve their neighbours again.
	if err := n.ensureHost(); err != nil {
		t.Fatal(err)
	}
	if got, want := bridgeMACNow(), bridgeMAC(block).String(); got != want || got == old {
		t.Fatalf("bridge MAC after the host check: %s (was %s), want %s", got, old, want)
	}
	ensure("a")
	ensure("b")
	ping("after the upgrade", "a", "10.0.1.1")
	ping("after the upgrade", "a", "10.0.1.3")

	// A task whose port has the lowest MAC there is joins: the bridge
	// keeps its MAC and the others still reach their gateway and each
	// other at once.
	ensure("c")
	hostC, err := netlink.LinkByName(hostVethName("c"))
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetHardwareAddr(hostC, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}); err != nil {
		t.Fatal(err)
	}
	if got, want := bridgeMACNow(), bridgeMAC(block).String(); got != want {
		t.Fatalf("bridge MAC after a new port: %s, want %s", got, want)
	}
	ping("after a new port", "a", "10.0.1.1")
	ping("after a new port", "a", "10.0.1.3")
	ping("after a new port", "c", "10.0.1.2")
}
