package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
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

// fakeClock drives a manager's time in steps.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// reportWith reports every task of nodeID: a task on image bad failed,
// others running (and healthy).
func reportWith(t *testing.T, m *Manager, nodeID, bad string) {
	t.Helper()
	var st []api.TaskStatus
	for _, task := range m.Map().TasksOn(nodeID) {
		if task.DesiredState != clustermap.TaskRunning {
			continue
		}
		s := api.TaskStatus{Name: task.Name, State: clustermap.TaskRunning, Image: task.Image, SpecVersion: task.SpecVersion}
		if task.Image == bad {
			s.State, s.Error = clustermap.TaskFailed, "exited with status 1"
		}
		st = append(st, s)
	}
	if err := m.Report(context.Background(), NodeStatus{Tasks: st}); err != nil {
		t.Fatal(err)
	}
}

// driveUpdate plays the node and the clock until the update of service
// stops moving; it returns the final status and the fewest endpoints seen.
func driveUpdate(t *testing.T, m *Manager, clock *fakeClock, service, bad string) (api.UpdateStatus, int) {
	t.Helper()
	self := m.Self().ID
	fewest := 1 << 30
	for range 200 {
		reportWith(t, m, self, bad)
		fewest = min(fewest, len(m.Map().Endpoints(service)))
		v, err := m.Service(service)
		if err != nil {
			t.Fatal(err)
		}
		if st := v.UpdateStatus; st != nil && st.State != api.UpdateUpdating && st.State != api.UpdateRollbackStarted {
			reportWith(t, m, self, bad) // surge tasks reported stopped
			return *st, fewest
		}
		clock.Add(500 * time.Millisecond)
		m.advanceUpdates()
	}
	t.Fatalf("update of %s did not finish", service)
	return api.UpdateStatus{}, 0
}

func TestRollingUpdateStartFirstKeepsEveryReplica(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	clock := &fakeClock{now: time.Now()}
	m.mu.Lock()
	m.now = clock.Now
	m.mu.Unlock()
	self := m.Self().ID
	if _, err := m.CreateService(api.ServiceSpec{Name: "web", Image: "web:v1", Replicas: intp(3)}); err != nil {
		t.Fatal(err)
	}
	reportAll(t, m, self)
	v, err := m.UpdateServiceImage("web", "web:v2")
	if err != nil {
		t.Fatal(err)
	}
	if v.UpdateStatus == nil || v.UpdateStatus.State != api.UpdateUpdating || v.UpdateStatus.Previous != "web:v1" {
		t.Fatalf("update status = %+v", v.UpdateStatus)
	}
	// start-first: a surge task on the new image comes first.
	if got := imagesOf(m.Map(), "web"); got["web-4"] != "web:v2/pending" || got["web-1"] != "web:v1/running" {
		t.Fatalf("first step: %v", got)
	}
	st, fewest := driveUpdate(t, m, clock, "web", "")
	if st.State != api.UpdateCompleted {
		t.Fatalf("update ended %s: %s", st.State, st.Message)
	}
	if fewest < 3 {
		t.Fatalf("endpoints fell to %d of 3 during a start-first update", fewest)
	}
	got := imagesOf(m.Map(), "web")
	if len(got) != 3 || got["web-1"] != "web:v2/running" || got["web-2"] != "web:v2/running" || got["web-3"] != "web:v2/running" {
		t.Fatalf("after the update: %v", got)
	}
	if v, _ := m.Service("web"); v.Updating || v.Running != 3 {
		t.Fatalf("after the rollout: %+v", v)
	}
}

func TestRollingUpdateRollsBackByItselfOnFailure(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	clock := &fakeClock{now: time.Now()}
	m.mu.Lock()
	m.now = clock.Now
	m.mu.Unlock()
	if _, err := m.CreateService(api.ServiceSpec{Name: "web", Image: "web:v1", Replicas: intp(2)}); err != nil {
		t.Fatal(err)
	}
	reportAll(t, m, m.Self().ID)
	if _, err := m.UpdateServiceImage("web", "web:broken"); err != nil {
		t.Fatal(err)
	}
	st, fewest := driveUpdate(t, m, clock, "web", "web:broken")
	if st.State != api.UpdateRollbackCompleted || !strings.Contains(st.Message, "failed: exited with status 1") {
		t.Fatalf("update ended %s: %q", st.State, st.Message)
	}
	if fewest < 2 {
		t.Fatalf("endpoints fell to %d of 2", fewest)
	}
	v, _ := m.Service("web")
	if v.Image != "web:v1" || v.Running != 2 {
		t.Fatalf("after the rollback: image %s, %d running", v.Image, v.Running)
	}
	// A manual rollback now goes back to the broken image: nothing to
	// roll back to is refused only before any update.
	if _, err := m.RollbackService("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CreateService(api.ServiceSpec{Name: "db", Image: "db:v1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.RollbackService("db"); err == nil || !strings.Contains(err.Error(), "never updated") {
		t.Fatalf("rollback of a never-updated service: %v", err)
	}
}

func TestUpdateServiceRefusesBadSettings(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	if _, err := m.CreateService(api.ServiceSpec{Name: "web", Image: "web:v1"}); err != nil {
		t.Fatal(err)
	}
	_, err := m.UpdateServiceSettings("web", api.ImageUpdate{Image: "web:v2", HealthSpec: api.HealthSpec{UpdateConfig: &clustermap.UpdateConfig{Order: "sideways"}}})
	if err == nil || !strings.Contains(err.Error(), "--update-order") {
		t.Fatalf("bad order: %v", err)
	}
	if v, _ := m.Service("web"); v.Image != "web:v1" || v.UpdateStatus != nil {
		t.Fatalf("a refused update changed the service: %+v", v)
	}
	_, err = m.CreateService(api.ServiceSpec{Name: "x", Image: "x", HealthSpec: api.HealthSpec{HealthCheck: &clustermap.HealthCheck{Test: []string{"CMD-SHELL", ""}}}})
	if err == nil || !strings.Contains(err.Error(), "--health-cmd") {
		t.Fatalf("empty health command: %v", err)
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

// A node holding a newer map than the manager (restored from a backup with
// too small a --version-bump) keeps its map: the manager does not move its
// version for it (a node's claim is no reason to write), and the node takes
// the first map past its own, one change later.
func TestNodeAheadOfTheManagerKeepsItsMapUntilPassed(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "worker-1")
	a := join(t, cfg)
	stale := tm.m.Map()
	future := *stale
	future.Version = stale.Version + 3
	b, _ := json.Marshal(future)
	if err := os.WriteFile(filepath.Join(cfg.StateDir, agent.FileMap), b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := clustertest.Watch(t, a)
	r.WaitFor(t, "the cached map", func(m *clustermap.Map) bool { return m.Version == future.Version })
	for i := range 4 {
		if _, err := tm.m.CreateService(api.ServiceSpec{Name: fmt.Sprintf("s%d", i), Image: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	m := r.WaitFor(t, "the first map past the cache", func(m *clustermap.Map) bool { return m.Version > future.Version })
	if m.Version != stale.Version+4 || len(m.Services) != 4 {
		t.Fatalf("map version %d with %d services, want version %d with 4", m.Version, len(m.Services), stale.Version+4)
	}
	if maps := r.Maps(); len(maps) != 2 {
		t.Fatalf("the node applied %d maps, want the cache then the first newer one", len(maps))
	}
}
