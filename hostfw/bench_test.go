package hostfw_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/internal/netnstest"
	"github.com/warren-appliance/warren/nat"
	"github.com/warren-appliance/warren/netpolicy"
)

// benchServices is n services with endpoints each, one TCP port (as nat's
// own benchmark).
func benchServices(n, endpoints int, moved bool) []nat.Service {
	out := make([]nat.Service, 0, n)
	for i := range n {
		s := nat.Service{
			Name:  fmt.Sprintf("svc%04d", i),
			VIP:   netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}),
			Ports: []nat.Port{{Protocol: "tcp", Port: 80, TargetPort: 8080}},
		}
		for j := range endpoints {
			k := i*endpoints + j
			ip := netip.AddrFrom4([4]byte{10, 0, byte(1 + k>>8), byte(k)})
			if moved && i == n/2 && j == 0 {
				ip = netip.MustParseAddr("10.0.250.250")
			}
			s.Endpoints = append(s.Endpoints, nat.Endpoint{Name: fmt.Sprintf("svc%04d-%d", i, j+1), IP: ip})
		}
		out = append(out, s)
	}
	return out
}

// benchPolicies is 200 policies over 1000 tasks (as netpolicy's own
// benchmark): policy i selects app=svc<i>, lets in app=svc<i+1> on TCP
// 8080 and a LAN block on 443; half also restrict egress.
func benchPolicies(tb testing.TB) netpolicy.Input {
	var in netpolicy.Input
	for i := range 1000 {
		svc := fmt.Sprintf("svc%03d", i/5)
		in.Tasks = append(in.Tasks, netpolicy.Task{Name: fmt.Sprintf("%s-%d", svc, i%5+1),
			IP: netip.AddrFrom4([4]byte{10, 0, byte(1 + i/250), byte(2 + i%250)}), Labels: map[string]string{"app": svc}})
	}
	sel := func(i int) *clustermap.LabelSelector {
		return &clustermap.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("svc%03d", i%200)}}
	}
	for i := range 200 {
		p := clustermap.Policy{
			Name:        fmt.Sprintf("pol%03d", i),
			PodSelector: *sel(i),
			Ingress: []clustermap.PolicyRule{
				{Peers: []clustermap.PolicyPeer{{PodSelector: sel(i + 1)}}, Ports: []clustermap.PolicyPort{{Protocol: "TCP", Port: 8080}}},
				{Peers: []clustermap.PolicyPeer{{IPBlock: &clustermap.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}}},
					Ports: []clustermap.PolicyPort{{Protocol: "TCP", Port: 443}}},
			},
		}
		if i%2 == 0 {
			p.Egress = []clustermap.PolicyRule{{Peers: []clustermap.PolicyPeer{{PodSelector: sel(i + 2)}}}}
		}
		if err := netpolicy.Validate(&p); err != nil {
			tb.Fatal(err)
		}
		in.Policies = append(in.Policies, p)
	}
	in.NodeSubnet = netip.MustParsePrefix("10.0.0.0/24")
	in.Overlay = "warren0"
	return in
}

// BenchmarkFirewall measures both backends in one run, each in a fresh
// network namespace, on 1000 services x 3 endpoints plus 200 policies
// over 1000 tasks: the full sync (Syncer.Sync(true) with both parts set:
// everything rewritten) and one change (one endpoint of one service
// moves: nat's sync of it). The backends take turns, round by round (the
// machine's noise falls on both alike), and each figure is the best of 5
// rounds. `make bench-firewall` runs it.
func BenchmarkFirewall(b *testing.B) {
	netnstest.RequireRoot(b)
	opts := nat.Options{ContainerSubnet: netip.MustParsePrefix("10.0.0.0/16"), Bridge: "warren-br0", Overlay: "warren0"}
	services, moved := benchServices(1000, 3, false), benchServices(1000, 3, true)
	policies := netpolicy.Render(benchPolicies(b))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	full, change, canary := map[string]time.Duration{}, map[string]time.Duration{}, map[string]time.Duration{}
	for range b.N {
		type setup struct {
			ns  string
			fw  *hostfw.Syncer
			nat *nat.Applier
		}
		bs := map[string]*setup{}
		for _, backend := range hostfw.Backends {
			st := &setup{ns: netnstest.New(b, "wbfw", backend[:3])}
			netnstest.MustIn(b, st.ns, func() error {
				var err error
				if st.fw, err = hostfw.NewBackend(backend, log); err != nil {
					return err
				}
				st.nat = nat.NewApplierWith(st.fw, log)
				if err := st.nat.Sync(services, opts); err != nil {
					return err
				}
				_, err = netpolicy.NewApplier(st.fw).Sync(policies)
				return err
			})
			bs[backend] = st
		}
		fulls, changes := map[string][]time.Duration{}, map[string][]time.Duration{}
		for i := range 5 {
			next := moved
			if i%2 == 1 {
				next = services
			}
			for _, backend := range hostfw.Backends {
				st := bs[backend]
				netnstest.MustIn(b, st.ns, func() error {
					start := time.Now()
					if err := st.fw.Sync(true); err != nil {
						return err
					}
					fulls[backend] = append(fulls[backend], time.Since(start))
					start = time.Now()
					if err := st.nat.Sync(next, opts); err != nil {
						return err
					}
					changes[backend] = append(changes[backend], time.Since(start))
					return nil
				})
			}
		}
		for _, backend := range hostfw.Backends {
			st := bs[backend]
			full[backend], change[backend] = slices.Min(fulls[backend]), slices.Min(changes[backend])
			netnstest.MustIn(b, st.ns, func() error {
				start := time.Now()
				if repaired, err := st.fw.Check(true); err != nil || repaired {
					return fmt.Errorf("slow canary check on intact rules: %v %v", repaired, err)
				}
				canary[backend] = time.Since(start)
				return hostfw.Cleanup(log)
			})
		}
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }
	fmt.Printf("full sync 1000x3: iptables %s, nftables %s; one change: iptables %s, nftables %s\n",
		ms(full["iptables"]), ms(full["nftables"]), ms(change["iptables"]), ms(change["nftables"]))
	fmt.Printf("slow canary check: iptables %s, nftables %s\n", ms(canary["iptables"]), ms(canary["nftables"]))
	b.ReportMetric(float64(full["nftables"])/float64(full["iptables"]), "nft/ipt-full")
	b.ReportMetric(float64(change["nftables"])/float64(change["iptables"]), "nft/ipt-change")
}
