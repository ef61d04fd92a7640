package integration

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/integration/lab"
)

// webPolicy lets only app=frontend tasks reach app=web tasks, on TCP 80.
const webPolicy = `apiVersion: warren.io/v1
kind: NetworkPolicy
metadata:
  name: web-policy
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
    - from:
      - podSelector:
          matchLabels:
            app: frontend
      ports:
        - protocol: TCP
          port: 80
`

// Issue "hostfw", done when: with backend = "nftables" on every node
// (whatever WARREN_LAB_FIREWALL_BACKEND says) a VIP, a published port and
// a policy work, iptables-save (and iptables-legacy-save) shows nothing of
// warren on any node, and table inet warren is the same, rule for rule,
// after a daemon restart on a worker and on the manager.
func TestNftablesBackendLeavesIptablesAloneAndSurvivesRestart(t *testing.T) {
	l := newLab(t)
	nft := "[firewall]\nbackend = \"nftables\"\n"
	c := startCluster(t, l, lab.ClusterOptions{Workers: 1, Images: []string{imageTarball(t)}, ManagerExtra: nft, WorkerExtra: nft})
	ctx := ctxFor(t, 4*time.Minute)
	m, w := c.Manager, c.Workers[0]
	for _, n := range c.Nodes() {
		if b, err := n.FirewallBackend(); err != nil || b != hostfw.BackendNftables {
			t.Fatalf("%s: backend %q (%v), want nftables", n.Name, b, err)
		}
	}
	createService(t, c, "web", append([]string{"--replicas", "2", "--label", "app=web", "--publish", "18080:80"}, httpdCommand...)...)
	for _, s := range []struct{ name, app string }{{"front", "frontend"}, {"other", "other"}} {
		createService(t, c, s.name, append([]string{"--label", "app=" + s.app, "--constraint", "node.name==" + w.Name}, httpdCommand...)...)
	}
	web := waitRunning(t, c, "web", 2)
	front := waitRunning(t, c, "front", 1).Tasks[0]
	other := waitRunning(t, c, "other", 1).Tasks[0]
	webTasks := map[string]bool{}
	for _, task := range web.Tasks {
		webTasks[task.Name] = true
	}
	page := func(out string, err error) error {
		if err != nil {
			return err
		}
		if !webTasks[trim(out)] {
			return fmt.Errorf("page %q, not one of web's tasks", trim(out))
		}
		return nil
	}
	// works checks the VIP from every node and the published port from
	// outside through every node: answered without a policy, cut off by
	// web-policy (no ipBlock lets the outside in).
	works := func(when string, policy bool) {
		t.Helper()
		for _, n := range c.Nodes() {
			eventually(t, 30*time.Second, when+": "+n.Name+" reaches web's VIP", func() error {
				return page(n.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+web.VIP+"/"))
			})
			url := fmt.Sprintf("http://%s:18080/", n.LANIP)
			eventually(t, 30*time.Second, fmt.Sprintf("%s: outside through %s's published port (policy %v)", when, n.Name, policy), func() error {
				out, err := l.Outside.Exec(ctx, "curl", "-sS", "-m", "2", url)
				if policy {
					if err == nil {
						return fmt.Errorf("answered %q although web-policy lets no outside source in", trim(out))
					}
					return nil
				}
				return page(out, err)
			})
		}
	}
	works("before the policy", false)

	if out, err := m.Sh(ctx, "warren policy apply -f - <<'EOF'\n"+webPolicy+"EOF"); err != nil {
		t.Fatalf("policy apply: %v\n%s", err, out)
	}
	// enforced: front reaches a web task by its IP and through the VIP,
	// other is cut off (refused or timed out) from both while it still
	// reaches front, so its failure is the policy's.
	enforced := func(when string) {
		t.Helper()
		for _, url := range []string{"http://" + web.Tasks[0].IP + "/", "http://" + web.VIP + "/"} {
			eventually(t, 30*time.Second, when+": front reaches "+url, func() error {
				return page(taskExec(ctx, w, front.Name, "timeout", "3", "wget", "-qO-", url))
			})
			eventually(t, 30*time.Second, when+": other is cut off from "+url, func() error {
				if _, err := taskExec(ctx, w, other.Name, "timeout", "3", "wget", "-qO-", "http://"+front.IP+"/"); err != nil {
					return fmt.Errorf("other does not reach front either, so a failure proves nothing: %v", err)
				}
				start := time.Now()
				out, err := taskExec(ctx, w, other.Name, "timeout", "2", "wget", "-qO-", url)
				if err == nil {
					return fmt.Errorf("answered %q", trim(out))
				}
				if !strings.Contains(out, "Connection refused") && time.Since(start) < 2*time.Second {
					return fmt.Errorf("failed at once, neither refused nor timed out: %v %s", err, trim(out))
				}
				return nil
			})
		}
	}
	enforced("after the policy")
	works("after the policy", true)

	for _, n := range c.Nodes() {
		out, err := n.Sh(ctx, "iptables-save; if command -v iptables-legacy-save >/dev/null; then echo '# legacy'; iptables-legacy-save; fi")
		if err != nil {
			t.Fatalf("%s: iptables-save: %v\n%s", n.Name, err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(strings.ToLower(line), "warren") {
				t.Errorf("%s: nftables backend, yet iptables-save shows %q:\n%s", n.Name, line, out)
				break
			}
		}
		rules, err := nftRules(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if !hasAddr(rules, web.VIP) || !strings.Contains(rules, "WARREN-PS-") {
			t.Errorf("%s: table inet warren lacks web's VIP %s or the policy's sets:\n%s", n.Name, web.VIP, rules)
		}
	}

	for _, n := range []*lab.Node{w, m} {
		before, err := nftRules(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.RestartAppliance(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		waitApplianceUp(t, n, web.VIP)
		waitNodesReady(t, c, time.Minute)
		// The restarted daemon has synced (it reported in); its table is
		// the one it found, and stays so.
		var after string
		eventually(t, 30*time.Second, n.Name+" restarted: the same table inet warren", func() error {
			if after, err = nftRules(ctx, n); err != nil {
				return err
			}
			if after != before {
				return fmt.Errorf("differs:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			return nil
		})
		time.Sleep(2 * time.Second)
		if again, err := nftRules(ctx, n); err != nil || again != before {
			t.Errorf("%s: table inet warren changed after converging (%v):\nbefore:\n%s\nnow:\n%s", n.Name, err, before, again)
		}
		works("after restarting "+n.Name, true)
		enforced("after restarting " + n.Name)
	}
}
