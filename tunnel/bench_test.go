package tunnel

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pathFigures are one setup's measurements.
type pathFigures struct {
	name        string
	mbps        float64 // iperf3 TCP, a -> b, 10 s
	rttMs       float64 // ping median, idle
	loadedRttMs float64 // ping median during the iperf3 run
	idleRSS     int64   // KiB, after handshake, before traffic (device a / b max)
	afterRSS    int64   // KiB, right after the iperf3 run
	settledRSS  int64   // KiB, 3 s after the run
	peakRSS     int64   // KiB, VmHWM
	retransmits int64
	afterA      int64 // KiB, sender
	afterB      int64 // KiB, receiver
}

// BenchmarkTunnelVsWireGuardGo sets up the same two-namespace topology seven
// times in one run (five setups) and pushes iperf3 TCP (10 s, a to b) and
// 100 pings through each:
//
//	appliance            our devices as the daemon runs them: packet budget
//	                     on, Go soft memory limit 64 MiB (GOMEMLIMIT)
//	appliance-nolimit    packet budget on, no memory limit
//	appliance-unbounded  budget off, no limit: wireguard-go's own behaviour
//	appliance-limit-only budget off, 64 MiB limit: what the budget buys
//	wireguard-go         two standalone upstream wireguard-go processes
//
// Every appliance setup runs with the daemon's thread plan (PlanGoThreads).
// It reports the appliance's figures as ratios to wireguard-go's, and its
// throughput as a ratio to the unbounded run (the cost of the bound).
func BenchmarkTunnelVsWireGuardGo(b *testing.B) {
	requireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed")
	}
	wgGo := buildWireGuardGo(b)
	ourPair := func(adjust func(*helperConfig)) func(tp *topo, ca, cb helperConfig) (int, int) {
		return func(tp *topo, ca, cb helperConfig) (int, int) {
			adjust(&ca)
			adjust(&cb)
			ca.DaemonThreads, cb.DaemonThreads = true, true
			return startNode(b, tp.a, ca).pid(), startNode(b, tp.b, cb).pid()
		}
	}
	upstreamPair := func(tp *topo, ca, cb helperConfig) (int, int) {
		return startWireGuardGo(b, wgGo, tp.a, tp.ifA, ca).Pid, startWireGuardGo(b, wgGo, tp.b, tp.ifB, cb).Pid
	}
	for i := 0; i < b.N; i++ {
		// The machine is shared and its load drifts: the pair that matters
		// (appliance vs wireguard-go) runs in A B ... B A order and is averaged.
		up1 := measurePath(b, "wireguard-go", upstreamPair)
		ours1 := measurePath(b, "appliance", ourPair(func(c *helperConfig) { c.MemoryLimitMiB = 64 }))
		nolimit := measurePath(b, "appliance-nolimit", ourPair(func(c *helperConfig) {}))
		unbounded := measurePath(b, "appliance-unbounded", ourPair(func(c *helperConfig) { c.Unbounded = true }))
		limitOnly := measurePath(b, "appliance-limit-only", ourPair(func(c *helperConfig) { c.Unbounded, c.MemoryLimitMiB = true, 64 }))
		ours2 := measurePath(b, "appliance", ourPair(func(c *helperConfig) { c.MemoryLimitMiB = 64 }))
		up2 := measurePath(b, "wireguard-go", upstreamPair)
		ours, upstream := meanFigures(ours1, ours2), meanFigures(up1, up2)
		fmt.Printf("\nRSS is the larger of the two device processes (sender a, receiver b); MiB.\n")
		fmt.Printf("%-26s %8s %8s %9s %6s %6s %7s %7s %6s %7s\n", "setup", "Mbit/s", "RTT ms", "loaded ms", "idle", "after", "settled", "peak", "retr", "a/b")
		for _, f := range []pathFigures{up1, ours1, nolimit, unbounded, limitOnly, ours2, up2, ours, upstream} {
			fmt.Printf("%-26s %8.0f %8.3f %9.3f %6.1f %6.1f %7.1f %7.1f %6d %3.0f/%3.0f\n", f.name, f.mbps, f.rttMs, f.loadedRttMs,
				mib(f.idleRSS), mib(f.afterRSS), mib(f.settledRSS), mib(f.peakRSS), f.retransmits, mib(f.afterA), mib(f.afterB))
		}
		fmt.Println()
		b.ReportMetric(ours.mbps/upstream.mbps, "throughput-ratio")
		b.ReportMetric(ours.rttMs/upstream.rttMs, "rtt-ratio")
		b.ReportMetric(ours.loadedRttMs/upstream.loadedRttMs, "loaded-rtt-ratio")
		b.ReportMetric(float64(ours.idleRSS)/float64(upstream.idleRSS), "idle-rss-ratio")
		b.ReportMetric(float64(ours.afterRSS)/float64(upstream.afterRSS), "after-rss-ratio")
		b.ReportMetric(mib(ours.afterRSS), "after-rss-MiB")
		b.ReportMetric(mib(ours.peakRSS), "peak-rss-MiB")
		b.ReportMetric(mib(nolimit.afterRSS), "nolimit-after-rss-MiB")
		b.ReportMetric(ours.mbps/unbounded.mbps, "bounded/unbounded-throughput")
		b.ReportMetric(limitOnly.mbps/ours.mbps, "limit-only/appliance-throughput")
		b.ReportMetric(ours.mbps, "Mbit/s")
	}
}

