package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestNextDoublesWithJitterUpTo10s(t *testing.T) {
	var b Backoff
	want := 200 * time.Millisecond
	for i := range 12 {
		d := b.Next()
		if d < want/2 || d > want {
			t.Fatalf("try %d: %v, want in [%v, %v]", i+1, d, want/2, want)
		}
		want = min(2*want, 10*time.Second)
	}
	b.Reset()
	if d := b.Next(); d > 200*time.Millisecond {
		t.Fatalf("after Reset: %v, want at most 200ms", d)
	}
}

func TestSleepEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep = %v, want context.Canceled", err)
	}
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Sleep = %v", err)
	}
}
