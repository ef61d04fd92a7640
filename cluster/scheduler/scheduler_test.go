package scheduler

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func node(id string, block string, labels ...string) clustermap.Node {
	n := clustermap.Node{
		ID: id, Name: "name-" + id, Status: clustermap.NodeReady,
		ContainerBlock: netip.MustParsePrefix(block), Labels: map[string]string{},
	}
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		n.Labels[k] = v
	}
	return n
}

func svc(name string, replicas int, constraints ...string) clustermap.Service {
	return clustermap.Service{Name: name, Image: "busybox", Replicas: replicas, Constraints: constraints}
}

// running returns the desired-running tasks as "name@node=ip", sorted.
func running(tasks []clustermap.Task) []string {
	var out []string
	for _, t := range tasks {
		if t.DesiredState == clustermap.TaskRunning {
			out = append(out, fmt.Sprintf("%s@%s=%s", t.Name, t.NodeID, t.IP))
		}
	}
	sort.Strings(out)
	return out
}

func shutdown(tasks []clustermap.Task) []string {
	var out []string
	for _, t := range tasks {
		if t.DesiredState == clustermap.TaskShutdown {
			out = append(out, fmt.Sprintf("%s@%s=%s", t.Name, t.NodeID, t.IP))
		}
	}
	sort.Strings(out)
	return out
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("%s:\n got  %v\n want %v", what, got, want)
	}
}

// reported marks every task as reported by its node in the given state.
func reported(tasks []clustermap.Task, state string) []clustermap.Task {
	out := make([]clustermap.Task, len(tasks))
	for i, t := range tasks {
		t.State = state
		out[i] = t
	}
	return out
}