// meanFigures averages two runs of the same setup (peaks: the larger).
func meanFigures(x, y pathFigures) pathFigures {
	return pathFigures{
		name:        x.name + " (mean)",
		mbps:        (x.mbps + y.mbps) / 2,
		rttMs:       (x.rttMs + y.rttMs) / 2,
		loadedRttMs: (x.loadedRttMs + y.loadedRttMs) / 2,
		idleRSS:     (x.idleRSS + y.idleRSS) / 2,
		afterRSS:    (x.afterRSS + y.afterRSS) / 2,
		settledRSS:  (x.settledRSS + y.settledRSS) / 2,
		peakRSS:     max(x.peakRSS, y.peakRSS),
		retransmits: (x.retransmits + y.retransmits) / 2,
		afterA:      (x.afterA + y.afterA) / 2,
		afterB:      (x.afterB + y.afterB) / 2,
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
	f.rttMs = pingMedian(b, tp.a, "10.0.0.2")

	// Ping alongside the stream: how much queueing the tunnel adds under load.
	var loadedOut bytes.Buffer
	loadedPing := inNSCmd(tp.a, "busybox", "ping", "-c", "80", "-i", "0.1", "10.0.0.2")
	loadedPing.Stdout = &loadedOut
	if err := loadedPing.Start(); err != nil {
		b.Fatal(err)
	}
	f.mbps, f.retransmits = iperfRun(b, tp, 10)
	loadedPing.Wait()
	f.loadedRttMs = medianRTT(b, loadedOut.String(), 20)
	f.afterA, f.afterB = rssKiB(b, pidA, "VmRSS"), rssKiB(b, pidB, "VmRSS")
	f.afterRSS = max(f.afterA, f.afterB)
	f.peakRSS = max(rssKiB(b, pidA, "VmHWM"), rssKiB(b, pidB, "VmHWM"))
	time.Sleep(3 * time.Second)
	f.settledRSS = max(rssKiB(b, pidA, "VmRSS"), rssKiB(b, pidB, "VmRSS"))
	return f
}

// iperfRun runs an iperf3 TCP test of the given seconds from namespace a to
// b's overlay address and returns Mbit/s received and retransmits.
func iperfRun(b testing.TB, tp *topo, seconds int) (mbps float64, retransmits int64) {
	b.Helper()
	return iperfVia(b, tp, "10.0.0.2", 5201, seconds, false)
}

// iperfVia runs iperf3 TCP for the given seconds from namespace a to
// target:port (b's server on 10.0.0.2:5201 is reached directly or through a
// forward), in reverse (b sends) when reverse is set, and returns Mbit/s
// received and the sender's retransmits.
func iperfVia(b testing.TB, tp *topo, target string, port, seconds int, reverse bool) (mbps float64, retransmits int64) {
	b.Helper()
	server := inNSCmd(tp.b, "iperf3", "-s", "-B", "10.0.0.2")
	if err := server.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	waitFor(b, "iperf3 server listening", 30*time.Second, func() error {
		out, err := inNSCmd(tp.b, "ss", "-Htln", "src", "10.0.0.2:5201").Output()
		if err != nil || !strings.Contains(string(out), "5201") {
			return fmt.Errorf("not listening yet (%v)", err)
		}
		return nil
	})
	args := []string{"iperf3", "-c", target, "-p", strconv.Itoa(port), "-t", strconv.Itoa(seconds), "-J"}
	if reverse {
		args = append(args, "-R")
	}
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	// iperf3 -J exits 0 even when it could not connect (the server may not
	// listen yet): the JSON's error field tells.
	waitFor(b, "iperf3 run", 30*time.Second, func() error {
		out, err := inNSCmd(tp.a, args...).Output()
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			return fmt.Errorf("iperf3: %v, json: %v", err, jerr)
		}
		if res.Error != "" {
			return errors.New(res.Error)
		}
		if res.End.SumReceived.BitsPerSecond == 0 {
			return errors.New("iperf3 measured nothing")
		}
		return err
	})
	return res.End.SumReceived.BitsPerSecond / 1e6, res.End.SumSent.Retransmits
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

var rttSample = regexp.MustCompile(`time=([\d.]+) ms`)

// pingMedian returns the median RTT of 100 pings: steadier than the mean
// on a shared, noisy machine.
func pingMedian(b testing.TB, ns, addr string) float64 {
	b.Helper()
	return medianRTT(b, runIn(b, ns, "busybox", "ping", "-c", "100", "-i", "0.05", addr), 50)
}

// medianRTT parses ping's per-reply lines and returns their median; fewer
// than minReplies replies fail the benchmark.
func medianRTT(b testing.TB, out string, minReplies int) float64 {
	b.Helper()
	var rtts []float64
	for _, m := range rttSample.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseFloat(m[1], 64)
		if err == nil {
			rtts = append(rtts, v)
		}
	}
	if len(rtts) < minReplies {
		b.Fatalf("only %d ping replies:\n%s", len(rtts), out)
	}
	sort.Float64s(rtts)
	return rtts[len(rtts)/2]
}
