package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// peerView is the part of `warren cluster peer ls --json` the test reads.
type peerView struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Imports []struct {
		Peer      string   `json:"peer"`
		Service   string   `json:"service"`
		VIP       string   `json:"vip"`
		Endpoints []string `json:"endpoints"`
	} `json:"imports"`
}

func peers(ctx context.Context, n *lab.Node) ([]peerView, error) {
	out, err := n.Exec(ctx, "warren", "cluster", "peer", "ls", "--json")
	if err != nil {
		return nil, fmt.Errorf("peer ls: %w: %s", err, out)
	}
	var v []peerView
	return v, json.Unmarshal([]byte(out), &v)
}

func waitPeerConnected(t *testing.T, ctx context.Context, n *lab.Node, name string) peerView {
	t.Helper()
	var got peerView
	eventually(t, 2*time.Minute, n.Name+" sees peer "+name+" connected", func() error {
		ps, err := peers(ctx, n)
		if err != nil {
			return err
		}
		for _, p := range ps {
			if p.Name == name && p.Status == "connected" {
				got = p
				return nil
			}
		}
		return fmt.Errorf("peers %+v", ps)
	})
	return got
}

// pageCmd serves "<prefix>-<task name>" on port 80.
func pageCmd(prefix string) []string {
	return []string{"--", "sh", "-c", "mkdir -p /www && echo " + prefix + "-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"}
}

// answers fetches url n times from a task and counts the pages.
func answers(ctx context.Context, n *lab.Node, task, url string, times int) (map[string]int, error) {
	out, err := taskExec(ctx, n, task, "sh", "-c", fmt.Sprintf("for i in $(seq %d); do httpget %s || echo FAIL; done", times, url))
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, line := range strings.Split(trim(out), "\n") {
		counts[trim(line)]++
	}
	return counts, nil
}

