// Package metrics is the node's Prometheus endpoint: WireGuard peer metrics
// under the names of the widely used WireGuard exporter (so its dashboards
// work unchanged) and warren's own under warren_. Values that already live
// elsewhere (peers, tasks, nodes) are read at scrape time through Sources;
// events (NAT syncs, DNS answers, reconcile errors) are counted as they
// happen through the Metrics methods.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Peer is one WireGuard peer as the tunnel sees it.
type Peer struct {
	Interface       string
	PublicKey       string
	AllowedIPs      string // comma-separated, as the exporter's allowed_ips label
	Name            string // the peer's node name; "" for a static peer the map does not know
	SentBytes       int64
	ReceivedBytes   int64
	LatestHandshake time.Time // zero: never
	// Path is "direct", "relay" or "" (no endpoint yet).
	Path string
}

// Paths are the values of warren_peer_path's path label.
var Paths = []string{"direct", "relay"}

// Sources are read at every scrape; a nil func exports nothing for it.
type Sources struct {
	Peers func() []Peer
	// Tasks counts this node's tasks by state (clustermap.Task* states).
	Tasks func() map[string]int
	// Nodes counts the cluster's nodes by role and status; managers only.
	Nodes func() map[NodeKey]int
	// Services gives each service's desired and running replicas; managers only.
	Services func() []Service
	// Raft gives this manager's Raft role and what it knows of the leader;
	// managers only.
	Raft func() Raft
	// Relay gives the relay's counters; relays only.
	Relay func() Relay
	// ClusterPeers gives the peered clusters' link states (federation);
	// managers only.
	ClusterPeers func() []ClusterPeer
}

// ClusterPeer is a peered cluster as this manager's link sees it.
type ClusterPeer struct {
	Name      string
	Connected bool
	Imports   int // services imported from it
}

// Relay is a relay's sessions and what it relayed and dropped since it
// started: bytes and packets by transport ("udp", "tls"), drops by reason.
type Relay struct {
	Sessions int
	Bytes    map[string]uint64
	Packets  map[string]uint64
	Dropped  map[string]uint64
}

// Raft is a manager's view of the Raft cluster.
type Raft struct {
	State     string // leader | follower | candidate | shutdown (lower case)
	HasLeader bool   // a leader is known: writes can be committed
	Voters    int    // voting managers in the configuration
}

// NodeKey is a node's role and status.
type NodeKey struct{ Role, Status string }

// Service is one service's replica counts as the manager knows them.
type Service struct {
	Name     string
	Desired  int
	Running  int
	Updating bool
}

// Known label values, exported even at zero so alert expressions and
// dashboards find every series from the first scrape.
var (
	TaskStates   = []string{"pending", "starting", "running", "failed", "shutdown"}
	NodeStatuses = []string{"ready", "down"}
	NodeRoles    = []string{"manager", "worker"}
	RaftStates   = []string{"leader", "follower", "candidate", "shutdown"}
	// DNSResults are the rcodes the resolver answers with (lowercase),
	// "ignored" for queries from outside the allowed ranges (no answer);
	// anything else counts as "other".
	DNSResults  = []string{"noerror", "nxdomain", "servfail", "refused", "formerr", "notimp", "badvers", "ignored", "other"}
	Reconcilers = []string{"tunnel", "nat", "policy"}
	// RelayTransports and RelayDrops are the relay's label values.
	RelayTransports = []string{"udp", "tls"}
	RelayDrops      = []string{"no_session", "not_member", "rate", "queue", "auth", "handshakes"}
)

// Metrics holds the registry and the event counters.
type Metrics struct {
	reg             *prometheus.Registry
	mapVersion      prometheus.Gauge
	natSyncDuration prometheus.Histogram
	natSyncErrors   prometheus.Counter
	dnsQueries      *prometheus.CounterVec
	reconcileErrors *prometheus.CounterVec
}

