package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/integration/lab"
)

// spread fetches url n times with `fetch` and counts the answers per page.
func spread(ctx context.Context, n int, fetch func() (string, error)) (map[string]int, error) {
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		out, err := fetch()
		if err != nil {
			return counts, err
		}
		counts[trim(out)]++
	}
	return counts, nil
}

// checkSpread wants every one of n requests answered by a task (no FAIL,
// no other output) and every task between 20% and 47% of them.
func checkSpread(t *testing.T, from string, counts map[string]int, tasks []string, n int) {
	t.Helper()
	answered := 0
	for _, task := range tasks {
		answered += counts[task]
	}
	if answered != n {
		t.Errorf("from %s: %d of %d VIP requests failed or got no task's page: %v", from, n-answered, n, counts)
	}
	for _, task := range tasks {
		share := float64(counts[task]) / float64(n)
		if share < 0.20 || share > 0.47 {
			t.Errorf("from %s: %s got %d of %d requests (%.0f%%), want 20%%-47%%: %v", from, task, counts[task], n, share*100, counts)
		}
	}
}

// Seed "Service VIPs" and "Load Balancing": the VIP answers from the
// manager, every worker and a task on each node, spread over all tasks.
func TestVIPLoadBalancesFromNodesAndTasks(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)}})
	createService(t, c, "web", append([]string{"--replicas", "3"}, httpdCommand...)...)
	v := waitRunning(t, c, "web", 3)
	if v.VIP != "10.1.0.1" {
		t.Errorf("first service VIP = %s, want 10.1.0.1 (sequential from vip_subnet)", v.VIP)
	}
	var tasks []string
	for _, task := range v.Tasks {
		tasks = append(tasks, task.Name)
	}
	ctx := ctxFor(t, 5*time.Minute)
	const n = 300
	url := "http://" + v.VIP + "/"
	for _, node := range c.Nodes() {
		// Rules land within moments of the map: wait for the first answer.
		eventually(t, 30*time.Second, node.Name+" reaches the VIP", func() error {
			_, err := node.Exec(ctx, "curl", "-sS", "-m", "3", url)
			return err
		})
		// One shell loop per node keeps 300 requests cheap.
		out, err := node.Sh(ctx, fmt.Sprintf("for i in $(seq %d); do curl -sS -m 3 %s || echo FAIL; done", n, url))
		if err != nil {
			t.Fatal(err)
		}
		counts := map[string]int{}
		for _, line := range strings.Split(trim(out), "\n") {
			counts[trim(line)]++
		}
		checkSpread(t, node.Name, counts, tasks, n)

		if nftablesLab() {
			rules, err := node.Exec(ctx, "nft", "list", "table", "inet", hostfw.NftTable)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(rules, v.VIP) || strings.Count(rules, "dnat ip to") < 3 {
				t.Errorf("%s: table inet warren lacks the VIP's DNAT rules:\n%s", node.Name, rules)
			}
			if save, _ := node.Exec(ctx, "iptables-save"); strings.Contains(save, "WARREN") {
				t.Errorf("%s: nftables backend, yet iptables-save shows warren's chains:\n%s", node.Name, save)
			}
			continue
		}
		rules, err := node.Exec(ctx, "iptables", "-t", "nat", "-L", "-n")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rules, v.VIP) || strings.Count(rules, "DNAT") < 3 {
			t.Errorf("%s: iptables -t nat -L -n lacks the VIP's DNAT rules:\n%s", node.Name, rules)
		}
	}
	// From inside a task on each node, with busybox wget.
	for _, task := range v.Tasks {
		node := nodeByName(c, task.Node)
		out, err := taskExec(ctx, node, task.Name, "sh", "-c", fmt.Sprintf("for i in $(seq %d); do wget -qO- %s || echo FAIL; done", n, url))
		if err != nil {
			t.Fatal(err)
		}
		counts := map[string]int{}
		for _, line := range strings.Split(trim(out), "\n") {
			counts[trim(line)]++
		}
		// The task itself is one of the backends: hairpin must answer too.
		checkSpread(t, task.Name, counts, tasks, n)
	}
}
