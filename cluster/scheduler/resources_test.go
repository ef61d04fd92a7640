package scheduler

import (
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func withCapacity(n clustermap.Node, mem int64, cpus int64) clustermap.Node {
	n.Capacity = clustermap.ResourceAmounts{MemoryBytes: mem, NanoCPUs: cpus * 1e9}
	return n
}

func reserving(s clustermap.Service, mem, nanoCPUs int64) clustermap.Service {
	s.Resources = &clustermap.Resources{Reservations: clustermap.ResourceAmounts{MemoryBytes: mem, NanoCPUs: nanoCPUs}}
	return s
}

func TestReservationsFit(t *testing.T) {
	a := withCapacity(node("a", "10.0.1.0/24"), 512<<20, 4)
	b := withCapacity(node("b", "10.0.2.0/24"), 256<<20, 1)
	nodes := []clustermap.Node{a, b}

	// 200 MiB each: a takes two (400 of 512), b one (200 of 256); the
	// fourth fits nowhere and is unplaced with the reason.
	db := reserving(svc("db", 4), 200<<20, 0)
	tasks, unplaced := Plan(nodes, []clustermap.Service{db}, nil)
	equal(t, "placed", running(tasks), []string{"db-1@a=10.0.1.2", "db-2@b=10.0.2.2", "db-3@a=10.0.1.3"})
	want := "1 of 4 replicas unplaced: no eligible node (2 nodes: 2 without room for the reservation (memory 200 MiB))"
	if unplaced["db"] != want {
		t.Errorf("unplaced = %q\nwant       %q", unplaced["db"], want)
	}

	// Kept tasks count: scaling up next to them uses what is left.
	tasks, _ = Plan(nodes, []clustermap.Service{db, reserving(svc("cache", 1), 100<<20, 0)}, reported(tasks, clustermap.TaskRunning))
	equal(t, "with cache", running(tasks), []string{"cache-1@a=10.0.1.4", "db-1@a=10.0.1.2", "db-2@b=10.0.2.2", "db-3@a=10.0.1.3"})

	// CPU: 0.75 CPU per task, b has 1 CPU and a 4: five tasks fit.
	cpu := reserving(svc("cpu", 6), 0, 75e7)
	tasks, unplaced = Plan(nodes, []clustermap.Service{cpu}, nil)
	if n := len(running(tasks)); n != 6 {
		t.Errorf("cpu: %d tasks placed, want 6 (5 on a, 1 on b)", n)
	}
	if unplaced["cpu"] != "" {
		t.Errorf("cpu unplaced: %s", unplaced["cpu"])
	}
	cpu.Replicas = 7
	_, unplaced = Plan(nodes, []clustermap.Service{cpu}, nil)
	if !strings.Contains(unplaced["cpu"], "1 of 7 replicas unplaced") || !strings.Contains(unplaced["cpu"], "cpu 0.75") {
		t.Errorf("cpu unplaced = %q", unplaced["cpu"])
	}

	// A node that reported no capacity takes no reserving task, and any
	// task without reservations.
	c := node("c", "10.0.3.0/24")
	tasks, unplaced = Plan([]clustermap.Node{c}, []clustermap.Service{reserving(svc("r", 1), 1<<20, 0), svc("plain", 1)}, nil)
	equal(t, "no capacity", running(tasks), []string{"plain-1@c=10.0.3.2"})
	if !strings.Contains(unplaced["r"], "without room for the reservation (memory 1 MiB)") {
		t.Errorf("r unplaced = %q", unplaced["r"])
	}

	// A retiring task (scaled down, still stopping) holds its reservation
	// until its node reports it stopped.
	one := withCapacity(node("a", "10.0.1.0/24"), 300<<20, 1)
	big := reserving(svc("big", 1), 200<<20, 0)
	tasks, _ = Plan([]clustermap.Node{one}, []clustermap.Service{big}, nil)
	tasks = reported(tasks, clustermap.TaskRunning)
	big.Replicas = 0
	other := reserving(svc("other", 1), 200<<20, 0)
	tasks, unplaced = Plan([]clustermap.Node{one}, []clustermap.Service{big, other}, tasks)
	equal(t, "retiring holds", running(tasks), nil)
	if unplaced["other"] == "" {
		t.Error("other placed while the scaled-down task still holds the memory")
	}
	tasks = reported(tasks, clustermap.TaskShutdown)
	tasks, _ = Plan([]clustermap.Node{one}, []clustermap.Service{big, other}, tasks)
	equal(t, "after it stopped", running(tasks), []string{"other-1@a=10.0.1.2"})
}
