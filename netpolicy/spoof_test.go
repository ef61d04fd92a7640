package netpolicy

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// The exemption of node addresses from ingress policies holds only for
// packets that arrive on the overlay: a task that forges a WireGuard
// subnet source and sends from the bridge side gets no exemption, while
// another node's traffic (on the overlay) still has it.
//
// A node namespace routes between three legs: "ov0" (the overlay, a peer
// node 10.0.0.2 behind it), "brx" (a task 10.0.1.2 that also holds the
// forged 10.0.0.5) and "vx" (a victim task 10.0.2.2 that a policy denies
// every ingress).
func TestNodeExemptionOnlyOnOverlay(t *testing.T) {
	requireRoot(t)
	node := newNetns(t, "node")
	peer := newNetns(t, "peer")
	taskNS := newNetns(t, "task")
	victim := newNetns(t, "victim")
	link := func(nodeIf, other, nodeAddr, otherAddr, gw string) {
		mustRun(t, "ip", "link", "add", nodeIf, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", other)
		nsRun(t, node, "ip", "addr", "add", nodeAddr, "dev", nodeIf)
		nsRun(t, node, "ip", "link", "set", nodeIf, "up")
		nsRun(t, other, "ip", "addr", "add", otherAddr, "dev", "eth0")
		nsRun(t, other, "ip", "link", "set", "eth0", "up")
		nsRun(t, other, "ip", "route", "add", "default", "via", gw)
	}
	link("ov0", peer, "10.0.0.1/24", "10.0.0.2/24", "10.0.0.1")
	link("brx", taskNS, "10.0.1.1/24", "10.0.1.2/24", "10.0.1.1")
	link("vx", victim, "10.0.2.1/24", "10.0.2.2/24", "10.0.2.1")
	nsRun(t, taskNS, "ip", "addr", "add", "10.0.0.5/32", "dev", "eth0")
	nsRun(t, node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for _, ifc := range []string{"all", "ov0", "brx", "vx"} {
		// The policy layer alone: reverse-path filtering (which orchestrate
		// turns on for the bridge) would hide what the rules do.
		nsRun(t, node, "sysctl", "-qw", "net.ipv4.conf."+ifc+".rp_filter=0")
	}

	pols := mustParse(t, `
apiVersion: warren.io/v1
kind: NetworkPolicy
metadata: {name: deny-victim}
spec:
  podSelector: {matchLabels: {app: victim}}
  policyTypes: [Ingress]
`)
	a, _, _ := newApplier(t, node)
	in := Input{Policies: pols, Tasks: []Task{task("victim-1", "10.0.2.2", "app", "victim")},
		NodeSubnet: netip.MustParsePrefix("10.0.0.0/24"), Overlay: "ov0"}
	syncIn(t, node, a, Render(in))

	var conn net.PacketConn
	mustInNetns(t, victim, func() (err error) { conn, err = net.ListenPacket("udp4", "10.0.2.2:9000"); return err })
	defer conn.Close()
	send := func(ns, src string) {
		mustInNetns(t, ns, func() error {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)}, &net.UDPAddr{IP: net.ParseIP("10.0.2.2"), Port: 9000})
			if err != nil {
				return err
			}
			defer c.Close()
			for range 3 {
				if _, err := c.Write([]byte(ns[strings.LastIndex(ns, "-")+1:] + " " + src)); err != nil {
					return err
				}
				time.Sleep(50 * time.Millisecond)
			}
			return nil
		})
	}
	send(peer, "10.0.0.2")
	send(taskNS, "10.0.1.2")
	send(taskNS, "10.0.0.5")
	got := map[string]bool{}
	buf := make([]byte, 64)
	for {
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, _, err := conn.ReadFrom(buf)
		if err != nil {
			break
		}
		got[string(buf[:k])] = true
	}
	if !got["peer 10.0.0.2"] {
		t.Errorf("another node's traffic on the overlay lost its exemption (got %v)", got)
	}
	if got["task 10.0.1.2"] {
		t.Errorf("the policy let a task through with its own address")
	}
	if got["task 10.0.0.5"] {
		t.Errorf("a task forging a node address from the bridge side passed the policy as node traffic")
	}
}
