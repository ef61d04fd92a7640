package cluster

import (
	"maps"
	"slices"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/rollout"
	"github.com/warren-appliance/warren/cluster/scheduler"
)

// schedule recomputes the task list after any change of nodes, services or
// task states: placement and IPs come from the scheduler; the manager adds
// what the scheduler does not know about (per-task images, rolling updates,
// forgetting tasks that finished shutting down).
func schedule(s *state, now time.Time) (unplaced map[string]string) {
	// An update that starts, ends or rolls back changes its surge: place
	// again with the new count (twice at most: a plan ends an update or
	// starts a rollback, whose first step adds no surge task).
	for range 2 {
		current := s.tasks
		// A start-first update runs surge tasks after the last slot.
		services := s.sortedServices()
		surge := map[string]int{}
		for i := range services {
			surge[services[i].Name] = rollout.Surge(services[i], s.services[services[i].Name].Update)
			services[i].Replicas += surge[services[i].Name]
		}
		var tasks []clustermap.Task
		tasks, unplaced = scheduler.Plan(s.sortedNodes(), services, current)
		carryOver(tasks, current, s.services)
		tasks = dropFinished(tasks, s.nodes)
		tasks = rollOut(s, tasks, now)
		rollRevisions(tasks, s)
		s.tasks = tasks
		same := true
		for name, r := range s.services {
			same = same && rollout.Surge(r.Service, r.Update) == surge[name]
		}
		if same {
			break
		}
	}
	return unplaced
}

type taskKey struct{ name, node string }

// carryOver keeps each surviving task's image; new tasks start pending on
// their service's current image.
func carryOver(tasks, current []clustermap.Task, services map[string]serviceRecord) {
	prev := make(map[taskKey]clustermap.Task, len(current))
	for _, t := range current {
		prev[taskKey{t.Name, t.NodeID}] = t
	}
	for i := range tasks {
		t := &tasks[i]
		if p, ok := prev[taskKey{t.Name, t.NodeID}]; ok && p.Image != "" {
			t.Image, t.SpecVersion, t.Revision = p.Image, p.SpecVersion, p.Revision
			continue
		}
		if svc, ok := services[t.Service]; ok && t.Image == "" {
			t.Image, t.SpecVersion = svc.Image, svc.SpecVersion
		}
		if t.State == "" {
			t.State = clustermap.TaskPending
		}
	}
}

// dropFinished forgets tasks meant to stop once their node reported them
// stopped, or once their node is down or gone (nobody will report them).
func dropFinished(tasks []clustermap.Task, nodes map[string]nodeRecord) []clustermap.Task {
	out := tasks[:0]
	for _, t := range tasks {
		if t.DesiredState == clustermap.TaskShutdown {
			n, ok := nodes[t.NodeID]
			if t.State == clustermap.TaskShutdown || !ok || n.Status == clustermap.NodeDown {
				continue
			}
		}
		out = append(out, t)
	}
	return out
}

// rollOut advances each service's rolling update (rollout.Plan) and
// starts the rollback of an update that failed with failure action
// rollback. It updates the services' records in s.
func rollOut(s *state, tasks []clustermap.Task, now time.Time) []clustermap.Task {
	byService := map[string][]int{}
	for i, t := range tasks {
		byService[t.Service] = append(byService[t.Service], i)
	}
	for _, name := range slices.Sorted(maps.Keys(s.services)) {
		r := s.services[name]
		if !r.Update.Active() {
			continue
		}
		idx := byService[name]
		mine := make([]clustermap.Task, len(idx))
		for k, i := range idx {
			mine[k] = tasks[i]
		}
		out, st, outcome := rollout.Plan(r.Service, r.Update, mine, now)
		if outcome == rollout.RollBack {
			st = rollBack(&r, st, st.Message, now)
			out, st, _ = rollout.Plan(r.Service, st, mine, now)
		}
		r.Update = st
		s.services[name] = r
		for k, i := range idx {
			tasks[i] = out[k]
		}
	}
	return tasks
}

// rollBack restores in r what the update st changed (image, health check
// and, when the update changed them, env, command and workload with their
// spec version, from r.Previous, which keeps the failed spec in turn) and
// returns the rollback's status.
func rollBack(r *serviceRecord, st *rollout.Status, reason string, now time.Time) *rollout.Status {
	curHealth, curVersion := r.HealthCheck, r.SpecVersion
	r.Image, r.HealthCheck = st.Previous, st.PreviousHealth
	if st.PreviousSpecVersion != r.SpecVersion && r.Previous != nil {
		failed := clustermap.PreviousSpec{Env: r.Env, Command: r.Command, Workload: r.Workload}
		r.Env, r.Command, r.Workload = r.Previous.Env, r.Previous.Command, r.Previous.Workload
		r.Previous = &failed
		r.SpecVersion = st.PreviousSpecVersion
	}
	return rollout.StartRollback(st, curHealth, curVersion, reason, now)
}

// applyTaskStatus folds a node's report into its tasks. A report of a task
// still running the previous image does not count for the new one.
func applyTaskStatus(tasks []clustermap.Task, nodeID string, reports []api.TaskStatus) {
	byName := make(map[string]api.TaskStatus, len(reports))
	for _, r := range reports {
		byName[r.Name] = r
	}
	for i := range tasks {
		t := &tasks[i]
		if t.NodeID != nodeID {
			continue
		}
		r, ok := byName[t.Name]
		switch {
		case ok && (r.Image == "" || (r.Image == t.Image && r.SpecVersion == t.SpecVersion && (t.Revision == "" || r.Revision == t.Revision))):
			// A report without image (a task removed on the node) is about
			// whatever spec the task had.
			t.State, t.Error, t.Run, t.Health = r.State, r.Error, r.Run, ""
			if r.Health != nil {
				t.Health = r.Health.Status
			}
		case ok:
			// The node has not picked up the new image, spec or revision yet.
			t.State, t.Error, t.Run, t.Health = clustermap.TaskPending, "", clustermap.TaskRun{}, ""
		case t.DesiredState == clustermap.TaskShutdown:
			t.State, t.Error, t.Run = clustermap.TaskShutdown, "", clustermap.TaskRun{} // gone from the node
		case t.State == clustermap.TaskRunning || t.State == clustermap.TaskStarting:
			t.State = clustermap.TaskPending // the node no longer has it
		}
	}
}

// taskStatusChanges reports whether folding reports into the tasks of
// nodeID would change anything.
func taskStatusChanges(tasks []clustermap.Task, nodeID string, reports []api.TaskStatus) bool {
	var mine []clustermap.Task
	for _, t := range tasks {
		if t.NodeID == nodeID {
			mine = append(mine, t)
		}
	}
	before := slices.Clone(mine)
	applyTaskStatus(mine, nodeID, reports)
	return !slices.Equal(before, mine)
}
