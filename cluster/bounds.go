package cluster

import (
	"encoding/base64"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"golang.org/x/time/rate"
)

// Bounds on what a node may report about itself (its labels: api.MaxLabels
// and the rest): one node must not be able to grow the map, the store or
// every node's cached map.
const (
	maxServiceLabels = 64   // labels of one service (its tasks carry them)
	maxTunnelEntries = 1024 // health entries per report (one per peer)
	maxCandidates    = 16   // path candidates per node (tunnel/paths.MaxCandidates)
	maxReportedTasks = 4096
	maxTaskName      = 128
	maxImageRef      = 1024
	maxRevision      = 64 // a hex digest (objects.go: serviceRevision)
	// maxErrorText is the longest task error kept; longer ones are cut.
	maxErrorText = 512
	// A node's reports that change something (a write, maybe a new map)
	// are limited to reportRate per second with bursts of reportBurst;
	// plain heartbeats cost nothing and are not limited.
	reportBurst = 10
	reportRate  = rate.Limit(1)
)

var reportedStates = map[string]bool{
	clustermap.TaskPending: true, clustermap.TaskStarting: true, clustermap.TaskRunning: true,
	clustermap.TaskFailed: true, clustermap.TaskShutdown: true, clustermap.TaskComplete: true,
}

// checkReport refuses a report outside the bounds (400) and cuts error
// texts to maxErrorText. It returns the report to fold.
func checkReport(s api.NodeStatus) (api.NodeStatus, error) {
	if len(s.Tunnel) > maxTunnelEntries {
		return s, errorf(http.StatusBadRequest, "report has %d tunnel entries: at most %d", len(s.Tunnel), maxTunnelEntries)
	}
	for _, h := range s.Tunnel {
		if k, err := base64.StdEncoding.DecodeString(h.PublicKey); err != nil || len(k) != 32 {
			return s, errorf(http.StatusBadRequest, "report: tunnel entry key %.60q is not a WireGuard public key", h.PublicKey)
		}
		if h.Path != "" && h.Path != "direct" && h.Path != "relay" {
			return s, errorf(http.StatusBadRequest, "report: tunnel entry path %.20q: want direct, relay or empty", h.Path)
		}
	}
	if len(s.Candidates) > maxCandidates {
		return s, errorf(http.StatusBadRequest, "report has %d path candidates: at most %d", len(s.Candidates), maxCandidates)
	}
	for _, c := range s.Candidates {
		if !c.IsValid() || c.Port() == 0 || c.Addr().IsUnspecified() || c.Addr().IsMulticast() {
			return s, errorf(http.StatusBadRequest, "report: path candidate %s is not an address:port a peer can send to", c)
		}
	}
	if c := s.Capacity; c != nil && (c.MemoryBytes < 0 || c.NanoCPUs < 0) {
		return s, errorf(http.StatusBadRequest, "report: capacity must not be negative")
	}
	if len(s.Tasks) > maxReportedTasks {
		return s, errorf(http.StatusBadRequest, "report has %d tasks: at most %d", len(s.Tasks), maxReportedTasks)
	}
	if s.Tasks != nil {
		tasks := make([]api.TaskStatus, len(s.Tasks))
		for i, t := range s.Tasks {
			if t.Name == "" || len(t.Name) > maxTaskName {
				return s, errorf(http.StatusBadRequest, "report: task name %.70q: want 1-%d characters", t.Name, maxTaskName)
			}
			if !reportedStates[t.State] {
				return s, errorf(http.StatusBadRequest, "report: task %s state %.40q: want pending, starting, running, failed, complete or shutdown", t.Name, t.State)
			}
			if len(t.Image) > maxImageRef {
				return s, errorf(http.StatusBadRequest, "report: task %s image reference is %d bytes: at most %d", t.Name, len(t.Image), maxImageRef)
			}
			if len(t.Revision) > maxRevision {
				return s, errorf(http.StatusBadRequest, "report: task %s revision is %d bytes: at most %d", t.Name, len(t.Revision), maxRevision)
			}
			t.Error = cutText(t.Error, maxErrorText)
			if t.Health != nil {
				h, err := checkTaskHealth(t.Name, *t.Health)
				if err != nil {
					return s, err
				}
				t.Health = &h
			}
			// Comparable to what is stored (no monotonic reading, UTC), so
			// an unchanged report is seen as such.
			t.Run.NextRestart = t.Run.NextRestart.UTC().Round(0)
			if t.Run.PullDone < 0 || t.Run.PullTotal < 0 || t.Run.PullDone > t.Run.PullTotal {
				t.Run.PullDone, t.Run.PullTotal = 0, 0 // nonsense: no progress shown
			}
			tasks[i] = t
		}
		s.Tasks = tasks
	}
	return s, nil
}

// cutText shortens s to at most n bytes on a rune boundary, marking the cut.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	s = s[:n-len(mark)]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + mark
}

// allowReportWrite charges nodeID's limiter for a report that changes
// something. m.mu is held.
func (m *Manager) allowReportWriteLocked(nodeID string, now time.Time) error {
	if m.reportLimit == nil {
		m.reportLimit = map[string]*rate.Limiter{}
	}
	l, ok := m.reportLimit[nodeID]
	if !ok {
		l = rate.NewLimiter(reportRate, reportBurst)
		m.reportLimit[nodeID] = l
	}
	if !l.AllowN(now, 1) {
		return errorf(http.StatusTooManyRequests, "too many status changes from this node (at most %d in a burst, then %v per second): the next report carries the current state", reportBurst, float64(reportRate))
	}
	return nil
}

var reportedHealth = map[string]bool{clustermap.HealthStarting: true, clustermap.HealthHealthy: true, clustermap.HealthUnhealthy: true}

// checkTaskHealth refuses an unknown health status and keeps the last
// api.MaxHealthLog probes with outputs cut to api.MaxHealthOutput.
func checkTaskHealth(task string, h api.TaskHealth) (api.TaskHealth, error) {
	if !reportedHealth[h.Status] {
		return h, errorf(http.StatusBadRequest, "report: task %s health %.40q: want starting, healthy or unhealthy", task, h.Status)
	}
	if len(h.Log) > api.MaxHealthLog {
		h.Log = h.Log[len(h.Log)-api.MaxHealthLog:]
	}
	log := make([]api.HealthResult, len(h.Log))
	for i, r := range h.Log {
		r.Output = cutText(r.Output, api.MaxHealthOutput)
		log[i] = r
	}
	h.Log = log
	return h, nil
}
