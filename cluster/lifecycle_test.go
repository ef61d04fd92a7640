package cluster

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// reportAll reports every task of node as running whatever image it has.
func reportAll(t *testing.T, m *Manager, nodeID string) {
	t.Helper()
	var st []api.TaskStatus
	for _, task := range m.Map().TasksOn(nodeID) {
		st = append(st, api.TaskStatus{Name: task.Name, State: clustermap.TaskRunning, Image: task.Image, SpecVersion: task.SpecVersion})
	}
	if err := m.Report(context.Background(), NodeStatus{Tasks: st}); err != nil {
		t.Fatal(err)
	}
}

func imagesOf(m *clustermap.Map, service string) map[string]string {
	out := map[string]string{}
	for _, task := range m.Tasks {
		if task.Service == service && task.DesiredState == clustermap.TaskRunning {
			out[task.Name] = task.Image + "/" + task.State
		}
	}
	return out
}

func TestRollingUpdateReplacesOneSlotAtATime(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	self := m.Self().ID
	if _, err := m.CreateService(api.ServiceSpec{Name: "web", Image: "web:v1", Replicas: intp(3)}); err != nil {
		t.Fatal(err)
	}
	reportAll(t, m, self)
	if _, err := m.UpdateServiceImage("web", "web:v2"); err != nil {
		t.Fatal(err)
	}
	want := []map[string]string{
		{"web-1": "web:v2/pending", "web-2": "web:v1/running", "web-3": "web:v1/running"},
		{"web-1": "web:v2/running", "web-2": "web:v2/pending", "web-3": "web:v1/running"},
		{"web-1": "web:v2/running", "web-2": "web:v2/running", "web-3": "web:v2/pending"},
		{"web-1": "web:v2/running", "web-2": "web:v2/running", "web-3": "web:v2/running"},
	}
	for step, w := range want {
		got := imagesOf(m.Map(), "web")
		for name, v := range w {
			if got[name] != v {
				t.Fatalf("step %d: tasks = %v, want %v", step, got, w)
			}
		}
		// The node still runs the old image for a moment: no progress.
		var stale []api.TaskStatus
		for _, task := range m.Map().TasksOn(self) {
			stale = append(stale, api.TaskStatus{Name: task.Name, State: clustermap.TaskRunning, Image: "web:v1"})
		}
		if step < 3 {
			if err := m.Report(context.Background(), NodeStatus{Tasks: stale}); err != nil {
				t.Fatal(err)
			}
			if got := imagesOf(m.Map(), "web"); got["web-1"] == "web:v2/running" && step == 0 {
				t.Fatalf("a report of the old image counted as the new one: %v", got)
			}
		}
		reportAll(t, m, self)
	}
	if v, _ := m.Service("web"); v.Updating || v.Running != 3 {
		t.Fatalf("after the rollout: %+v", v)
	}
}

func TestRollingUpdateStopsOnFailure(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	if _, err := m.CreateService(api.ServiceSpec{Name: "web", Image: "web:v1", Replicas: intp(2)}); err != nil {
		t.Fatal(err)
	}
	reportAll(t, m, m.Self().ID)
	if _, err := m.UpdateServiceImage("web", "web:broken"); err != nil {
		t.Fatal(err)
	}
	st := []api.TaskStatus{
		{Name: "web-1", State: clustermap.TaskFailed, Error: "image not found", Image: "web:broken"},
		{Name: "web-2", State: clustermap.TaskRunning, Image: "web:v1"},
	}
	if err := m.Report(context.Background(), NodeStatus{Tasks: st}); err != nil {
		t.Fatal(err)
	}
	got := imagesOf(m.Map(), "web")
	if got["web-1"] != "web:broken/failed" || got["web-2"] != "web:v1/running" {
		t.Fatalf("a failed new task must hold the rollout: %v", got)
	}
	v, _ := m.Service("web")
	if !v.Updating || v.Tasks[0].Error != "image not found" {
		t.Fatalf("service view = %+v", v)
	}
}

