package metrics

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// promtoolCheck runs `promtool check metrics` on text (tools/install-deps.sh
// installs Debian's prometheus package, which ships promtool).
func promtoolCheck(t *testing.T, text string) {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool not found: run tools/install-deps.sh (Debian package prometheus)")
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s\n--- input ---\n%s", err, out, text)
	}
}

func TestExposition(t *testing.T) {
	hs := time.Unix(1_700_000_000, 0)
	m := New(Sources{
		Peers: func() []Peer {
			return []Peer{
				{Interface: "warren0", PublicKey: "k1=", AllowedIPs: "10.0.0.2/32,10.0.2.0/24", Name: "worker-1", SentBytes: 10, ReceivedBytes: 20, LatestHandshake: hs, Path: "relay"},
				{Interface: "warren0", PublicKey: "k2=", AllowedIPs: "10.0.0.3/32", Name: "worker-2"},
			}
		},
		Tasks: func() map[string]int { return map[string]int{"running": 3, "failed": 1} },
		Nodes: func() map[NodeKey]int {
			return map[NodeKey]int{{"manager", "ready"}: 1, {"worker", "ready"}: 1, {"worker", "down"}: 1}
		},
		Services: func() []Service { return []Service{{Name: "web", Desired: 3, Running: 2}} },
		Raft:     func() Raft { return Raft{State: "follower", HasLeader: true, Voters: 3} },
		Relay: func() Relay {
			return Relay{Sessions: 2, Bytes: map[string]uint64{"udp": 1500}, Packets: map[string]uint64{"udp": 1}, Dropped: map[string]uint64{"rate": 4}}
		},
		ClusterPeers: func() []ClusterPeer {
			return []ClusterPeer{{Name: "b", Connected: true, Imports: 2}, {Name: "c"}}
		},
	})
	m.SetMapVersion(42)
	m.ObserveNATSync(3*time.Millisecond, nil)
	m.ObserveNATSync(20*time.Millisecond, errors.New("iptables-restore: exit 1"))
	m.CountDNS("noerror")
	m.CountDNS("nxdomain")
	m.CountDNS("yxrrset")
	m.ReconcileError("tunnel")
	text := scrape(t, m)
	for _, want := range []string{
		`wireguard_sent_bytes_total{allowed_ips="10.0.0.2/32,10.0.2.0/24",friendly_name="worker-1",interface="warren0",public_key="k1="} 10`,
		`wireguard_received_bytes_total{allowed_ips="10.0.0.2/32,10.0.2.0/24",friendly_name="worker-1",interface="warren0",public_key="k1="} 20`,
		`wireguard_latest_handshake_seconds{allowed_ips="10.0.0.2/32,10.0.2.0/24",friendly_name="worker-1",interface="warren0",public_key="k1="} 1.7e+09`,
		`wireguard_latest_handshake_seconds{allowed_ips="10.0.0.3/32",friendly_name="worker-2",interface="warren0",public_key="k2="} 0`,
		`warren_peer_path{friendly_name="worker-1",interface="warren0",path="relay",public_key="k1="} 1`,
		`warren_peer_path{friendly_name="worker-1",interface="warren0",path="direct",public_key="k1="} 0`,
		`warren_peer_path{friendly_name="worker-2",interface="warren0",path="direct",public_key="k2="} 0`,
		`warren_map_version 42`,
		`warren_tasks{state="running"} 3`,
		`warren_tasks{state="failed"} 1`,
		`warren_tasks{state="pending"} 0`,
		`warren_nodes{role="worker",status="down"} 1`,
		`warren_nodes{role="manager",status="down"} 0`,
		`warren_nodes{role="manager",status="ready"} 1`,
		`warren_service_replicas_desired{service="web"} 3`,
		`warren_service_replicas_running{service="web"} 2`,
		`warren_nat_sync_duration_seconds_count 2`,
		`warren_nat_sync_errors_total 1`,
		`warren_dns_queries_total{result="noerror"} 1`,
		`warren_dns_queries_total{result="other"} 1`,
		`warren_dns_queries_total{result="servfail"} 0`,
		`warren_reconcile_errors_total{reconciler="tunnel"} 1`,
		`warren_reconcile_errors_total{reconciler="nat"} 0`,
		`warren_reconcile_errors_total{reconciler="policy"} 0`,
		`warren_raft_state{state="follower"} 1`,
		`warren_raft_state{state="leader"} 0`,
		`warren_raft_has_leader 1`,
		`warren_raft_voters 3`,
		`warren_relay_sessions 2`,
		`warren_relay_bytes_total{transport="udp"} 1500`,
		`warren_relay_bytes_total{transport="tls"} 0`,
		`warren_relay_packets_total{transport="udp"} 1`,
		`warren_relay_dropped_total{reason="rate"} 4`,
		`warren_relay_dropped_total{reason="auth"} 0`,
		`warren_cluster_peer_connected{peer="b"} 1`,
		`warren_cluster_peer_connected{peer="c"} 0`,
		`warren_cluster_peer_imports{peer="b"} 2`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("missing %s", want)
		}
	}
	if t.Failed() {
		t.Logf("exposition:\n%s", text)
	}
	promtoolCheck(t, text)
}

func TestWorkerHasNoManagerMetrics(t *testing.T) {
	m := New(Sources{Tasks: func() map[string]int { return nil }})
	text := scrape(t, m)
	for _, absent := range []string{"warren_nodes", "warren_service_replicas_desired", "wireguard_sent_bytes_total{", "warren_raft_", "warren_relay_", "warren_cluster_peer"} {
		if strings.Contains(text, absent) {
			t.Errorf("a worker without peers exports %s", absent)
		}
	}
	if !strings.Contains(text, `warren_tasks{state="running"} 0`) {
		t.Error("warren_tasks is missing its zero series")
	}
	promtoolCheck(t, text)
}

func TestServeRefusesTakenPort(t *testing.T) {
	m := New(Sources{})
	ctx := t.Context()
	var buf bytes.Buffer
	log := newTestLogger(&buf)
	if err := m.Serve(ctx, "127.0.0.1:0", log); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	err := m.Serve(ctx, addr, log)
	if err == nil || !strings.Contains(err.Error(), "metrics.listen") {
		t.Fatalf("serving on a taken port: %v, want an error naming metrics.listen", err)
	}
}

func newTestLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
