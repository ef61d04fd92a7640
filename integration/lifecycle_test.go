package integration

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/integration/lab"
)

// ctrTasks returns `ctr -n warren tasks list` on n as task name → "PID STATUS".
func ctrTasks(ctx context.Context, n *lab.Node) (map[string]string, error) {
	out, err := n.Exec(ctx, "ctr", "-n", "warren", "tasks", "list")
	if err != nil {
		return nil, err
	}
	tasks := map[string]string{}
	for _, line := range strings.Split(trim(out), "\n")[1:] {
		if f := strings.Fields(line); len(f) == 3 {
			tasks[f[0]] = f[1] + " " + f[2]
		}
	}
	return tasks, nil
}

// ctrNames returns the first column of a ctr listing (containers, snapshots).
func ctrNames(ctx context.Context, n *lab.Node, args ...string) ([]string, error) {
	out, err := n.Exec(ctx, "ctr", append([]string{"-n", "warren"}, args...)...)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(trim(out), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	sort.Strings(names)
	return names, nil
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// warrenRules is what the node's firewall backend holds of warren,
// normalised so two runs compare line for line: with iptables, what
// iptables-save prints about warren in the nat, filter and mangle
// (policies) tables, counters stripped; with nftables, table inet warren
// (nftRules).
func warrenRules(ctx context.Context, n *lab.Node) (string, error) {
	backend, err := n.FirewallBackend()
	if err != nil {
		return "", err
	}
	if backend == hostfw.BackendNftables {
		return nftRules(ctx, n)
	}
	var sb strings.Builder
	for _, table := range []string{"nat", "filter", "mangle"} {
		out, err := n.Exec(ctx, "iptables-save", "-t", table)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&sb, "*%s\n", table)
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "WARREN") {
				sb.WriteString(counters.ReplaceAllString(line, "") + "\n")
			}
		}
	}
	return sb.String(), nil
}

// nftVolatile matches what `nft list table` prints that changes with
// traffic or time rather than with the rules: counters, rule handles, and
// the time left to dynamic set elements.
var nftVolatile = regexp.MustCompile(` *(counter packets \d+ bytes \d+|# handle \d+|expires [0-9dhms.]+)`)

// nftRules is `nft list table inet warren` on n, normalised: without
// nftVolatile, and its sets, maps and chains sorted by name (a sync that
// adds a chain appends it to the listing, one that rewrites the table
// lists them in its own order; the order means nothing to the kernel),
// without empty chains (a chain a sync no longer wants is emptied at once
// and deleted within about 15 s; an empty chain means nothing to a
// packet). An error when the table is missing.
func nftRules(ctx context.Context, n *lab.Node) (string, error) {
	out, err := n.Exec(ctx, "nft", "list", "table", "inet", hostfw.NftTable)
	if err != nil {
		return "", fmt.Errorf("%s: nft list table inet %s: %w: %s", n.Name, hostfw.NftTable, err, trim(out))
	}
	var blocks []string
	var cur strings.Builder
	for _, line := range strings.Split(nftVolatile.ReplaceAllString(out, ""), "\n") {
		switch {
		case strings.TrimSpace(line) == "" || strings.HasPrefix(line, "table ") || line == "}":
			continue
		case strings.HasPrefix(line, "\t}"):
			cur.WriteString(line + "\n")
			if b := cur.String(); !strings.HasPrefix(b, "\tchain ") || strings.Count(b, "\n") > 2 {
				blocks = append(blocks, b)
			}
			cur.Reset()
		default:
			cur.WriteString(line + "\n")
		}
	}
	if cur.Len() > 0 {
		return "", fmt.Errorf("%s: nft list table inet %s: cannot read its blocks:\n%s", n.Name, hostfw.NftTable, out)
	}
	sort.Strings(blocks)
	return strings.Join(blocks, ""), nil
}

// hasAddr reports whether rules (warrenRules) name the address ip, alone
// or as ip/32.
func hasAddr(rules, ip string) bool {
	return regexp.MustCompile(`(^|[^0-9.])` + regexp.QuoteMeta(ip) + `(/32)?($|[^0-9./])`).MatchString(rules)
}

