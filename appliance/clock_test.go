package appliance

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

var buildTime = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// fakeClock is a wall clock a test sets by hand, like an RTC-less board
// whose clock NTP steps forward once.
type fakeClock struct{ unixNano atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.set(t)
	return c
}
func (c *fakeClock) set(t time.Time) { c.unixNano.Store(t.UnixNano()) }
func (c *fakeClock) now() time.Time  { return time.Unix(0, c.unixNano.Load()) }

func newTestLogger() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewTextHandler(&buf, nil)), &buf
}

func TestWaitForSaneClockReturnsAtOnceWhenClockIsSane(t *testing.T) {
	for name, clock := range map[string]time.Time{
		"equal to build time": buildTime,
		"after build time":    buildTime.Add(48 * time.Hour),
	} {
		t.Run(name, func(t *testing.T) {
			logger, logs := newTestLogger()
			calls := 0
			now := func() time.Time { calls++; return clock }
			if err := WaitForSaneClock(context.Background(), buildTime, logger, now, time.Hour); err != nil {
				t.Fatalf("WaitForSaneClock: %v", err)
			}
			if calls != 1 {
				t.Errorf("now() called %d times, want 1", calls)
			}
			if logs.Len() != 0 {
				t.Errorf("logged on a sane clock: %s", logs)
			}
		})
	}
}

func TestWaitForSaneClockSkipsCheckForDevBuild(t *testing.T) {
	logger, logs := newTestLogger()
	now := func() time.Time { return time.Unix(0, 0) }
	if err := WaitForSaneClock(context.Background(), time.Time{}, logger, now, time.Second); err != nil {
		t.Fatalf("WaitForSaneClock with zero build time: %v", err)
	}
	if logs.Len() != 0 {
		t.Errorf("logged for a dev build: %s", logs)
	}
}

func TestWaitForSaneClockWaitsForTimeSync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Booted with the clock at the epoch; NTP steps it 10m01s later.
		clock := newFakeClock(time.Unix(0, 0))
		go func() {
			time.Sleep(10*time.Minute + time.Second)
			clock.set(buildTime.Add(time.Hour))
		}()
		logger, logs := newTestLogger()
		start := time.Now()
		if err := WaitForSaneClock(context.Background(), buildTime, logger, clock.now, 5*time.Second); err != nil {
			t.Fatalf("WaitForSaneClock: %v", err)
		}
		// The bubble's time is virtual: this is exact, not a timing assert.
		if waited, want := time.Since(start), 10*time.Minute+5*time.Second; waited != want {
			t.Errorf("returned after %v, want %v (first poll after the clock step)", waited, want)
		}

		lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("want one warning and one all-clear line, got %d lines:\n%s", len(lines), logs)
		}
		for _, want := range []string{"level=WARN", "waiting for time sync", "clock=1970-01-01T00:00:00Z", "built=2026-11-01T12:00:00Z"} {
			if !strings.Contains(lines[0], want) {
				t.Errorf("warning line %q lacks %q", lines[0], want)
			}
		}
		if !strings.Contains(lines[1], "level=INFO") || !strings.Contains(lines[1], "clock=2026-11-01T13:00:00Z") {
			t.Errorf("all-clear line %q lacks level=INFO and the new clock", lines[1])
		}
	})
}

func TestWaitForSaneClockStopsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clock := newFakeClock(buildTime.Add(-time.Minute))
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		logger, _ := newTestLogger()
		err := WaitForSaneClock(ctx, buildTime, logger, clock.now, time.Second)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want it to wrap context.DeadlineExceeded", err)
		}
		if !strings.Contains(err.Error(), "built 2026-11-01T12:00:00Z") {
			t.Errorf("error %q does not say which build time it waited for", err)
		}
	})
}

func TestWaitForSaneClockRejectsNonPositivePoll(t *testing.T) {
	logger, _ := newTestLogger()
	now := func() time.Time { return buildTime.Add(-time.Hour) }
	if err := WaitForSaneClock(context.Background(), buildTime, logger, now, 0); err == nil {
		t.Fatal("WaitForSaneClock with poll 0 and a clock in the past returned nil")
	}
}
