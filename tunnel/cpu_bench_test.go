package tunnel

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cpuRate is the fixed iperf3 rate at which CPU per bit is compared: below
// what either pair carries on this machine, so both move the same bits.
const cpuRate = "800M"

// cpuFigures are one pair's CPU at the fixed rate.
type cpuFigures struct {
	mbps        float64
	cpuSeconds  float64 // both device processes, user + system
	seconds     float64
	perGbitPerE float64 // share of a core per Gbit/s per end
	// machine: cores busy per Gbit/s in every process of the machine,
	// iperf3 and the kernel's threads included (allTasksSeconds)
	machine float64
	maxMbps float64 // a following unlimited 10 s run
}

// BenchmarkTunnelCPUPerBit (issue tunnel-efficiency) runs three paired
// rounds (wireguard-go pair, appliance pair, in alternating order) of iperf3
// TCP at a fixed 800 Mbit/s for 10 s and compares the CPU time (user +
// system, /proc/PID/stat) the two device processes spend per Gbit/s per
// end, then runs iperf3 unlimited for 10 s on the same pair. The appliance
// runs as the daemon plans it for this machine (PlanMemory(BoardMemory())).
// TUNNEL_CPU_APPLIANCE_LIMIT_MIB replaces the plan's Go memory limit (0:
// none). It reports the median ratios (CPU per bit, throughput), and writes the
// appliance's CPU profile of the last round to $TUNNEL_CPU_PROFILE_DIR if
// set (appliance-stdbind-*.pprof for the StdNetBind pair below).
// TUNNEL_CPU_STD_BIND=1 adds a third pair to every round, the
// appliance on wireguard-go's StdNetBind instead of our bind (udpbind.go),
// and reports our bind's CPU per bit against it (bind-cpu-ratio); the
// appliance pair then runs between the other two, whose order alternates.
func BenchmarkTunnelCPUPerBit(b *testing.B) {
	requireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed")
	}
	wgGo := buildWireGuardGo(b)
	board, _ := BoardMemory()
	plan := PlanMemory(board)
	// TUNNEL_CPU_APPLIANCE_LIMIT_MIB replaces the plan's Go memory limit
	// (0: none, as wireguard-go runs), to measure what the limit costs.
	if v, ok := os.LookupEnv("TUNNEL_CPU_APPLIANCE_LIMIT_MIB"); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatalf("TUNNEL_CPU_APPLIANCE_LIMIT_MIB=%q: want MiB", v)
		}
		plan.GoLimit = n << 20
	}
	profDir := os.Getenv("TUNNEL_CPU_PROFILE_DIR")
	withStd := os.Getenv("TUNNEL_CPU_STD_BIND") == "1"
	for i := 0; i < b.N; i++ {
		var ratios, machineRatios, ours, theirs, throughput, bindRatios []float64
		for round := 0; round < 3; round++ {
			measureAppliance := func(std bool) cpuFigures {
				return measureCPU(b, func(tp *topo, ca, cb helperConfig) (int, int) {
					for _, hc := range []*helperConfig{&ca, &cb} {
						hc.MemoryLimitMiB, hc.QueuedPackets = plan.GoLimit>>20, plan.QueuedPackets
						hc.StdBind, hc.DaemonThreads = std, true
					}
					if profDir != "" && round == 2 {
						name := "appliance"
						if std {
							name = "appliance-stdbind"
						}
						ca.CPUProfile = filepath.Join(profDir, name+"-a.pprof")
						cb.CPUProfile = filepath.Join(profDir, name+"-b.pprof")
					}
					return startNode(b, tp.a, ca).pid(), startNode(b, tp.b, cb).pid()
				})
			}
			measureUpstream := func() cpuFigures {
				return measureCPU(b, func(tp *topo, ca, cb helperConfig) (int, int) {
					return startWireGuardGo(b, wgGo, tp.a, tp.ifA, ca).Pid, startWireGuardGo(b, wgGo, tp.b, tp.ifB, cb).Pid
				})
			}
			measureOurs := func() cpuFigures { return measureAppliance(false) }
			var o, u, sb cpuFigures
			switch {
			case withStd && round%2 == 0:
				u, o, sb = measureUpstream(), measureOurs(), measureAppliance(true)
			case withStd:
				sb, o, u = measureAppliance(true), measureOurs(), measureUpstream()
			case round%2 == 0:
				u, o = measureUpstream(), measureOurs()
			default:
				o, u = measureOurs(), measureUpstream()
			}
			fmt.Printf("cpu round %d: appliance %.0f Mbit/s, %.2f cores/Gbit/s/end; wireguard-go %.0f Mbit/s, %.2f; ratio %.2f; machine %.2f/%.2f cores/Gbit/s, ratio %.2f; unlimited: appliance %.0f, wireguard-go %.0f Mbit/s\n",
				round+1, o.mbps, o.perGbitPerE, u.mbps, u.perGbitPerE, o.perGbitPerE/u.perGbitPerE, o.machine, u.machine, o.machine/u.machine, o.maxMbps, u.maxMbps)
			if withStd {
				fmt.Printf("cpu round %d: appliance on StdNetBind %.0f Mbit/s, %.2f cores/Gbit/s/end; our bind / StdNetBind %.2f; unlimited %.0f Mbit/s\n",
					round+1, sb.mbps, sb.perGbitPerE, o.perGbitPerE/sb.perGbitPerE, sb.maxMbps)
				bindRatios = append(bindRatios, o.perGbitPerE/sb.perGbitPerE)
			}
			throughput = append(throughput, o.maxMbps/u.maxMbps)
			ratios = append(ratios, o.perGbitPerE/u.perGbitPerE)
			machineRatios = append(machineRatios, o.machine/u.machine)
			ours = append(ours, o.perGbitPerE)
			theirs = append(theirs, u.perGbitPerE)
		}
		b.ReportMetric(median(ratios), "cpu-per-bit-ratio")
		b.ReportMetric(median(machineRatios), "machine-cpu-per-bit-ratio")
		b.ReportMetric(median(throughput), "throughput-ratio")
		b.ReportMetric(median(ours), "appliance-cores-per-Gbit/s-per-end")
		b.ReportMetric(median(theirs), "wireguard-go-cores-per-Gbit/s-per-end")
		if withStd {
			b.ReportMetric(median(bindRatios), "bind-cpu-ratio")
		}
	}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// measureCPU brings up a pair, pushes iperf3 at cpuRate for 10 s and
