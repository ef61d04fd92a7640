package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// BenchmarkJoin100Nodes: 100 nodes join one in-process manager at once and
// watch the map; it measures the time until every node holds the full map
// (101 nodes), the map's JSON size, and the process's heap and RSS. The
// agents run in the same process, so heap and RSS are an upper bound for
// the manager alone.
func BenchmarkJoin100Nodes(b *testing.B) {
	const joiners = 100
	for range b.N {
		tm := startManager(b)
		cfgs := make([]AgentConfig, joiners)
		for i := range cfgs {
			cfgs[i] = agentConfig(b, tm, fmt.Sprintf("node-%03d", i))
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		errs := make(chan error, joiners)
		start := time.Now()
		for _, cfg := range cfgs {
			wg.Add(1)
			go func() {
				jctx, jcancel := context.WithTimeout(ctx, 60*time.Second)
				defer jcancel()
				a, err := Join(jctx, cfg)
				if err != nil {
					errs <- err
					wg.Done()
					return
				}
				var once sync.Once
				go a.Watch(ctx, func(m *clustermap.Map) {
					if len(m.Nodes) == joiners+1 {
						once.Do(wg.Done)
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
		m := tm.m.Map()
		tm.m.mu.Lock()
		size := len(tm.m.mapJSON)
		tm.m.mu.Unlock()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss, hwm := procStatusKiB("VmRSS"), procStatusKiB("VmHWM")
		b.ReportMetric(elapsed.Seconds(), "s-to-full-map")
		b.ReportMetric(float64(size), "map-bytes")
		b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
		b.ReportMetric(float64(rss)/1024, "rss-MiB")
		b.ReportMetric(float64(hwm)/1024, "peak-rss-MiB")
		b.Logf("%d nodes joined and all held map v%d (%d nodes, %d bytes) after %v; heap %.1f MiB, RSS %.1f MiB (peak %.1f), manager+%d agents in one process",
			joiners, m.Version, len(m.Nodes), size, elapsed.Round(time.Millisecond), float64(ms.HeapAlloc)/(1<<20),
			float64(rss)/1024, float64(hwm)/1024, joiners)
		cancel()
	}
}

func procStatusKiB(field string) int {
	f, err := os.Open("/proc/self/status")
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
