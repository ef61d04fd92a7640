package integration

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/internal/testimage"
)

// Issue "observe": every node serves /metrics on its loopback (the default
// [metrics] listen) in a form promtool accepts, with one handshake series
// per peer named after the peer's node, and warren's own metrics; the
// manager's mesh matrix lists every ordered pair of nodes as healthy; each
// node's `network status` names its peers' nodes.
func TestMetricsAndMeshMatrix(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool not found: run tools/install-deps.sh (Debian package prometheus)")
	}
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)}, ClusterExtra: "node_down_after = \"10s\"\n"})
	ctx := ctxFor(t, 3*time.Minute)
	createService(t, c, "web", append([]string{"--replicas", "3"}, httpdCommand...)...)
	waitRunning(t, c, "web", 3)
	if out, err := c.Manager.Exec(ctx, "warren", "network", "dns", "web"); err != nil {
		t.Fatalf("network dns web: %v\n%s", err, out)
	}

	names := map[string]bool{"manager-1": true, "worker-1": true, "worker-2": true}
	for _, n := range c.Nodes() {
		var text string
		// Every peer has a handshake once the mesh is up (keepalive 25 s
		// starts one at once), and each node runs one web task.
		eventually(t, time.Minute, n.Name+" /metrics shows handshakes and a running task", func() error {
			var err error
			if text, err = n.Exec(ctx, "curl", "-sS", "-m", "5", "http://127.0.0.1:9586/metrics"); err != nil {
				return err
			}
			if !strings.Contains(text, `warren_tasks{state="running"} 1`+"\n") {
				return fmt.Errorf("no running task counted")
			}
			if strings.Contains(text, "} 0\n") && regexp.MustCompile(`(?m)^wireguard_latest_handshake_seconds\{.*\} 0$`).MatchString(text) {
				return fmt.Errorf("a peer without handshake")
			}
			return nil
		})
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: promtool check metrics: %v\n%s", n.Name, err, out)
		}
		// One series per peer for each of the exporter's three metrics,
		// labelled with the peer's node name.
		for _, metric := range []string{"wireguard_latest_handshake_seconds", "wireguard_sent_bytes_total", "wireguard_received_bytes_total"} {
			re := regexp.MustCompile(`(?m)^` + metric + `\{(.*)\} (\S+)$`)
			peers := map[string]bool{}
			for _, m := range re.FindAllStringSubmatch(text, -1) {
				name := regexp.MustCompile(`friendly_name="([^"]*)"`).FindStringSubmatch(m[1])
				if name == nil || !names[name[1]] || name[1] == n.Name || !strings.Contains(m[1], `interface="warren0"`) || !strings.Contains(m[1], `public_key="`) {
					t.Errorf("%s: bad %s series {%s}", n.Name, metric, m[1])
					continue
				}
				peers[name[1]] = true
			}
			if len(peers) != 2 {
				t.Errorf("%s: %s has series for %v, want one per peer (2)", n.Name, metric, peers)
			}
		}
		for _, want := range []string{
			"warren_map_version ", "warren_nat_sync_duration_seconds_bucket{", "warren_nat_sync_errors_total 0\n",
			`warren_dns_queries_total{result="noerror"} `, `warren_reconcile_errors_total{reconciler="nat"} 0` + "\n",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("%s: /metrics lacks %q", n.Name, want)
			}
		}
		if v := metricValue(text, "warren_map_version"); v < 1 {
			t.Errorf("%s: warren_map_version %v", n.Name, v)
		}
		manager := n == c.Manager
		for _, want := range []string{`warren_nodes{role="worker",status="ready"} 2`, `warren_nodes{role="manager",status="ready"} 1`,
			`warren_raft_state{state="leader"} 1`, `warren_raft_has_leader 1`, `warren_raft_voters 1`,
			`warren_service_replicas_desired{service="web"} 3`, `warren_service_replicas_running{service="web"} 3`} {
			if got := strings.Contains(text, want+"\n"); got != manager {
				t.Errorf("%s (manager %v): has %q: %v", n.Name, manager, want, got)
			}
		}
		if manager && metricValue(text, `warren_dns_queries_total{result="noerror"}`) < 1 {
			t.Errorf("manager: the resolver's answer to `network dns web` is not counted")
		}

		// `warren network status` names each peer's node.
		out, err := n.Exec(ctx, "warren", "network", "status", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Peers []struct {
				PublicKey string `json:"public_key"`
				Node      string `json:"node"`
			} `json:"peers"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Peers {
			if !names[p.Node] || p.Node == n.Name {
				t.Errorf("%s: network status peer %s has node %q", n.Name, p.PublicKey, p.Node)
			}
		}
		if out, err := n.Exec(ctx, "warren", "network", "status"); err != nil || !strings.Contains(out, "NODE") {
			t.Errorf("%s: network status table has no NODE column: %v\n%s", n.Name, err, out)
		}
	}

	// The matrix: all six ordered pairs healthy (reports come every 5 s).
	var matrix struct {
		Links []struct {
			From                string   `json:"from"`
			To                  string   `json:"to"`
			HandshakeAgeSeconds *float64 `json:"handshake_age_seconds"`
			Healthy             bool     `json:"healthy"`
			Problem             string   `json:"problem"`
		} `json:"links"`
	}
	eventually(t, time.Minute, "network status --cluster --json lists 6 healthy links", func() error {
		out, err := c.Manager.Exec(ctx, "warren", "network", "status", "--cluster", "--json")
		if err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(out), &matrix); err != nil {
			return err
		}
		pairs := map[string]bool{}
		for _, l := range matrix.Links {
			if !l.Healthy || l.HandshakeAgeSeconds == nil || *l.HandshakeAgeSeconds > 180 || !names[l.From] || !names[l.To] || l.From == l.To {
				return fmt.Errorf("link %+v", l)
			}
			pairs[l.From+">"+l.To] = true
		}
		if len(pairs) != 6 {
			return fmt.Errorf("%d distinct pairs, want 6: %s", len(pairs), out)
		}
		return nil
	})
	out, err := c.Manager.Exec(ctx, "warren", "network", "status", "--cluster")
	if err != nil || !strings.Contains(out, "all 6 links healthy") || !strings.Contains(out, "worker-2") {
		t.Errorf("network status --cluster: %v\n%s", err, out)
	}
	t.Logf("warren network status --cluster:\n%s", out)

	// worker-2 dies: once the manager marks it down, the four links from
	// and to it are unhealthy and the manager's metrics count it down.
	if err := c.Workers[1].StopAppliance(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the matrix marks worker-2's links unhealthy", func() error {
		out, err := c.Manager.Exec(ctx, "warren", "network", "status", "--cluster", "--json")
		if err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(out), &matrix); err != nil {
			return err
		}
		for _, l := range matrix.Links {
			involved := l.From == "worker-2" || l.To == "worker-2"
			if l.Healthy == involved || (involved && l.Problem != "worker-2 is down") {
				return fmt.Errorf("link %+v", l)
			}
		}
		return nil
	})
	out, err = c.Manager.Exec(ctx, "warren", "network", "status", "--cluster")
	if err != nil || !strings.Contains(out, "4 of 6 links unhealthy") || !strings.Contains(out, "worker-1 -> worker-2: worker-2 is down") {
		t.Errorf("network status --cluster with worker-2 down: %v\n%s", err, out)
	}
	t.Logf("warren network status --cluster, worker-2 down:\n%s", out)
	text, err := c.Manager.Exec(ctx, "curl", "-sS", "-m", "5", "http://127.0.0.1:9586/metrics")
	if err != nil || !strings.Contains(text, `warren_nodes{role="worker",status="down"} 1`+"\n") {
		t.Errorf("manager /metrics does not count worker-2 down: %v", err)
	}
}

// metricValue is the value of the first sample line starting with series.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// Issue "observe": service create, scale, update and rm wait until the
// cluster has converged, printing each task's state; --detach returns at
// once; --timeout gives up naming the stuck task.
func TestServiceVerbsWaitForConvergence(t *testing.T) {
	l := newLab(t)
	v2, err := testimage.BusyboxTarball(t.TempDir(), testImageV2)
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t), v2}})
	ctx := ctxFor(t, 5*time.Minute)
	m := c.Manager
	// containers lists the web task containers on every node.
	containers := func() []string {
		var out []string
		for _, n := range c.Nodes() {
			list, err := n.Exec(ctx, "ctr", "-n", "warren", "containers", "list", "-q")
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range strings.Fields(list) {
				if strings.HasPrefix(id, "web-") {
					out = append(out, n.Name+"/"+id)
				}
			}
		}
		slices.Sort(out)
		return out
	}
	// converged checks, right after a verb returned, that web runs exactly
	// want tasks on image, all running.
	converged := func(verb string, want int, image string) {
		t.Helper()
		v, err := inspect(ctx, m, "web")
		if err != nil {
			t.Fatal(err)
		}
		running := 0
		for _, task := range v.Tasks {
			if task.State == "running" {
				running++
			}
		}
		if v.Image != image || running != want || len(v.Tasks) != want {
			t.Fatalf("right after `%s` returned: %+v, want %d tasks all running %s", verb, v, want, image)
		}
		if got := containers(); len(got) != want {
			t.Fatalf("right after `%s` returned: containers %v, want %d", verb, got, want)
		}
	}

	out, err := m.Exec(ctx, "warren", append([]string{"service", "create", "web", "--image", testImage, "--replicas", "3"}, httpdCommand...)...)
	if err != nil {
		t.Fatalf("service create: %v\n%s", err, out)
	}
	for _, want := range []string{"web created: VIP ", "web-1 on ", ": running\n", "web: 3/3 running\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("service create output lacks %q:\n%s", want, out)
		}
	}
	converged("service create", 3, testImage)

	if out, err := m.Exec(ctx, "warren", "service", "scale", "web=1"); err != nil || !strings.Contains(out, "web: 1/1 running") {
		t.Fatalf("service scale: %v\n%s", err, out)
	}
	converged("service scale web=1", 1, testImage)

	if out, err := m.Exec(ctx, "warren", "service", "update", "web", "--image", testImageV2); err != nil || !strings.Contains(out, "web: 1/1 running "+testImageV2) {
		t.Fatalf("service update: %v\n%s", err, out)
	}
	converged("service update", 1, testImageV2)

	if out, err := m.Exec(ctx, "warren", "service", "rm", "web"); err != nil {
		t.Fatalf("service rm: %v\n%s", err, out)
	}
	if got := containers(); len(got) != 0 {
		t.Fatalf("right after `service rm web` returned, containers remain: %v", got)
	}

	// An image no node has (and no registry to pull from): --detach
	// returns at once, where waiting would last its 10 minutes.
	short := ctxFor(t, time.Minute)
	if out, err := m.Exec(short, "warren", "service", "create", "ghost", "--detach", "--timeout", "10m", "--image", "warren.test/missing:1"); err != nil {
		t.Fatalf("service create --detach: %v\n%s", err, out)
	}
	// --timeout: exit non-zero, naming the task that is stuck and why.
	out, err = m.Exec(ctx, "warren", "service", "create", "stuck", "--timeout", "15s", "--constraint", "node.name==worker-1", "--image", "warren.test/missing:1")
	if err == nil {
		t.Fatalf("service create of a missing image converged?\n%s", out)
	}
	if !strings.Contains(out, "stuck: not converged after 15s") || !strings.Contains(out, "stuck-1 on worker-1: ") {
		t.Fatalf("timeout error does not name the stuck task:\n%s", out)
	}
	t.Logf("timeout error: %s", out)
}