func TestPlan(t *testing.T) {
	a := node("a", "10.0.1.0/24", "zone=x")
	b := node("b", "10.0.2.0/24", "zone=y")
	c := node("c", "10.0.3.0/24", "zone=x")
	task := func(name, svc string, slot int, nodeID, ip, desired, state string) clustermap.Task {
		return clustermap.Task{Name: name, Service: svc, Slot: slot, NodeID: nodeID,
			IP: netip.MustParseAddr(ip), DesiredState: desired, State: state}
	}
	downB := b
	downB.Status = clustermap.NodeDown

	tests := []struct {
		name         string
		nodes        []clustermap.Node
		services     []clustermap.Service
		current      []clustermap.Task
		wantRunning  []string
		wantShutdown []string
		wantUnplaced map[string]string
	}{
		{
			name:        "spread over nodes, first IP after the bridge",
			nodes:       []clustermap.Node{a, b, c},
			services:    []clustermap.Service{svc("web", 4)},
			wantRunning: []string{"web-1@a=10.0.1.2", "web-2@b=10.0.2.2", "web-3@c=10.0.3.2", "web-4@a=10.0.1.3"},
		},
		{
			name:     "fewest tasks overall breaks ties between services",
			nodes:    []clustermap.Node{a, b, c},
			services: []clustermap.Service{svc("api", 2), svc("web", 1)},
			// api takes a and b; web goes to c, which has no task yet.
			wantRunning: []string{"api-1@a=10.0.1.2", "api-2@b=10.0.2.2", "web-1@c=10.0.3.2"},
		},
		{
			name:        "label constraint",
			nodes:       []clustermap.Node{a, b, c},
			services:    []clustermap.Service{svc("web", 3, "node.labels.zone==x")},
			wantRunning: []string{"web-1@a=10.0.1.2", "web-2@c=10.0.3.2", "web-3@a=10.0.1.3"},
		},
		{
			name:        "id, name and != constraints",
			nodes:       []clustermap.Node{a, b, c},
			services:    []clustermap.Service{svc("db", 2, "node.id!=a", "node.name!=name-c"), svc("cache", 1, "node.name==name-c")},
			wantRunning: []string{"cache-1@c=10.0.3.2", "db-1@b=10.0.2.2", "db-2@b=10.0.2.3"},
		},
		{
			name:     "keeps valid placements and their IPs",
			nodes:    []clustermap.Node{a, b, c},
			services: []clustermap.Service{svc("web", 3)},
			current: []clustermap.Task{
				task("web-1", "web", 1, "c", "10.0.3.9", "running", "running"),
				task("web-2", "web", 2, "c", "10.0.3.7", "running", "running"),
			},
			wantRunning: []string{"web-1@c=10.0.3.9", "web-2@c=10.0.3.7", "web-3@a=10.0.1.2"},
		},
		{
			name:     "tasks of a down node are rescheduled under the same name",
			nodes:    []clustermap.Node{a, downB, c},
			services: []clustermap.Service{svc("web", 3)},
			current: []clustermap.Task{
				task("web-1", "web", 1, "a", "10.0.1.2", "running", "running"),
				task("web-2", "web", 2, "b", "10.0.2.2", "running", "running"),
				task("web-3", "web", 3, "c", "10.0.3.2", "running", "running"),
			},
			wantRunning: []string{"web-1@a=10.0.1.2", "web-2@a=10.0.1.3", "web-3@c=10.0.3.2"},
		},
		{
			name:     "tasks of a gone node are rescheduled",
			nodes:    []clustermap.Node{a},
			services: []clustermap.Service{svc("web", 1)},
			current: []clustermap.Task{
				task("web-1", "web", 1, "zz", "10.0.9.2", "running", "running"),
			},
			wantRunning: []string{"web-1@a=10.0.1.2"},
		},
		{
			name:     "scale down removes the highest slots and keeps their IPs reserved",
			nodes:    []clustermap.Node{a},
			services: []clustermap.Service{svc("web", 1), svc("api", 1)},
			current: []clustermap.Task{
				task("web-1", "web", 1, "a", "10.0.1.2", "running", "running"),
				task("web-2", "web", 2, "a", "10.0.1.3", "running", "running"),
				task("web-3", "web", 3, "a", "10.0.1.4", "running", "running"),
			},
			// api-1 must not take .3 or .4 while web-2/3 still hold them.
			wantRunning:  []string{"api-1@a=10.0.1.5", "web-1@a=10.0.1.2"},
			wantShutdown: []string{"web-2@a=10.0.1.3", "web-3@a=10.0.1.4"},
		},
		{
			name:     "a shut-down task reported so releases its IP",
			nodes:    []clustermap.Node{a},
			services: []clustermap.Service{svc("api", 1)},
			current: []clustermap.Task{
				task("web-1", "web", 1, "a", "10.0.1.2", "shutdown", "shutdown"),
				task("web-2", "web", 2, "a", "10.0.1.3", "shutdown", "running"),
			},
			wantRunning:  []string{"api-1@a=10.0.1.2"},
			wantShutdown: []string{"web-2@a=10.0.1.3"},
		},
		{
			name:     "a removed service's tasks shut down; down node releases at once",
			nodes:    []clustermap.Node{a, downB},
			services: nil,
			current: []clustermap.Task{
				task("web-1", "web", 1, "a", "10.0.1.2", "running", "running"),
				task("web-2", "web", 2, "b", "10.0.2.2", "running", "running"),
			},
			wantShutdown: []string{"web-1@a=10.0.1.2"},
		},
		{
			name:     "scaling back up revives a retiring slot in place",
			nodes:    []clustermap.Node{a, b},
			services: []clustermap.Service{svc("web", 2)},
			current: []clustermap.Task{
				task("web-1", "web", 1, "a", "10.0.1.2", "running", "running"),
				task("web-2", "web", 2, "a", "10.0.1.3", "shutdown", "running"),
			},
			wantRunning: []string{"web-1@a=10.0.1.2", "web-2@a=10.0.1.3"},
		},
		{
			name:     "constraint change moves a task, the old one shuts down",
			nodes:    []clustermap.Node{a, b},
			services: []clustermap.Service{svc("web", 1, "node.labels.zone==y")},
			current: []clustermap.Task{
				task("web-1", "web", 1, "a", "10.0.1.2", "running", "running"),
			},
			wantRunning:  []string{"web-1@b=10.0.2.2"},
			wantShutdown: []string{"web-1@a=10.0.1.2"},
		},
		{
			name:     "an IP outside the node's block is replaced",
			nodes:    []clustermap.Node{a},
			services: []clustermap.Service{svc("web", 2)},
			current: []clustermap.Task{
				task("web-1", "web", 1, "a", "10.0.7.2", "running", "running"),
				task("web-2", "web", 2, "a", "10.0.1.1", "running", "running"), // the bridge's
			},
			wantRunning: []string{"web-1@a=10.0.1.2", "web-2@a=10.0.1.3"},
		},
		{
			name:     "fewest tasks of the service beats fewest tasks overall",
			nodes:    []clustermap.Node{a, b},
			services: []clustermap.Service{svc("api", 2), svc("web", 2)},
			current: []clustermap.Task{
				task("api-1", "api", 1, "a", "10.0.1.2", "running", "running"),
				task("api-2", "api", 2, "a", "10.0.1.3", "running", "running"),
			},
			// web-1 goes to b (no tasks); web-2 to a, which has no web task
			// although it runs more tasks overall.
			wantRunning: []string{"api-1@a=10.0.1.2", "api-2@a=10.0.1.3", "web-1@b=10.0.2.2", "web-2@a=10.0.1.4"},
		},
		{
			name: "a node neither ready nor down keeps its tasks but gets no new ones",
			nodes: []clustermap.Node{a, func() clustermap.Node {
				n := b
				n.Status = "draining"
				return n
			}()},
			services: []clustermap.Service{svc("web", 2)},
			current: []clustermap.Task{
				task("web-1", "web", 1, "b", "10.0.2.2", "running", "running"),
			},
			wantRunning: []string{"web-1@b=10.0.2.2", "web-2@a=10.0.1.2"},
		},
		{
			name:     "a duplicate of a slot is shut down",
			nodes:    []clustermap.Node{a, b},
			services: []clustermap.Service{svc("web", 1)},
			current: []clustermap.Task{
				task("web-1", "web", 1, "a", "10.0.1.2", "running", "running"),
				task("web-1", "web", 1, "b", "10.0.2.2", "running", "running"),
			},
			wantRunning:  []string{"web-1@a=10.0.1.2"},
			wantShutdown: []string{"web-1@b=10.0.2.2"},
		},
		{
			name:         "negative replicas mean none",
			nodes:        []clustermap.Node{a},
			services:     []clustermap.Service{svc("web", -1)},
			current:      []clustermap.Task{task("web-1", "web", 1, "a", "10.0.1.2", "running", "running")},
			wantShutdown: []string{"web-1@a=10.0.1.2"},
		},
		{
			name:         "unplaceable: constraint matches no node",
			nodes:        []clustermap.Node{a, downB},
			services:     []clustermap.Service{svc("web", 2, "node.labels.zone==z")},
			wantUnplaced: map[string]string{"web": "2 of 2 replicas unplaced: no eligible node (2 nodes: 1 not ready, 1 not matching node.labels.zone==z)"},
		},
		{
			name:         "unplaceable: no nodes",
			services:     []clustermap.Service{svc("web", 1)},
			wantUnplaced: map[string]string{"web": "1 of 1 replicas unplaced: no nodes in the cluster"},
		},
		{
			name:         "unplaceable: bad constraint keeps existing tasks",
			nodes:        []clustermap.Node{a},
			services:     []clustermap.Service{svc("web", 2, "node.zone==x")},
			current:      []clustermap.Task{task("web-1", "web", 1, "a", "10.0.1.2", "running", "running")},
			wantRunning:  []string{"web-1@a=10.0.1.2"},
			wantUnplaced: map[string]string{"web": `1 of 2 replicas unplaced: bad constraint: node.zone==x: unknown field "node.zone" (want node.id, node.name or node.labels.KEY)`},
		},
		{
			name:     "a full block takes no more tasks",
			nodes:    []clustermap.Node{node("t", "10.0.5.0/29")}, // .2 .. .6
			services: []clustermap.Service{svc("web", 6)},
			wantRunning: []string{"web-1@t=10.0.5.2", "web-2@t=10.0.5.3", "web-3@t=10.0.5.4",
				"web-4@t=10.0.5.5", "web-5@t=10.0.5.6"},
			wantUnplaced: map[string]string{"web": "1 of 6 replicas unplaced: no eligible node (1 nodes: 1 without a free IP in their container block)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tasks, unplaced := Plan(tt.nodes, tt.services, tt.current)
			equal(t, "running", running(tasks), tt.wantRunning)
			equal(t, "shutdown", shutdown(tasks), tt.wantShutdown)
			if fmt.Sprint(unplaced) != fmt.Sprint(tt.wantUnplaced) && !(len(unplaced) == 0 && len(tt.wantUnplaced) == 0) {
				t.Errorf("unplaced:\n got  %v\n want %v", unplaced, tt.wantUnplaced)
			}
			for _, task := range tasks {
				if task.Name != TaskName(task.Service, task.Slot) {
					t.Errorf("task %q does not match its slot %s/%d", task.Name, task.Service, task.Slot)
				}
			}
		})
	}
}

