package meshmatrix

import (
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
)

func TestBuild(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	seen := now.Add(-2 * time.Second)
	nodes := []api.NodeView{
		{Name: "worker-1", Status: "ready", PublicKey: "w1", LastSeen: seen,
			// worker-1's clock is 60 s ahead: its times read 60 s later.
			ClockOffsetSeconds: 60,
			Tunnel: []api.PeerHealth{
				{PublicKey: "m1", LastHandshake: now.Add(60*time.Second - 10*time.Second), RxBytes: 5, TxBytes: 7},
				{PublicKey: "w2", LastHandshake: now.Add(60*time.Second - 400*time.Second)},
			}},
		{Name: "manager-1", Status: "ready", PublicKey: "m1", LastSeen: seen,
			Tunnel: []api.PeerHealth{
				{PublicKey: "w1", LastHandshake: now.Add(-20 * time.Second)},
				{PublicKey: "w2"}, // never
			}},
		{Name: "worker-2", Status: "down", PublicKey: "w2", LastSeen: now.Add(-time.Hour),
			Tunnel: []api.PeerHealth{{PublicKey: "m1", LastHandshake: now.Add(-time.Hour)}}},
	}
	m := Build(nodes, now)
	if got := strings.Join(m.Nodes, ","); got != "manager-1,worker-1,worker-2" {
		t.Fatalf("nodes %s", got)
	}
	if len(m.Links) != 6 {
		t.Fatalf("%d links, want every ordered pair of 3 nodes (6): %+v", len(m.Links), m.Links)
	}
	want := map[[2]string]struct {
		age     float64 // -1: null
		healthy bool
		problem string
	}{
		{"manager-1", "worker-1"}: {20, true, ""},
		{"manager-1", "worker-2"}: {-1, false, "worker-2 is down"},
		{"worker-1", "manager-1"}: {10, true, ""},
		{"worker-1", "worker-2"}:  {400, false, "worker-2 is down"},
		{"worker-2", "manager-1"}: {3600, false, "worker-2 is down"},
		{"worker-2", "worker-1"}:  {-1, false, "worker-2 is down"},
	}
	for _, l := range m.Links {
		w, ok := want[[2]string{l.From, l.To}]
		if !ok {
			t.Errorf("unexpected link %+v", l)
			continue
		}
		age := -1.0
		if l.HandshakeAgeSeconds != nil {
			age = *l.HandshakeAgeSeconds
		}
		if age != w.age || l.Healthy != w.healthy || l.Problem != w.problem {
			t.Errorf("%s->%s: age %v healthy %v problem %q, want %v %v %q", l.From, l.To, age, l.Healthy, l.Problem, w.age, w.healthy, w.problem)
		}
	}
	if l := m.Links[2]; l.From != "worker-1" || l.RxBytes != 5 || l.TxBytes != 7 || Cell(l) != "10s" {
		t.Errorf("link %+v cell %q", l, Cell(l))
	}
	if c := Cell(m.Links[1]); c != "never!" {
		t.Errorf("cell of a link without handshake %q, want never!", c)
	}

	// With worker-2 back: the stale and the missing handshakes show.
	nodes[2].Status, nodes[2].LastSeen = "ready", seen
	for _, l := range Build(nodes, now).Links {
		switch l.From + ">" + l.To {
		case "manager-1>worker-2":
			if l.Problem != "no handshake yet" || l.Healthy {
				t.Errorf("%+v", l)
			}
		case "worker-1>worker-2":
			if l.Problem != "last handshake 6m40s ago" || l.Healthy || Cell(l) != "6m40s!" {
				t.Errorf("%+v", l)
			}
		}
	}
}

func TestUnreportedNode(t *testing.T) {
	m := Build([]api.NodeView{
		{Name: "a", Status: "ready", PublicKey: "ka"},
		{Name: "b", Status: "ready", PublicKey: "kb", LastSeen: time.Now(), Tunnel: []api.PeerHealth{}},
	}, time.Now())
	if m.Links[0].Problem != "a has not reported yet" || m.Links[1].Problem != "b has no peer with a's key" {
		t.Fatalf("%+v", m.Links)
	}
}

// A link its From node reports relayed is marked in the matrix cell.
func TestRelayedLinkIsMarked(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	nodes := []api.NodeView{
		{Name: "a", Status: "ready", PublicKey: "ka", LastSeen: now, Tunnel: []api.PeerHealth{{PublicKey: "kb", LastHandshake: now.Add(-5 * time.Second), Path: "relay"}}},
		{Name: "b", Status: "ready", PublicKey: "kb", LastSeen: now, Tunnel: []api.PeerHealth{{PublicKey: "ka", LastHandshake: now.Add(-5 * time.Second), Path: "direct"}}},
	}
	m := Build(nodes, now)
	cells := map[string]string{}
	for _, l := range m.Links {
		cells[l.From+">"+l.To] = Cell(l)
	}
	if cells["a>b"] != "5s (relay)" || cells["b>a"] != "5s" {
		t.Fatalf("cells %v: want a>b \"5s (relay)\" and b>a \"5s\"", cells)
	}
}