// New registers every metric; src is read at scrape time.
func New(src Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		mapVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_map_version",
			Help: "Version of the newest cluster map this node applied (0 before the first).",
		}),
		natSyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "warren_nat_sync_duration_seconds",
			Help:    "Time one sync of the VIP and publish rules took (one iptables-restore transaction).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		natSyncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_nat_sync_errors_total",
			Help: "NAT rule syncs that failed (retried by the canary loop).",
		}),
		dnsQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_dns_queries_total",
			Help: "Queries the node's resolver answered, by response code.",
		}, []string{"result"}),
		reconcileErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_reconcile_errors_total",
			Help: "Failed attempts to converge a reconciler to the cluster map.",
		}, []string{"reconciler"}),
	}
	for _, r := range DNSResults {
		m.dnsQueries.WithLabelValues(r)
	}
	for _, r := range Reconcilers {
		m.reconcileErrors.WithLabelValues(r)
	}
	m.reg.MustRegister(m.mapVersion, m.natSyncDuration, m.natSyncErrors, m.dnsQueries, m.reconcileErrors,
		&sourceCollector{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// SetMapVersion records the version of the map just applied.
func (m *Metrics) SetMapVersion(v uint64) { m.mapVersion.Set(float64(v)) }

// ObserveNATSync records one rule sync.
func (m *Metrics) ObserveNATSync(d time.Duration, err error) {
	m.natSyncDuration.Observe(d.Seconds())
	if err != nil {
		m.natSyncErrors.Inc()
	}
}

// CountDNS counts one answer with the given result (a DNSResults value).
func (m *Metrics) CountDNS(result string) {
	known := false
	for _, r := range DNSResults {
		known = known || r == result
	}
	if !known {
		result = "other"
	}
	m.dnsQueries.WithLabelValues(result).Inc()
}

// ReconcileError counts one failure of reconciler (a Reconcilers value).
func (m *Metrics) ReconcileError(reconciler string) {
	m.reconcileErrors.WithLabelValues(reconciler).Inc()
}

// Handler serves the text exposition.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Serve listens on addr ("ip:port") now, so a taken port is an error for
// the caller, and serves /metrics until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics (metrics.listen): %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	log.Info("metrics up", "listen", "http://"+ln.Addr().String()+"/metrics")
	return nil
}

var (
	descSent = prometheus.NewDesc("wireguard_sent_bytes_total",
		"Bytes sent to the peer.", peerLabels, nil)
	descReceived = prometheus.NewDesc("wireguard_received_bytes_total",
		"Bytes received from the peer.", peerLabels, nil)
	descHandshake = prometheus.NewDesc("wireguard_latest_handshake_seconds",
		"UNIX time of the latest handshake with the peer (0: never).", peerLabels, nil)
	descPeerPath = prometheus.NewDesc("warren_peer_path",
		"1 for the path this node's traffic to the peer takes now (direct, or through a relay), 0 for the other; both 0 while the peer has no endpoint.",
		[]string{"interface", "public_key", "friendly_name", "path"}, nil)
	descTasks = prometheus.NewDesc("warren_tasks",
		"Tasks this node runs, by state.", []string{"state"}, nil)
	descNodes = prometheus.NewDesc("warren_nodes",
		"Cluster nodes by role and status, as this manager sees them.", []string{"role", "status"}, nil)
	descDesired = prometheus.NewDesc("warren_service_replicas_desired",
		"Replicas a service asks for, as this manager sees them.", []string{"service"}, nil)
	descRunning = prometheus.NewDesc("warren_service_replicas_running",
		"Replicas of a service reported running, as this manager sees them.", []string{"service"}, nil)
	descUpdating = prometheus.NewDesc("warren_service_updating",
		"1 while a rolling image update of the service is in progress.", []string{"service"}, nil)
	descRaftState = prometheus.NewDesc("warren_raft_state",
		"1 for this manager's current Raft role, 0 for the others.", []string{"state"}, nil)
	descRaftLeader = prometheus.NewDesc("warren_raft_has_leader",
		"1 when this manager knows a Raft leader (the managers have quorum), else 0.", nil, nil)
	descRaftVoters = prometheus.NewDesc("warren_raft_voters",
		"Voting managers in the Raft configuration, as this manager knows it.", nil, nil)
	descClusterPeer = prometheus.NewDesc("warren_cluster_peer_connected",
		"1 while this manager's link to the peered cluster works (its last sync answered), else 0.", []string{"peer"}, nil)
	descClusterPeerImports = prometheus.NewDesc("warren_cluster_peer_imports",
		"Services imported from the peered cluster (it exports them).", []string{"peer"}, nil)
	descRelaySessions = prometheus.NewDesc("warren_relay_sessions",
		"Members connected to this relay now.", nil, nil)
	descRelayBytes = prometheus.NewDesc("warren_relay_bytes_total",
		"WireGuard bytes this relay delivered, by the transport they left on (udp, tls).", []string{"transport"}, nil)
	descRelayPackets = prometheus.NewDesc("warren_relay_packets_total",
		"WireGuard packets this relay delivered, by the transport they left on (udp, tls).", []string{"transport"}, nil)
	descRelayDropped = prometheus.NewDesc("warren_relay_dropped_total",
		"Packets this relay did not deliver, by reason: no_session (destination not connected), not_member, rate (sender over relay.peer_rate_mbps), queue (destination's queue full), auth (a datagram failed authentication or was a replay), handshakes (a TLS connection closed beyond the concurrent handshakes).", []string{"reason"}, nil)
)

// peerLabels are the WireGuard exporter's (friendly_name is the peer's
// node name here).
var peerLabels = []string{"interface", "public_key", "allowed_ips", "friendly_name"}

// sourceCollector turns Sources into metrics at scrape time.
type sourceCollector struct{ src Sources }

func (c *sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSent, descReceived, descHandshake, descPeerPath, descTasks, descNodes, descDesired, descRunning, descUpdating, descRaftState, descRaftLeader, descRaftVoters,
		descRelaySessions, descRelayBytes, descRelayPackets, descRelayDropped, descClusterPeer, descClusterPeerImports} {
		ch <- d
	}
}