// TestPlanIsStable checks that planning the result again changes nothing:
// the manager may call Plan on every event.
func TestPlanIsStable(t *testing.T) {
	nodes := []clustermap.Node{node("a", "10.0.1.0/24"), node("b", "10.0.2.0/24"), node("c", "10.0.3.0/24")}
	services := []clustermap.Service{svc("web", 5), svc("api", 2, "node.id!=b"), svc("db", 1)}
	first, _ := Plan(nodes, services, nil)
	second, _ := Plan(nodes, services, reported(first, clustermap.TaskRunning))
	equal(t, "replan", running(second), running(first))
	if len(second) != len(first) {
		t.Fatalf("replan changed the task count: %d -> %d", len(first), len(second))
	}
	seen := map[netip.Addr]string{}
	for _, task := range second {
		if other, dup := seen[task.IP]; dup {
			t.Errorf("IP %s given to %s and %s", task.IP, other, task.Name)
		}
		seen[task.IP] = task.Name
	}
}

// TestPlanScaleCycle walks a service through scale up, scale down (the
// node then reports the removed tasks shut down) and up again.
func TestPlanScaleCycle(t *testing.T) {
	nodes := []clustermap.Node{node("a", "10.0.1.0/24"), node("b", "10.0.2.0/24")}
	tasks, _ := Plan(nodes, []clustermap.Service{svc("web", 4)}, nil)
	tasks = reported(tasks, clustermap.TaskRunning)
	equal(t, "up", running(tasks), []string{"web-1@a=10.0.1.2", "web-2@b=10.0.2.2", "web-3@a=10.0.1.3", "web-4@b=10.0.2.3"})

	tasks, _ = Plan(nodes, []clustermap.Service{svc("web", 2)}, tasks)
	equal(t, "down", running(tasks), []string{"web-1@a=10.0.1.2", "web-2@b=10.0.2.2"})
	equal(t, "retiring", shutdown(tasks), []string{"web-3@a=10.0.1.3", "web-4@b=10.0.2.3"})

	// The nodes report the retired tasks gone: they leave the list.
	tasks, _ = Plan(nodes, []clustermap.Service{svc("web", 2)}, reported(tasks, clustermap.TaskShutdown))
	if len(tasks) != 2 {
		t.Fatalf("want 2 tasks after shutdown was reported, got %v", running(tasks))
	}
	tasks, _ = Plan(nodes, []clustermap.Service{svc("web", 3)}, tasks)
	equal(t, "up again", running(tasks), []string{"web-1@a=10.0.1.2", "web-2@b=10.0.2.2", "web-3@a=10.0.1.3"})
}

