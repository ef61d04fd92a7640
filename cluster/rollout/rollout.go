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
	cfg := Config(svc, st)
	replicas := svc.Replicas
	if svc.IsGlobal() {
		// One task per eligible node, no surge: every task is a slot.
		cfg.Order = clustermap.OrderStopFirst
		replicas = 0
		for _, t := range out {
			if t.DesiredState == clustermap.TaskRunning {
				replicas++
			}
		}
	}

	var (
		inFlight, servingLive int
		oldServing, oldIdle   []int // indexes of old-image tasks
		surge                 []int
		allDone               = true
	)
	regular := map[int]bool{}
	for i := range out {
		t := &out[i]
		if t.DesiredState != clustermap.TaskRunning {
			continue
		}
		isSurge := !svc.IsGlobal() && t.Slot > replicas
		if isSurge {
			surge = append(surge, i)
		} else {
			regular[t.Slot] = true
		}
		if t.Serves() {
			servingLive++
		}
		if !OnTarget(svc, *t) {
			allDone = false
			switch {
			case t.Draining:
				inFlight++
				if now.Sub(next.DrainSince[t.Name]) >= DrainTime {
					retarget(t, svc)
					delete(next.DrainSince, t.Name)
				}
			case t.Serves():
				oldServing = append(oldServing, i)
			default:
				oldIdle = append(oldIdle, i)
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
				servingLive++
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
				allDone = false
			}
		case t.State == clustermap.TaskComplete:
			// Exited 0 and its restart condition let it stay stopped:
			// settled, as a serving task past its monitor window.
			delete(next.ServingSince, t.Name)
		case failedTask(*t) || (seen && now.Sub(since) < cfg.Monitor):
			if cfg.FailureAction != clustermap.ActionContinue {
				allDone = false // with continue, a failed slot counts as updated
			}
			if !slices.Contains(next.Failures, t.Name) {
				next.Failures = append(next.Failures, t.Name)
				reason := t.Error
				if reason == "" && t.Health == clustermap.HealthUnhealthy {
					reason = "unhealthy"
				}
				if reason == "" {
					reason = "stopped serving within the monitor window (" + t.State + ")"
				}
				next.Message = fmt.Sprintf("task %s failed: %s", t.Name, reason)
			}
			// A failed slot no longer holds up the next ones (its node
			// restarts it); the failure ratio decides what happens.
			delete(next.ServingSince, t.Name)
		default:
			allDone = false
			if !isSurge {
				inFlight++
			}
		}
	}
	for slot := 1; !svc.IsGlobal() && slot <= replicas; slot++ {
		if !regular[slot] {
			allDone = false // not placed yet
		}
	}

	// Too many failures: act.
	if len(next.Failures) > 0 && replicas > 0 && float64(len(next.Failures))/float64(replicas) > cfg.MaxFailureRatio &&
		cfg.FailureAction != clustermap.ActionContinue {
		reason := next.Message
		if cfg.FailureAction == clustermap.ActionRollback && !st.RollingBack() {
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

	if allDone {
		// Surge tasks leave the endpoints before they are retired.
		drained := true
		for _, i := range surge {
			t := &out[i]
			if !t.Draining {
				t.Draining = true
				next.DrainSince[t.Name] = now
			}
			if now.Sub(next.DrainSince[t.Name]) < DrainTime {
				drained = false
			}
		}
		if !drained {
			return out, &next, Continue
		}
		for _, i := range surge {
			delete(next.DrainSince, out[i].Name)
		}
		next.State, next.Message = api.UpdateCompleted, "update completed"
		if st.RollingBack() {
			next.State, next.Message = api.UpdateRollbackCompleted, "rollback completed"
			if st.Message != "" && st.Message != "rollback completed" {
				next.Message = "rollback completed (" + st.Message + ")"
			}
		}
		next.CompletedAt = now
		next.ServingSince, next.DrainSince = nil, nil
		return out, &next, Continue
	}

	// Start the next slots. Old tasks that do not serve go first, at
	// once: replacing them loses nothing.
	free := cfg.Parallelism - inFlight
	if free <= 0 || now.Before(next.NextAt) {
		return out, &next, Continue
	}
	slices.SortFunc(oldIdle, func(a, b int) int { return out[a].Slot - out[b].Slot })
	for _, i := range oldIdle {
		if free == 0 {
			break
		}
		retarget(&out[i], svc)
		free--
	}
	// Serving old tasks drain first. start-first keeps the serving tasks
	// at the replica count or more; stop-first takes them as they come.
	slices.SortFunc(oldServing, func(a, b int) int { return out[a].Slot - out[b].Slot })
	spare := servingLive - replicas
	// A failure that the update carries on past (continue, or under the
	// ratio) may be a surge task that never serves: then start-first
	// would wait forever for spare capacity, so it goes on stop-first.
	keepCapacity := cfg.Order == clustermap.OrderStartFirst && len(next.Failures) == 0
	for _, i := range oldServing {
		if free == 0 || (keepCapacity && spare <= 0) {
			break
		}
		t := &out[i]
		t.Draining = true
		next.DrainSince[t.Name] = now
		free--
		spare--
	}
	return out, &next, Continue
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