// noNftTable fails t when n still has table inet warren (after --cleanup).
func noNftTable(t *testing.T, ctx context.Context, n *lab.Node) {
	t.Helper()
	out, err := n.Exec(ctx, "nft", "list", "tables")
	if err != nil {
		t.Fatalf("%s: nft list tables: %v %s", n.Name, err, out)
	}
	if regexp.MustCompile(`(?m)^table inet ` + hostfw.NftTable + `$`).MatchString(out) {
		t.Errorf("after --cleanup, %s still has table inet %s:\n%s", n.Name, hostfw.NftTable, out)
	}
}

// vipPages fetches http://vip/ count times from n and counts the pages
// (task names); a failed request counts as "FAIL".
func vipPages(ctx context.Context, n *lab.Node, vip string, count int) (map[string]int, error) {
	out, err := n.Sh(ctx, fmt.Sprintf("for i in $(seq %d); do curl -sS -m 3 http://%s/ 2>/dev/null || echo FAIL; done", count, vip))
	if err != nil {
		return nil, err
	}
	pages := map[string]int{}
	for _, line := range strings.Split(trim(out), "\n") {
		pages[trim(line)]++
	}
	return pages, nil
}

// onlyPages fails unless every page is one of tasks (no failure, no
// removed task), and, if all is set, every task answered at least once.
func onlyPages(pages map[string]int, tasks []string, all bool) error {
	want := map[string]bool{}
	for _, t := range tasks {
		want[t] = true
	}
	for p, n := range pages {
		if !want[p] {
			return fmt.Errorf("%d of the requests answered by %q, not one of %v: %v", n, p, tasks, pages)
		}
	}
	if all {
		for _, t := range tasks {
			if pages[t] == 0 {
				return fmt.Errorf("task %s never answered: %v", t, pages)
			}
		}
	}
	return nil
}

func taskNames(v serviceView) []string {
	var names []string
	for _, task := range v.Tasks {
		names = append(names, task.Name)
	}
	sort.Strings(names)
	return names
}

// waitApplianceUp waits until the node's daemon answers on its local socket
// with the service rules it applies.
func waitApplianceUp(t *testing.T, n *lab.Node, vip string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	eventually(t, time.Minute, n.Name+" appliance answers `warren network vips`", func() error {
		out, err := n.Exec(ctx, "warren", "network", "vips")
		if err != nil {
			return err
		}
		if vip != "" && !strings.Contains(out, vip) {
			return fmt.Errorf("no %s in:\n%s", vip, out)
		}
		return nil
	})
}

// waitNodeStatus waits until the manager behind list shows the named node
// with the given status.
func waitNodeStatus(t *testing.T, ctx context.Context, timeout time.Duration, list func(context.Context) ([]lab.NodeView, error), name, status string) {
	t.Helper()
	eventually(t, timeout, name+" "+status, func() error {
		nodes, err := list(ctx)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if n.Name == name && n.Status == status {
				return nil
			}
		}
		return fmt.Errorf("%+v", nodes)
	})
}

// waitNodesReady waits until the manager lists every node ready.
func waitNodesReady(t *testing.T, c *lab.Cluster, timeout time.Duration) {
	t.Helper()
	ctx := ctxFor(t, timeout)
	eventually(t, timeout, "every node ready", func() error {
		nodes, err := c.NodeList(ctx)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if n.Status != "ready" {
				return fmt.Errorf("%s is %s: %+v", n.Name, n.Status, nodes)
			}
		}
		if len(nodes) != len(c.Nodes()) {
			return fmt.Errorf("%d nodes listed, want %d", len(nodes), len(c.Nodes()))
		}
		return nil
	})
}

