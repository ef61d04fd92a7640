package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// localPeer is the part of `warren network status --json` a path check
// reads.
type localPeer struct {
	Node     string `json:"node"`
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Path     string `json:"path"`
	Relay    string `json:"relay"`
	// RelayTransport is "udp" or "tls" for a relayed peer.
	RelayTransport string `json:"relay_transport"`
}

// peerOf returns node n's view of its peer node `to` from `warren network
// status --json`.
func peerOf(ctx context.Context, n *lab.Node, to string) (localPeer, error) {
	out, err := n.Exec(ctx, "warren", "network", "status", "--json")
	if err != nil {
		return localPeer{}, err
	}
	var st struct {
		Peers []localPeer `json:"peers"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return localPeer{}, fmt.Errorf("network status --json: %w: %s", err, out)
	}
	for _, p := range st.Peers {
		if p.Node == to {
			return p, nil
		}
	}
	return localPeer{}, fmt.Errorf("%s has no peer %s: %s", n.Name, to, out)
}

// waitDirect waits until node from reaches node to directly at an address
// of router via (the other site's NAT), with a fresh handshake, and checks
// WireGuard itself (wg show) agrees.
func waitDirect(t *testing.T, from, to *lab.Node, via netip.Addr, timeout time.Duration) localPeer {
	t.Helper()
	ctx := ctxFor(t, timeout+30*time.Second)
	var p localPeer
	eventually(t, timeout, fmt.Sprintf("%s reaches %s directly through %s", from.Name, to.Name, via), func() error {
		var err error
		if p, err = peerOf(ctx, from, to.Name); err != nil {
			return err
		}
		ep, err := netip.ParseAddrPort(p.Endpoint)
		if err != nil || p.Path != "direct" || ep.Addr() != via || !p.Healthy {
			return fmt.Errorf("peer %s: %+v", to.Name, p)
		}
		return nil
	})
	show, err := from.Exec(ctx, "wg", "show", "warren0", "endpoints")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(show, "\t"+p.Endpoint) {
		t.Errorf("%s: wg show endpoints lacks %s:\n%s", from.Name, p.Endpoint, show)
	}
	return p
}

// Seed "NAT Traversal - Works across NAT boundaries" and "Use keepalive
// packets": a manager on the LAN and two workers, each alone behind its own
// NAT router, default configs (no advertise address, no endpoint set).
// Issue 24's scenarios, in order, on one cluster:
//  1. port-keeping NATs: the workers' WireGuard traffic goes router to
//     router, tasks at both sites reach each other, a 3-replica VIP
//     answers from every task on every node;
//  2. both routers switched to symmetric NAT, conntrack flushed: the
//     workers reach each other again within 90 s, relayed (over UDP) by
//     the manager;
//  3. one site drops its outgoing UDP: it reaches the manager and the
//     other site again within 90 s, relayed over TCP (TLS);
//  4. the routers go back to port-keeping NAT (conntrack flushed): the
//     relayed pair goes direct again by itself (it kept probing), router
//     to router, without anyone touching the nodes.
func TestNATTraversalAcrossTwoSites(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, WorkersBehindNAT: true, Images: []string{imageTarball(t)}})
	w1, w2 := c.Workers[0], c.Workers[1]
	r1, r2 := c.Routers[0], c.Routers[1]
	ctx := ctxFor(t, 10*time.Minute)

	t.Run("port-keeping NATs: direct, router to router", func(t *testing.T) {
		// Each worker's WireGuard endpoint for the other is the other
		// site's router (its NAT mapping), not the worker's private
		// address and not the manager.
		p12 := waitDirect(t, w1, w2, r2.LANIP, 2*time.Minute)
		p21 := waitDirect(t, w2, w1, r1.LANIP, time.Minute)
		if got := metricPath(t, ctx, w1, w2.Name); got != "direct" {
			t.Errorf("worker-1 /metrics: warren_peer_path for worker-2 is %q, want direct", got)
		}
		// The routers' conntrack tables hold the UDP flow between the two
		// routers' mappings, answered in both directions.
		for _, c := range []struct {
			r        *lab.Router
			site     netip.Addr
			otherEnd string
		}{{r1, w1.LANIP, p12.Endpoint}, {r2, w2.LANIP, p21.Endpoint}} {
			flows, err := c.r.UDPFlows(ctx)
			if err != nil {
				t.Fatal(err)
			}
			other := netip.MustParseAddrPort(c.otherEnd)
			want := fmt.Sprintf("src=%s dst=%s sport=51820 dport=%d", c.site, other.Addr(), other.Port())
			found := false
			for _, f := range flows {
				// Answered: conntrack saw the reply direction (it marks
				// the flow ASSURED only once it lasted a few seconds).
				found = found || (strings.Contains(f, want) && !strings.Contains(f, "[UNREPLIED]"))
			}
			if !found {
				t.Errorf("%s: no answered UDP flow %q in conntrack:\n%s", c.r.Name, want, strings.Join(flows, "\n"))
			}
		}
		// Both sites reach the manager and each other over the overlay.
		for _, n := range c.Nodes() {
			for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
				eventually(t, 30*time.Second, n.Name+" pings "+ip, func() error {
					_, err := n.Exec(ctx, "ping", "-c1", "-W1", ip)
					return err
				})
			}
		}
	})

	t.Run("tasks at both sites and a 3-replica VIP", func(t *testing.T) {
		createService(t, c, "web", append([]string{"--replicas", "3"}, httpdCommand...)...)
		v := waitRunning(t, c, "web", 3)
		nodes := map[string]bool{}
		for _, task := range v.Tasks {
			nodes[task.Node] = true
		}
		if !nodes[w1.Name] || !nodes[w2.Name] {
			t.Fatalf("want a task at each site, tasks on %v", nodes)
		}
		tasks := taskNames(v)
		// Every task reaches every other task by its address.
		for _, from := range v.Tasks {
			for _, to := range v.Tasks {
				out, err := taskExec(ctx, nodeByName(c, from.Node), from.Name, "wget", "-qO-", "http://"+to.IP+"/")
				if err != nil || trim(out) != to.Name {
					t.Errorf("task %s (%s) -> task %s (%s): %q, %v", from.Name, from.Node, to.Name, to.IP, out, err)
				}
			}
		}
		// The VIP answers from every node and every task, with every task.
		url := "http://" + v.VIP + "/"
		const n = 60
		for _, node := range c.Nodes() {
			out, err := node.Sh(ctx, fmt.Sprintf("for i in $(seq %d); do curl -sS -m 3 %s || echo FAIL; done", n, url))
			if err != nil {
				t.Fatal(err)
			}
			if err := onlyPages(countLines(out), tasks, true); err != nil {
				t.Errorf("VIP from %s: %v", node.Name, err)
			}
		}
		for _, task := range v.Tasks {
			out, err := taskExec(ctx, nodeByName(c, task.Node), task.Name, "sh", "-c", fmt.Sprintf("for i in $(seq %d); do wget -qO- %s || echo FAIL; done", n, url))
			if err != nil {
				t.Fatal(err)
			}
			if err := onlyPages(countLines(out), tasks, true); err != nil {
				t.Errorf("VIP from task %s: %v", task.Name, err)
			}
		}
	})

	m := c.Manager
	t.Run("symmetric NATs, conntrack flushed: relayed over UDP within 90 s", func(t *testing.T) {
		for _, r := range []*lab.Router{r1, r2} {
			if err := r.SetNAT(ctx, lab.NATSymmetric); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		waitRelayed(t, w1, w2, m.Name, "udp", 90*time.Second)
		waitRelayed(t, w2, w1, m.Name, "udp", 30*time.Second)
		t.Logf("relayed after %s", time.Since(start).Round(time.Second))
		pingOverlay(t, ctx, w1, "10.0.0.3", 30*time.Second)
		pingOverlay(t, ctx, w2, "10.0.0.2", 30*time.Second)
		if n := relayedBytes(t, ctx, m, "udp"); n == 0 {
			t.Fatal("the manager's relay counts no bytes relayed over UDP")
		}
		// Visible: /metrics, the PATH column, and the manager's matrix.
		if got := metricPath(t, ctx, w1, w2.Name); got != "relay" {
			t.Errorf("worker-1 /metrics: warren_peer_path for worker-2 is %q, want relay", got)
		}
		if out, err := w1.Exec(ctx, "warren", "network", "status"); err != nil || !strings.Contains(out, "relay via "+m.Name) {
			t.Errorf("worker-1 network status has no \"relay via %s\": %v\n%s", m.Name, err, out)
		}
		eventually(t, 30*time.Second, "network status --cluster marks worker-1 -> worker-2 relayed", func() error {
			out, err := m.Exec(ctx, "warren", "network", "status", "--cluster")
			if err != nil {
				return err
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "worker-1 ") && strings.Contains(line, "(relay)") {
					return nil
				}
			}
			return fmt.Errorf("no relayed cell in worker-1's row:\n%s", out)
		})
	})

	t.Run("one site drops outgoing UDP: relayed over TCP within 90 s", func(t *testing.T) {
		if err := r1.BlockUDP(ctx, true); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r1.BlockUDP(context.Background(), false) })
		before := relayedBytes(t, ctx, m, "tls")
		start := time.Now()
		waitRelayed(t, w1, m, m.Name, "tls", 90*time.Second)
		waitRelayed(t, w1, w2, m.Name, "tls", 90*time.Second)
		t.Logf("relayed over TCP after %s", time.Since(start).Round(time.Second))
		pingOverlay(t, ctx, w1, "10.0.0.1", 30*time.Second)
		pingOverlay(t, ctx, w1, "10.0.0.3", 30*time.Second)
		pingOverlay(t, ctx, w2, "10.0.0.2", 30*time.Second)
		if after := relayedBytes(t, ctx, m, "tls"); after <= before {
			t.Fatalf("the manager's relay counts no new bytes relayed over TLS (%.0f, then %.0f)", before, after)
		}
	})

	t.Run("routers back to port-keeping: direct again by itself", func(t *testing.T) {
		// Scenario 3's cleanup let the site's UDP out again; the pair is
		// relayed (scenario 2's symmetric NATs) until the NATs keep ports.
		waitRelayed(t, w1, w2, m.Name, "udp", 90*time.Second)
		for _, r := range []*lab.Router{r1, r2} {
			if err := r.SetNAT(ctx, lab.NATPortKeeping); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		waitDirect(t, w1, w2, r2.LANIP, 2*time.Minute)
		waitDirect(t, w2, w1, r1.LANIP, time.Minute)
		t.Logf("direct again after %s", time.Since(start).Round(time.Second))
		pingOverlay(t, ctx, w1, "10.0.0.3", 30*time.Second)
		pingOverlay(t, ctx, w2, "10.0.0.2", 30*time.Second)
	})
}

// waitRelayed waits until node from reaches node to through relay node
// via over transport ("udp" or "tls"), with a fresh handshake.
func waitRelayed(t *testing.T, from, to *lab.Node, via, transport string, timeout time.Duration) {
	t.Helper()
	ctx := ctxFor(t, timeout+30*time.Second)
	eventually(t, timeout, fmt.Sprintf("%s reaches %s through relay %s over %s", from.Name, to.Name, via, transport), func() error {
		p, err := peerOf(ctx, from, to.Name)
		if err != nil {
			return err
		}
		if p.Path != "relay" || p.Relay != via || p.RelayTransport != transport || !p.Healthy {
			return fmt.Errorf("peer %s: %+v", to.Name, p)
		}
		return nil
	})
}

// pingOverlay waits until n pings overlay address ip.
func pingOverlay(t *testing.T, ctx context.Context, n *lab.Node, ip string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, n.Name+" pings "+ip, func() error {
		_, err := n.Exec(ctx, "ping", "-c1", "-W1", ip)
		return err
	})
}

// relayedBytes reads warren_relay_bytes_total{transport} from n's /metrics.
func relayedBytes(t *testing.T, ctx context.Context, n *lab.Node, transport string) float64 {
	t.Helper()
	out, err := n.Exec(ctx, "curl", "-sS", "-m", "5", "http://127.0.0.1:9586/metrics")
	if err != nil {
		t.Fatal(err)
	}
	prefix := `warren_relay_bytes_total{transport="` + transport + `"} `
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("%s's /metrics has no %s", n.Name, strings.TrimSpace(prefix))
	return 0
}

// metricPath returns the path label of node n's warren_peer_path series
// for peer that is 1 ("" if none is).
func metricPath(t *testing.T, ctx context.Context, n *lab.Node, peer string) string {
	t.Helper()
	out, err := n.Exec(ctx, "curl", "-sS", "-m", "5", "http://127.0.0.1:9586/metrics")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^warren_peer_path\{(.*)\} 1$`)
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		if strings.Contains(m[1], `friendly_name="`+peer+`"`) {
			if p := regexp.MustCompile(`path="([^"]*)"`).FindStringSubmatch(m[1]); p != nil {
				return p[1]
			}
		}
	}
	return ""
}

// countLines counts each distinct trimmed line of out.
func countLines(out string) map[string]int {
	counts := map[string]int{}
	for _, line := range strings.Split(trim(out), "\n") {
		counts[trim(line)]++
	}
	return counts
}
