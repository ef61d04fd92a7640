package nat

import (
	"github.com/coreos/go-iptables/iptables"

	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// benchServices is n services with endpoints each, one TCP port.
func benchServices(n, endpoints int) []Service {
	out := make([]Service, 0, n)
	for i := range n {
		s := Service{
			Name:  fmt.Sprintf("svc%04d", i),
			VIP:   netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}),
			Ports: []Port{{Protocol: "tcp", Port: 80, TargetPort: 8080}},
		}
		for j := range endpoints {
			k := i*endpoints + j
			s.Endpoints = append(s.Endpoints, ep(fmt.Sprintf("svc%04d-%d", i, j+1),
				netip.AddrFrom4([4]byte{10, 0, byte(1 + k>>8), byte(k)}).String()))
		}
		out = append(out, s)
	}
	return out
}

// withOneEndpointMoved returns a copy of services whose middle service has
// one endpoint at a new address.
func withOneEndpointMoved(services []Service) []Service {
	out := slices.Clone(services)
	mid := len(out) / 2
	s := out[mid]
	s.Endpoints = slices.Clone(s.Endpoints)
	s.Endpoints[0].IP = netip.MustParseAddr("10.0.250.250")
	out[mid] = s
	return out
}

// BenchmarkRender is the pure cost of planning and printing 1000x3.
func BenchmarkRender(b *testing.B) {
	services := benchServices(1000, 3)
	for b.Loop() {
		Render(services, baseOpts)
	}
}

// BenchmarkSync compares, in one run inside a fresh network namespace,
// the Applier (one iptables-restore transaction per sync) with the same
// rules added one iptables call at a time through go-iptables. The
// one-call-at-a-time baseline is measured on 200 services (it is O(N²)),
// and the Applier is measured on both 200 and 1000, so the ratio is
// between equal rule sets.
func BenchmarkSync(b *testing.B) {
	requireRoot(b)
	ns := newNetns(b, "bench")
	big := benchServices(1000, 3)
	bigMoved := withOneEndpointMoved(big)
	small := benchServices(200, 3)
	smallMoved := withOneEndpointMoved(small)

	var fullBig, changeBig, canaryBig, restartBig, fullSmall, changeSmall, baseFull, baseChange time.Duration
	mustInNetns(b, ns, func() error {
		a, err := NewApplier(discardLogger())
		if err != nil {
			return err
		}
		timed := func(d *time.Duration, f func() error) error {
			start := time.Now()
			err := f()
			*d += time.Since(start)
			return err
		}
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			if err := a.Cleanup(); err != nil {
				return err
			}
			b.StartTimer()
			if err := timed(&fullBig, func() error { return a.Sync(big, baseOpts) }); err != nil {
				return err
			}
			if err := timed(&changeBig, func() error { return a.Sync(bigMoved, baseOpts) }); err != nil {
				return err
			}
			if err := timed(&canaryBig, func() error {
				missing, err := a.CanaryMissing()
				if err == nil && missing {
					err = fmt.Errorf("canary missing right after a sync")
				}
				return err
			}); err != nil {
				return err
			}
			// A restarted daemon: a new Applier's first (full) sync over
			// the rules already in the kernel.
			if err := timed(&restartBig, func() error {
				fresh, err := NewApplier(discardLogger())
				if err != nil {
					return err
				}
				return fresh.Sync(bigMoved, baseOpts)
			}); err != nil {
				return err
			}
			b.StopTimer()
			if err := a.Cleanup(); err != nil {
				return err
			}
			b.StartTimer()
			if err := timed(&fullSmall, func() error { return a.Sync(small, baseOpts) }); err != nil {
				return err
			}
			if err := timed(&changeSmall, func() error { return a.Sync(smallMoved, baseOpts) }); err != nil {
				return err
			}
			b.StopTimer()
			if err := a.Cleanup(); err != nil {
				return err
			}
			b.StartTimer()
			before := plan(small, baseOpts)
			if err := timed(&baseFull, func() error { return perRuleApply(a, nil, before) }); err != nil {
				return err
			}
			if err := timed(&baseChange, func() error { return perRuleApply(a, before, plan(smallMoved, baseOpts)) }); err != nil {
				return err
			}
			b.StopTimer()
			if err := a.Cleanup(); err != nil {
				return err
			}
		}
		return nil
	})

	ms := func(d time.Duration) float64 { return float64(d) / float64(b.N) / float64(time.Millisecond) }
	b.ReportMetric(ms(fullBig), "full-1000x3-ms")
	b.ReportMetric(ms(changeBig), "change-1000x3-ms")
	b.ReportMetric(ms(restartBig), "restart-1000x3-ms")
	b.ReportMetric(ms(canaryBig), "canary-check-1000x3-ms")
	b.ReportMetric(ms(fullSmall), "full-200x3-ms")
	b.ReportMetric(ms(changeSmall), "change-200x3-ms")
	b.ReportMetric(ms(baseFull), "baseline-full-200x3-ms")
	b.ReportMetric(ms(baseChange), "baseline-change-200x3-ms")
	b.ReportMetric(float64(baseFull)/float64(fullSmall), "baseline/restore-full-200")
	b.ReportMetric(float64(baseChange)/float64(changeSmall), "baseline/restore-change-200")
	b.Logf("restore: full 1000x3 %.1f ms (target < 1000), one change %.1f ms (target < 100), restart over existing rules %.1f ms, canary check %.1f ms; "+
		"200x3: restore full %.1f ms vs one call per rule %.1f ms (%.1fx), one change %.1f ms vs %.1f ms (%.1fx)",
		ms(fullBig), ms(changeBig), ms(restartBig), ms(canaryBig), ms(fullSmall), ms(baseFull), float64(baseFull)/float64(fullSmall),
		ms(changeSmall), ms(baseChange), float64(baseChange)/float64(changeSmall))
}

// perRuleApply is the baseline: the same change as a restore transaction,
// made with one go-iptables call per chain or rule (create new chains,
// flush and refill changed chains, then flush and delete removed ones).
func perRuleApply(a *Applier, from, to ruleset) error {
	ipt, err := iptables.New(iptables.Path(a.command))
	if err != nil {
		return err
	}
	for _, table := range tables {
		for _, chain := range slices.Sorted(maps.Keys(to[table])) {
			if _, ok := from[table][chain]; !ok {
				if err := ipt.NewChain(table, chain); err != nil {
					return err
				}
			}
		}
		for _, chain := range slices.Sorted(maps.Keys(to[table])) {
			have, existed := from[table][chain]
			if existed && slices.Equal(have, to[table][chain]) {
				continue
			}
			if existed {
				if err := ipt.ClearChain(table, chain); err != nil {
					return err
				}
			}
			for _, rule := range to[table][chain] {
				if err := ipt.Append(table, chain, splitRule(rule)...); err != nil {
					return fmt.Errorf("append %s: %w", rule, err)
				}
			}
		}
		for chain := range from[table] {
			if _, ok := to[table][chain]; !ok {
				if err := ipt.ClearAndDeleteChain(table, chain); err != nil {
					return err
				}
			}
		}
	}
	if from == nil {
		for i := len(jumps) - 1; i >= 0; i-- {
			if err := ipt.Insert(jumps[i].table, jumps[i].chain, 1, jumps[i].spec...); err != nil {
				return err
			}
		}
	}
	return nil
}
