package scheduler

import (
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func global(name string, constraints ...string) clustermap.Service {
	s := svc(name, 0, constraints...)
	s.Mode = clustermap.ModeGlobal
	return s
}

func TestGlobalService(t *testing.T) {
	a, b, c := node("a", "10.0.1.0/24", "role=edge"), node("b", "10.0.2.0/24", "role=edge"), node("c", "10.0.3.0/24", "role=core")
	agent := global("agent")
	tasks, unplaced := Plan([]clustermap.Node{a, b, c}, []clustermap.Service{agent}, nil)
	equal(t, "one per node", running(tasks), []string{"agent-1@a=10.0.1.2", "agent-2@b=10.0.2.2", "agent-3@c=10.0.3.2"})
	if len(unplaced) != 0 {
		t.Errorf("unplaced: %v", unplaced)
	}

	// A node that joins later gets one; the others keep theirs.
	d := node("d", "10.0.4.0/24", "role=edge")
	tasks, _ = Plan([]clustermap.Node{a, b, c, d}, []clustermap.Service{agent}, reported(tasks, clustermap.TaskRunning))
	equal(t, "after join", running(tasks), []string{"agent-1@a=10.0.1.2", "agent-2@b=10.0.2.2", "agent-3@c=10.0.3.2", "agent-4@d=10.0.4.2"})

	// A drained node's task goes and is not placed elsewhere.
	b.Availability = clustermap.NodeDrain
	tasks, _ = Plan([]clustermap.Node{a, b, c, d}, []clustermap.Service{agent}, reported(tasks, clustermap.TaskRunning))
	equal(t, "drained", running(tasks), []string{"agent-1@a=10.0.1.2", "agent-3@c=10.0.3.2", "agent-4@d=10.0.4.2"})
	equal(t, "drained retiring", shutdown(tasks), []string{"agent-2@b=10.0.2.2"})

	// Its slot is free again once the drained task stopped; a node coming
	// back takes the lowest free slot.
	tasks = reported(tasks, clustermap.TaskShutdown)
	tasks, _ = Plan([]clustermap.Node{a, b, c, d}, []clustermap.Service{agent}, tasks)
	b.Availability = ""
	tasks, _ = Plan([]clustermap.Node{a, b, c, d}, []clustermap.Service{agent}, reported(tasks, clustermap.TaskRunning))
	equal(t, "back", running(tasks), []string{"agent-1@a=10.0.1.2", "agent-2@b=10.0.2.2", "agent-3@c=10.0.3.2", "agent-4@d=10.0.4.2"})

	// Constraints apply: only the edge nodes; c's task goes.
	edge := global("agent", "node.labels.role==edge")
	tasks, _ = Plan([]clustermap.Node{a, b, c, d}, []clustermap.Service{edge}, reported(tasks, clustermap.TaskRunning))
	equal(t, "edge only", running(tasks), []string{"agent-1@a=10.0.1.2", "agent-2@b=10.0.2.2", "agent-4@d=10.0.4.2"})

	// A down node's task is not placed elsewhere either.
	d.Status = clustermap.NodeDown
	tasks, _ = Plan([]clustermap.Node{a, b, c, d}, []clustermap.Service{edge}, reported(tasks, clustermap.TaskRunning))
	equal(t, "down", running(tasks), []string{"agent-1@a=10.0.1.2", "agent-2@b=10.0.2.2"})

	// Reservations: a node without room is named.
	full := withCapacity(node("e", "10.0.5.0/24"), 64<<20, 1)
	tasks, unplaced = Plan([]clustermap.Node{full}, []clustermap.Service{reserving(global("big"), 128<<20, 0)}, nil)
	equal(t, "no room", running(tasks), nil)
	if want := "global service not on every eligible node: 1 eligible nodes without room for the reservation (memory 128 MiB)"; unplaced["big"] != want {
		t.Errorf("unplaced = %q, want %q", unplaced["big"], want)
	}
}
