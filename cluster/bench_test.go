package cluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

const benchManagerEnv = "WARREN_BENCH_MANAGER_DIR"

// BenchmarkJoin100Nodes: 100 nodes join one manager at once and watch the
// map; it measures the time until every node holds the full map (101
// nodes), the map's JSON size, and the manager's heap and RSS. The manager
// runs in a child process (this test binary re-executed, driving the same
// Go API), so its memory is measured apart from the 100 agents.
func BenchmarkJoin100Nodes(b *testing.B) {
	for range b.N {
		mgr := startManagerProcess(b)
		benchJoins(b, []string{mgr.addr}, mgr.token, func() (heap, rss, hwm float64) { return mgr.memory(b) })
	}
}

// BenchmarkJoin100NodesOneProcess is the same with the manager and the 100
// agents in this process: heap and RSS are then those of all of them.
func BenchmarkJoin100NodesOneProcess(b *testing.B) {
	for range b.N {
		tm := startManager(b)
		benchJoins(b, []string{tm.addr}, tm.workerToken(), inProcessMemory)
	}
}

// inProcessMemory is this process's heap, RSS and peak RSS in MiB.
func inProcessMemory() (heap, rss, hwm float64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	pid := os.Getpid()
	return float64(ms.HeapAlloc) / (1 << 20), float64(procStatusKiB(pid, "VmRSS")) / 1024, float64(procStatusKiB(pid, "VmHWM")) / 1024
}

func benchJoins(b *testing.B, addrs []string, token string, memory func() (heap, rss, hwm float64)) {
	const joiners = 100
	cfgs := make([]agent.Config, joiners)
	for i := range cfgs {
		cfgs[i] = agent.Config{
			StateDir: b.TempDir(), Manager: addrs[i%len(addrs)], Token: token, Logger: clustertest.Logger(b),
			Node: NodeInfo{Name: fmt.Sprintf("node-%03d", i), Role: clustermap.RoleWorker, PublicKey: clustertest.WGKey(b),
				Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 2)}), 51820)},
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, joiners)
	var mapBytes int
	var applied atomic.Int64
	var mu sync.Mutex
	start := time.Now()
	for _, cfg := range cfgs {
		wg.Add(1)
		go func() {
			jctx, jcancel := context.WithTimeout(ctx, 60*time.Second)
			defer jcancel()
			a, err := agent.Join(jctx, cfg)
			if err != nil {
				errs <- err
				wg.Done()
				return
			}
			var once sync.Once
			go a.Watch(ctx, func(m *clustermap.Map) {
				applied.Add(1)
				if len(m.Nodes) == joiners+len(addrs) { // each address is a manager node
					once.Do(func() {
						if st, err := os.Stat(filepath.Join(cfg.StateDir, agent.FileMap)); err == nil {
							mu.Lock()
							mapBytes = int(st.Size())
							mu.Unlock()
						}
						wg.Done()
					})
				}
			})
		}()
	}
	full := make(chan struct{})
	go func() { wg.Wait(); close(full) }()
	select {
	case <-full:
	case err := <-errs:
		b.Fatalf("join: %v", err)
	case <-time.After(120 * time.Second):
		b.Fatal("not every node got the full map within 2 minutes")
	}
	elapsed := time.Since(start)
	heap, rss, hwm := memory()
	b.ReportMetric(elapsed.Seconds(), "s-to-full-map")
	b.ReportMetric(float64(mapBytes), "map-bytes")
	b.ReportMetric(float64(applied.Load())/joiners, "maps-applied/node")
	b.ReportMetric(heap, "heap-MiB")
	b.ReportMetric(rss, "rss-MiB")
	b.ReportMetric(hwm, "peak-rss-MiB")
	b.Logf("%d nodes joined concurrently; all held the full map (%d nodes, %d bytes of JSON) after %v; heap %.1f MiB, RSS %.1f MiB (peak %.1f MiB); %.1f maps applied per node",
		joiners, joiners+len(addrs), mapBytes, elapsed.Round(time.Millisecond), heap, rss, hwm, float64(applied.Load())/joiners)
	cancel()
}

type managerProcess struct {
	cmd         *exec.Cmd
	stdin       io.WriteCloser
	out         *bufio.Reader
	addr, token string
}

