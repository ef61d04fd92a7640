package orchestrate

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/internal/testimage/testnode"
)

// inNetnsPath runs fn on an OS thread switched into the namespace pinned
// at path; sockets fn opens stay in that namespace.
func inNetnsPath(path string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// A task's port lets through only frames with the task's own address: a
// task that sends from an address of the WireGuard subnet (which policies
// exempted as "from nodes"), from a neighbour task's address (which other
// policies allow) or from an unused address of its block (which no egress
// policy's set holds) is dropped on the bridge, with and without
// br_netfilter; its real address passes. And a task reaches only DNS (and
// ping) on its node, not the node's other ports (API, Raft, sshd).
func TestTaskCannotForgeItsSource(t *testing.T) {
	for _, b := range hostfw.Backends {
		t.Run(b, func(t *testing.T) {
			if err := hostfw.UseBackend(t, b); err != nil {
				t.Fatal(err)
			}
			testTaskCannotForgeItsSource(t, b)
		})
	}
}

func testTaskCannotForgeItsSource(t *testing.T, backend string) {
	if !testnode.Enter(t, "ospoof") {
		return
	}
	if _, err := os.Stat(brNetfilterSysctl); err != nil {
		t.Fatalf("br_netfilter is not loaded (modprobe br_netfilter; tools/install-deps.sh does): %v", err)
	}
	block := netip.MustParsePrefix("10.0.1.0/24")
	n := &network{bridge: "warren-br0", overlay: "warren0", block: block,
		containerSubnet: netip.MustParsePrefix("10.0.0.0/16"), nsDir: filepath.Join(t.TempDir(), "netns")}
	t.Cleanup(func() {
		for _, task := range []string{"a", "b", "c"} {
			n.removeTask(task)
		}
		n.removeHost()
	})
	ip := map[string]netip.Addr{"a": netip.MustParseAddr("10.0.1.2"), "b": netip.MustParseAddr("10.0.1.3"), "c": netip.MustParseAddr("10.0.1.4")}

	for _, brnf := range []string{"0", "1"} {
		t.Run("br_netfilter="+brnf, func(t *testing.T) {
			if err := os.WriteFile(brNetfilterSysctl, []byte(brnf+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := n.ensureHost(); err != nil {
				t.Fatal(err)
			}
			for _, task := range []string{"a", "b", "c"} {
				if _, err := n.ensureTask(task, ip[task]); err != nil {
					t.Fatal(err)
				}
			}
			checkNoIptablesChains(t, backend)
			// b listens; a sends one datagram from each source.
			var conn net.PacketConn
			if err := inNetnsPath(n.netnsPath("b"), func() (err error) {
				conn, err = net.ListenPacket("udp4", "10.0.1.3:9000")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			aNS := n.netnsPath("a")
			for _, args := range [][]string{
				// Extra addresses a forges (root in a task, or raw sockets,
				// can send from any of them).
				{"addr", "replace", "10.0.0.5/32", "dev", "eth0"},
				{"addr", "replace", "10.0.1.4/32", "dev", "eth0"},
				{"addr", "replace", "10.0.1.77/32", "dev", "eth0"},
				// Frames go to the host (the bridge's MAC) whatever source
				// a picks, so the ARP check alone cannot hide the IP check.
				{"neigh", "replace", "10.0.1.3", "lladdr", bridgeMAC(block).String(), "dev", "eth0", "nud", "permanent"},
			} {
				if out, err := exec.Command("nsenter", append([]string{"--net=" + aNS, "ip"}, args...)...).CombinedOutput(); err != nil {
					t.Fatalf("ip %v in a: %v %s", args, err, out)
				}
			}
			sources := []string{"10.0.1.2", "10.0.0.5", "10.0.1.4", "10.0.1.77"}
			for _, src := range sources {
				if err := inNetnsPath(aNS, func() error {
					c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)}, &net.UDPAddr{IP: net.ParseIP("10.0.1.3"), Port: 9000})
					if err != nil {
						return err
					}
					defer c.Close()
					for range 3 {
						if _, err := c.Write([]byte(src)); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					t.Fatalf("send from %s: %v", src, err)
				}
			}
			got := map[string]string{} // payload -> source seen by b
			buf := make([]byte, 64)
			for {
				conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				k, from, err := conn.ReadFrom(buf)
				if err != nil {
					break
				}
				got[string(buf[:k])] = from.(*net.UDPAddr).IP.String()
			}
			if got["10.0.1.2"] != "10.0.1.2" {
				t.Errorf("a's datagram from its own address did not reach b (got %v)", got)
			}
			for _, forged := range sources[1:] {
				if from, ok := got[forged]; ok {
					t.Errorf("a's datagram forged from %s reached b (seen from %s)", forged, from)
				}
			}

			// The node's ports: DNS on the bridge address is open to
			// tasks, the rest (here the API port) is not.
			bridgeIP := "10.0.1.1"
			api, err := net.Listen("tcp4", bridgeIP+":7946")
			if err != nil {
				t.Fatal(err)
			}
			defer api.Close()
			dnsTCP, err := net.Listen("tcp4", bridgeIP+":53")
			if err != nil {
				t.Fatal(err)
			}
			defer dnsTCP.Close()
			dial := func(addr string) error {
				return inNetnsPath(n.netnsPath("b"), func() error {
					c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
					if err == nil {
						c.Close()
					}
					return err
				})
			}
			if err := dial(bridgeIP + ":53"); err != nil {
				t.Errorf("task cannot reach DNS (tcp 53) on its node: %v", err)
			}
			if err := dial(bridgeIP + ":7946"); err == nil {
				t.Errorf("task reached its node's API port %s:7946", bridgeIP)
			}
			if out, err := exec.Command("nsenter", "--net="+n.netnsPath("b"), "ping", "-c", "1", "-W", "3", bridgeIP).CombinedOutput(); err != nil {
				t.Errorf("task cannot ping its gateway: %v\n%s", err, out)
			}
		})
	}
}

// A restarted daemon (a new network with nothing in memory) that sets up
// one task keeps the other running tasks' ports open: it reads their
// addresses from their namespaces first. Cleanup removes the chain and its
// jumps, and a second cleanup finds nothing to do.
func TestPortSourcesSurviveRestartAndCleanup(t *testing.T) {
	for _, b := range hostfw.Backends {
		t.Run(b, func(t *testing.T) {
			if err := hostfw.UseBackend(t, b); err != nil {
				t.Fatal(err)
			}
			testPortSourcesSurviveRestartAndCleanup(t, b)
		})
	}
}

func testPortSourcesSurviveRestartAndCleanup(t *testing.T, backend string) {
	if !testnode.Enter(t, "ospfr") {
		return
	}
	block := netip.MustParsePrefix("10.0.1.0/24")
	mk := func() *network {
		return &network{bridge: "warren-br0", overlay: "warren0", block: block, nsDir: "/run/warren-test-netns"}
	}
	n := mk()
	t.Cleanup(func() {
		for _, task := range []string{"a", "b"} {
			n.removeTask(task)
		}
		n.removeHost()
	})
	if err := n.ensureHost(); err != nil {
		t.Fatal(err)
	}
	checkNoIptablesChains(t, backend)
	for task, ip := range map[string]string{"a": "10.0.1.2", "b": "10.0.1.3"} {
		if _, err := n.ensureTask(task, netip.MustParseAddr(ip)); err != nil {
			t.Fatal(err)
		}
	}
	restarted := mk()
	if _, err := restarted.ensureTask("a", netip.MustParseAddr("10.0.1.2")); err != nil {
		t.Fatal(err)
	}
	rules := listPortRules(t)
	for _, want := range []string{"-i " + hostVethName("a") + " --ip-src 10.0.1.2", "-i " + hostVethName("b") + " --ip-src 10.0.1.3", "-i wv+ -j DROP"} {
		if !strings.Contains(rules, want) {
			t.Errorf("after a restart and one task set up, the chain lacks %q:\n%s", want, rules)
		}
	}
	if out, err := exec.Command("nsenter", "--net="+n.netnsPath("b"), "ping", "-c", "1", "-W", "3", "10.0.1.2").CombinedOutput(); err != nil {
		t.Errorf("b cannot reach a after the restart: %v\n%s", err, out)
	}
	for range 2 {
		if err := restarted.removeHost(); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
	}
	if out, _ := exec.Command("ebtables-nft", "-t", "filter", "-L").CombinedOutput(); strings.Contains(string(out), chainTaskSource) {
		t.Fatalf("cleanup left the bridge chain or its jumps:\n%s", out)
	}
}

// checkNoIptablesChains fails t when the nftables backend left a warren
// chain in iptables.
func checkNoIptablesChains(t *testing.T, backend string) {
	if backend != hostfw.BackendNftables {
		return
	}
	if out, _ := exec.Command("iptables-save").CombinedOutput(); strings.Contains(string(out), "WARREN") {
		t.Errorf("nftables backend, yet iptables-save shows warren's chains:\n%s", out)
	}
	if out, err := exec.Command("nft", "list", "table", "inet", "warren").CombinedOutput(); err != nil || !strings.Contains(string(out), "filter-WARREN-TASK-") {
		t.Errorf("nftables backend, yet table inet warren holds no task chain: %v\n%s", err, out)
	}
}

// listPortRules is what ebtables holds in our chain, for failure messages.
func listPortRules(t *testing.T) string {
	out, err := exec.Command("ebtables-nft", "-t", "filter", "-L", chainTaskSource).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(ebtables: %v %s)", err, out)
	}
	return string(out)
}
