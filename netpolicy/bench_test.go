package netpolicy

import (
	"github.com/coreos/go-iptables/iptables"
	"github.com/warren-appliance/warren/hostfw"
	"net"

	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// benchInput is 200 policies over 1000 tasks of 200 services (5 each):
// policy i selects app=svc<i> and lets in app=svc<i+1> on TCP 8080 and a
// LAN block on 443, and half of them also restrict egress.
func benchInput() Input {
	var in Input
	for i := range 1000 {
		svc := fmt.Sprintf("svc%03d", i/5)
		in.Tasks = append(in.Tasks, Task{Name: fmt.Sprintf("%s-%d", svc, i%5+1),
			IP: netip.AddrFrom4([4]byte{10, 0, byte(1 + i/250), byte(2 + i%250)}), Labels: map[string]string{"app": svc}})
	}
	for i := range 200 {
		p := clustermap.Policy{
			Name:        fmt.Sprintf("pol%03d", i),
			PodSelector: clustermap.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("svc%03d", i)}},
			Ingress: []clustermap.PolicyRule{
				{Peers: []clustermap.PolicyPeer{{PodSelector: &clustermap.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("svc%03d", (i+1)%200)}}}},
					Ports: []clustermap.PolicyPort{{Protocol: "TCP", Port: 8080}}},
				{Peers: []clustermap.PolicyPeer{{IPBlock: &clustermap.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}}},
					Ports: []clustermap.PolicyPort{{Protocol: "TCP", Port: 443}}},
			},
		}
		if i%2 == 0 {
			p.Egress = []clustermap.PolicyRule{{Peers: []clustermap.PolicyPeer{{PodSelector: &clustermap.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("svc%03d", (i+2)%200)}}}}}}
		}
		if err := Validate(&p); err != nil {
			panic(err)
		}
		in.Policies = append(in.Policies, p)
	}
	in.NodeSubnet = netip.MustParsePrefix("10.0.0.0/24")
	in.Overlay = "warren0"
	return in
}

// BenchmarkRender is the pure cost of rendering 200 policies over 1000 tasks.
func BenchmarkRender(b *testing.B) {
	in := benchInput()
	for b.Loop() {
		Render(in)
	}
}

// BenchmarkSync200Policies1000Tasks measures, in a fresh network
// namespace, a full sync (render, create and fill the sets, one
// iptables-restore) and the sync after one task moves (render, one set
// member out and one in, no iptables run), against baselines in the same
// run: the same rules and sets loaded one iptables call per rule (what
// an applier without iptables-restore does), and a full sync again (what
// an applier that is not incremental does on every change). Targets:
// under 1 s and under 50 ms.
func BenchmarkSync200Policies1000Tasks(b *testing.B) {
	requireRoot(b)
	in := benchInput()
	moved := in
	moved.Tasks = append([]Task(nil), in.Tasks...)
	moved.Tasks[500].IP = netip.MustParseAddr("10.0.9.9")

	var full, change, perRule time.Duration
	var rules, sets, members int
	timed := func(d *time.Duration, f func() error) error {
		start := time.Now()
		err := f()
		*d += time.Since(start)
		return err
	}
	for range b.N {
		ns := newNetns(b, "bench")
		mustInNetns(b, ns, func() error {
			fw, err := hostfw.New(nil)
			if err != nil {
				return err
			}
			a := NewApplier(fw)
			var r Rules
			if err := timed(&full, func() error {
				r = Render(in)
				_, err := a.Sync(r)
				return err
			}); err != nil {
				return err
			}
			rules, sets = strings.Count(string(r.Restore), "\n-A "), len(r.Sets)
			members = 0
			for _, s := range r.Sets {
				members += len(s.Members)
			}
			var st SyncStats
			if err := timed(&change, func() error {
				st, err = a.Sync(Render(moved))
				return err
			}); err != nil {
				return err
			}
			if st.RulesWritten || st.Added == 0 || st.Removed == 0 {
				return fmt.Errorf("one task change: %+v", st)
			}
			if err := hostfw.Cleanup(nil); err != nil {
				return err
			}
			return timed(&perRule, func() error { return perRuleApply(Render(in)) })
		})
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(b.N) / float64(time.Millisecond) }
	b.ReportMetric(ms(full), "full-sync-ms")
	b.ReportMetric(ms(change), "one-task-change-ms")
	b.ReportMetric(ms(perRule), "baseline-per-rule-full-ms")
	b.ReportMetric(float64(perRule)/float64(full), "baseline-per-rule/full-sync")
	b.ReportMetric(float64(full)/float64(change), "full-sync/one-task-change")
	b.ReportMetric(float64(rules), "rules")
	b.ReportMetric(float64(sets), "sets")
	b.ReportMetric(float64(members), "set-members")
}

