package appliance

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// WaitForSaneClock returns once now() is not earlier than notBefore (the
// build time), waiting for time sync to move the clock forward if needed.
//
// Boards without a real-time clock (Raspberry Pi) boot with a clock in the
// past until NTP syncs. Starting then makes TLS certificates look "not yet
// valid" and gives WireGuard handshake initiations old timestamps that peers
// reject as replays, failures that look unrelated to the clock. A zero
// notBefore (a dev build without a stamped date) disables the check.
//
// It logs one warning when it starts waiting and one line when the clock is
// sane; it polls now() every poll and returns ctx's error if ctx ends first.
func WaitForSaneClock(ctx context.Context, notBefore time.Time, logger *slog.Logger, now func() time.Time, poll time.Duration) error {
	if notBefore.IsZero() {
		return nil
	}
	start := now()
	if !start.Before(notBefore) {
		return nil
	}
	if poll <= 0 {
		return fmt.Errorf("wait for sane clock: poll interval %v must be positive", poll)
	}
	logger.Warn("system clock is earlier than this build; waiting for time sync before starting the tunnel (WireGuard handshakes and TLS would fail)",
		"clock", start.UTC().Format(time.RFC3339), "built", notBefore.UTC().Format(time.RFC3339))

	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for sane clock (clock %s, built %s): %w",
				now().UTC().Format(time.RFC3339), notBefore.UTC().Format(time.RFC3339), ctx.Err())
		case <-ticker.C:
			if t := now(); !t.Before(notBefore) {
				logger.Info("system clock is sane; continuing", "clock", t.UTC().Format(time.RFC3339))
				return nil
			}
		}
	}
}
