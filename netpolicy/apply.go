package netpolicy

import (
	"bytes"
	"net/netip"

	"github.com/warren-appliance/warren/hostfw"
)

// Applier hands rendered policies to the node's one firewall owner
// (package hostfw), which writes the sets, the chains and the hook, with
// the task and service rules, in one sync. Safe for concurrent use
// through the Syncer's serialisation; Sync itself is not reentrant.
type Applier struct {
	fw   *hostfw.Syncer
	last *Rules // what the last successful sync wrote; nil: none yet
}

// NewApplier writes through fw.
func NewApplier(fw *hostfw.Syncer) *Applier { return &Applier{fw: fw} }

// SyncStats says what a sync changed, compared with the last one.
type SyncStats struct {
	Full          bool // first sync of this applier (or after an error)
	SetsCreated   int
	SetsDestroyed int
	Added         int
	Removed       int
	RulesWritten  bool
}

// Sync makes the kernel hold exactly r (see hostfw.Syncer for the order:
// sets, one transaction, hooks). Task churn changes set members only: the
// chains stay as they are, so the transaction is empty.
func (a *Applier) Sync(r Rules) (SyncStats, error) {
	st := diff(a.last, r)
	if err := a.fw.SetPart(hostfw.OwnerPolicy, r.Part()); err != nil {
		a.last = nil
		return st, err
	}
	a.last = &r
	return st, nil
}

// diff is what moving from last (nil: nothing known) to r changes.
func diff(last *Rules, r Rules) SyncStats {
	st := SyncStats{Full: last == nil, RulesWritten: last == nil || !bytes.Equal(last.Restore, r.Restore)}
	had := map[string]map[netip.Prefix]bool{}
	if last != nil {
		for _, s := range last.Sets {
			m := map[netip.Prefix]bool{}
			for _, p := range s.Members {
				m[p] = true
			}
			had[s.Name] = m
		}
	}
	want := map[string]bool{}
	for _, s := range r.Sets {
		want[s.Name] = true
		old, ok := had[s.Name]
		if !ok {
			st.SetsCreated++
		}
		keep := map[netip.Prefix]bool{}
		for _, p := range s.Members {
			keep[p] = true
			if !old[p] {
				st.Added++
			}
		}
		for p := range old {
			if !keep[p] {
				st.Removed++
			}
		}
	}
	for name := range had {
		if !want[name] {
			st.SetsDestroyed++
		}
	}
	return st
}
