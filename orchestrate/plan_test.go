package orchestrate

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The planner's tests: plain data in, actions out. No containerd, no
// namespaces, no clock.

var (
	planNow   = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	planBlock = netip.MustParsePrefix("10.0.1.0/24")
)

func spec(name, image, ip string) TaskSpec {
	return TaskSpec{Name: name, Service: strings.Split(name, "-")[0], Image: image, IP: netip.MustParseAddr(ip)}
}

// running is the container of s as created by the executor, its process in state p.
func container(s TaskSpec, p procState) observed {
	ref, err := normalizeRef(s.Image)
	if err != nil {
		panic(err)
	}
	return observed{specHash: specHash(s, ref), ip: s.IP, proc: p}
}

func desiredOf(specs ...TaskSpec) map[string]TaskSpec {
	m := map[string]TaskSpec{}
	for _, s := range specs {
		m[s.Name] = s
	}
	return m
}

// step is an action reduced to what a test states about it.
type step struct {
	kind actionKind
	task string
}

func steps(p plan) []step {
	var out []step
	for _, a := range p.actions {
		out = append(out, step{a.kind, a.task})
	}
	return out
}

func find(t *testing.T, p plan, task string) action {
	t.Helper()
	for _, a := range p.actions {
		if a.task == task {
			return a
		}
	}
	t.Fatalf("no action for %s in %v", task, steps(p))
	return action{}
}

