package cluster

import (
	"slices"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/scheduler"
)

// schedule recomputes the task list after any change of nodes, services or
// task states: placement and IPs come from the scheduler; the manager adds
// what the scheduler does not know about (per-task images, rolling updates,
// forgetting tasks that finished shutting down).
func schedule(s *state) (unplaced map[string]string) {
	current := s.tasks
	tasks, unplaced := scheduler.Plan(s.sortedNodes(), s.sortedServices(), current)
	carryOver(tasks, current, s.services)
	tasks = dropFinished(tasks, s.nodes)
	rollOut(tasks, s.services)
	rollRevisions(tasks, s)
	s.tasks = tasks
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

// rollOut advances rolling image updates one slot at a time: when every
// task already on the service's image is running, the lowest slot still on
// an old image moves to the new one. A new task that fails stops the
// rollout (the operator fixes the image and updates again).
func rollOut(tasks []clustermap.Task, services map[string]serviceRecord) {
	inFlight := map[string]bool{}
	next := map[string]int{} // service -> index of the lowest old slot
	for i, t := range tasks {
		svc, ok := services[t.Service]
		if !ok || t.DesiredState != clustermap.TaskRunning {
			continue
		}
		if t.Image == svc.Image && t.SpecVersion == svc.SpecVersion {
			// A task that completed (exit 0, not restarted) is settled too.
			if t.State != clustermap.TaskRunning && t.State != clustermap.TaskComplete {
				inFlight[t.Service] = true
			}
			continue
		}
		if j, ok := next[t.Service]; !ok || t.Slot < tasks[j].Slot {
			next[t.Service] = i
		}
	}
	for name, i := range next {
		if inFlight[name] {
			continue
		}
		t := &tasks[i]
		t.Image, t.SpecVersion = services[name].Image, services[name].SpecVersion
		t.State = clustermap.TaskPending
		t.Error = ""
		t.Run = clustermap.TaskRun{}
	}
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
			t.State, t.Error, t.Run = r.State, r.Error, r.Run
		case ok:
			// The node has not picked up the new image, spec or revision yet.
			t.State, t.Error, t.Run = clustermap.TaskPending, "", clustermap.TaskRun{}
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