func (c *sourceCollector) Collect(ch chan<- prometheus.Metric) {
	if c.src.Peers != nil {
		for _, p := range c.src.Peers() {
			l := []string{p.Interface, p.PublicKey, p.AllowedIPs, p.Name}
			ch <- prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(p.SentBytes), l...)
			ch <- prometheus.MustNewConstMetric(descReceived, prometheus.CounterValue, float64(p.ReceivedBytes), l...)
			hs := 0.0
			if !p.LatestHandshake.IsZero() {
				hs = float64(p.LatestHandshake.Unix())
			}
			ch <- prometheus.MustNewConstMetric(descHandshake, prometheus.GaugeValue, hs, l...)
			for _, path := range Paths {
				ch <- prometheus.MustNewConstMetric(descPeerPath, prometheus.GaugeValue, boolValue(p.Path == path), p.Interface, p.PublicKey, p.Name, path)
			}
		}
	}
	if c.src.Tasks != nil {
		gaugesByLabel(ch, descTasks, TaskStates, c.src.Tasks())
	}
	if c.src.Nodes != nil {
		counts := c.src.Nodes()
		seen := map[NodeKey]bool{}
		for _, r := range NodeRoles {
			for _, st := range NodeStatuses {
				k := NodeKey{r, st}
				seen[k] = true
				ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(counts[k]), r, st)
			}
		}
		for k, v := range counts {
			if !seen[k] {
				ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(v), k.Role, k.Status)
			}
		}
	}
	if c.src.Raft != nil {
		r := c.src.Raft()
		for _, st := range RaftStates {
			ch <- prometheus.MustNewConstMetric(descRaftState, prometheus.GaugeValue, boolValue(r.State == st), st)
		}
		ch <- prometheus.MustNewConstMetric(descRaftLeader, prometheus.GaugeValue, boolValue(r.HasLeader))
		ch <- prometheus.MustNewConstMetric(descRaftVoters, prometheus.GaugeValue, float64(r.Voters))
	}
	if c.src.Relay != nil {
		r := c.src.Relay()
		ch <- prometheus.MustNewConstMetric(descRelaySessions, prometheus.GaugeValue, float64(r.Sessions))
		countersByLabel(ch, descRelayBytes, RelayTransports, r.Bytes)
		countersByLabel(ch, descRelayPackets, RelayTransports, r.Packets)
		countersByLabel(ch, descRelayDropped, RelayDrops, r.Dropped)
	}
	if c.src.ClusterPeers != nil {
		for _, p := range c.src.ClusterPeers() {
			ch <- prometheus.MustNewConstMetric(descClusterPeer, prometheus.GaugeValue, boolValue(p.Connected), p.Name)
			ch <- prometheus.MustNewConstMetric(descClusterPeerImports, prometheus.GaugeValue, float64(p.Imports), p.Name)
		}
	}
	if c.src.Services != nil {
		for _, s := range c.src.Services() {
			ch <- prometheus.MustNewConstMetric(descDesired, prometheus.GaugeValue, float64(s.Desired), s.Name)
			ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, float64(s.Running), s.Name)
			up := 0.0
			if s.Updating {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descUpdating, prometheus.GaugeValue, up, s.Name)
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// gaugesByLabel exports counts with every known label value, zero or not,
// plus any unknown value seen.
func gaugesByLabel(ch chan<- prometheus.Metric, d *prometheus.Desc, known []string, counts map[string]int) {
	seen := map[string]bool{}
	for _, k := range known {
		seen[k] = true
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(counts[k]), k)
	}
	for k, v := range counts {
		if !seen[k] {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), k)
		}
	}
}

// countersByLabel is gaugesByLabel for counters.
func countersByLabel(ch chan<- prometheus.Metric, d *prometheus.Desc, known []string, counts map[string]uint64) {
	seen := map[string]bool{}
	for _, k := range known {
		seen[k] = true
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(counts[k]), k)
	}
	for k, v := range counts {
		if !seen[k] {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), k)
		}
	}
}