func TestSilentNodeIsMarkedDownAndItsTasksMove(t *testing.T) {
	tm := startManager(t)
	tm.cfg.DownAfter = 500 * time.Millisecond
	tm.restart()
	a := join(t, agentConfig(t, tm, "worker-1"))
	id := a.Self().ID
	// heartbeat keeps a member reporting until stop is closed.
	heartbeat := func(report func() error) (stop func()) {
		done, exited := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(exited)
			for {
				report()
				select {
				case <-done:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
		return func() { close(done); <-exited }
	}
	m := tm.m
	stopWorker := heartbeat(func() error { return a.Report(context.Background(), NodeStatus{}) })
	stopManager := heartbeat(func() error { return m.Report(context.Background(), NodeStatus{}) })
	defer stopManager()
	if _, err := tm.m.CreateService(api.ServiceSpec{Name: "web", Image: "x", Replicas: intp(2)}); err != nil {
		t.Fatal(err)
	}
	r := clustertest.Watch(t, tm.m)
	onWorker := func(m *clustermap.Map) int { return len(m.TasksOn(id)) }
	r.WaitFor(t, "one task on the worker", func(m *clustermap.Map) bool { return onWorker(m) == 1 })

	stopWorker() // the worker goes silent
	r.WaitFor(t, "the worker marked down", func(m *clustermap.Map) bool {
		n, _ := m.Node(id)
		return n.Status == clustermap.NodeDown
	})
	r.WaitFor(t, "its task moved", func(m *clustermap.Map) bool { return onWorker(m) == 0 && len(m.TasksOn(tm.m.Self().ID)) == 2 })
	if err := a.Report(context.Background(), NodeStatus{}); err != nil {
		t.Fatal(err)
	}
	r.WaitFor(t, "the worker ready again", func(m *clustermap.Map) bool {
		n, _ := m.Node(id)
		return n.Status == clustermap.NodeReady
	})
}

func TestAgentRetriesWhileManagerUnreachable(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	// The agent's log says when it retries: the manager comes back only
	// after the second failed attempt was seen, not after a guessed delay.
	retries := make(chan slog.Record, 16)
	cfg.Logger = slog.New(recordTap{Handler: cfg.Logger.Handler(), msg: "cannot reach the manager to join, retrying", to: retries})
	tm.stop()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_, err := agent.Join(ctx, cfg)
		done <- err
	}()
	for want := 1; want <= 2; want++ {
		select {
		case r := <-retries:
			attempt := 0
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "attempt" {
					attempt = int(a.Value.Int64())
				}
				return true
			})
			if attempt != want {
				t.Fatalf("retry log says attempt %d, want %d", attempt, want)
			}
		case err := <-done:
			t.Fatalf("join ended without the manager: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("no retry %d logged within 30 s", want)
		}
	}
	tm.start()
	if err := <-done; err != nil {
		t.Fatalf("join after the manager came up: %v", err)
	}
}

// recordTap passes every record to Handler and sends those with message
// msg to the channel, so a test can observe what the code logs it does.
type recordTap struct {
	slog.Handler
	msg string
	to  chan<- slog.Record
}

func (h recordTap) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.to <- r.Clone():
		default:
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h recordTap) WithAttrs(as []slog.Attr) slog.Handler {
	return recordTap{Handler: h.Handler.WithAttrs(as), msg: h.msg, to: h.to}
}

func (h recordTap) WithGroup(name string) slog.Handler {
	return recordTap{Handler: h.Handler.WithGroup(name), msg: h.msg, to: h.to}
}

// freezableProxy forwards TCP to target; freeze stalls every connection
// open at that moment without closing it (a manager that lost power behind
// a switch), while new connections still get through.
type freezableProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen chan struct{} // closed: connections opened before it stall
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *freezableProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezableProxy{ln: ln, target: target, frozen: make(chan struct{})}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			frozen := p.frozen
			p.mu.Unlock()
			go p.pipe(c, up, frozen)
			go p.pipe(up, c, frozen)
		}
	}()
	return p
}

func (p *freezableProxy) pipe(dst, src net.Conn, frozen chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case <-frozen:
				return // stall: drop the data, keep both sockets open
			default:
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *freezableProxy) freeze() {
	p.mu.Lock()
	close(p.frozen)
	p.frozen = make(chan struct{})
	p.mu.Unlock()
}

func TestWatchReconnectsWhenStreamGoesSilent(t *testing.T) {
	tm := startManager(t)
	tm.cfg.keepalive = 200 * time.Millisecond
	tm.restart()
	proxy := startProxy(t, tm.addr)
	cfg := agentConfig(t, tm, "worker-1")
	cfg.Manager = proxy.ln.Addr().String()
	a := join(t, cfg)
	r := clustertest.Watch(t, a)
	r.WaitFor(t, "two nodes", clustertest.HasNodes(2))
	proxy.freeze() // the open stream now carries nothing, but stays open
	if _, err := tm.m.CreateService(api.ServiceSpec{Name: "web", Image: "x"}); err != nil {
		t.Fatal(err)
	}
	r.WaitFor(t, "the change, over a new connection", func(m *clustermap.Map) bool { return len(m.Services) == 1 })
}

func TestManagerMovesItsVersionPastANewerCache(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	// A cache from before the manager was restored from an older backup.
	stale := tm.m.Map()
	future := *stale
	future.Version = stale.Version + 1000
	b, _ := json.Marshal(future)
	if err := os.WriteFile(filepath.Join(cfg.StateDir, agent.FileMap), b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := clustertest.Watch(t, a)
	// The node never applies an older map: the manager moves past it.
	m := r.WaitFor(t, "the manager's map, newer than the cache", func(m *clustermap.Map) bool { return m.Version > future.Version })
	if len(m.Nodes) != 2 || tm.m.Map().Version != m.Version {
		t.Fatalf("map = %+v, manager at version %d", m, tm.m.Map().Version)
	}
}