func TestPlan(t *testing.T) {
	web1 := spec("web-1", "busybox", "10.0.1.2")
	web2 := spec("web-2", "busybox", "10.0.1.3")
	web1v2 := web1
	web1v2.Image = "busybox:1.37"
	db1 := spec("db-1", "postgres", "10.0.1.3") // web-2's IP, given to a task moved here

	tests := []struct {
		name  string
		in    planInput
		want  []step
		check func(t *testing.T, p plan)
	}{
		{
			name: "new task is created with its normalised image and spec hash",
			in:   planInput{desired: desiredOf(web1)},
			want: []step{{actCreate, "web-1"}},
			check: func(t *testing.T, p plan) {
				a := p.actions[0]
				if a.ref != "docker.io/library/busybox:latest" || a.hash != container(web1, procRunning).specHash || a.repair {
					t.Errorf("create = %+v", a)
				}
			},
		},
		{
			name: "adoption after an appliance restart: a running container with the same spec is kept, not recreated",
			in: planInput{
				desired:  desiredOf(web1, web2),
				observed: map[string]observed{"web-1": container(web1, procRunning), "web-2": container(web2, procRunning)},
				netns:    []string{"web-1", "web-2"},
			},
			want: []step{{actKeep, "web-1"}, {actKeep, "web-2"}},
			check: func(t *testing.T, p plan) {
				for _, a := range p.actions {
					if !a.repair || !a.startedAt.Equal(planNow) || a.failures != 0 {
						t.Errorf("adopted %s: %+v (want repair, started now, no failures)", a.task, a)
					}
				}
			},
		},
		{
			name: "first notice of an exit records it and schedules the restart with backoff",
			in: planInput{
				desired:  desiredOf(web1),
				observed: map[string]observed{"web-1": func() observed { o := container(web1, procStopped); o.exitStatus = 137; return o }()},
				records:  map[string]taskRecord{"web-1": {failures: 2, startedAt: planNow.Add(-time.Second)}},
			},
			want: []step{{actNoteExit, "web-1"}},
			check: func(t *testing.T, p plan) {
				a := p.actions[0]
				// 500ms, 1s, 2s: the third failure waits 2s.
				if a.failures != 3 || !a.retryAt.Equal(planNow.Add(2*time.Second)) || a.exitStatus != 137 || !strings.Contains(a.err, "status 137; restarting in 2s") {
					t.Errorf("note-exit = %+v", a)
				}
			},
		},
		{
			name: "an exited task waits out its backoff",
			in: planInput{
				desired:  desiredOf(web1),
				observed: map[string]observed{"web-1": container(web1, procStopped)},
				records:  map[string]taskRecord{"web-1": {failures: 3, exitNoted: true, retryAt: planNow.Add(time.Second)}},
			},
			want: []step{{actWait, "web-1"}},
		},
		{
			name: "an exited task restarts once its backoff is over",
			in: planInput{
				desired:  desiredOf(web1),
				observed: map[string]observed{"web-1": container(web1, procStopped)},
				records:  map[string]taskRecord{"web-1": {failures: 3, exitNoted: true, retryAt: planNow}},
			},
			want: []step{{actRestart, "web-1"}},
		},
		{
			name: "a run longer than healthyAfter forgives earlier failures; a short one does not",
			in: planInput{
				desired:  desiredOf(web1, web2),
				observed: map[string]observed{"web-1": container(web1, procRunning), "web-2": container(web2, procRunning)},
				records: map[string]taskRecord{
					"web-1": {failures: 6, startedAt: planNow.Add(-healthyAfter)},
					"web-2": {failures: 6, startedAt: planNow.Add(-time.Second)},
				},
			},
			want: []step{{actKeep, "web-1"}, {actKeep, "web-2"}},
			check: func(t *testing.T, p plan) {
				if f := find(t, p, "web-1").failures; f != 0 {
					t.Errorf("web-1 failures = %d, want 0", f)
				}
				if f := find(t, p, "web-2").failures; f != 6 {
					t.Errorf("web-2 failures = %d, want 6", f)
				}
			},
		},
		{
			name: "a failed create is not retried before its backoff",
			in: planInput{
				desired: desiredOf(web1),
				records: map[string]taskRecord{"web-1": {failures: 1, retryAt: planNow.Add(time.Millisecond)}},
			},
			want: []step{{actWait, "web-1"}},
		},
		{
			name: "stale runtime state: a process created but never started is replaced at once, a container without process is started",
			in: planInput{
				desired:  desiredOf(web1, web2),
				observed: map[string]observed{"web-1": container(web1, procCreated), "web-2": container(web2, procNone)},
				records:  map[string]taskRecord{"web-1": {retryAt: planNow.Add(time.Hour)}},
			},
			want: []step{{actRestart, "web-1"}, {actStart, "web-2"}},
		},
		{
			name: "stale leftovers: the network of a task without container that is not desired goes",
			in: planInput{
				desired:  desiredOf(web1),
				observed: map[string]observed{"web-1": container(web1, procRunning)},
				netns:    []string{"old-1", "web-1", "gone-3"},
				removing: map[string]netip.Addr{"gone-3": netip.MustParseAddr("10.0.1.9")},
			},
			want: []step{{actKeep, "web-1"}, {actRemoveLeftovers, "old-1"}},
		},
		{
			name: "removal: an undesired container is removed once, a task dropped before it had one is shut down",
			in: planInput{
				desired:  desiredOf(web1),
				observed: map[string]observed{"web-1": container(web1, procRunning), "web-2": container(web2, procRunning), "old-1": container(spec("old-1", "busybox", "10.0.1.7"), procStopped)},
				records:  map[string]taskRecord{"web-1": {}, "never-1": {}, "done-1": {removedAt: planNow.Add(-time.Minute)}},
				removing: map[string]netip.Addr{"old-1": netip.MustParseAddr("10.0.1.7")},
				netns:    []string{"web-1", "web-2", "old-1"},
			},
			want: []step{{actRemove, "web-2"}, {actMarkShutdown, "never-1"}, {actKeep, "web-1"}},
			check: func(t *testing.T, p plan) {
				if ip := find(t, p, "web-2").ip; ip != web2.IP {
					t.Errorf("remove web-2 holds %s, want %s", ip, web2.IP)
				}
				want := map[string]bool{"web-1": true, "web-2": true, "old-1": true}
				if !reflect.DeepEqual(p.keepVeths, want) {
					t.Errorf("keepVeths = %v, want %v", p.keepVeths, want)
				}
			},
		},
		{
			name: "image change: the container is recreated with the new image",
			in: planInput{
				desired:  desiredOf(web1v2),
				observed: map[string]observed{"web-1": container(web1, procRunning)},
			},
			want: []step{{actRecreate, "web-1"}},
			check: func(t *testing.T, p plan) {
				if a := p.actions[0]; !a.create || a.ref != "docker.io/library/busybox:1.37" || a.hash != container(web1v2, procRunning).specHash {
					t.Errorf("recreate = %+v", a)
				}
			},
		},
		{
			name: "image change while backing off: the old container goes now, the new one waits",
			in: planInput{
				desired:  desiredOf(web1v2),
				observed: map[string]observed{"web-1": container(web1, procRunning)},
				records:  map[string]taskRecord{"web-1": {failures: 1, retryAt: planNow.Add(time.Second)}},
			},
			want: []step{{actRecreate, "web-1"}},
			check: func(t *testing.T, p plan) {
				if p.actions[0].create {
					t.Errorf("recreate during backoff creates: %+v", p.actions[0])
				}
			},
		},
		{
			name: "task moved to another node: it is removed here, and the task moved in waits for the IP it held",
			in: planInput{
				desired:  desiredOf(web1, db1),
				observed: map[string]observed{"web-1": container(web1, procRunning), "web-2": container(web2, procRunning)},
				netns:    []string{"web-1", "web-2"},
			},
			want: []step{{actRemove, "web-2"}, {actWaitIP, "db-1"}, {actKeep, "web-1"}},
			check: func(t *testing.T, p plan) {
				if h := find(t, p, "db-1").holder; h != "web-2" {
					t.Errorf("db-1 waits for %q, want web-2", h)
				}
			},
		},
		{
			name: "a task moved back while its removal runs waits for the removal",
			in: planInput{
				desired:  desiredOf(web2),
				removing: map[string]netip.Addr{"web-2": web2.IP},
			},
			want: nil,
		},
		{
			name: "bad input: a spec outside the block fails (its container goes first), an IP given twice fails the second task",
			in: planInput{
				desired:  desiredOf(spec("bad-1", "busybox", "10.0.9.2"), spec("a-1", "busybox", "10.0.1.5"), spec("b-1", "busybox", "10.0.1.5")),
				observed: map[string]observed{"bad-1": {specHash: "x", proc: procRunning}},
				records:  map[string]taskRecord{"b-1": {failures: 1}},
			},
			want: []step{{actCreate, "a-1"}, {actFail, "b-1"}, {actFail, "bad-1"}},
			check: func(t *testing.T, p plan) {
				if a := find(t, p, "bad-1"); !a.removeFirst || !strings.Contains(a.err, "not inside this node's block") || a.failures != 1 {
					t.Errorf("bad-1 = %+v", a)
				}
				if a := find(t, p, "b-1"); a.removeFirst || !strings.Contains(a.err, "also given to task a-1") || a.failures != 2 || !a.retryAt.Equal(planNow.Add(time.Second)) {
					t.Errorf("b-1 = %+v", a)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.in.block, tt.in.now = planBlock, planNow
			p := planPass(tt.in)
			if got := steps(p); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("plan = %v\nwant   %v", got, tt.want)
			}
			if tt.check != nil {
				tt.check(t, p)
			}
		})
	}
}

func TestPlanDoesNotChangeItsInput(t *testing.T) {
	in := planInput{
		block:    planBlock,
		now:      planNow,
		desired:  desiredOf(spec("web-1", "busybox", "10.0.1.2")),
		observed: map[string]observed{"web-2": container(spec("web-2", "busybox", "10.0.1.3"), procRunning)},
		removing: map[string]netip.Addr{},
	}
	planPass(in)
	if len(in.removing) != 0 {
		t.Fatalf("planPass wrote into its input: removing = %v", in.removing)
	}
}

func TestBackoffDoublesToItsCap(t *testing.T) {
	const maxBackoff = 30 * time.Second
	for failures, want := range map[int]time.Duration{1: firstBackoff, 2: time.Second, 3: 2 * time.Second, 7: maxBackoff, 8: maxBackoff, 50: maxBackoff} {
		if got := backoff(failures, maxBackoff); got != min(want, maxBackoff) {
			t.Errorf("backoff(%d) = %s, want %s", failures, got, min(want, maxBackoff))
		}
	}
}
