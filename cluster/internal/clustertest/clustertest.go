// Package clustertest holds the helpers the tests of the manager (package
// cluster) and of the agent (cluster/agent) share: loopback listeners,
// WireGuard keys, certificate files and a recorder of the maps a Watch
// applies. It imports neither package, so both can use it.
package clustertest

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
)

// Logger discards logs unless WARREN_TEST_LOG is set.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("WARREN_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// WGKey returns a random WireGuard public key (base64).
func WGKey(t testing.TB) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// Listen listens on addr (TCP), retrying a while: after a restart on the
// same address the old socket may linger a moment.
func Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; ; i++ {
		ln, err = net.Listen("tcp", addr)
		if err == nil || i > 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// ReadCert reads a PEM certificate file.
func ReadCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ParseCertPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// MapRecorder runs a Watch and keeps every map it applied.
type MapRecorder struct {
	mu     sync.Mutex
	maps   []*clustermap.Map
	notify chan struct{}
	err    chan error
	cancel context.CancelFunc
}

// Watch starts w's Watch until the test ends.
func Watch(t testing.TB, w interface {
	Watch(context.Context, func(*clustermap.Map)) error
}) *MapRecorder {
	ctx, cancel := context.WithCancel(context.Background())
	r := &MapRecorder{notify: make(chan struct{}, 1), err: make(chan error, 1), cancel: cancel}
	go func() {
		r.err <- w.Watch(ctx, func(m *clustermap.Map) {
			r.mu.Lock()
			r.maps = append(r.maps, m)
			r.mu.Unlock()
			select {
			case r.notify <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(cancel)
	return r
}

// Stop ends the Watch.
func (r *MapRecorder) Stop() { r.cancel() }

// Err is where the Watch's result arrives once it ended.
func (r *MapRecorder) Err() <-chan error { return r.err }

// Maps returns the maps applied so far.
func (r *MapRecorder) Maps() []*clustermap.Map {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*clustermap.Map(nil), r.maps...)
}

// Latest returns the last map applied, nil before the first.
func (r *MapRecorder) Latest() *clustermap.Map {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.maps) == 0 {
		return nil
	}
	return r.maps[len(r.maps)-1]
}

// WaitFor waits (generously) until cond holds for the latest map.
func (r *MapRecorder) WaitFor(t testing.TB, what string, cond func(*clustermap.Map) bool) *clustermap.Map {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if m := r.Latest(); m != nil && cond(m) {
			return m
		}
		select {
		case <-r.notify:
		case err := <-r.err:
			t.Fatalf("watch ended while waiting for %s: %v", what, err)
		case <-deadline:
			t.Fatalf("timed out waiting for %s; latest map: %+v", what, r.Latest())
		}
	}
}

// HasNodes is a WaitFor condition: the map lists n nodes.
func HasNodes(n int) func(*clustermap.Map) bool {
	return func(m *clustermap.Map) bool { return len(m.Nodes) == n }
}