func TestParseConstraint(t *testing.T) {
	good := []struct {
		expr string
		want Constraint
	}{
		{"node.id==n1", Constraint{Field: "node.id", Value: "n1", Equal: true}},
		{"node.name != pi-4", Constraint{Field: "node.name", Value: "pi-4"}},
		{"node.labels.zone==edge", Constraint{Field: "node.labels", Label: "zone", Value: "edge", Equal: true}},
		{"node.labels.hw.model!=pi0", Constraint{Field: "node.labels", Label: "hw.model", Value: "pi0"}},
	}
	for _, g := range good {
		got, err := ParseConstraint(g.expr)
		if err != nil {
			t.Errorf("%s: %v", g.expr, err)
			continue
		}
		if got != g.want {
			t.Errorf("%s: got %+v, want %+v", g.expr, got, g.want)
		}
		if again, _ := ParseConstraint(got.String()); again != got {
			t.Errorf("%s: String() %q does not parse back", g.expr, got.String())
		}
	}
	bad := map[string]string{
		"node.zone==x":      `node.zone==x: unknown field "node.zone" (want node.id, node.name or node.labels.KEY)`,
		"node.id=x":         "node.id=x: no operator (want == or !=)",
		"node.id==":         "node.id==: empty value",
		"node.labels.==x":   "node.labels.==x: empty label key",
		"node.id==a==b":     "node.id==a==b: more than one operator",
		"engine.labels.a!=": "engine.labels.a!=: empty value",
	}
	for expr, want := range bad {
		_, err := ParseConstraint(expr)
		if err == nil || err.Error() != want {
			t.Errorf("%s: got error %v, want %q", expr, err, want)
		}
	}
}

