package cluster

import (
	"net/http"
	"sync"

	"github.com/warren-appliance/warren/cluster/api"
)

// Caps per authenticated node: a node needs one watch stream (a second
// while it reconnects) and a few calls at a time; one that holds more is
// broken or hostile, and each stream costs a goroutine and a map write per
// version.
const (
	maxWatchesPerNode  = 4
	maxRequestsPerNode = 8 // concurrent calls other than watch
)

// nodeSlots counts each node's open watch streams and calls in flight.
type nodeSlots struct {
	mu       sync.Mutex
	watches  map[string]int
	requests map[string]int
}

// acquire takes a slot for node id; release must follow when it is true.
func (s *nodeSlots) acquire(id string, watch bool) (release func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	counts, limit := &s.requests, maxRequestsPerNode
	if watch {
		counts, limit = &s.watches, maxWatchesPerNode
	}
	if *counts == nil {
		*counts = map[string]int{}
	}
	if (*counts)[id] >= limit {
		return nil, false
	}
	(*counts)[id]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if (*counts)[id]--; (*counts)[id] <= 0 {
			delete(*counts, id)
		}
	}, true
}

// withNodeSlot runs h holding one of node id's slots, or answers 429.
func (m *Manager) withNodeSlot(w http.ResponseWriter, r *http.Request, id string, h func()) {
	watch := r.URL.Path == api.PathWatch
	release, ok := m.slots.acquire(id, watch)
	if !ok {
		what, limit := "calls in flight", maxRequestsPerNode
		if watch {
			what, limit = "watch streams open", maxWatchesPerNode
		}
		w.Header().Set("Retry-After", "5")
		writeError(w, errorf(http.StatusTooManyRequests, "node %s already has %d %s (the most a node may have): close some, then retry", id, limit, what))
		return
	}
	defer release()
	h()
}
