package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/netpolicy"
)

// policyLab is a manager and a worker with an api task on the manager and
// a frontend and an "other" task on each node.
type policyLab struct {
	t   *testing.T
	l   *lab.Lab
	c   *lab.Cluster
	ctx context.Context
	m   *lab.Node // manager-1: api-1, front-m-1, other-m-1; br_netfilter off
	w   *lab.Node // worker-1: api-w-1, front-w-1, other-w-1; br_netfilter on
	api serviceView
	ips map[string]string // task name -> IP
}

// apiCommand serves the task's name on 8080 and 9090.
var apiCommand = []string{"--", "sh", "-c", "mkdir -p /www && hostname > /www/index.html && httpd -p 9090 -h /www && exec httpd -f -p 8080 -h /www"}

func startPolicyLab(t *testing.T) *policyLab {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 1, Images: []string{imageTarball(t)}})
	p := &policyLab{t: t, l: l, c: c, ctx: ctxFor(t, 10*time.Minute), m: c.Manager, w: c.Workers[0], ips: map[string]string{}}
	// Enforcement must not depend on br_netfilter: the manager runs
	// without it (the sysctl is per network namespace), so its task ports
	// are isolated and routed; the worker keeps it, so its bridged frames
	// pass iptables.
	if out, err := p.m.Exec(p.ctx, "sh", "-c", "echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		t.Fatalf("turn br_netfilter off on the manager: %v %s", err, out)
	}
	if out, err := p.w.Exec(p.ctx, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil || trim(out) != "1" {
		t.Fatalf("br_netfilter on the worker: %q %v", out, err)
	}
	createService(t, c, "api", append([]string{"--label", "app=api", "--label", "tier=backend", "--constraint", "node.name==manager-1", "--publish", "18080:8080"}, apiCommand...)...)
	createService(t, c, "api-w", append([]string{"--label", "app=api", "--constraint", "node.name==worker-1"}, apiCommand...)...)
	for _, s := range []struct{ name, app, node string }{
		{"front-m", "frontend", "manager-1"}, {"front-w", "frontend", "worker-1"},
		{"other-m", "other", "manager-1"}, {"other-w", "other", "worker-1"},
	} {
		createService(t, c, s.name, append([]string{"--label", "app=" + s.app, "--constraint", "node.name==" + s.node}, httpdCommand...)...)
	}
	for _, name := range []string{"api", "api-w", "front-m", "front-w", "other-m", "other-w"} {
		v := waitRunning(t, c, name, 1)
		p.ips[v.Tasks[0].Name] = v.Tasks[0].IP
		if name == "api" {
			p.api = v
		}
	}
	return p
}

func (p *policyLab) node(task string) *lab.Node {
	if strings.Contains(task, "-w-") {
		return p.w
	}
	return p.m
}

// get fetches url from inside task with a timeout in seconds.
func (p *policyLab) get(task, url string, timeout int) (string, error) {
	// busybox wget -T crashes (Debian 1.35); timeout bounds it instead.
	out, err := taskExec(p.ctx, p.node(task), task, "timeout", fmt.Sprint(timeout), "wget", "-qO-", url)
	if err != nil {
		return "", fmt.Errorf("%s -> %s: %v %s", task, url, err, trim(out))
	}
	return trim(out), nil
}

// path is one way from a task to a target.
type path struct{ from, url, what string }

func (p *policyLab) apiPaths(from string, port int) []path {
	var out []path
	for _, api := range []string{"api-1", "api-w-1"} {
		where := "across nodes"
		if p.node(from) == p.node(api) {
			where = "same node"
		}
		if p.node(from) == p.m {
			where += ", from the node without br_netfilter"
		} else {
			where += ", from the node with br_netfilter"
		}
		out = append(out, path{from, fmt.Sprintf("http://%s:%d/", p.ips[api], port), where})
	}
	if port == 8080 {
		out = append(out, path{from, fmt.Sprintf("http://%s:8080/", p.api.VIP), "through the VIP"})
	}
	return out
}