func TestConstraintMissingLabel(t *testing.T) {
	n := node("a", "10.0.1.0/24")
	eq, _ := ParseConstraint("node.labels.gpu==true")
	ne, _ := ParseConstraint("node.labels.gpu!=true")
	if eq.Matches(n) || !ne.Matches(n) {
		t.Fatal("a node without the label must fail == and pass !=")
	}
}

// BenchmarkPlan plans 1000 tasks (200 services x 5) over 50 nodes from
// scratch, then re-plans the result (the manager's steady state).
func BenchmarkPlan(b *testing.B) {
	var nodes []clustermap.Node
	for i := 0; i < 50; i++ {
		nodes = append(nodes, node(fmt.Sprintf("n%02d", i), fmt.Sprintf("10.0.%d.0/24", i+1)))
	}
	var services []clustermap.Service
	for i := 0; i < 200; i++ {
		services = append(services, svc(fmt.Sprintf("s%03d", i), 5))
	}
	first, _ := Plan(nodes, services, nil)
	current := reported(first, clustermap.TaskRunning)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		Plan(nodes, services, nil)
	}
	fresh := time.Since(start)
	start = time.Now()
	for i := 0; i < b.N; i++ {
		Plan(nodes, services, current)
	}
	replan := time.Since(start)
	b.ReportMetric(float64(fresh.Microseconds())/float64(b.N)/1000, "ms/plan-1000-new")
	b.ReportMetric(float64(replan.Microseconds())/float64(b.N)/1000, "ms/replan-1000")
}

// A drained node's tasks are retired and placed on the other nodes, and it
// gets no new task; activating it again lets new tasks go there.
func TestPlanDrainMovesTasksAway(t *testing.T) {
	a, b := node("a", "10.0.1.0/24"), node("b", "10.0.2.0/24")
	services := []clustermap.Service{svc("web", 2)}
	tasks, _ := Plan([]clustermap.Node{a, b}, services, nil)
	tasks = reported(tasks, clustermap.TaskRunning)
	equal(t, "before the drain", running(tasks), []string{"web-1@a=10.0.1.2", "web-2@b=10.0.2.2"})

	b.Availability = clustermap.NodeDrain
	tasks, unplaced := Plan([]clustermap.Node{a, b}, services, tasks)
	equal(t, "running after draining b", running(tasks), []string{"web-1@a=10.0.1.2", "web-2@a=10.0.1.3"})
	equal(t, "retiring on b", shutdown(tasks), []string{"web-2@b=10.0.2.2"})
	if len(unplaced) != 0 {
		t.Errorf("unplaced: %v", unplaced)
	}
	// Nothing new goes to a drained node, and the reason says so.
	tasks, unplaced = Plan([]clustermap.Node{b}, []clustermap.Service{svc("solo", 1)}, nil)
	if len(running(tasks)) != 0 || !strings.Contains(unplaced["solo"], "1 drained") {
		t.Errorf("a drained node took a new task: %v %v", running(tasks), unplaced)
	}
	b.Availability = ""
	tasks, _ = Plan([]clustermap.Node{b}, []clustermap.Service{svc("solo", 1)}, nil)
	equal(t, "after activate", running(tasks), []string{"solo-1@b=10.0.2.2"})
}
