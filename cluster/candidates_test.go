package cluster

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// A node's path candidates reach the map (a new version, so every peer
// probes them at once); the same candidates again make no new map, a
// report without them keeps them, and bad ones are refused.
func TestReportedCandidatesReachTheMap(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	ctx := context.Background()
	cands := []netip.AddrPort{netip.MustParseAddrPort("192.168.1.5:51820"), netip.MustParseAddrPort("203.0.113.9:51820")}
	v0 := m.Map().Version
	if err := m.Report(ctx, NodeStatus{Candidates: cands}); err != nil {
		t.Fatal(err)
	}
	self := func() []netip.AddrPort {
		for _, n := range m.Map().Nodes {
			if n.ID == m.Self().ID {
				return n.Candidates
			}
		}
		return nil
	}
	v1 := m.Map().Version
	if !slices.Equal(self(), cands) || v1 <= v0 {
		t.Fatalf("map has candidates %v at version %d (was %d), want %v in a new version", self(), v1, v0, cands)
	}
	if err := m.Report(ctx, NodeStatus{Candidates: cands}); err != nil {
		t.Fatal(err)
	}
	if err := m.Report(ctx, NodeStatus{}); err != nil {
		t.Fatal(err)
	}
	if v := m.Map().Version; v != v1 || !slices.Equal(self(), cands) {
		t.Fatalf("unchanged candidates: version %d (want %d), candidates %v", v, v1, self())
	}
	for _, bad := range [][]netip.AddrPort{
		{netip.MustParseAddrPort("192.168.1.5:0")},
		{netip.MustParseAddrPort("0.0.0.0:51820")},
		make([]netip.AddrPort, maxCandidates+1),
	} {
		if err := m.Report(ctx, NodeStatus{Candidates: bad}); err == nil || !strings.Contains(err.Error(), "candidate") {
			t.Errorf("report with candidates %v: err %v, want a refusal naming the candidates", bad, err)
		}
	}
}
