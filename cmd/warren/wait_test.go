package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

func task(name, node, image, desired, state, errText string) api.TaskView {
	return api.TaskView{Name: name, Node: node, NodeID: node + "-id", Image: image, DesiredState: desired, State: state, Error: errText}
}

func TestServiceProgress(t *testing.T) {
	v := api.ServiceView{Name: "web", Image: "img:2", Replicas: 3, Tasks: []api.TaskView{
		task("web-1", "manager-1", "img:2", "running", "running", ""),
		task("web-2", "worker-1", "img:2", "running", "failed", "image not found"),
		task("web-3", "worker-2", "img:1", "running", "running", ""),
		task("web-4", "worker-2", "img:2", "shutdown", "running", ""),
	}, Updating: true}
	p := serviceProgress(v)
	if p.done || p.running != 1 || p.want != 3 {
		t.Fatalf("%+v", p)
	}
	want := []string{
		"web-2 on worker-1: failed: image not found",
		"web-3 on worker-2: running (still on img:1)",
		"web-4 on worker-2: stopping (running)",
	}
	if strings.Join(p.stuck, "\n") != strings.Join(want, "\n") {
		t.Fatalf("stuck:\n%s\nwant:\n%s", strings.Join(p.stuck, "\n"), strings.Join(want, "\n"))
	}

	v.Tasks = []api.TaskView{
		task("web-1", "manager-1", "img:2", "running", "running", ""),
		task("web-2", "worker-1", "img:2", "running", "running", ""),
		task("web-3", "worker-2", "img:2", "running", "running", ""),
		task("web-4", "worker-2", "img:2", "shutdown", "shutdown", ""),
	}
	v.Updating = false
	if p := serviceProgress(v); !p.done || p.running != 3 || len(p.stuck) != 0 {
		t.Fatalf("converged service: %+v", p)
	}
	v.Replicas = 4
	if p := serviceProgress(v); p.done || len(p.stuck) != 1 || p.stuck[0] != "web: 1 of 4 replicas not scheduled yet" {
		t.Fatalf("missing replica: %+v", p)
	}
	v.Unplaced = "1 replica(s) unplaced: no node matches node.labels.zone==mars"
	if p := serviceProgress(v); p.done || p.stuck[0] != "web: "+v.Unplaced {
		t.Fatalf("unplaced: %+v", p)
	}
}

func TestRemovalProgress(t *testing.T) {
	p := removalProgress([]api.TaskView{task("web-1", "worker-1", "i", "shutdown", "running", ""), task("web-2", "worker-2", "i", "shutdown", "shutdown", "")})
	if p.done || len(p.stuck) != 1 || p.stuck[0] != "web-1 on worker-1: stopping (running)" || p.running != 1 || p.want != 2 {
		t.Fatalf("%+v", p)
	}
	if p := removalProgress(nil); !p.done {
		t.Fatalf("no tasks left is done: %+v", p)
	}
}

func waitCmd(t *testing.T, args ...string) (*cobra.Command, *bytes.Buffer) {
	cmd := &cobra.Command{}
	addWaitFlags(cmd)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	cmd.SetErr(&buf)
	return cmd, &buf
}

func TestWaitPrintsEachChangeOnceAndStops(t *testing.T) {
	cmd, out := waitCmd(t)
	steps := []api.ServiceView{
		{Name: "web", Image: "i", Replicas: 2, Tasks: []api.TaskView{task("web-1", "w1", "i", "running", "pending", ""), task("web-2", "w2", "i", "running", "pending", "")}},
		{Name: "web", Image: "i", Replicas: 2, Tasks: []api.TaskView{task("web-1", "w1", "i", "running", "running", ""), task("web-2", "w2", "i", "running", "pending", "")}},
		{Name: "web", Image: "i", Replicas: 2, Tasks: []api.TaskView{task("web-1", "w1", "i", "running", "running", ""), task("web-2", "w2", "i", "running", "pending", "")}},
		{Name: "web", Image: "i", Replicas: 2, Tasks: []api.TaskView{task("web-1", "w1", "i", "running", "running", ""), task("web-2", "w2", "i", "running", "running", "")}},
	}
	polls := 0
	err := waitConverged(context.Background(), cmd, "web", func(context.Context) (progress, error) {
		p := serviceProgress(steps[min(polls, len(steps)-1)])
		polls++
		return p, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if polls != 4 {
		t.Errorf("%d polls, want 4 (stop at convergence)", polls)
	}
	want := "web-1 on w1: pending\nweb-2 on w2: pending\nweb-1 on w1: running\nweb-2 on w2: running\n"
	if out.String() != want {
		t.Errorf("progress (not a terminal: plain lines, each change once):\n%s\nwant:\n%s", out, want)
	}
}

func TestWaitTimeoutNamesWhatIsStuck(t *testing.T) {
	cmd, _ := waitCmd(t, "--timeout", "300ms")
	v := api.ServiceView{Name: "web", Image: "i", Replicas: 2, Tasks: []api.TaskView{
		task("web-1", "manager-1", "i", "running", "running", ""),
		task("web-2", "worker-1", "i", "running", "failed", "image not found"),
	}}
	start := time.Now()
	err := waitConverged(context.Background(), cmd, "web", func(context.Context) (progress, error) { return serviceProgress(v), nil })
	if err == nil || !strings.Contains(err.Error(), "web-2 on worker-1: failed: image not found") || strings.Contains(err.Error(), "web-1") {
		t.Fatalf("timeout error %v, want it to name web-2 only", err)
	}
	if time.Since(start) > time.Minute {
		t.Fatal("the timeout did not stop the wait")
	}
}

func TestProgressBar(t *testing.T) {
	if got := progressBar("web", progress{running: 1, want: 2}); got != "web [==========          ] 1/2" {
		t.Fatalf("%q", got)
	}
}

// While a node pulls the image, the task's line shows its bytes so far.
func TestTaskLineShowsPullProgress(t *testing.T) {
	tv := api.TaskView{Name: "app-2", Node: "worker-1", DesiredState: clustermap.TaskRunning, State: clustermap.TaskStarting,
		Image: "reg/app:1", PullDone: 12 << 20, PullTotal: 50 << 20}
	if got, want := taskLine(tv, "reg/app:1"), "app-2 on worker-1: starting: pulling image: 12.0 MiB of 50.0 MiB"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
