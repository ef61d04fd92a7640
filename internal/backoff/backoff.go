// Package backoff is the retry delay of the node's calls to managers (the
// agent's join and watch, a joining manager's Raft join).
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff doubles from 200ms to 10s, with jitter so that a cluster's nodes
// do not reconnect in lockstep after a manager restart. The zero value is
// ready to use.
type Backoff struct{ d time.Duration }

// Reset starts again from the shortest delay (the last try worked).
func (b *Backoff) Reset() { b.d = 0 }

// Next returns the delay before the next try.
func (b *Backoff) Next() time.Duration {
	if b.d == 0 {
		b.d = 200 * time.Millisecond
	} else {
		b.d = min(2*b.d, 10*time.Second)
	}
	return b.d/2 + rand.N(b.d/2+1)
}

// Sleep waits d, or until ctx ends (then its error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
