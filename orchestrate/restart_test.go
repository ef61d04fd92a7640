package orchestrate

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestDecideRestart(t *testing.T) {
	now := planNow
	dur := func(d time.Duration) clustermap.Duration { return clustermap.Duration(d) }
	tests := []struct {
		name     string
		policy   clustermap.RestartPolicy
		exit     exitInfo
		failures int
		restarts []time.Time
		restart  bool
		wait     time.Duration
		state    string
		err      string // substring; "" without restart means the error is empty
	}{
		{name: "default (any) restarts a clean exit after the back-off", exit: exitInfo{status: 0}, failures: 1,
			restart: true, wait: firstBackoff, state: clustermap.TaskFailed, err: "exited with status 0; restarting in 500ms"},
		{name: "any restarts a failure, back-off doubling", policy: clustermap.RestartPolicy{Condition: "any"}, exit: exitInfo{status: 3}, failures: 3,
			restart: true, wait: 2 * time.Second, state: clustermap.TaskFailed, err: "exited with status 3; restarting in 2s"},
		{name: "the back-off stops at its cap", exit: exitInfo{status: 1}, failures: 40,
			restart: true, wait: time.Minute, state: clustermap.TaskFailed},
		{name: "a longer delay wins over the back-off", policy: clustermap.RestartPolicy{Delay: dur(10 * time.Second)}, exit: exitInfo{status: 1}, failures: 1,
			restart: true, wait: 10 * time.Second, state: clustermap.TaskFailed, err: "restarting in 10s"},
		{name: "a longer back-off wins over the delay", policy: clustermap.RestartPolicy{Delay: dur(time.Second)}, exit: exitInfo{status: 1}, failures: 5,
			restart: true, wait: 8 * time.Second, state: clustermap.TaskFailed},
		{name: "none leaves a clean exit complete", policy: clustermap.RestartPolicy{Condition: "none"}, exit: exitInfo{status: 0}, failures: 1,
			state: clustermap.TaskComplete, err: "exited with status 0; not restarted (restart condition none)"},
		{name: "none leaves a failure failed", policy: clustermap.RestartPolicy{Condition: "none"}, exit: exitInfo{status: 2}, failures: 1,
			state: clustermap.TaskFailed, err: "exited with status 2; not restarted (restart condition none)"},
		{name: "on-failure leaves a clean exit complete, without error", policy: clustermap.RestartPolicy{Condition: "on-failure"}, exit: exitInfo{status: 0}, failures: 1,
			state: clustermap.TaskComplete},
		{name: "on-failure restarts a failure", policy: clustermap.RestartPolicy{Condition: "on-failure"}, exit: exitInfo{status: 1}, failures: 1,
			restart: true, wait: firstBackoff, state: clustermap.TaskFailed},
		{name: "an OOM kill is a failure and says its limit", policy: clustermap.RestartPolicy{Condition: "on-failure"}, exit: exitInfo{status: 137, oomKilled: true, memoryLimit: 32 << 20}, failures: 1,
			restart: true, wait: firstBackoff, state: clustermap.TaskFailed, err: "OOM killed (limit 32 MiB); restarting in 500ms"},
		{name: "max attempts: restarts below the bound go on", policy: clustermap.RestartPolicy{MaxAttempts: 2}, exit: exitInfo{status: 1}, failures: 2,
			restarts: []time.Time{now.Add(-time.Minute)}, restart: true, wait: time.Second, state: clustermap.TaskFailed},
		{name: "max attempts: gives up after two restarts", policy: clustermap.RestartPolicy{MaxAttempts: 2}, exit: exitInfo{status: 1}, failures: 3,
			restarts: []time.Time{now.Add(-time.Hour), now.Add(-time.Minute)}, state: clustermap.TaskFailed,
			err: "exited with status 1; not restarted: gave up after 2 restarts (restart max attempts 2)"},
		{name: "max attempts with a window: old restarts no longer count", policy: clustermap.RestartPolicy{MaxAttempts: 2, Window: dur(10 * time.Minute)},
			exit: exitInfo{status: 1}, failures: 3, restarts: []time.Time{now.Add(-time.Hour), now.Add(-time.Minute)}, restart: true, wait: 2 * time.Second, state: clustermap.TaskFailed},
		{name: "max attempts with a window: recent restarts count", policy: clustermap.RestartPolicy{MaxAttempts: 2, Window: dur(10 * time.Minute)},
			exit: exitInfo{status: 1}, failures: 3, restarts: []time.Time{now.Add(-5 * time.Minute), now.Add(-time.Minute)}, state: clustermap.TaskFailed,
			err: "gave up after 2 restarts within 10m0s (restart max attempts 2)"},
		{name: "max attempts: a clean exit after giving up is complete", policy: clustermap.RestartPolicy{MaxAttempts: 1}, exit: exitInfo{status: 0}, failures: 2,
			restarts: []time.Time{now.Add(-time.Minute)}, state: clustermap.TaskComplete, err: "exited with status 0; not restarted: gave up after 1 restarts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decideRestart(tt.policy, tt.exit, tt.failures, tt.restarts, now, time.Minute)
			if d.restart != tt.restart || d.state != tt.state {
				t.Fatalf("decision = %+v, want restart %v state %s", d, tt.restart, tt.state)
			}
			if tt.restart && !d.at.Equal(now.Add(tt.wait)) {
				t.Errorf("restart at %s, want now + %s", d.at.Sub(now), tt.wait)
			}
			if !tt.restart && !d.at.IsZero() {
				t.Errorf("no restart but at = %s", d.at)
			}
			wantEmpty := tt.err == "" && !tt.restart // a restart always says when
			if wantEmpty != (d.err == "") || !strings.Contains(d.err, tt.err) {
				t.Errorf("err = %q, want %q", d.err, tt.err)
			}
		})
	}
}

