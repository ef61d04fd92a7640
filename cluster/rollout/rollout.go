// Package rollout plans rolling updates and rollbacks, with Docker
// Swarm's settings and states: a pure function of the service, its update
// status, its tasks and the time, so every step is unit-tested without a
// cluster. The manager calls Plan on every reschedule and on a tick while
// an update runs, and publishes the tasks it returns.
//
// A task's version is its image and its spec version (env, command and
// workload, clustermap.Service.SpecVersion): a task is on the target only
// when both match the service's. A slot is updated by taking its old task
// out of the endpoints (Draining) for DrainTime, so every node's VIP and
// DNS drop it before it stops, then giving it the target image and spec version (its
// node recreates the container). A slot counts as updated once its new task
// serves (running and healthy, clustermap.Task.Serves); a new task that
// fails, turns unhealthy, or stops serving within the monitor window
// counts as a failure. With order start-first the service runs
// Parallelism extra "surge" tasks (slots after the last one) on the
// target image for the length of the update, and a serving old task is
// only taken out while the serving tasks stay at least the replica count.
// A task that completed (its restart condition let it stop after exit 0)
// counts as settled. A global service runs one task per node, so it has
// no surge slots: its updates go stop-first.
package rollout

import (
	"fmt"
	"slices"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

// DrainTime is how long a task stays out of the endpoints before it
// stops: time for every node to apply the map without it.
const DrainTime = 2 * time.Second

// Defaults: Docker's, except FailureAction rollback for updates (an edge
// cluster nobody watches must undo a bad update) and Order start-first
// (no capacity lost while a slot is replaced; see README).
var (
	DefaultUpdate   = clustermap.UpdateConfig{Parallelism: 1, FailureAction: clustermap.ActionRollback, Monitor: 5 * time.Second, Order: clustermap.OrderStartFirst}
	DefaultRollback = clustermap.UpdateConfig{Parallelism: 1, FailureAction: clustermap.ActionPause, Monitor: 5 * time.Second, Order: clustermap.OrderStartFirst}
)

// Effective fills the zero fields of c with d's.
func Effective(c *clustermap.UpdateConfig, d clustermap.UpdateConfig) clustermap.UpdateConfig {
	if c == nil {
		return d
	}
	out := *c
	if out.Parallelism <= 0 {
		out.Parallelism = d.Parallelism
	}
	if out.FailureAction == "" {
		out.FailureAction = d.FailureAction
	}
	if out.Monitor <= 0 {
		out.Monitor = d.Monitor
	}
	if out.Order == "" {
		out.Order = d.Order
	}
	return out
}

// Validate checks an update or rollback config; which names the flag set
// ("update" or "rollback").
func Validate(c *clustermap.UpdateConfig, which string) error {
	if c == nil {
		return nil
	}
	if c.Parallelism < 0 {
		return fmt.Errorf("--%s-parallelism %d is negative", which, c.Parallelism)
	}
	if c.Delay < 0 || c.Monitor < 0 {
		return fmt.Errorf("--%s-delay and --%s-monitor must not be negative", which, which)
	}
	switch c.FailureAction {
	case "", clustermap.ActionPause, clustermap.ActionContinue:
	case clustermap.ActionRollback:
		if which == "rollback" {
			return fmt.Errorf("--rollback-failure-action rollback is not valid: want pause or continue")
		}
	default:
		return fmt.Errorf("--%s-failure-action %q: want pause, continue or rollback", which, c.FailureAction)
	}
	switch c.Order {
	case "", clustermap.OrderStartFirst, clustermap.OrderStopFirst:
	default:
		return fmt.Errorf("--%s-order %q: want start-first or stop-first", which, c.Order)
	}
	if c.MaxFailureRatio < 0 || c.MaxFailureRatio > 1 {
		return fmt.Errorf("--%s-max-failure-ratio %g: want 0 to 1", which, c.MaxFailureRatio)
	}
	return nil
}

// Status is a service's rolling update as the manager stores it.
type Status struct {
	api.UpdateStatus
	// PreviousHealth is the health check before the update (rollback
	// restores it with the previous image).
	PreviousHealth *clustermap.HealthCheck `json:"previous_health,omitempty"`
	// PreviousSpecVersion is the service's spec version before the update;
	// when it differs from the service's, rollback restores it with the
	// spec kept in the service's Previous (env, command, workload).
	PreviousSpecVersion uint64 `json:"previous_spec_version,omitempty"`
	// ServingSince: when each task (by name) on the target image was
	// first seen serving; the monitor window starts there.
	ServingSince map[string]time.Time `json:"serving_since,omitempty"`
	// DrainSince: when each task (by name) was taken out of the endpoints.
	DrainSince map[string]time.Time `json:"drain_since,omitempty"`
	// NextAt: no slot starts updating before this (--update-delay).
	NextAt time.Time `json:"next_at,omitzero"`
}

// Active reports whether the update is moving (not paused or finished).
func (s *Status) Active() bool {
	return s != nil && (s.State == api.UpdateUpdating || s.State == api.UpdateRollbackStarted)
}

// RollingBack reports whether s is a rollback.
func (s *Status) RollingBack() bool {
	return s != nil && (s.State == api.UpdateRollbackStarted || s.State == api.UpdateRollbackPaused || s.State == api.UpdateRollbackCompleted)
}

// Begin starts an update of svc (already carrying the new image, check
// and spec version) from the previous image, check and spec version.
func Begin(svc clustermap.Service, prevImage string, prevHealth *clustermap.HealthCheck, prevSpecVersion uint64, now time.Time) *Status {
	return &Status{UpdateStatus: api.UpdateStatus{State: api.UpdateUpdating, StartedAt: now, Target: svc.Image, Previous: prevImage,
		Message: "update in progress"}, PreviousHealth: prevHealth, PreviousSpecVersion: prevSpecVersion}
}

// Config is the update config in force for s.
func Config(svc clustermap.Service, s *Status) clustermap.UpdateConfig {
	if s.RollingBack() {
		return Effective(svc.RollbackConfig, DefaultRollback)
	}
	return Effective(svc.UpdateConfig, DefaultUpdate)
}

// Surge is how many extra tasks svc runs now: Parallelism while a
// start-first update is active, else none.
func Surge(svc clustermap.Service, s *Status) int {
	if !s.Active() || svc.IsGlobal() {
		return 0
	}
	c := Config(svc, s)
	if c.Order != clustermap.OrderStartFirst {
		return 0
	}
	return c.Parallelism
}

// Outcome says what the manager must do besides publishing the tasks.
type Outcome int

const (
	Continue Outcome = iota
	// RollBack: the update failed with failure action rollback. The
	// manager restores the previous image and check (StartRollback) and
	// plans again.
	RollBack
)

// StartRollback turns s into a rollback of svc (whose image, check and
// spec the caller restores from s.Previous, s.PreviousHealth and
// s.PreviousSpecVersion), with the reason. currentHealth and
// currentSpecVersion are the service's before the caller restored them.
func StartRollback(s *Status, currentHealth *clustermap.HealthCheck, currentSpecVersion uint64, reason string, now time.Time) *Status {
	return &Status{UpdateStatus: api.UpdateStatus{State: api.UpdateRollbackStarted, StartedAt: now, Target: s.Previous, Previous: s.Target,
		Message: reason}, PreviousHealth: currentHealth, PreviousSpecVersion: currentSpecVersion}
}

// OnTarget reports whether t runs svc's current image and spec version.
func OnTarget(svc clustermap.Service, t clustermap.Task) bool {
	return t.Image == svc.Image && t.SpecVersion == svc.SpecVersion
}

// Plan advances svc's update one step at time now. tasks are the
// service's tasks (any order); Plan returns them changed (images,
// Draining), the new status, and whether the manager must roll back. It
// changes neither its inputs nor anything when the update is not active.
func Plan(svc clustermap.Service, st *Status, tasks []clustermap.Task, now time.Time) ([]clustermap.Task, *Status, Outcome) {
	out := slices.Clone(tasks)
	if !st.Active() {
		return out, st, Continue
	}
	next := *st
	next.Failures = slices.Clone(st.Failures)
	next.ServingSince = cloneTimes(st.ServingSince)
	next.DrainSince = cloneTimes(st.DrainSince)
	p := planner{svc: svc, cfg: Config(svc, st), replicas: svc.Replicas, out: out, next: &next, now: now}
	if svc.IsGlobal() {
		// One task per eligible node, no surge: every task is a slot.
		p.cfg.Order = clustermap.OrderStopFirst
		p.replicas = 0
		for _, t := range out {
			if t.DesiredState == clustermap.TaskRunning {
				p.replicas++
			}
		}
	}
	p.survey()
	if p.tooManyFailures() {
		reason := next.Message
		if p.cfg.FailureAction == clustermap.ActionRollback && !st.RollingBack() {
			next.Message = "update rolled back: " + reason
			return tasks, &next, RollBack
		}
		if st.RollingBack() {
			next.State = api.UpdateRollbackPaused
			next.Message = "rollback paused: " + reason
		} else {
			next.State = api.UpdatePaused
			next.Message = "update paused: " + reason
		}
		return out, &next, Continue
	}
	if p.allDone {
		if p.surgeDrained() {
			p.complete(st)
		}
		return out, &next, Continue
	}
	p.startNext()
	return out, &next, Continue
}

// planner is one step of Plan: the service, its update settings and the
// tasks (out, changed in place) with what survey found in them.
type planner struct {
	svc      clustermap.Service
	cfg      clustermap.UpdateConfig
	replicas int
	out      []clustermap.Task
	next     *Status
	now      time.Time

	inFlight, servingLive int
	oldServing, oldIdle   []int // indexes of tasks not on the target yet
	surge                 []int
	allDone               bool
}

// survey walks the running tasks: counts those in flight and serving,
// sorts out the ones still to update, records serving times and failures,
// and moves on drained old tasks and tasks a rollback brought back.
func (p *planner) survey() {
	next, cfg, now := p.next, p.cfg, p.now
	p.allDone = true
	regular := map[int]bool{}
	for i := range p.out {
		t := &p.out[i]
		if t.DesiredState != clustermap.TaskRunning {
			continue
		}
		isSurge := !p.svc.IsGlobal() && t.Slot > p.replicas
		if isSurge {
			p.surge = append(p.surge, i)
		} else {
			regular[t.Slot] = true
		}
		if t.Serves() {
			p.servingLive++
		}
		if !OnTarget(p.svc, *t) {
			p.allDone = false
			switch {
			case t.Draining:
				p.inFlight++
				if now.Sub(next.DrainSince[t.Name]) >= DrainTime {
					retarget(t, p.svc)
					delete(next.DrainSince, t.Name)
				}
			case t.Serves():
				p.oldServing = append(p.oldServing, i)
			default:
				p.oldIdle = append(p.oldIdle, i)
			}
			continue
		}
		// On the target image and spec.
		if t.Draining {
			if isSurge {
				continue // retiring at the end of the update
			}
			// Taken out for an update that was since rolled back to
			// this image: it serves again.
			t.Draining = false
			delete(next.DrainSince, t.Name)
			if t.Serves() {
				p.servingLive++
			}
		}
		since, seen := next.ServingSince[t.Name]
		switch {
		case t.Serves():
			if !seen {
				next.ServingSince[t.Name] = now
				since = now
				if cfg.Delay > 0 {
					next.NextAt = now.Add(cfg.Delay)
				}
			}
			if !isSurge && now.Sub(since) < cfg.Monitor {
				p.allDone = false
			}
		case t.State == clustermap.TaskComplete:
			// Exited 0 and its restart condition let it stay stopped:
			// settled, as a serving task past its monitor window.
			delete(next.ServingSince, t.Name)
		case failedTask(*t) || (seen && now.Sub(since) < cfg.Monitor):
			if cfg.FailureAction != clustermap.ActionContinue {
				p.allDone = false // with continue, a failed slot counts as updated
			}
			p.recordFailure(t)
			// A failed slot no longer holds up the next ones (its node
			// restarts it); the failure ratio decides what happens.
			delete(next.ServingSince, t.Name)
		default:
			p.allDone = false
			if !isSurge {
				p.inFlight++
			}
		}
	}
	for slot := 1; !p.svc.IsGlobal() && slot <= p.replicas; slot++ {
		if !regular[slot] {
			p.allDone = false // not placed yet
		}
	}
}

// recordFailure notes t as failed once, with the reason in the message.
func (p *planner) recordFailure(t *clustermap.Task) {
	if slices.Contains(p.next.Failures, t.Name) {
		return
	}
	p.next.Failures = append(p.next.Failures, t.Name)
	reason := t.Error
	if reason == "" && t.Health == clustermap.HealthUnhealthy {
		reason = "unhealthy"
	}
	if reason == "" {
		reason = "stopped serving within the monitor window (" + t.State + ")"
	}
	p.next.Message = fmt.Sprintf("task %s failed: %s", t.Name, reason)
}

// tooManyFailures: the failure ratio is past the limit and the failure
// action is not continue.
func (p *planner) tooManyFailures() bool {
	n := len(p.next.Failures)
	return n > 0 && p.replicas > 0 && float64(n)/float64(p.replicas) > p.cfg.MaxFailureRatio &&
		p.cfg.FailureAction != clustermap.ActionContinue
}

// surgeDrained takes the surge tasks out of the endpoints and says whether
// they have all been out for DrainTime (then they are forgotten).
func (p *planner) surgeDrained() bool {
	drained := true
	for _, i := range p.surge {
		t := &p.out[i]
		if !t.Draining {
			t.Draining = true
			p.next.DrainSince[t.Name] = p.now
		}
		if p.now.Sub(p.next.DrainSince[t.Name]) < DrainTime {
			drained = false
		}
	}
	if drained {
		for _, i := range p.surge {
			delete(p.next.DrainSince, p.out[i].Name)
		}
	}
	return drained
}

// complete ends the update (or the rollback st was).
func (p *planner) complete(st *Status) {
	next := p.next
	next.State, next.Message = api.UpdateCompleted, "update completed"
	if st.RollingBack() {
		next.State, next.Message = api.UpdateRollbackCompleted, "rollback completed"
		if st.Message != "" && st.Message != "rollback completed" {
			next.Message = "rollback completed (" + st.Message + ")"
		}
	}
	next.CompletedAt = p.now
	next.ServingSince, next.DrainSince = nil, nil
}

// startNext starts the next slots. Old tasks that do not serve go first,
// at once: replacing them loses nothing. Serving old tasks drain first.
func (p *planner) startNext() {
	free := p.cfg.Parallelism - p.inFlight
	if free <= 0 || p.now.Before(p.next.NextAt) {
		return
	}
	bySlot := func(a, b int) int { return p.out[a].Slot - p.out[b].Slot }
	slices.SortFunc(p.oldIdle, bySlot)
	for _, i := range p.oldIdle {
		if free == 0 {
			break
		}
		retarget(&p.out[i], p.svc)
		free--
	}
	// start-first keeps the serving tasks at the replica count or more;
	// stop-first takes them as they come.
	slices.SortFunc(p.oldServing, bySlot)
	spare := p.servingLive - p.replicas
	// A failure that the update carries on past (continue, or under the
	// ratio) may be a surge task that never serves: then start-first
	// would wait forever for spare capacity, so it goes on stop-first.
	keepCapacity := p.cfg.Order == clustermap.OrderStartFirst && len(p.next.Failures) == 0
	for _, i := range p.oldServing {
		if free == 0 || (keepCapacity && spare <= 0) {
			break
		}
		t := &p.out[i]
		t.Draining = true
		p.next.DrainSince[t.Name] = p.now
		free--
		spare--
	}
}

// failedTask reports whether t failed: its node says failed or unhealthy.
func failedTask(t clustermap.Task) bool {
	return t.State == clustermap.TaskFailed || t.Health == clustermap.HealthUnhealthy
}

// retarget gives t the target image and spec version: its node
// recreates the container.
func retarget(t *clustermap.Task, svc clustermap.Service) {
	t.Image, t.SpecVersion = svc.Image, svc.SpecVersion
	t.State, t.Error, t.Health, t.Draining = clustermap.TaskPending, "", "", false
	t.Run = clustermap.TaskRun{}
}

func cloneTimes(m map[string]time.Time) map[string]time.Time {
	out := make(map[string]time.Time, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
