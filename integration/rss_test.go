package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/tunnel"
)

// procStatusKiB reads a field (VmRSS, VmHWM) of /proc/PID/status in KiB.
func procStatusKiB(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// The daemon's own memory, as README states it: warren-appliance on a
// manager and a worker of a running cluster, after 10 s of iperf3 through
// the tunnel between them (node to node over warren0). On this machine
// (not a small board) the daemon plans for a large board, and its peak
// must stay within the 64 MiB ceiling. The figures are logged for README.
func TestDaemonRSSAfterTunnelLoad(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatalf("iperf3 not found: tools/install-deps.sh installs it")
	}
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 1})
	ctx := ctxFor(t, 3*time.Minute)
	m, w := c.Manager, c.Workers[0]
	// On every address: warren0 may not have its address yet.
	if _, err := w.Background("iperf3-server.log", "iperf3", "-s"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the worker's iperf3 server answers over the tunnel", func() error {
		_, err := m.Exec(ctx, "iperf3", "-c", "10.0.0.2", "-t", "1", "--connect-timeout", "2000")
		return err
	})
	idle := map[string]int{}
	for _, n := range []*lab.Node{m, w} {
		idle[n.Name], _ = procStatusKiB(n.AppliancePID(), "VmRSS")
	}
	out, err := m.Exec(ctx, "iperf3", "-c", "10.0.0.2", "-t", "10", "-P", "4")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("iperf3 manager-1 -> worker-1 over warren0:\n%s", lastLines(out, 4))
	for _, n := range []*lab.Node{m, w} {
		f, err := daemonMemory(n)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: RSS idle %.1f MiB, %s", n.Name, float64(idle[n.Name])/1024, f)
		if f.hwm > 64*1024 {
			t.Errorf("%s: warren-appliance peaked at %.1f MiB, over the 64 MiB ceiling", n.Name, float64(f.hwm)/1024)
		}
		// It ran Go on the threads its plan gives this machine's cores.
		if os.Getenv("GOMAXPROCS") == "" {
			want := fmt.Sprintf(`msg="go threads" gomaxprocs=%d from=board`, tunnel.PlanGoThreads(runtime.GOMAXPROCS(0)))
			if !strings.Contains(n.Logs(), want) {
				t.Errorf("%s: no %q in the daemon's log", n.Name, want)
			}
		}
	}
}

// TestDaemonMemoryCeilingUnderLoad: a manager and three workers (each
// daemon with three peers), two of the workers restarted inside a 512 MiB
// memory cgroup, as on a 512 MB board, so that they plan for one. Then
// iperf3 runs from every worker at once for 20 s: to the manager, and from
// the manager to one of the small boards (-R). Every daemon's peak RSS
// (VmHWM) must stay at most 64 MiB, the small boards' at most 48 MiB.
func TestDaemonMemoryCeilingUnderLoad(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatalf("iperf3 not found: tools/install-deps.sh installs it")
	}
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 3})
	ctx := ctxFor(t, 5*time.Minute)
	small, mbps, err := memoryCeilingRun(ctx, c, 20)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes() {
		f, err := daemonMemory(n)
		if err != nil {
			t.Fatal(err)
		}
		ceiling := 64
		if small[n.Name] {
			ceiling = 48
			if !strings.Contains(n.ApplianceLog(), "board_mib=512") {
				t.Errorf("%s: no memory plan for a 512 MiB board in its log", n.Name)
			}
		}
		t.Logf("%s (ceiling %d MiB, its iperf3 client %.0f Mbit/s): %s", n.Name, ceiling, mbps[n.Name], f)
		if f.hwm > ceiling*1024 {
			t.Errorf("%s: warren-appliance peaked at %.1f MiB, over its %d MiB ceiling", n.Name, float64(f.hwm)/1024, ceiling)
		}
	}
}

// BenchmarkDaemonPeakRSS (make bench): the daemon's peak RSS under 60 s of
// iperf3 on the cluster of TestDaemonMemoryCeilingUnderLoad.
func BenchmarkDaemonPeakRSS(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed")
	}
	l, err := lab.New(lab.Options{Dir: b.TempDir(), BinDir: binDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := l.StartCluster(ctx, lab.ClusterOptions{Workers: 3})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		small, mbps, err := memoryCeilingRun(ctx, c, 60)
		if err != nil {
			b.Fatal(err)
		}
		var peakSmall, peakLarge float64
		for _, n := range c.Nodes() {
			f, err := daemonMemory(n)
			if err != nil {
				b.Fatal(err)
			}
			fmt.Fprintf(os.Stderr, "daemon memory after 60 s of iperf3: %s (512 MiB board: %v, %.0f Mbit/s): %s\n", n.Name, small[n.Name], mbps[n.Name], f)
			if small[n.Name] {
				peakSmall = max(peakSmall, float64(f.hwm)/1024)
			} else {
				peakLarge = max(peakLarge, float64(f.hwm)/1024)
			}
		}
		b.ReportMetric(peakSmall, "peak-rss-MiB-512MB-board")
		b.ReportMetric(peakLarge, "peak-rss-MiB")
	}
}