// reads the two processes' CPU time around the run.
func measureCPU(b *testing.B, start func(tp *topo, ca, cb helperConfig) (int, int)) cpuFigures {
	b.Helper()
	tp := newTopo(b)
	ca, cb := tp.pairConfigs(b, ModeTUN, ModeTUN)
	pidA, pidB := start(tp, ca, cb)
	waitFor(b, "tunnel up", 30*time.Second, func() error {
		return inNSCmd(tp.a, "busybox", "ping", "-c", "1", "-W", "1", "10.0.0.2").Run()
	})
	server := inNSCmd(tp.b, "iperf3", "-s", "-B", "10.0.0.2")
	if err := server.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	waitFor(b, "iperf3 server", 30*time.Second, func() error {
		out, err := inNSCmd(tp.b, "ss", "-Htln", "src", "10.0.0.2:5201").Output()
		if err != nil || !strings.Contains(string(out), "5201") {
			return fmt.Errorf("not listening yet (%v)", err)
		}
		return nil
	})
	before, machineBefore := cpuSeconds(b, pidA)+cpuSeconds(b, pidB), allTasksSeconds(b)
	t0 := time.Now()
	client := inNSCmd(tp.a, "iperf3", "-c", "10.0.0.2", "-t", "10", "-b", cpuRate, "-f", "m")
	out, err := client.CombinedOutput()
	elapsed := time.Since(t0).Seconds()
	if err != nil {
		b.Fatalf("iperf3: %v\n%s", err, out)
	}
	used := cpuSeconds(b, pidA) + cpuSeconds(b, pidB) - before
	// The client has exited: its time comes from its rusage (nsenter,
	// entering only a network namespace, execs it in place).
	clientCPU := (client.ProcessState.UserTime() + client.ProcessState.SystemTime()).Seconds()
	machineUsed := allTasksSeconds(b) + clientCPU - machineBefore
	f := cpuFigures{mbps: receiverMbit(string(out)), cpuSeconds: used, seconds: elapsed}
	if f.mbps == 0 {
		b.Fatalf("no receiver rate in iperf3's output:\n%s", out)
	}
	// Cores busy per end, per Gbit/s carried.
	f.perGbitPerE = used / elapsed / 2 / (f.mbps / 1000)
	f.machine = machineUsed / elapsed / (f.mbps / 1000)
	out, err = inNSCmd(tp.a, "iperf3", "-c", "10.0.0.2", "-t", "10", "-f", "m").CombinedOutput()
	if err != nil {
		b.Fatalf("iperf3: %v\n%s", err, out)
	}
	f.maxMbps = receiverMbit(string(out))
	return f
}

// cpuSeconds is a process's user + system CPU time (/proc/PID/stat).
func cpuSeconds(b testing.TB, pid int) float64 {
	s, err := processCPUSeconds(pid)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func processCPUSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime, stime are 14, 15.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / 100, nil // USER_HZ
}

// allTasksSeconds is the user + system CPU time of every process on the
// machine (kernel threads such as ksoftirqd included), so work that moves
// out of the two device processes (into iperf3's system calls, softirq
// threads) still counts. This kernel charges softirq work to the task it
// interrupts; /proc/stat's tick counts undercount on this VM.
func allTasksSeconds(b testing.TB) float64 {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, d := range dirs {
		if pid, err := strconv.Atoi(d.Name()); err == nil {
			if s, err := processCPUSeconds(pid); err == nil {
				total += s // a process gone meanwhile is skipped
			}
		}
	}
	return total
}

// receiverMbit picks the receiver's Mbit/s from iperf3's -f m summary.
func receiverMbit(out string) float64 {
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "receiver") {
			continue
		}
		f := strings.Fields(line)
		for i := 1; i < len(f); i++ {
			if f[i] == "Mbits/sec" {
				v, _ := strconv.ParseFloat(f[i-1], 64)
				return v
			}
		}
	}
	return 0
}
