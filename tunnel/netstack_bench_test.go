package tunnel

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkNetstackForwardVsTUN compares the two modes on the same
// two-namespace topology, one fresh topology per setup, each device process
// with the memory plan the daemon would choose on this machine (PlanMemory:
// Go memory limit and packet budget):
//
//	tun               a and b in TUN mode; iperf3 in a to b's overlay address
//	netstack-forward  a in netstack mode (no kernel interface), b in TUN mode;
//	                  iperf3 in a to a [[forward]] on a's 127.0.0.1:15201
//	                  whose target is b's iperf3 server on the overlay
//
// Each setup runs iperf3 TCP for 10 s a -> b (upload: the netstack side
// sends, GSO) and then with -R (download: the netstack side receives, GRO).
// It prints netstack-forward TCP / TUN TCP for both directions.
//
// With TUNNEL_BENCH_NETSTACK_ABLATION=1 it also measures the netstack setup
// with each part of its data path turned off in turn (see netstackOptions),
// which is how tunnel/BENCHMARKS.md attributes the gain.
func BenchmarkNetstackForwardVsTUN(b *testing.B) {
	requireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed")
	}
	const fwdPort = 15201
	measure := func(modeA, off string) (up, down, cpuUp float64) {
		b.Setenv(netstackOffEnv, off)
		tp := newTopo(b)
		ca, cb := tp.pairConfigs(b, modeA, ModeTUN)
		ca.DaemonThreads, cb.DaemonThreads = true, true
		if !strings.Contains(off, "memlimit") {
			board, _ := BoardMemory()
			plan := PlanMemory(board)
			for _, c := range []*helperConfig{&ca, &cb} {
				c.MemoryLimitMiB = plan.GoLimit >> 20
				c.QueuedPackets = plan.QueuedPackets
				if !strings.Contains(off, "nsplan") {
					c.NetstackQueuedPackets, c.NetstackTCPBuffer = plan.NetstackQueuedPackets, plan.NetstackTCPBuffer
				}
			}
		}
		// limitN / qN: Go memory limit N MiB / packet budget N on the
		// netstack side (a) instead of the plan's.
		for _, part := range strings.Split(off, ",") {
			if n, err := strconv.Atoi(strings.TrimPrefix(part, "limit")); err == nil && strings.HasPrefix(part, "limit") {
				ca.MemoryLimitMiB = int64(n)
			}
			if n, err := strconv.Atoi(strings.TrimPrefix(part, "q")); err == nil && strings.HasPrefix(part, "q") {
				ca.QueuedPackets, ca.NetstackQueuedPackets = n, 0
			}
		}
		target := "10.0.0.2"
		port := 5201
		if modeA == ModeNetstack {
			ca.Forwards = []Forward{{Proto: "tcp", Listen: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), fwdPort),
				Target: netip.MustParseAddrPort("10.0.0.2:5201")}}
			target, port = "127.0.0.1", fwdPort
		}
		na := startNode(b, tp.a, ca)
		nb := startNode(b, tp.b, cb)
		defer na.stop()
		defer nb.stop()
		before := cpuSeconds(b, na.pid())
		up, _ = iperfVia(b, tp, target, port, 10, false)
		cpuUp = cpuSeconds(b, na.pid()) - before
		down, _ = iperfVia(b, tp, target, port, 10, true)
		return up, down, cpuUp
	}
	for i := 0; i < b.N; i++ {
		tunUp, tunDown, tunCPU := measure(ModeTUN, "")
		nsUp, nsDown, nsCPU := measure(ModeNetstack, "")
		type row struct {
			name          string
			up, down, cpu float64
		}
		var ablation []row
		if os.Getenv("TUNNEL_BENCH_NETSTACK_ABLATION") == "1" {
			for _, off := range ablationParts() {
				up, down, cpu := measure(ModeNetstack, off)
				ablation = append(ablation, row{"  without " + off, up, down, cpu})
			}
		}
		fmt.Printf("\nCPU: seconds used by device process a during the 10 s a->b run.\n")
		fmt.Printf("%-34s %14s %14s %8s\n", "setup", "a->b Mbit/s", "b->a Mbit/s", "CPU s")
		fmt.Printf("%-34s %14.0f %14.0f %8.2f\n", "tun", tunUp, tunDown, tunCPU)
		fmt.Printf("%-34s %14.0f %14.0f %8.2f\n", "netstack-forward", nsUp, nsDown, nsCPU)
		for _, r := range ablation {
			fmt.Printf("%-34s %14.0f %14.0f %8.2f\n", r.name, r.up, r.down, r.cpu)
		}
		fmt.Printf("netstack-forward TCP / TUN TCP: %.2f a->b (netstack sends), %.2f b->a (netstack receives)\n\n",
			nsUp/tunUp, nsDown/tunDown)
		b.ReportMetric(nsUp/tunUp, "netstack/tun-ratio")
		b.ReportMetric(nsDown/tunDown, "netstack/tun-ratio-reverse")
		b.ReportMetric(nsUp, "netstack-Mbit/s")
		b.ReportMetric(tunUp, "tun-Mbit/s")
	}
}

func ablationParts() []string {
	if p := os.Getenv("TUNNEL_BENCH_NETSTACK_PARTS"); p != "" {
		return strings.Split(p, " ")
	}
	return []string{"gso", "gro", "batch", "tcp", "gso,gro,batch,tcp"}
}

// netstackOffEnv names the parts of the netstack data path a device
// process turns off: a comma-separated subset of gso, gro, batch, tcp;
// bufN sets the TCP buffer maximum to N MiB. Applied by the benchmark:
// memlimit drops the planned Go memory limit, nsplan the plan's netstack
// budget and TCP buffer (netstack then runs with the TUN-mode budget and
// 4 MiB buffers), limitN and qN set the netstack side's Go limit (MiB)
// and packet budget.
const netstackOffEnv = "TUNNEL_TEST_NETSTACK_OFF"

// In a re-executed device process, apply netstackOffEnv.
func init() {
	for _, part := range strings.Split(os.Getenv(netstackOffEnv), ",") {
		switch part {
		case "gso":
			netstackOpts.gso = false
		case "gro":
			netstackOpts.gro = false
		case "batch":
			netstackOpts.batch = false
		case "tcp":
			netstackOpts.tcpTuning = false
		default:
			// bufN: TCP buffer ranges up to N MiB instead of the default.
			if mib, err := strconv.Atoi(strings.TrimPrefix(part, "buf")); err == nil && strings.HasPrefix(part, "buf") {
				netstackOpts.tcpBufMax = mib << 20
			}
		}
	}
}