// perRuleApply is the baseline: the sets as Sync makes them, then the
// chains and each rule with one iptables call, then the jump.
func perRuleApply(r Rules) error {
	ipt, err := iptables.New()
	if err != nil {
		return err
	}
	for _, s := range r.Sets {
		if err := netlink.IpsetCreate(s.Name, "hash:net", netlink.IpsetCreateOptions{Replace: true}); err != nil {
			return err
		}
		for _, m := range s.Members {
			if err := netlink.IpsetAdd(s.Name, &netlink.IPSetEntry{IP: net.IP(m.Addr().AsSlice()), CIDR: uint8(m.Bits())}); err != nil {
				return err
			}
		}
	}
	for _, line := range strings.Split(string(r.Restore), "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			chain, _, _ := strings.Cut(line[1:], " ")
			if err := ipt.NewChain(Table, chain); err != nil {
				return err
			}
		case strings.HasPrefix(line, "-A "):
			args := splitRule(line[len("-A "):])
			if err := ipt.Append(Table, args[0], args[1:]...); err != nil {
				return fmt.Errorf("append %s: %w", line, err)
			}
		}
	}
	return ipt.Insert(Table, "FORWARD", 1, splitRule(hook.Rule)...)
}

// BenchmarkTCPThroughputWithPolicy runs iperf3 between two tasks on one
// node (the lab's task network: a bridge with isolated ports, routed by
// the host) without policies and with a policy selecting the server, in
// alternating rounds, and reports the throughputs and their ratio
// (target: the policy costs under 5 %). The policy set holds 200 other
// policies, so the packet walks a realistic ingress chain.
func BenchmarkTCPThroughputWithPolicy(b *testing.B) {
	requireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed")
	}
	host := newNetns(b, "tcphost")
	srv := newNetns(b, "tcpsrv")
	cli := newNetns(b, "tcpcli")
	mustRun(b, "ip", "-n", host, "link", "add", "br0", "type", "bridge")
	mustRun(b, "ip", "-n", host, "addr", "add", "10.0.200.1/24", "dev", "br0")
	mustRun(b, "ip", "-n", host, "link", "set", "br0", "up")
	nsRun(b, host, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv4/conf/br0/proxy_arp_pvlan")
	for i, ns := range []string{srv, cli} {
		veth := fmt.Sprintf("v%d", i)
		mustRun(b, "ip", "-n", host, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		mustRun(b, "ip", "-n", host, "link", "set", veth, "master", "br0")
		mustRun(b, "ip", "-n", host, "link", "set", veth, "type", "bridge_slave", "isolated", "on")
		mustRun(b, "ip", "-n", host, "link", "set", veth, "up")
		mustRun(b, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.0.200.%d/24", 2+i), "dev", "eth0")
		mustRun(b, "ip", "-n", ns, "link", "set", "eth0", "up")
		mustRun(b, "ip", "-n", ns, "route", "add", "default", "via", "10.0.200.1")
	}
	server := exec.Command("nsenter", "--net=/run/netns/"+srv, "iperf3", "-s", "-B", "10.0.200.2")
	if err := server.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = server.Process.Kill(); _ = server.Wait() })
	time.Sleep(300 * time.Millisecond)

	in := benchInput()
	in.Tasks = append(in.Tasks, Task{Name: "server-1", IP: netip.MustParseAddr("10.0.200.2"), Labels: map[string]string{"app": "server"}},
		Task{Name: "client-1", IP: netip.MustParseAddr("10.0.200.3"), Labels: map[string]string{"app": "client"}})
	sel := func(app string) *clustermap.LabelSelector {
		return &clustermap.LabelSelector{MatchLabels: map[string]string{"app": app}}
	}
	in.Policies = append(in.Policies, clustermap.Policy{Name: "zz-server", PodSelector: *sel("server"), PolicyTypes: []string{"Ingress"},
		Ingress: []clustermap.PolicyRule{{Peers: []clustermap.PolicyPeer{{PodSelector: sel("client")}}, Ports: []clustermap.PolicyPort{{Protocol: "TCP", Port: 5201}}}}})
	withPolicy, without := Render(in), Render(Input{Tasks: in.Tasks})

	var a *Applier
	mustInNetns(b, host, func() error {
		fw, err := hostfw.New(nil)
		a = NewApplier(fw)
		return err
	})
	iperf := func() (float64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+cli, "iperf3", "-c", "10.0.200.2", "-t", "2", "-J", "--connect-timeout", "3000").Output()
		if err != nil {
			return 0, fmt.Errorf("iperf3: %w %s", err, out)
		}
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			return 0, err
		}
		if res.Error != "" { // iperf3 -J can exit 0 on a failed connect
			return 0, fmt.Errorf("iperf3: %s", res.Error)
		}
		return res.End.SumReceived.BitsPerSecond, nil
	}
	var sumWith, sumWithout float64
	rounds := 3 * b.N
	for range rounds {
		for _, c := range []struct {
			r   Rules
			sum *float64
		}{{without, &sumWithout}, {withPolicy, &sumWith}} {
			mustInNetns(b, host, func() error { _, err := a.Sync(c.r); return err })
			bps, err := iperf()
			if err != nil {
				b.Fatal(err)
			}
			*c.sum += bps
		}
	}
	// The policy really is in the path: without the client's label the
	// server is cut off.
	in.Tasks[len(in.Tasks)-1].Labels = map[string]string{"app": "nobody"}
	mustInNetns(b, host, func() error { _, err := a.Sync(Render(in)); return err })
	if _, err := iperf(); err == nil {
		b.Fatal("iperf3 connected although no policy allows the client")
	}
	b.ReportMetric(sumWithout/float64(rounds)/1e9, "Gbit/s-without")
	b.ReportMetric(sumWith/float64(rounds)/1e9, "Gbit/s-with-policy")
	b.ReportMetric(sumWith/sumWithout, "ratio")
}