// Seed "Multi-Cluster Networking (Future)": clusters A (default ranges)
// and B (its own) peer with a token and see each other connected; C, with
// A's ranges, is refused naming them. A task in A reaches B's exported web
// as web.b.warren.local through a VIP of A's range, answered by both of
// B's tasks, through the gateways (A's task runs on A's worker, not on
// the gateway); B's unexported service is not reachable; a federated
// secret made in B is read by a task in A; web.global
// answers from A's own task while it exists and from B's after A scales
// to 0; peer rm removes the names.
func TestFederation(t *testing.T) {
	l := newLab(t)
	img := []string{imageTarball(t)}
	a := startCluster(t, l, lab.ClusterOptions{NamePrefix: "a-", Workers: 1, Images: img})
	b := startCluster(t, l, lab.ClusterOptions{NamePrefix: "b-", Images: img,
		ManagerWireGuardExtra: "subnet = \"10.20.0.0/24\"\n",
		ManagerExtra:          "[network]\ncontainer_subnet = \"10.20.0.0/16\"\nvip_subnet = \"10.21.0.0/16\"\n"})
	c := startCluster(t, l, lab.ClusterOptions{NamePrefix: "c-"})
	ctx := ctxFor(t, 15*time.Minute)

	token := func(n *lab.Node) string {
		out, err := n.Exec(ctx, "warren", "cluster", "peer", "token", "-q")
		if err != nil {
			t.Fatalf("peer token on %s: %v: %s", n.Name, err, out)
		}
		return trim(out)
	}
	// C has A's ranges: refused, naming them; nothing recorded.
	out, err := a.Manager.Exec(ctx, "warren", "cluster", "peer", "add", "c", "--token", token(c.Manager))
	if err == nil || !strings.Contains(out, "WireGuard subnet 10.0.0.0/24") || !strings.Contains(out, "VIP subnet 10.1.0.0/16") {
		t.Fatalf("peering with C (A's ranges): %v\n%s", err, out)
	}
	if ps, err := peers(ctx, c.Manager); err != nil || len(ps) != 0 {
		t.Fatalf("C recorded a refused peering: %+v %v", ps, err)
	}

	// B's services: web (2 tasks, exported) and hidden (not exported).
	createService(t, b, "web", append([]string{"--replicas", "2"}, pageCmd("B")...)...)
	createService(t, b, "hidden", pageCmd("H")...)
	bweb := waitRunning(t, b, "web", 2)
	hidden := waitRunning(t, b, "hidden", 1)
	if out, err := b.Manager.Exec(ctx, "warren", "service", "export", "web"); err != nil {
		t.Fatalf("service export: %v: %s", err, out)
	}

	if out, err := a.Manager.Exec(ctx, "warren", "cluster", "peer", "add", "b", "--token", token(b.Manager), "--as", "a"); err != nil {
		t.Fatalf("peer add b: %v: %s", err, out)
	}
	waitPeerConnected(t, ctx, a.Manager, "b")
	waitPeerConnected(t, ctx, b.Manager, "a")
	if out, err := a.Manager.Exec(ctx, "curl", "-sS", "http://127.0.0.1:9586/metrics"); err != nil || !strings.Contains(out, `warren_cluster_peer_connected{peer="b"} 1`) {
		t.Errorf("A's manager metrics lack warren_cluster_peer_connected{peer=\"b\"} 1: %v", err)
	}

	// A federated secret made in B is read by a task in A.
	if out, err := b.Manager.Sh(ctx, "printf %s fed-s3cret | warren secret create fedpass -f - --federated"); err != nil {
		t.Fatalf("secret create --federated: %v: %s", err, out)
	}
	eventually(t, time.Minute, "A holds B's federated secret", func() error {
		out, err := a.Manager.Exec(ctx, "warren", "secret", "inspect", "fedpass", "--json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if !strings.Contains(out, `"from": "b"`) {
			return fmt.Errorf("inspect: %s", out)
		}
		return nil
	})
	createService(t, a, "reader", append([]string{"--secret", "fedpass", "--constraint", "node.name==a-worker-1"}, pageCmd("R")...)...)
	reader := waitRunning(t, a, "reader", 1).Tasks[0]
	eventually(t, 30*time.Second, "A's task reads the federated secret", func() error {
		out, err := taskExec(ctx, nodeByName(a, reader.Node), reader.Name, "cat", "/run/secrets/fedpass")
		if err != nil {
			return err
		}
		if out != "fed-s3cret" {
			return fmt.Errorf("/run/secrets/fedpass holds %q", out)
		}
		return nil
	})

	// A's client task on A's worker (not the gateway).
	createService(t, a, "client", append([]string{"--constraint", "node.name==a-worker-1"}, pageCmd("C")...)...)
	client := waitRunning(t, a, "client", 1).Tasks[0]
	worker := nodeByName(a, client.Node)

	var vip string
	eventually(t, time.Minute, "A imports web from B with both endpoints", func() error {
		ps, err := peers(ctx, a.Manager)
		if err != nil {
			return err
		}
		for _, p := range ps {
			for _, im := range p.Imports {
				if im.Service == "web" && len(im.Endpoints) == 2 {
					vip = im.VIP
					return nil
				}
			}
		}
		return fmt.Errorf("peers %+v", ps)
	})
	if !netip.MustParsePrefix("10.1.0.0/16").Contains(netip.MustParseAddr(vip)) {
		t.Errorf("web.b's VIP %s is not in A's VIP range 10.1.0.0/16", vip)
	}
	eventually(t, 90*time.Second, "web.b.warren.local resolves to the import's VIP in A's task", func() error {
		out, err := taskExec(ctx, worker, client.Name, "nslookup", "web.b.warren.local")
		if err != nil {
			return err
		}
		if !strings.Contains(out, vip) {
			return fmt.Errorf("nslookup says %q, want %s", out, vip)
		}
		return nil
	})
	eventually(t, 90*time.Second, "web.b.warren.local answers from A's task", func() error {
		// httpget: the image's static-glibc wget cannot resolve names.
		_, err := taskExec(ctx, worker, client.Name, "httpget", "http://web.b.warren.local/")
		return err
	})
	counts, err := answers(ctx, worker, client.Name, "http://web.b.warren.local/", 40)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range bweb.Tasks {
		if counts["B-"+task.Name] == 0 {
			t.Errorf("B's task %s never answered web.b.warren.local: %v", task.Name, counts)
		}
	}
	if counts["FAIL"] > 0 {
		t.Errorf("some requests to web.b failed: %v", counts)
	}
	t.Logf("web.b.warren.local from %s (A): %v", client.Name, counts)
	// The gateways' WireGuard link shows in network status --cluster.
	eventually(t, time.Minute, "network status --cluster shows a healthy gateway link to b", func() error {
		out, err := a.Manager.Exec(ctx, "warren", "network", "status", "--cluster", "--json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var st struct {
			Gateways []struct {
				Peer    string `json:"peer"`
				From    string `json:"from"`
				Healthy bool   `json:"healthy"`
				Problem string `json:"problem"`
			} `json:"gateways"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		if len(st.Gateways) != 1 || st.Gateways[0].Peer != "b" || st.Gateways[0].From != "a-manager-1" || !st.Gateways[0].Healthy {
			return fmt.Errorf("gateways %+v", st.Gateways)
		}
		return nil
	})
	// By task IP: B's exported task answers (the path works without the
	// VIP), B's unexported one does not (the gateway drops it).
	if out, err := taskExec(ctx, worker, client.Name, "httpget", "http://"+bweb.Tasks[0].IP+"/"); err != nil || trim(out) != "B-"+bweb.Tasks[0].Name {
		t.Errorf("A's task fetching B's exported task %s by IP: %q %v", bweb.Tasks[0].IP, out, err)
	}
	if out, err := taskExec(ctx, worker, client.Name, "httpget", "http://"+hidden.Tasks[0].IP+"/"); err == nil {
		t.Errorf("A's task reached B's unexported task %s: %q", hidden.Tasks[0].IP, out)
	}

	// web.global: A's own web while it serves, B's once A scales to 0.
	createService(t, a, "web", pageCmd("A")...)
	waitRunning(t, a, "web", 1)
	eventually(t, time.Minute, "web.global answers from A's own task", func() error {
		counts, err := answers(ctx, worker, client.Name, "http://web.global.warren.local/", 10)
		if err != nil {
			return err
		}
		if counts["A-web-1"] != 10 {
			return fmt.Errorf("answers %v, want A-web-1 only", counts)
		}
		return nil
	})
	if out, err := a.Manager.Exec(ctx, "warren", "service", "scale", "web=0", "--detach"); err != nil {
		t.Fatalf("scale: %v: %s", err, out)
	}
	start := time.Now()
	eventually(t, 2*time.Minute, "web.global fails over to B", func() error {
		counts, err := answers(ctx, worker, client.Name, "http://web.global.warren.local/", 10)
		if err != nil {
			return err
		}
		for k := range counts {
			if !strings.HasPrefix(k, "B-") {
				return fmt.Errorf("answers %v, want B's tasks only", counts)
			}
		}
		return nil
	})
	failover := time.Since(start)
	// A figure, not an assert (the machine is shared): the leader replans
	// imports every 5 s.
	t.Logf("web.global failed over to B in %s", failover.Round(100*time.Millisecond))

	// peer rm on A: both sides forget, the names go.
	if out, err := a.Manager.Exec(ctx, "warren", "cluster", "peer", "rm", "b"); err != nil {
		t.Fatalf("peer rm: %v: %s", err, out)
	}
	if ps, err := peers(ctx, b.Manager); err != nil || len(ps) != 0 {
		t.Errorf("B still lists peers after A's rm: %+v %v", ps, err)
	}
	eventually(t, time.Minute, "web.b.warren.local is gone", func() error {
		out, err := taskExec(ctx, worker, client.Name, "nslookup", "web.b.warren.local")
		if err == nil && strings.Contains(out, vip) {
			return fmt.Errorf("still resolves: %q", out)
		}
		return nil
	})
}

// Seed "Multi-Cluster Networking": the gateway moves with the leader. A
// has three managers; B's web is reached from a task on a manager of A
// that is not the leader; A's leader (the gateway) is killed; after the
// new leader takes the gateway over and B learns of it, web.b answers
// again from the same task.
func TestFederationGatewayFailover(t *testing.T) {
	l := newLab(t)
	img := []string{imageTarball(t)}
	a := startCluster(t, l, lab.ClusterOptions{NamePrefix: "a-", Managers: 2, Images: img})
	b := startCluster(t, l, lab.ClusterOptions{NamePrefix: "b-", Images: img,
		ManagerWireGuardExtra: "subnet = \"10.20.0.0/24\"\n",
		ManagerExtra:          "[network]\ncontainer_subnet = \"10.20.0.0/16\"\nvip_subnet = \"10.21.0.0/16\"\n"})
	ctx := ctxFor(t, 10*time.Minute)
	createService(t, b, "web", append([]string{"--replicas", "2"}, pageCmd("B")...)...)
	waitRunning(t, b, "web", 2)
	if out, err := b.Manager.Exec(ctx, "warren", "service", "export", "web"); err != nil {
		t.Fatalf("service export: %v: %s", err, out)
	}
	tok, err := b.Manager.Exec(ctx, "warren", "cluster", "peer", "token", "-q")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := a.Manager.Exec(ctx, "warren", "cluster", "peer", "add", "b", "--token", trim(tok), "--as", "a"); err != nil {
		t.Fatalf("peer add b: %v: %s", err, out)
	}
	waitPeerConnected(t, ctx, a.Manager, "b")
	leader, err := leaderIn(ctx, a, a.Manager)
	if err != nil {
		t.Fatal(err)
	}
	var other *lab.Node
	for _, n := range a.Nodes() {
		if n != leader {
			other = n
			break
		}
	}
	createService(t, a, "client", append([]string{"--constraint", "node.name==" + other.Name}, pageCmd("C")...)...)
	client := waitRunning(t, a, "client", 1).Tasks[0]
	fetch := func() error {
		out, err := taskExec(ctx, other, client.Name, "httpget", "http://web.b.warren.local/")
		if err == nil && !strings.HasPrefix(trim(out), "B-web-") {
			err = fmt.Errorf("page %q", out)
		}
		return err
	}
	eventually(t, 90*time.Second, "web.b answers through the first gateway", fetch)

	if err := leader.StopAppliance(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, 3*time.Minute, "web.b answers through the new gateway", fetch)
	t.Logf("web.b answered again %s after the gateway (A's leader %s) was killed", time.Since(start).Round(100*time.Millisecond), leader.Name)
	newLeader, err := leaderIn(ctx, a, other)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "B's gateway link names A's new gateway", func() error {
		out, err := b.Manager.Exec(ctx, "warren", "network", "status", "--cluster", "--json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if !strings.Contains(out, newLeader.LANIP.String()+":") {
			return fmt.Errorf("B's gateway links do not name %s (%s): %s", newLeader.Name, newLeader.LANIP, out)
		}
		return nil
	})
}
