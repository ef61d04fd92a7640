package tunnel

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pathFigures are one setup's measurements.
type pathFigures struct {
	name        string
	mbps        float64 // iperf3 TCP, a -> b, 10 s
	rttMs       float64 // ping average
	idleRSS     int64   // KiB, after handshake, before traffic (device a / b max)
	afterRSS    int64   // KiB, right after the iperf3 run
	settledRSS  int64   // KiB, 5 s after the run
	peakRSS     int64   // KiB, VmHWM
	retransmits int64
}

// BenchmarkTunnelVsWireGuardGo sets up the same two-namespace topology three
// times in one run: two of our devices (memory bound on), two of our devices
// with the bound off, two standalone wireguard-go processes. It reports
// TCP throughput, ping RTT and RSS as ratios appliance/wireguard-go.
func BenchmarkTunnelVsWireGuardGo(b *testing.B) {
	requireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed")
	}
	wgGo := buildWireGuardGo(b)
	for i := 0; i < b.N; i++ {
		ours := measurePath(b, "appliance", func(tp *topo, ca, cb helperConfig) (int, int) {
			if v, err := strconv.ParseInt(os.Getenv("TUNNEL_TEST_MEMLIMIT_MIB"), 10, 64); err == nil {
				ca.MemoryLimitMiB, cb.MemoryLimitMiB = v, v
			}
			return startNode(b, tp.a, ca).pid(), startNode(b, tp.b, cb).pid()
		})
		unbounded := measurePath(b, "appliance-unbounded", func(tp *topo, ca, cb helperConfig) (int, int) {
			ca.Unbounded, cb.Unbounded = true, true
			return startNode(b, tp.a, ca).pid(), startNode(b, tp.b, cb).pid()
		})
		upstream := measurePath(b, "wireguard-go", func(tp *topo, ca, cb helperConfig) (int, int) {
			return startWireGuardGo(b, wgGo, tp.a, tp.ifA, ca).Pid, startWireGuardGo(b, wgGo, tp.b, tp.ifB, cb).Pid
		})
		fmt.Printf("\n%-22s %10s %9s %9s %10s %11s %9s %8s\n", "setup", "Mbit/s", "RTT ms", "idle MiB", "after MiB", "settled MiB", "peak MiB", "retrans")
		for _, f := range []pathFigures{ours, unbounded, upstream} {
			fmt.Printf("%-22s %10.0f %9.3f %9.1f %10.1f %11.1f %9.1f %8d\n", f.name, f.mbps, f.rttMs,
				mib(f.idleRSS), mib(f.afterRSS), mib(f.settledRSS), mib(f.peakRSS), f.retransmits)
		}
		fmt.Println()
		b.ReportMetric(ours.mbps/upstream.mbps, "throughput-ratio")
		b.ReportMetric(ours.rttMs/upstream.rttMs, "rtt-ratio")
		b.ReportMetric(float64(ours.idleRSS)/float64(upstream.idleRSS), "idle-rss-ratio")
		b.ReportMetric(float64(ours.afterRSS)/float64(upstream.afterRSS), "after-rss-ratio")
		b.ReportMetric(mib(ours.afterRSS), "after-rss-MiB")
		b.ReportMetric(mib(ours.peakRSS), "peak-rss-MiB")
		b.ReportMetric(ours.mbps/unbounded.mbps, "bounded/unbounded-throughput")
		b.ReportMetric(ours.mbps, "Mbit/s")
	}
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// measurePath builds a fresh topology, lets start bring up the two ends,
// and measures it.
func measurePath(b *testing.B, name string, start func(tp *topo, ca, cb helperConfig) (pidA, pidB int)) pathFigures {
	b.Helper()
	tp := newTopo(b)
	ca, cb := tp.pairConfigs(b, ModeTUN, ModeTUN)
	pidA, pidB := start(tp, ca, cb)
	f := pathFigures{name: name}

	// Handshake, then idle memory.
	waitFor(b, name+" tunnel up", 30*time.Second, func() error {
		return inNSCmd(tp.a, "busybox", "ping", "-c", "1", "-W", "1", "10.0.0.2").Run()
	})
	time.Sleep(time.Second)
	f.idleRSS = max(rssKiB(b, pidA, "VmRSS"), rssKiB(b, pidB, "VmRSS"))
	f.rttMs = pingAvg(b, tp.a, "10.0.0.2")

	server := inNSCmd(tp.b, "iperf3", "-s", "-1", "-B", "10.0.0.2")
	if err := server.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	var out []byte
	waitFor(b, "iperf3 run", 30*time.Second, func() error {
		var err error
		out, err = inNSCmd(tp.a, "iperf3", "-c", "10.0.0.2", "-t", "10", "-J").Output()
		return err
	})
	var res struct {
		End struct {
			SumSent struct {
				Retransmits int64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatalf("iperf3 json: %v\n%s", err, out)
	}
	f.mbps = res.End.SumReceived.BitsPerSecond / 1e6
	f.retransmits = res.End.SumSent.Retransmits
	b.Logf("%s after: a=%d KiB b=%d KiB", name, rssKiB(b, pidA, "VmRSS"), rssKiB(b, pidB, "VmRSS"))
	f.afterRSS = max(rssKiB(b, pidA, "VmRSS"), rssKiB(b, pidB, "VmRSS"))
	f.peakRSS = max(rssKiB(b, pidA, "VmHWM"), rssKiB(b, pidB, "VmHWM"))
	time.Sleep(5 * time.Second)
	f.settledRSS = max(rssKiB(b, pidA, "VmRSS"), rssKiB(b, pidB, "VmRSS"))
	return f
}

var statusLine = regexp.MustCompile(`(?m)^(\w+):\s+(\d+) kB`)

// rssKiB reads a memory figure (VmRSS, VmHWM) of process pid.
func rssKiB(b testing.TB, pid int, field string) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range statusLine.FindAllStringSubmatch(string(data), -1) {
		if m[1] == field {
			v, _ := strconv.ParseInt(m[2], 10, 64)
			return v
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

var rttLine = regexp.MustCompile(`min/avg/max = [\d.]+/([\d.]+)/`)

func pingAvg(b testing.TB, ns, addr string) float64 {
	b.Helper()
	out := runIn(b, ns, "busybox", "ping", "-c", "50", "-i", "0.1", "-q", addr)
	m := rttLine.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("ping output:\n%s", out)
	}
	v, _ := strconv.ParseFloat(strings.TrimSpace(m[1]), 64)
	return v
}