// memoryCeilingRun restarts worker-1 and worker-2 inside 512 MiB memory
// cgroups, then runs iperf3 for seconds from every worker at once (worker-2
// with -R: the manager sends) and returns which nodes are small boards and
// each client's Mbit/s.
func memoryCeilingRun(ctx context.Context, c *lab.Cluster, seconds int) (map[string]bool, map[string]float64, error) {
	small := map[string]bool{}
	for _, w := range c.Workers[:2] {
		if err := restartInMemoryCgroup(ctx, w, 512<<20); err != nil {
			return nil, nil, err
		}
		small[w.Name] = true
	}
	m := c.Manager
	for i := range c.Workers {
		port := strconv.Itoa(5201 + i)
		if _, err := m.Background("iperf3-server-"+port+".log", "iperf3", "-s", "-p", port); err != nil {
			return nil, nil, err
		}
	}
	for i, w := range c.Workers {
		port := strconv.Itoa(5201 + i)
		if err := lab.Poll(ctx, time.Second, func() error {
			_, err := w.Exec(ctx, "iperf3", "-c", "10.0.0.1", "-p", port, "-t", "1", "--connect-timeout", "2000")
			return err
		}); err != nil {
			return nil, nil, fmt.Errorf("%s: iperf3 to the manager over the tunnel: %w", w.Name, err)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	mbps := map[string]float64{}
	errs := make([]error, len(c.Workers))
	for i, w := range c.Workers {
		args := []string{"-c", "10.0.0.1", "-p", strconv.Itoa(5201 + i), "-t", strconv.Itoa(seconds), "-P", "2", "-f", "m"}
		if i == 1 {
			args = append(args, "-R")
		}
		wg.Go(func() {
			var out string
			var err error
			// The server may still be closing the readiness run.
			for try := 0; try < 10; try++ {
				if out, err = w.Exec(ctx, "iperf3", args...); err == nil || !strings.Contains(out, "server is busy") {
					break
				}
				time.Sleep(time.Second)
			}
			if err != nil {
				errs[i] = fmt.Errorf("%s: iperf3: %w\n%s", w.Name, err, out)
				return
			}
			mu.Lock()
			mbps[w.Name] = receiverMbps(out)
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, nil, err
		}
	}
	return small, mbps, nil
}

// receiverMbps picks the receiver's Mbit/s from iperf3's -f m summary.
func receiverMbps(out string) float64 {
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "receiver") || !strings.Contains(line, "Mbits/sec") {
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

// restartInMemoryCgroup stops n's daemon and starts it again inside a new
// memory cgroup limited to limit bytes (v1's memory controller, or v2),
// named after the node so that the lab removes it with the node's.
func restartInMemoryCgroup(ctx context.Context, n *lab.Node, limit int64) error {
	dir := filepath.Join("/sys/fs/cgroup/memory", n.NetNS+"-board")
	limitFile := "memory.limit_in_bytes"
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err != nil {
		dir, limitFile = filepath.Join("/sys/fs/cgroup", n.NetNS+"-board"), "memory.max"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%s: memory cgroup: %w", n.Name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, limitFile), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		return fmt.Errorf("%s: memory cgroup limit: %w", n.Name, err)
	}
	if err := n.StopAppliance(syscall.SIGTERM); err != nil {
		return err
	}
	script := fmt.Sprintf("echo $$ > %s/cgroup.procs && exec warren-appliance --config /etc/warren/warren.toml", dir)
	if err := n.StartAppliance("sh", "-c", script); err != nil {
		return err
	}
	return lab.Poll(ctx, 200*time.Millisecond, func() error {
		if !strings.Contains(n.ApplianceLog(), "board_mib=512") {
			return fmt.Errorf("%s: no memory plan for a 512 MiB board logged yet", n.Name)
		}
		return nil
	})
}

// daemonFigures are a daemon's memory figures, in KiB.
type daemonFigures struct {
	rss, hwm, anon, file int
}

func (f daemonFigures) String() string {
	return fmt.Sprintf("RSS %.1f MiB (anonymous %.1f, file-backed %.1f: the binary's pages), peak (VmHWM) %.1f MiB",
		float64(f.rss)/1024, float64(f.anon)/1024, float64(f.file)/1024, float64(f.hwm)/1024)
}

// daemonMemory reads warren-appliance's figures on node n.
func daemonMemory(n *lab.Node) (daemonFigures, error) {
	pid := n.AppliancePID()
	var f daemonFigures
	for _, x := range []struct {
		field string
		v     *int
	}{{"VmRSS", &f.rss}, {"VmHWM", &f.hwm}, {"RssAnon", &f.anon}, {"RssFile", &f.file}} {
		v, err := procStatusKiB(pid, x.field)
		if err != nil {
			return f, fmt.Errorf("%s warren-appliance (pid %d): %w", n.Name, pid, err)
		}
		*x.v = v
	}
	return f, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
