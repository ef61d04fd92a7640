package cluster

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"
)

// BenchmarkFailover: three managers with the production Raft timing; the
// leader is killed (no leadership transfer) and a survivor is written to
// until it acknowledges: the time from the kill to that first
// acknowledged write, over several kills (the killed manager restarts and
// catches up before the next one).
func BenchmarkFailover(b *testing.B) {
	const runs = 5
	for range b.N {
		hs := startHAWith(b, 3, nil)
		var times []time.Duration
		for i := range runs {
			leader := leaderOf(hs)
			if leader == nil {
				waitUntil(b, "a leader", func() bool { return leaderOf(hs) != nil })
				leader = leaderOf(hs)
			}
			survivor := followersOf(hs)[0]
			killed := time.Now()
			leader.kill()
			for {
				code, body := adminDo(survivor.m, http.MethodPost, "/v1/services", apiSpec(fmt.Sprintf("f-%d", i), 0))
				if code == http.StatusCreated {
					break
				}
				if time.Since(killed) > time.Minute {
					b.Fatalf("no write accepted within a minute of the kill: %d %s", code, body)
				}
				time.Sleep(20 * time.Millisecond)
			}
			times = append(times, time.Since(killed))
			leader.start()
			waitUntil(b, leader.name+" caught up", func() bool { return serviceNames(leader.m)[fmt.Sprintf("f-%d", i)] })
			waitUntil(b, "three voters", func() bool { l := leaderOf(hs); return l != nil && len(l.m.Info().Voters) == 3 })
		}
		slices.Sort(times)
		b.ReportMetric(times[len(times)/2].Seconds(), "s-failover-median")
		b.ReportMetric(times[len(times)-1].Seconds(), "s-failover-max")
		b.Logf("leader kill -> first acknowledged write, %d runs: %v (median %v, max %v); Raft heartbeat/election 1 s, lease 1 s",
			runs, times, times[len(times)/2].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
	}
}

// BenchmarkWriteLatency: sequential service creations (each one Raft
// entry) on one manager alone, then on the leader of three and through a
// follower of three (forwarded), in the same run.
func BenchmarkWriteLatency(b *testing.B) {
	const writes = 50
	measure := func(via *Manager, prefix string) time.Duration {
		var lat []time.Duration
		for i := range writes {
			start := time.Now()
			if code, body := adminDo(via, http.MethodPost, "/v1/services", apiSpec(fmt.Sprintf("%s-%d", prefix, i), 0)); code != http.StatusCreated {
				b.Fatalf("write: %d %s", code, body)
			}
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		return lat[len(lat)/2]
	}
	for range b.N {
		one := startHAWith(b, 1, nil)
		m1 := measure(one[0].m, "one")
		one[0].kill()
		three := startHAWith(b, 3, nil)
		m3 := measure(leaderOf(three).m, "leader")
		f3 := measure(followersOf(three)[0].m, "follower")
		b.ReportMetric(float64(m1.Microseconds())/1000, "ms-median-1-manager")
		b.ReportMetric(float64(m3.Microseconds())/1000, "ms-median-3-managers")
		b.ReportMetric(float64(f3.Microseconds())/1000, "ms-median-3-via-follower")
		b.Logf("median write latency over %d writes: 1 manager %v, 3 managers %v (on the leader), %v (through a follower); ratio 3/1 = %.2f",
			writes, m1.Round(time.Microsecond), m3.Round(time.Microsecond), f3.Round(time.Microsecond), float64(m3)/float64(m1))
	}
}

// BenchmarkJoin100NodesThreeManagers: BenchmarkJoin100NodesOneProcess with
// three managers, the nodes joining through all three (followers forward
// the joins to the leader) and watching the manager they joined through.
func BenchmarkJoin100NodesThreeManagers(b *testing.B) {
	for range b.N {
		hs := startHAWith(b, 3, nil)
		w, _ := hs[0].m.JoinTokens()
		addrs := []string{hs[0].addr, hs[1].addr, hs[2].addr}
		benchJoins(b, addrs, w, inProcessMemory) // three managers and 100 agents in this process
	}
}
