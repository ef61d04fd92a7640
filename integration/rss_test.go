package integration

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
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
// the tunnel between them (node to node over warren0). RSS counts the
// binary's mapped pages and the runtime beside the 64 MiB soft limit on Go
// memory, so the bound is 96 MiB: a tunnel whose buffers grew without bound
// would pass it. The figures are logged for README.
func TestDaemonRSSAfterTunnelLoad(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatalf("iperf3 not found: tools/install-deps.sh installs it")
	}
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 1})
	ctx := ctxFor(t, 3*time.Minute)
	m, w := c.Manager, c.Workers[0]
	if _, err := w.Background("iperf3-server.log", "iperf3", "-s", "-B", "10.0.0.2"); err != nil {
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
		pid := n.AppliancePID()
		rss, err1 := procStatusKiB(pid, "VmRSS")
		hwm, err2 := procStatusKiB(pid, "VmHWM")
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: %v %v", n.Name, err1, err2)
		}
		t.Logf("%s warren-appliance (pid %d): RSS idle %.1f MiB, after the run %.1f MiB, peak (VmHWM) %.1f MiB",
			n.Name, pid, float64(idle[n.Name])/1024, float64(rss)/1024, float64(hwm)/1024)
		if hwm > 96*1024 {
			t.Errorf("%s: warren-appliance peaked at %.1f MiB, over 96 MiB (1.5 times the 64 MiB soft limit)", n.Name, float64(hwm)/1024)
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