// wantAllowed waits until every path answers with one of pages (policies
// land within moments of the map).
func (p *policyLab) wantAllowed(paths []path, pages ...string) {
	p.t.Helper()
	for _, pa := range paths {
		eventually(p.t, 20*time.Second, fmt.Sprintf("%s reaches %s (%s)", pa.from, pa.url, pa.what), func() error {
			got, err := p.get(pa.from, pa.url, 3)
			if err == nil && !contains(pages, got) {
				err = fmt.Errorf("page %q, want one of %q", got, pages)
			}
			return err
		})
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

// wantDenied waits until every path is cut off, then checks it stays so.
// Cut off means refused or timed out (a dropped SYN), from a task that
// reaches its control address at that moment: a dead task, a failed exec
// or a bad address is a failure, not a denial.
func (p *policyLab) wantDenied(paths []path) {
	p.t.Helper()
	for _, pa := range paths {
		eventually(p.t, 20*time.Second, fmt.Sprintf("%s is cut off from %s (%s)", pa.from, pa.url, pa.what), func() error {
			return p.denied(pa)
		})
		if err := p.denied(pa); err != nil {
			p.t.Errorf("%s -> %s (%s) no longer denied: %v", pa.from, pa.url, pa.what, err)
		}
	}
}

// control is an address task may reach under every policy this test
// applies: frontends reach the api on 8080, other tasks a frontend.
func (p *policyLab) control(task string) string {
	if strings.HasPrefix(task, "front-") {
		return fmt.Sprintf("http://%s:8080/", p.ips["api-1"])
	}
	return fmt.Sprintf("http://%s:80/", p.ips["front-m-1"])
}

// denied returns nil when pa's connection is refused or times out while
// its task reaches its control address.
func (p *policyLab) denied(pa path) error {
	if _, err := p.get(pa.from, p.control(pa.from), 3); err != nil {
		return fmt.Errorf("%s cannot reach its control address either, so a failure proves nothing: %v", pa.from, err)
	}
	const timeout = 2
	start := time.Now()
	got, err := p.get(pa.from, pa.url, timeout)
	switch {
	case err == nil:
		return fmt.Errorf("answered %q", got)
	case strings.Contains(err.Error(), "Connection refused"):
		return nil
	case time.Since(start) >= timeout*time.Second:
		return nil // timed out: the policy dropped it
	}
	return fmt.Errorf("failed at once, neither refused nor timed out: %v", err)
}

func (p *policyLab) apply(yaml string) string {
	p.t.Helper()
	out, err := p.m.Sh(p.ctx, "warren policy apply -f - <<'EOF'\n"+yaml+"\nEOF")
	if err != nil {
		p.t.Fatalf("policy apply: %v\n%s", err, out)
	}
	return trim(out)
}

func (p *policyLab) outsideGet(n *lab.Node, timeout int) (string, error) {
	out, err := p.l.Outside.Exec(p.ctx, "curl", "-sS", "-m", fmt.Sprint(timeout), fmt.Sprintf("http://%s:18080/", n.LANIP))
	return trim(out), err
}

// inSet reports whether ip is in the set of tasks sel on node n.
func inSet(n *lab.Node, sel, ip string) (bool, error) {
	if nftablesLab() {
		out, err := n.Exec(context.Background(), "nft", "list", "set", "inet", hostfw.NftTable, netpolicy.SetName("tasks "+sel))
		if err != nil {
			return false, err
		}
		return setListHas(out, ip), nil
	}
	var ok bool
	err := n.Do(func() (err error) {
		ok, err = netlink.IpsetTest(netpolicy.SetName("tasks "+sel), &netlink.IPSetEntry{IP: net.ParseIP(ip)})
		return err
	})
	return ok, err
}

// nftablesLab reports whether the lab's nodes run the nftables backend
// (WARREN_LAB_FIREWALL_BACKEND=nftables).
func nftablesLab() bool { return lab.FirewallBackend() == hostfw.BackendNftables }

// setListHas reports whether `nft list set` output holds ip as an element
// (an address, or inside a listed prefix or range).
func setListHas(out, ip string) bool {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	i := strings.Index(out, "elements = {")
	if i < 0 {
		return false
	}
	body := out[i+len("elements = {"):]
	body, _, _ = strings.Cut(body, "}")
	for _, e := range strings.Split(body, ",") {
		e = strings.TrimSpace(e)
		if lo, hi, ok := strings.Cut(e, "-"); ok {
			a, err1 := netip.ParseAddr(strings.TrimSpace(lo))
			b, err2 := netip.ParseAddr(strings.TrimSpace(hi))
			if err1 == nil && err2 == nil && a.Compare(addr) <= 0 && addr.Compare(b) <= 0 {
				return true
			}
			continue
		}
		if p, err := netip.ParsePrefix(e); err == nil && p.Contains(addr) {
			return true
		}
		if a, err := netip.ParseAddr(e); err == nil && a == addr {
			return true
		}
	}
	return false
}

// Seed "Network Policies": the seed's policy, as written, lets app=frontend
// tasks reach app=api tasks on TCP 8080 on the same node, across nodes and
// through the VIP, and nothing else; ipBlock decides outside sources on a
// published port; egress rules; scale-up is covered at once; removing the
// policy restores access.
func TestNetworkPolicySeedExample(t *testing.T) {
	p := startPolicyLab(t)
	api := p.api.Tasks[0].Name
	apis := []string{"api-1", "api-w-1"}
	var allowed, denied []path
	for _, from := range []string{"front-m-1", "front-w-1"} {
		allowed = append(allowed, p.apiPaths(from, 8080)...)
	}
	for _, from := range []string{"other-m-1", "other-w-1"} {
		denied = append(denied, p.apiPaths(from, 8080)...)
	}
	port9090 := append(p.apiPaths("front-m-1", 9090), p.apiPaths("front-w-1", 9090)...)

	// Without policies everything answers (so the checks below can fail).
	p.wantAllowed(append(append(clonePaths(allowed), denied...), port9090...), apis...)
	if got, err := p.outsideGet(p.m, 5); err != nil || got != api {
		t.Fatalf("outside -> published port before any policy: %q %v", got, err)
	}
	// Both modes of the task network are what this test thinks they are.
	if out, err := p.m.Exec(p.ctx, "bridge", "-d", "link", "show"); err != nil || !strings.Contains(out, "isolated on") {
		t.Fatalf("manager (no br_netfilter): task ports not isolated: %v\n%s", err, out)
	}
	if out, err := p.w.Exec(p.ctx, "bridge", "-d", "link", "show"); err != nil || strings.Contains(out, "isolated on") {
		t.Fatalf("worker (br_netfilter): task ports isolated: %v\n%s", err, out)
	}

	seed, err := os.ReadFile("../netpolicy/testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if out := p.apply(string(seed)); out != "networkpolicy/api-policy created" {
		t.Fatalf("apply said %q", out)
	}
	if out := p.apply(string(seed)); out != "networkpolicy/api-policy unchanged" {
		t.Fatalf("second apply said %q", out)
	}
	p.wantDenied(denied)
	p.wantAllowed(allowed, apis...)
	p.wantDenied(port9090)
	for _, n := range p.c.Nodes() {
		if got, err := p.outsideGet(n, 2); err == nil {
			t.Errorf("outside reached the published port on %s (no ipBlock allows it): %q", n.Name, got)
		}
	}

	// policy inspect shows the tasks each selector matches now.
	out, err := p.m.Exec(p.ctx, "warren", "policy", "inspect", "api-policy", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var view struct {
		Selected []struct{ Name string } `json:"selected"`
		Peers    []struct {
			Tasks []struct{ Name string } `json:"tasks"`
		} `json:"peers"`
	}
	if err := json.Unmarshal([]byte(out), &view); err != nil || len(view.Selected) != 2 || view.Selected[0].Name != api ||
		len(view.Peers) != 1 || len(view.Peers[0].Tasks) != 2 {
		t.Fatalf("policy inspect --json: %v\n%s", err, out)
	}

	// ipBlock: the LAN may reach the api's published port, except the
	// outside host itself once the except is applied.
	lanPolicy := `apiVersion: warren.io/v1
kind: NetworkPolicy
metadata:
  name: api-from-lan
spec:
  podSelector:
    matchExpressions:
      - {key: tier, operator: In, values: [backend]}
  ingress:
    - from:
        - ipBlock:
            cidr: 192.168.100.0/24%s
      ports:
        - protocol: TCP
          port: 8080`
	p.apply(fmt.Sprintf(lanPolicy, ""))
	for _, n := range p.c.Nodes() { // the manager hosts the task; the worker forwards to it
		eventually(t, 20*time.Second, "outside reaches the published port on "+n.Name, func() error {
			got, err := p.outsideGet(n, 3)
			if err == nil && got != api {
				err = fmt.Errorf("page %q", got)
			}
			return err
		})
	}
	p.wantDenied(denied[:1]) // an ipBlock of the LAN does not let other tasks in
	if out := p.apply(fmt.Sprintf(lanPolicy, "\n            except: [192.168.100.1/32]")); out != "networkpolicy/api-from-lan configured" {
		t.Fatalf("replace said %q", out)
	}
	for _, n := range p.c.Nodes() {
		eventually(t, 20*time.Second, "outside is cut off again on "+n.Name+" (except)", func() error {
			if got, err := p.outsideGet(n, 2); err == nil {
				return fmt.Errorf("answered %q", got)
			}
			return nil
		})
	}
	if out, err := p.m.Exec(p.ctx, "warren", "policy", "rm", "api-from-lan"); err != nil {
		t.Fatalf("policy rm: %v %s", err, out)
	}

	// Egress: frontends may open connections to the api on 8080 only; DNS
	// to their node keeps working.
	otherW := fmt.Sprintf("http://%s:80/", p.ips["other-w-1"])
	p.wantAllowed([]path{{"front-m-1", otherW, "before the egress policy"}}, "other-w-1")
	p.apply(`apiVersion: warren.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-egress
spec:
  podSelector:
    matchLabels: {app: frontend}
  egress:
    - to:
        - podSelector:
            matchLabels: {app: api}
      ports:
        - {protocol: TCP, port: 8080}`)
	p.wantDenied([]path{{"front-m-1", otherW, "egress not allowed"}, {"front-w-1", fmt.Sprintf("http://%s:80/", p.ips["other-m-1"]), "egress not allowed"},
		{"front-w-1", fmt.Sprintf("http://%s:80/", p.ips["other-w-1"]), "egress not allowed, same node with br_netfilter"}})
	p.wantAllowed(allowed, apis...)
	if out, err := taskExec(p.ctx, p.m, "front-m-1", "nslookup", "api.warren.local"); err != nil || !strings.Contains(out, p.api.VIP) {
		t.Errorf("DNS from a task with an egress policy: %v\n%s", err, out)
	}
	if out, err := p.m.Exec(p.ctx, "warren", "policy", "rm", "frontend-egress"); err != nil {
		t.Fatalf("policy rm: %v %s", err, out)
	}
	p.wantAllowed([]path{{"front-m-1", otherW, "egress policy removed"}}, "other-w-1")

	// Scale-up: a new api task and a new frontend task are covered within
	// 1 s of running. From the moment the new task has an address until
	// 2 s after it runs, the tasks the policy does not allow try it and
	// must never get through; within 1 s of the test seeing it running it
	// is in its set on both nodes, and the tasks the policy allows reach
	// it (a new api task) or through it (a new frontend task) on a
	// connection begun within that second (a bounded poll: 1 s attempts
	// while the second lasts).
	api1 := fmt.Sprintf("http://%s:8080/", p.ips[api])
	for _, s := range []struct {
		service, task, sel, page string
		reach                    func(ip string) []path // must answer with page within 1 s of running
		never                    func(ip string) []path // must never answer
	}{
		{"api", "api-2", "app=api", "api-2",
			func(ip string) []path {
				u := fmt.Sprintf("http://%s:8080/", ip)
				return []path{{"front-m-1", u, "new api task, same node"}, {"front-w-1", u, "new api task, across nodes"}}
			},
			func(ip string) []path {
				u := fmt.Sprintf("http://%s:8080/", ip)
				return []path{{"other-m-1", u, "new api task, same node"}, {"other-w-1", u, "new api task, across nodes"},
					{"front-w-1", fmt.Sprintf("http://%s:9090/", ip), "new api task, port 9090"}}
			}},
		{"front-w", "front-w-2", "app=frontend", api,
			func(string) []path { return []path{{"front-w-2", api1, "new frontend task, across nodes"}} },
			func(string) []path {
				return []path{{"front-w-2", fmt.Sprintf("http://%s:9090/", p.ips[api]), "new frontend task, port 9090"}}
			}},
	} {
		if out, err := p.m.Exec(p.ctx, "warren", "service", "scale", s.service+"=2", "--detach"); err != nil {
			t.Fatalf("scale: %v %s", err, out)
		}
		var ip, state string
		poll := func() error {
			v, err := inspect(p.ctx, p.m, s.service)
			if err != nil {
				return err
			}
			for _, task := range v.Tasks {
				if task.Name == s.task && task.IP != "" {
					ip, state = task.IP, task.State
					return nil
				}
			}
			return fmt.Errorf("tasks %+v", v.Tasks)
		}
		eventually(t, time.Minute, s.task+" has an address", poll)
		stop := make(chan struct{})
		leaks := make(chan string, 100)
		done := make(chan struct{})
		never := s.never(ip)
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, pa := range never {
					if got, err := p.get(pa.from, pa.url, 1); err == nil {
						leaks <- fmt.Sprintf("%s reached %s (%s): %q", pa.from, pa.url, pa.what, got)
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		eventually(t, 2*time.Minute, s.task+" running", func() error {
			if err := poll(); err != nil {
				return err
			}
			if state != "running" {
				return fmt.Errorf("%s is %s", s.task, state)
			}
			return nil
		})
		running := time.Now()
		for _, n := range p.c.Nodes() {
			for {
				ok, err := inSet(n, s.sel, ip)
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					t.Logf("%s (%s) in the %s set on %s %v after the test saw it running", s.task, ip, s.sel, n.Name, time.Since(running).Round(time.Millisecond))
					break
				}
				if time.Since(running) > time.Second {
					t.Fatalf("%s (%s) not in the %s set on %s 1 s after running", s.task, ip, s.sel, n.Name)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		reach := s.reach(ip)
		errs := make(chan error, len(reach))
		for _, pa := range reach {
			go func() {
				var last error
				for time.Since(running) < time.Second {
					got, err := p.get(pa.from, pa.url, 1)
					if err == nil && got == s.page {
						t.Logf("%s -> %s (%s) answered %v after the test saw %s running", pa.from, pa.url, pa.what, time.Since(running).Round(time.Millisecond), s.task)
						errs <- nil
						return
					}
					if err == nil {
						err = fmt.Errorf("page %q, want %q", got, s.page)
					}
					last = err
				}
				errs <- fmt.Errorf("%s -> %s (%s): no answer on a connection begun within 1 s of %s running: %v", pa.from, pa.url, pa.what, s.task, last)
			}()
		}
		for range reach {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		for time.Since(running) < 2*time.Second {
			time.Sleep(50 * time.Millisecond)
		}
		close(stop)
		<-done
		close(leaks)
		for leak := range leaks {
			t.Errorf("%s before or while being covered: %s", s.task, leak)
		}
		p.ips[s.task] = ip
	}
	api2 := fmt.Sprintf("http://%s:8080/", p.ips["api-2"])
	p.wantDenied([]path{{"other-w-1", api2, "new api task"}, {"other-m-1", api2, "new api task"}})

	// policy rm restores access within 3 s.
	if out, err := p.m.Exec(p.ctx, "warren", "policy", "rm", "api-policy"); err != nil {
		t.Fatalf("policy rm: %v %s", err, out)
	}
	removed := time.Now()
	// Every path is polled at once (a dropped SYN is retried by the
	// client after 1 s, so each attempt gets 2 s).
	errs := make(chan error, len(denied))
	for _, pa := range denied {
		go func() {
			for {
				if got, err := p.get(pa.from, pa.url, 2); err == nil && contains(apis, got) {
					t.Logf("%s -> %s (%s) open %v after policy rm", pa.from, pa.url, pa.what, time.Since(removed).Round(time.Millisecond))
					errs <- nil
					return
				}
				if time.Since(removed) > 3*time.Second {
					errs <- fmt.Errorf("%s still cut off from %s (%s) 3 s after policy rm", pa.from, pa.url, pa.what)
					return
				}
			}
		}()
	}
	for range denied {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, n := range p.c.Nodes() {
		if out, _ := n.Exec(p.ctx, "iptables-save"); strings.Contains(out, "api-policy") {
			t.Errorf("%s still has api-policy rules:\n%s", n.Name, out)
		}
		if out, _ := n.Exec(p.ctx, "nft", "list", "ruleset"); strings.Contains(out, "api-policy") {
			t.Errorf("%s still has api-policy rules in nftables:\n%s", n.Name, out)
		}
	}
	if got, err := p.outsideGet(p.m, 5); err != nil || (got != api && got != "api-2") {
		t.Errorf("outside -> published port after policy rm: %q %v", got, err)
	}

	// `warren-appliance --cleanup` on a stopped node with policies removes
	// the policy chains, the jump and the ipsets.
	p.apply(string(seed))
	eventually(t, 20*time.Second, "the seed policy's sets on worker-1 again", func() error {
		if ok, err := inSet(p.w, "app=api", p.ips["api-w-1"]); err != nil || !ok {
			return fmt.Errorf("api-w-1 in the app=api set: %v %v", ok, err)
		}
		return nil
	})
	if err := p.w.StopAppliance(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if out, err := p.w.Exec(p.ctx, "warren-appliance", "--config", "/etc/warren/warren.toml", "--cleanup"); err != nil {
		t.Fatalf("--cleanup: %v\n%s", err, out)
	}
	if out, err := p.w.Exec(p.ctx, "iptables-save"); err != nil || strings.Contains(out, "WARREN-POL") {
		t.Errorf("after --cleanup: %v\n%s", err, out)
	}
	if out, err := p.w.Exec(p.ctx, "nft", "list", "tables"); err != nil || strings.Contains(out, hostfw.NftTable) {
		t.Errorf("after --cleanup, nftables: %v\n%s", err, out)
	}
	if err := p.w.Do(func() error {
		sets, err := netlink.IpsetListAll()
		for _, s := range sets {
			t.Errorf("after --cleanup, ipset %s is left", s.SetName)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func clonePaths(p []path) []path { return append([]path(nil), p...) }