func startManagerProcess(b *testing.B) *managerProcess {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperManagerProcess$")
	cmd.Env = append(os.Environ(), benchManagerEnv+"="+b.TempDir())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &managerProcess{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	b.Cleanup(func() {
		stdin.Close() // the helper exits when its stdin closes
		if err := cmd.Wait(); err != nil {
			b.Errorf("manager process: %v", err)
		}
	})
	fields := p.line(b, "READY")
	p.addr, p.token = fields[1], fields[2]
	return p
}

// line reads the helper's next line that starts with tag.
func (p *managerProcess) line(b *testing.B, tag string) []string {
	for {
		l, err := p.out.ReadString('\n')
		if err != nil {
			b.Fatalf("manager process output: %v", err)
		}
		if f := strings.Fields(l); len(f) > 0 && f[0] == tag {
			return f
		}
	}
}

func (p *managerProcess) memory(b *testing.B) (heapMiB, rssMiB, peakMiB float64) {
	if _, err := io.WriteString(p.stdin, "mem\n"); err != nil {
		b.Fatal(err)
	}
	f := p.line(b, "MEM")
	heap, _ := strconv.ParseFloat(f[1], 64)
	pid := p.cmd.Process.Pid
	return heap / (1 << 20), float64(procStatusKiB(pid, "VmRSS")) / 1024, float64(procStatusKiB(pid, "VmHWM")) / 1024
}

// TestHelperManagerProcess is the manager side of BenchmarkJoin100Nodes:
// it runs only when the benchmark re-executes the test binary.
func TestHelperManagerProcess(t *testing.T) {
	dir := os.Getenv(benchManagerEnv)
	if dir == "" {
		t.Skip("helper process of BenchmarkJoin100Nodes")
	}
	m, err := OpenManager(ManagerConfig{StateDir: dir, Logger: clustertest.Logger(t), DownAfter: time.Hour,
		Node: NodeInfo{Name: "manager-1", Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), PublicKey: clustertest.WGKey(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.ServeListener(ctx, ln) }()
	worker, _ := m.JoinTokens()
	fmt.Printf("READY %s %s\n", ln.Addr(), worker)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "mem" {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Printf("MEM %d\n", ms.HeapAlloc)
		}
	}
	cancel()
	<-done
}

func procStatusKiB(pid int, field string) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return 0
}

// BenchmarkHeartbeats: the steady-state cost on the manager of heartbeats
// from 100 nodes running 300 tasks whose states do not change (the common
// case: every node reports every few seconds).
func BenchmarkHeartbeats(b *testing.B) {
	tm := startManager(b)
	m := tm.m
	var ids []string
	err := m.update(func(s *state) error {
		for i := range 100 {
			n, err := s.admit(NodeInfo{Name: fmt.Sprintf("node-%03d", i), Role: clustermap.RoleWorker, PublicKey: clustertest.WGKey(b),
				Endpoint: netip.MustParseAddrPort("192.0.2.2:51820")}, randomID(), time.Now())
			if err != nil {
				return err
			}
			m.lastSeen[n.ID] = time.Now()
			ids = append(ids, n.ID)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 10 {
		if _, err := m.CreateService(apiSpec(fmt.Sprintf("svc-%d", i), 30)); err != nil {
			b.Fatal(err)
		}
	}
	reports := map[string]NodeStatus{}
	for _, id := range ids {
		var st NodeStatus
		for _, t := range m.Map().TasksOn(id) {
			st.Tasks = append(st.Tasks, taskRunning(t))
		}
		reports[id] = st
		if err := m.foldStatus(id, st); err != nil {
			b.Fatal(err)
		}
	}
	writes, version := m.store.Writes(), m.Map().Version
	const rounds = 20
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		for range rounds {
			for _, id := range ids {
				if err := m.foldStatus(id, reports[id]); err != nil {
					b.Fatal(err)
				}
			}
		}
		per := time.Since(start) / time.Duration(rounds*len(ids))
		b.ReportMetric(float64(per.Nanoseconds()), "ns/heartbeat")
		b.Logf("%d unchanged heartbeats from %d nodes with %d tasks: %v each; store writes %d, map version %d -> %d",
			rounds*len(ids), len(ids), len(m.Map().Tasks), per, m.store.Writes()-writes, version, m.Map().Version)
	}
	if m.store.Writes() != writes || m.Map().Version != version {
		b.Fatal("unchanged heartbeats wrote to the store or changed the map")
	}
}