// Issue "orchestrate" (tasks follow the map, survive what they should) and
// issue "nat" (rules neither duplicate nor go stale): one cluster, the
// whole life of a service.
func TestTaskLifecycleAndNATRestarts(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)}})
	ctx := ctxFor(t, 8*time.Minute)
	w1, w2 := c.Workers[0], c.Workers[1]
	createService(t, c, "web", append([]string{"--replicas", "3"}, stoppableHTTPD...)...)
	createService(t, c, "api", append([]string{"--replicas", "3"}, stoppableHTTPD...)...)
	web := waitRunning(t, c, "web", 3)
	api := waitRunning(t, c, "api", 3)

	// Issue "orchestrate": a task whose process dies is started again in
	// place: same node, same IP. Killed through containerd, and behind its
	// back (kill -9 of the pid).
	for _, tc := range []struct {
		service serviceView
		node    *lab.Node
		viaCtr  bool
	}{{web, w1, true}, {api, w2, false}} {
		t.Run(fmt.Sprintf("killed task restarts (ctr=%v)", tc.viaCtr), func(t *testing.T) {
			victim := tc.service.Tasks[0]
			for _, task := range tc.service.Tasks {
				if task.Node == tc.node.Name {
					victim = task
				}
			}
			n := nodeByName(c, victim.Node)
			before, err := ctrTasks(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			kill := []string{"ctr", "-n", "warren", "tasks", "kill", "-s", "KILL", victim.Name}
			if !tc.viaCtr {
				kill = []string{"kill", "-9", strings.Fields(before[victim.Name])[0]}
			}
			if out, err := n.Exec(ctx, kill[0], kill[1:]...); err != nil {
				t.Fatalf("kill %s: %v\n%s", victim.Name, err, out)
			}
			eventually(t, 90*time.Second, victim.Name+" running again with a new process", func() error {
				now, err := ctrTasks(ctx, n)
				if err != nil {
					return err
				}
				if st := now[victim.Name]; !strings.HasSuffix(st, "RUNNING") || st == before[victim.Name] {
					return fmt.Errorf("%s: was %q, now %q", victim.Name, before[victim.Name], st)
				}
				v, err := inspect(ctx, c.Manager, tc.service.Name)
				if err != nil {
					return err
				}
				for _, task := range v.Tasks {
					if task.Name == victim.Name {
						if task.State != "running" || task.IP != victim.IP || task.Node != victim.Node {
							return fmt.Errorf("manager shows %+v, want running on %s with %s", task, victim.Node, victim.IP)
						}
						return nil
					}
				}
				return fmt.Errorf("%s gone from inspect: %+v", victim.Name, v.Tasks)
			})
			eventually(t, 30*time.Second, "restarted "+victim.Name+" serves on its IP", func() error {
				out, err := c.Manager.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+victim.IP+"/")
				if err == nil && trim(out) != victim.Name {
					err = fmt.Errorf("page %q", trim(out))
				}
				return err
			})
			// The other tasks on that node were left alone.
			after, err := ctrTasks(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			for name, st := range before {
				if name != victim.Name && after[name] != st {
					t.Errorf("%s: %s changed from %q to %q when only %s died", n.Name, name, st, after[name], victim.Name)
				}
			}
		})
	}

	// Issue "orchestrate" and issue "nat": five clean restarts of a
	// worker's appliance leave its tasks' processes and its rules exactly
	// as they were.
	t.Run("appliance restarts keep tasks and rules", func(t *testing.T) {
		eventually(t, 30*time.Second, w1.Name+" has the VIP rules", func() error {
			_, err := w1.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+web.VIP+"/")
			return err
		})
		rules, err := warrenRules(ctx, w1)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rules, web.VIP) || !strings.Contains(rules, api.VIP) {
			t.Fatalf("%s: WARREN rules lack the VIPs %s and %s:\n%s", w1.Name, web.VIP, api.VIP, rules)
		}
		tasks, err := ctrTasks(ctx, w1)
		if err != nil {
			t.Fatal(err)
		}
		containers, err := ctrNames(ctx, w1, "containers", "list")
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 5; i++ {
			if err := w1.RestartAppliance(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitApplianceUp(t, w1, web.VIP)
			// The rules converge to the same text (and stay there, no
			// duplicate appended by this start).
			var got string
			eventually(t, 30*time.Second, fmt.Sprintf("restart %d: same WARREN rules", i), func() error {
				var err error
				if got, err = warrenRules(ctx, w1); err != nil {
					return err
				}
				if got != rules {
					return fmt.Errorf("rules differ:\nbefore:\n%s\nnow:\n%s", rules, got)
				}
				return nil
			})
			// The node reported in after its start: its reconcile ran.
			waitNodesReady(t, c, time.Minute)
			now, err := ctrTasks(ctx, w1)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(now) != fmt.Sprint(tasks) {
				t.Errorf("restart %d: task processes changed (restarted or duplicated):\nbefore %v\nafter  %v", i, tasks, now)
			}
			nowContainers, err := ctrNames(ctx, w1, "containers", "list")
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(nowContainers) != fmt.Sprint(containers) {
				t.Errorf("restart %d: containers changed:\nbefore %v\nafter  %v", i, containers, nowContainers)
			}
		}
		if got, err := warrenRules(ctx, w1); err != nil || got != rules {
			t.Errorf("after the restarts the rules changed (%v):\nbefore:\n%s\nafter:\n%s", err, rules, got)
		}
	})

	// Issue "orchestrate" and issue "nat": the VIP follows scaling, and in
	// the steady state after a scale-down no request reaches a removed task.
	t.Run("scale follows the VIP", func(t *testing.T) {
		if out, err := c.Manager.Exec(ctx, "warren", "service", "scale", "--detach", "web=5"); err != nil {
			t.Fatalf("scale web=5: %v\n%s", err, out)
		}
		v5 := waitRunning(t, c, "web", 5)
		eventually(t, 60*time.Second, "60 requests from "+w2.Name+" reach all 5 tasks and only them", func() error {
			pages, err := vipPages(ctx, w2, web.VIP, 60)
			if err != nil {
				return err
			}
			return onlyPages(pages, taskNames(v5), true)
		})
		if out, err := c.Manager.Exec(ctx, "warren", "service", "scale", "--detach", "web=2"); err != nil {
			t.Fatalf("scale web=2: %v\n%s", err, out)
		}
		v2 := waitRunning(t, c, "web", 2)
		for _, n := range c.Nodes() {
			eventually(t, 60*time.Second, n.Name+" reaches only the 2 tasks left", func() error {
				pages, err := vipPages(ctx, n, web.VIP, 20)
				if err != nil {
					return err
				}
				return onlyPages(pages, taskNames(v2), false)
			})
		}
		for _, n := range c.Nodes() {
			pages, err := vipPages(ctx, n, web.VIP, 60)
			if err != nil {
				t.Fatal(err)
			}
			if err := onlyPages(pages, taskNames(v2), true); err != nil {
				t.Errorf("steady state after scale-down, from %s: %v", n.Name, err)
			}
		}
		// Scaling a service that does not exist says so.
		out, err := c.Manager.Exec(ctx, "warren", "service", "scale", "nosuch=2")
		if err == nil || !strings.Contains(out, `no service named "nosuch"`) {
			t.Errorf("scale nosuch=2: want an error naming the missing service, got %v:\n%s", err, out)
		}
	})

	// Issue "orchestrate" and issue "nat": `service rm` leaves nothing of
	// the service on any node; the other service is untouched.
	t.Run("service rm leaves nothing", func(t *testing.T) {
		if out, err := c.Manager.Exec(ctx, "warren", "service", "rm", "--detach", "web"); err != nil {
			t.Fatalf("service rm web: %v\n%s", err, out)
		}
		apiOn := map[string][]string{}
		for _, task := range api.Tasks {
			apiOn[task.Node] = append(apiOn[task.Node], task.Name)
		}
		for _, n := range c.Nodes() {
			want := apiOn[n.Name]
			sort.Strings(want)
			eventually(t, 90*time.Second, n.Name+" keeps nothing of web", func() error {
				containers, err := ctrNames(ctx, n, "containers", "list")
				if err != nil {
					return err
				}
				if fmt.Sprint(containers) != fmt.Sprint(want) {
					return fmt.Errorf("containers %v, want api's %v", containers, want)
				}
				snaps, err := ctrNames(ctx, n, "snapshots", "ls")
				if err != nil {
					return err
				}
				for _, s := range snaps {
					if strings.HasPrefix(s, "web-") {
						return fmt.Errorf("snapshot %s left: %v", s, snaps)
					}
				}
				links, err := n.Exec(ctx, "ip", "-o", "link", "show")
				if err != nil {
					return err
				}
				if got := regexp.MustCompile(`(?m)^\d+: wv`).FindAllString(links, -1); len(got) != len(want) {
					return fmt.Errorf("%d task veths (wv...), want %d for api's tasks:\n%s", len(got), len(want), links)
				}
				nsFiles, err := n.Sh(ctx, "ls /var/lib/warren/tasks/netns/")
				if err != nil {
					return err
				}
				if got := strings.Fields(nsFiles); fmt.Sprint(got) != fmt.Sprint(want) {
					return fmt.Errorf("task netns files %v, want api's %v", got, want)
				}
				rules, err := warrenRules(ctx, n)
				if err != nil {
					return err
				}
				if hasAddr(rules, web.VIP) {
					return fmt.Errorf("web's VIP %s still in warren's rules:\n%s", web.VIP, rules)
				}
				if !hasAddr(rules, api.VIP) {
					return fmt.Errorf("api's VIP %s gone from warren's rules:\n%s", api.VIP, rules)
				}
				return nil
			})
		}
		out, err := c.Manager.Exec(ctx, "warren", "service", "inspect", "web")
		if err == nil || !strings.Contains(out, `no service named "web"`) {
			t.Errorf("inspect of the removed service: want an error naming it, got %v:\n%s", err, out)
		}
		eventually(t, 30*time.Second, "api still answers on its VIP", func() error {
			pages, err := vipPages(ctx, w2, api.VIP, 10)
			if err != nil {
				return err
			}
			return onlyPages(pages, taskNames(api), false)
		})
	})

	// Issue "nat": `warren-appliance --cleanup` on a stopped node removes
	// every rule, the interface and the bridge, and the tasks.
	t.Run("cleanup on a stopped node", func(t *testing.T) {
		if err := w2.StopAppliance(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if out, err := w2.Exec(ctx, "warren-appliance", "--config", "/etc/warren/warren.toml", "--cleanup"); err != nil {
			t.Fatalf("--cleanup: %v\n%s", err, out)
		}
		for _, table := range []string{"nat", "filter", "mangle", "raw"} {
			out, err := w2.Exec(ctx, "iptables-save", "-t", table)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "WARREN") {
				t.Errorf("after --cleanup, iptables-save -t %s still names WARREN:\n%s", table, out)
			}
		}
		noNftTable(t, ctx, w2)
		links, err := w2.Exec(ctx, "ip", "-o", "link", "show")
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"warren0", "warren-br0", ": wv"} {
			if strings.Contains(links, name) {
				t.Errorf("after --cleanup, %q still in ip -o link:\n%s", name, links)
			}
		}
		if names, err := ctrNames(ctx, w2, "containers", "list"); err != nil || len(names) != 0 {
			t.Errorf("after --cleanup, containers left: %v %v", names, err)
		}
		if out, err := w2.Sh(ctx, "ls /var/lib/warren/tasks/netns/"); err != nil || trim(out) != "" {
			t.Errorf("after --cleanup, task netns files left: %v %s", err, out)
		}
	})

	// Issue "nat": --cleanup on a node whose containerd is stopped too (a
	// package removed after containerd) still removes the rules, the
	// interface and the bridge.
	t.Run("cleanup with containerd stopped", func(t *testing.T) {
		if err := w1.StopAppliance(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := w1.StopContainerd(); err != nil {
			t.Fatal(err)
		}
		out, err := w1.Exec(ctx, "warren-appliance", "--config", "/etc/warren/warren.toml", "--cleanup")
		if err != nil {
			t.Fatalf("--cleanup without containerd: %v\n%s", err, out)
		}
		// Without containerd the task network (its chains and bridge) must
		// still go.
		var left []string
		for _, table := range []string{"nat", "filter", "mangle"} {
			rules, err := w1.Exec(ctx, "iptables-save", "-t", table)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(rules, "\n") {
				if strings.Contains(line, "WARREN") {
					left = append(left, table+": "+line)
				}
			}
		}
		links, err := w1.Exec(ctx, "ip", "-o", "link", "show")
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"warren0", "warren-br0"} {
			if strings.Contains(links, name) {
				left = append(left, "interface "+name)
			}
		}
		noNftTable(t, ctx, w1)
		if len(left) > 0 {
			t.Errorf("after --cleanup without containerd, left behind: %s\n(--cleanup said: %s)", strings.Join(left, "; "), trim(out))
		}
	})

	// Issue "nat": a second --cleanup (a package purge after a remove)
	// finds nothing left and succeeds.
	t.Run("second cleanup", func(t *testing.T) {
		out, err := w2.Exec(ctx, "warren-appliance", "--config", "/etc/warren/warren.toml", "--cleanup")
		if err != nil {
			t.Errorf("second --cleanup: %v\n%s", err, out)
		}
	})
}
