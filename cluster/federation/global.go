package federation

import (
	"net/netip"
	"slices"
	"time"
)

// Remote is one peer's endpoints of a service, for the global choice.
type Remote struct {
	Peer      string
	Endpoints []netip.Addr
	// Seen is when the peer last confirmed them; Connected whether the
	// link to it works now.
	Seen      time.Time
	Connected bool
}

// RemoteStaleAfter is how long a peer's endpoints are used after its last
// confirmation: a peer that stopped answering leaves the global VIP (and
// its import's endpoints) then, instead of black-holing traffic.
const RemoteStaleAfter = 20 * time.Second

// Live returns the endpoints of an imported service that may carry
// traffic: none once the peer's link failed or its last answer is older
// than RemoteStaleAfter.
func (r Remote) Live(now time.Time) []netip.Addr {
	if !r.Connected || now.Sub(r.Seen) > RemoteStaleAfter {
		return nil
	}
	return r.Endpoints
}

// GlobalEndpoints chooses the endpoints behind SERVICE.global: the local
// healthy tasks while there is any, else the live endpoints of every peer
// that exports the service. Local first means traffic stays in the cluster
// and comes back as soon as a local task serves again. The result is
// sorted and has no duplicates; local reports which side was chosen.
func GlobalEndpoints(localHealthy []netip.Addr, remotes []Remote, now time.Time) (eps []netip.Addr, local bool) {
	if len(localHealthy) > 0 {
		out := slices.Clone(localHealthy)
		slices.SortFunc(out, netip.Addr.Compare)
		return slices.Compact(out), true
	}
	var out []netip.Addr
	for _, r := range remotes {
		out = append(out, r.Live(now)...)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), false
}
