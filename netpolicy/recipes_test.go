package netpolicy

import (
	"github.com/warren-appliance/warren/hostfw"

	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// The community NetworkPolicy recipes (testdata/recipes, copied unchanged
// from ahmetb/kubernetes-network-policy-recipes) that need no namespaces
// parse as written, with Kubernetes' apiVersion and metadata.namespace
// default; the ones selecting namespaces are refused naming
// namespaceSelector, the field that cannot be honoured.
func TestCommunityRecipes(t *testing.T) {
	refused := map[string]bool{
		"05-allow-traffic-from-all-namespaces.yaml":                 true,
		"06-allow-traffic-from-a-namespace.yaml":                    true,
		"07-allow-traffic-from-some-pods-in-another-namespace.yaml": true,
		"11-allow-dns-kube-system.yaml":                             true,
		"14-deny-external-egress-traffic.yaml":                      true,
	}
	files, err := filepath.Glob("testdata/recipes/*.yaml")
	if err != nil || len(files) < 15 {
		t.Fatalf("recipes: %v %v", files, err)
	}
	accepted := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pols, err := Parse(f, data)
		if refused[filepath.Base(f)] {
			if err == nil || !strings.Contains(err.Error(), "namespaceSelector cannot be honoured: Warren has no namespaces") {
				t.Errorf("%s: want a refusal naming namespaceSelector, got %v", f, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		accepted++
		if len(pols) != 1 || len(Render(Input{Policies: pols, Tasks: labTasks}).Restore) == 0 {
			t.Errorf("%s: %d policies, nothing rendered", f, len(pols))
		}
	}
	if accepted != 11 {
		t.Errorf("%d recipes accepted, want 11", accepted)
	}

	// What a few of them mean, as Kubernetes reads them.
	one := func(name string) clustermap.Policy {
		data, _ := os.ReadFile("testdata/recipes/" + name)
		p, err := Parse(name, data)
		if err != nil {
			t.Fatal(err)
		}
		return p[0]
	}
	all := clustermap.LabelSelector{}
	if p := one("02a-allow-all-traffic-to-an-application.yaml"); len(p.Ingress) != 1 || len(p.Ingress[0].Peers) != 0 || len(p.Ingress[0].Ports) != 0 {
		t.Errorf("02a: ingress [{}] must be one rule allowing everything: %+v", p.Ingress)
	}
	if p := one("04-deny-traffic-from-other-namespaces.yaml"); !reflect.DeepEqual(p.PodSelector, all) || len(p.Ingress) != 1 || !reflect.DeepEqual(*p.Ingress[0].Peers[0].PodSelector, all) {
		t.Errorf("04: null matchLabels selects every task, from podSelector {} is every task: %+v", p)
	}
	if p := one("11-deny-egress-traffic-from-an-application.yaml"); !reflect.DeepEqual(p.PolicyTypes, []string{"Egress"}) || len(p.Egress) != 0 {
		t.Errorf("11: deny all egress: %+v", p)
	}
	if p := one("11-allow-dns.yaml"); len(p.Egress) != 1 || !reflect.DeepEqual(p.Egress[0].Ports, []clustermap.PolicyPort{{Protocol: "UDP", Port: 53}, {Protocol: "TCP", Port: 53}}) {
		t.Errorf("11 with DNS: %+v", p.Egress)
	}

	// Several documents in one file: all or none.
	var multi []byte
	for _, f := range []string{"01-deny-all-traffic-to-an-application.yaml", "09-allow-traffic-only-to-a-port.yaml", "05-allow-traffic-from-all-namespaces.yaml"} {
		data, _ := os.ReadFile("testdata/recipes/" + f)
		multi = append(append(multi, "---\n"...), data...)
	}
	if pols, err := Parse("multi.yaml", multi); err == nil || pols != nil || !strings.Contains(err.Error(), "namespaceSelector") {
		t.Errorf("a file with one refused document: %d policies, %v; want none and the refusal", len(pols), err)
	}
}

// Recipes enforced as written, with real rules in a namespace: 09
// (api-allow-5000: only role=monitoring, only port 5000) and 11
// (foo-deny-egress, then its DNS variant), on a node whose tasks sit on a
// bridge with isolated ports (the lab's task network). Every refusal is a
// timed-out connection from a task shown to reach another address.
func TestCommunityRecipesEnforced(t *testing.T) {
	requireRoot(t)
	for _, b := range hostfw.Backends {
		t.Run(b, func(t *testing.T) {
			if err := hostfw.UseBackend(t, b); err != nil {
				t.Fatal(err)
			}
			testCommunityRecipesEnforced(t, b)
		})
	}
}

func testCommunityRecipesEnforced(t *testing.T, backend string) {
	host := newNetns(t, "rhost")
	names := []string{"apiserver", "monitor", "foo"}
	ns := map[string]string{}
	ip := map[string]string{}
	mustRun(t, "ip", "-n", host, "link", "add", "br0", "type", "bridge")
	mustRun(t, "ip", "-n", host, "addr", "add", "10.0.200.1/24", "dev", "br0")
	mustRun(t, "ip", "-n", host, "link", "set", "br0", "up")
	// proxy_delay 0: proxy ARP answers at once, not after up to 0.8 s,
	// which a first connection would otherwise spend.
	nsRun(t, host, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv4/conf/br0/proxy_arp_pvlan; echo 0 > /proc/sys/net/ipv4/neigh/br0/proxy_delay")
	for i, n := range names {
		ns[n] = newNetns(t, n)
		ip[n] = fmt.Sprintf("10.0.200.%d", 2+i)
		veth := fmt.Sprintf("v%d", i)
		mustRun(t, "ip", "-n", host, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns[n])
		mustRun(t, "ip", "-n", host, "link", "set", veth, "master", "br0")
		mustRun(t, "ip", "-n", host, "link", "set", veth, "type", "bridge_slave", "isolated", "on")
		mustRun(t, "ip", "-n", host, "link", "set", veth, "up")
		mustRun(t, "ip", "-n", ns[n], "addr", "add", ip[n]+"/24", "dev", "eth0")
		mustRun(t, "ip", "-n", ns[n], "link", "set", "eth0", "up")
		mustRun(t, "ip", "-n", ns[n], "route", "add", "default", "via", "10.0.200.1")
	}
	// Listeners: the API server on 5000 and 5001, the monitor on 80, foo on 80.
	listen := func(n string, port int) {
		var ln net.Listener
		mustInNetns(t, ns[n], func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf("%s:%d", ip[n], port)); return err })
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	listen("apiserver", 5000)
	listen("apiserver", 5001)
	listen("monitor", 80)
	listen("foo", 80)
	dial := func(from, to string, port int) error {
		return inNetns(ns[from], func() error {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", ip[to], port), 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	type conn struct {
		from, to string
		port     int
		ok       bool
	}
	check := func(stage string, conns []conn) {
		t.Helper()
		for _, c := range conns {
			err := dial(c.from, c.to, c.port)
			for try := 1; c.ok && err != nil && try < 3; try++ {
				err = dial(c.from, c.to, c.port) // a SYN lost on a loaded machine
			}
			var ne net.Error
			switch {
			case c.ok && err != nil:
				t.Errorf("%s: %s -> %s:%d refused: %v", stage, c.from, c.to, c.port, err)
			case !c.ok && err == nil:
				t.Errorf("%s: %s -> %s:%d connected, the policy should drop it", stage, c.from, c.to, c.port)
			case !c.ok && !(errors.As(err, &ne) && ne.Timeout()):
				t.Errorf("%s: %s -> %s:%d failed with %v, want a timeout (a dropped SYN)", stage, c.from, c.to, c.port, err)
			}
		}
	}
	tasks := []Task{
		{Name: "apiserver-1", IP: netip.MustParseAddr(ip["apiserver"]), Labels: map[string]string{"app": "apiserver"}},
		{Name: "monitor-1", IP: netip.MustParseAddr(ip["monitor"]), Labels: map[string]string{"role": "monitoring"}},
		{Name: "foo-1", IP: netip.MustParseAddr(ip["foo"]), Labels: map[string]string{"app": "foo"}},
	}
	recipe := func(name string) clustermap.Policy {
		data, err := os.ReadFile("testdata/recipes/" + name)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Parse(name, data)
		if err != nil {
			t.Fatal(err)
		}
		return p[0]
	}
	a, _, _ := newApplier(t, host)
	sync := func(pols ...clustermap.Policy) {
		mustInNetns(t, host, func() error { _, err := a.Sync(Render(Input{Policies: pols, Tasks: tasks})); return err })
	}

	check("no policy", []conn{
		{"monitor", "apiserver", 5000, true}, {"monitor", "apiserver", 5001, true}, {"foo", "apiserver", 5000, true}, {"foo", "monitor", 80, true},
	})
	api := recipe("09-allow-traffic-only-to-a-port.yaml")
	sync(api)
	check("09-allow-traffic-only-to-a-port", []conn{
		{"monitor", "apiserver", 5000, true},
		{"monitor", "apiserver", 5001, false}, // the port is not listed
		{"foo", "monitor", 80, true},          // foo reaches other addresses ...
		{"foo", "apiserver", 5000, false},     // ... but not the API server: not role=monitoring
	})
	sync(api, recipe("11-deny-egress-traffic-from-an-application.yaml"))
	check("11-deny-egress-traffic-from-an-application", []conn{
		{"monitor", "foo", 80, true},  // ingress to foo is not restricted
		{"foo", "monitor", 80, false}, // no egress at all from app=foo
		{"monitor", "apiserver", 5000, true},
	})
	// Its DNS variant lets foo out on port 53 only: a listener there is
	// reached, port 80 still is not.
	listen("monitor", 53)
	sync(api, recipe("11-allow-dns.yaml"))
	check("11-allow-dns", []conn{
		{"foo", "monitor", 53, true},
		{"foo", "monitor", 80, false},
	})
	if backend == hostfw.BackendNftables {
		if save := nsRun(t, host, "iptables-save"); strings.Contains(save, "WARREN") {
			t.Errorf("nftables backend, yet iptables-save shows warren's chains:\n%s", save)
		}
		if out := nsRun(t, host, "nft", "list", "table", "inet", "warren"); !strings.Contains(out, "set WARREN-PS-") {
			t.Errorf("table inet warren holds no policy set:\n%s", out)
		}
	}
	mustInNetns(t, host, func() error { return hostfw.Cleanup(nil) })
	if backend == hostfw.BackendNftables {
		if out := nsRun(t, host, "nft", "list", "tables"); strings.Contains(out, "warren") {
			t.Errorf("Cleanup left table inet warren: %s", out)
		}
	}
}