// The planner applies the policy: an exit it leaves stopped stays
// stopped on every later pass, an exit it restarts is restarted once due.
func TestPlanRestartPolicy(t *testing.T) {
	oneShot := spec("job-1", "busybox", "10.0.1.2")
	oneShot.Restart = clustermap.RestartPolicy{Condition: clustermap.RestartNone}
	limited := spec("web-1", "busybox", "10.0.1.3")
	limited.Restart = clustermap.RestartPolicy{MaxAttempts: 2}
	stopped := func(s TaskSpec, status uint32) observed {
		o := container(s, procStopped)
		o.exitStatus = status
		return o
	}

	// The exits are noted with the policy's decision.
	p := planPass(planInput{
		block:   planBlock,
		now:     planNow,
		desired: desiredOf(oneShot, limited),
		observed: map[string]observed{
			"job-1": stopped(oneShot, 0),
			"web-1": stopped(limited, 1),
		},
		records: map[string]taskRecord{
			"web-1": {restarts: []time.Time{planNow.Add(-2 * time.Minute), planNow.Add(-time.Minute)}, failures: 2},
		},
		backoffCap: time.Minute,
	})
	job, web := find(t, p, "job-1"), find(t, p, "web-1")
	if job.kind != actNoteExit || !job.noRestart || job.state != clustermap.TaskComplete {
		t.Errorf("job-1 = %v noRestart %v state %s, want note-exit, not restarted, complete", job.kind, job.noRestart, job.state)
	}
	if web.kind != actNoteExit || !web.noRestart || web.state != clustermap.TaskFailed || !strings.Contains(web.err, "gave up after 2 restarts") {
		t.Errorf("web-1 = %v noRestart %v state %s err %q, want note-exit, given up, failed", web.kind, web.noRestart, web.state, web.err)
	}

	// Later passes, long after: both stay stopped.
	p = planPass(planInput{
		block:    planBlock,
		now:      planNow.Add(time.Hour),
		desired:  desiredOf(oneShot, limited),
		observed: map[string]observed{"job-1": stopped(oneShot, 0), "web-1": stopped(limited, 1)},
		records:  map[string]taskRecord{"job-1": {exitNoted: true, noRestart: true}, "web-1": {exitNoted: true, noRestart: true}},
	})
	if got := steps(p); len(got) != 2 || got[0].kind != actWait || got[1].kind != actWait {
		t.Errorf("stopped tasks later: %v, want wait for both", got)
	}

	// An OOM kill is noted as such.
	limited.Limits.MemoryBytes = 32 << 20
	o := stopped(limited, 137)
	o.oomKilled = true
	p = planPass(planInput{block: planBlock, now: planNow, desired: desiredOf(limited), observed: map[string]observed{"web-1": o}, backoffCap: time.Minute})
	if a := find(t, p, "web-1"); a.kind != actNoteExit || !a.oomKilled || a.noRestart || !strings.HasPrefix(a.err, "OOM killed (limit 32 MiB); restarting in") {
		t.Errorf("OOM exit = %v oom %v noRestart %v err %q", a.kind, a.oomKilled, a.noRestart, a.err)
	}
}

func TestReadCounter(t *testing.T) {
	dir := t.TempDir()
	f := dir + "/memory.events"
	if err := os.WriteFile(f, []byte("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, ok := readCounter(f, "oom_kill"); !ok || n != 1 {
		t.Errorf("oom_kill = %d, %v", n, ok)
	}
	if _, ok := readCounter(f, "nope"); ok {
		t.Error("missing key found")
	}
	c, err := Capacity()
	if err != nil || c.MemoryBytes <= 0 || c.NanoCPUs < 1e9 {
		t.Errorf("Capacity() = %+v, %v", c, err)
	}
}

// After a daemon restart the loop's records are empty: the restart times
// recorded on the container still count toward max attempts.
func TestPlanCountsRestartsRecordedOnTheContainer(t *testing.T) {
	s := spec("web-1", "busybox", "10.0.1.3")
	s.Restart = clustermap.RestartPolicy{MaxAttempts: 2}
	o := container(s, procStopped)
	o.exitStatus = 1
	o.restarts = parseRestarts(formatRestarts([]time.Time{planNow.Add(-2 * time.Minute), planNow.Add(-time.Minute)}))
	if len(o.restarts) != 2 || !o.restarts[1].Equal(planNow.Add(-time.Minute)) {
		t.Fatalf("label round trip: %v", o.restarts)
	}
	p := planPass(planInput{block: planBlock, now: planNow, desired: desiredOf(s), observed: map[string]observed{"web-1": o}, backoffCap: time.Minute})
	if a := find(t, p, "web-1"); a.kind != actNoteExit || !a.noRestart || !strings.Contains(a.err, "gave up after 2 restarts") || len(a.restarts) != 2 {
		t.Errorf("after a daemon restart: %v noRestart %v err %q restarts %v", a.kind, a.noRestart, a.err, a.restarts)
	}
	if got := parseRestarts("12,bad,,34"); len(got) != 2 || got[0].Unix() != 12 || got[1].Unix() != 34 {
		t.Errorf("parseRestarts skips bad entries: %v", got)
	}
}
