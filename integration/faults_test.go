package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/internal/testimage"
)

const testImageV2 = "warren.test/busybox:v2"

// stoppableHTTPD serves the task's name like httpdCommand, but its shell
// (PID 1 of the container) exits on SIGTERM: a PID 1 without a handler
// ignores it, and each stop would wait out containerd's kill grace period.
var stoppableHTTPD = []string{"--", "sh", "-c", "mkdir -p /www && hostname > /www/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"}

// rolloutView is the part of `service inspect --json` a rolling update shows.
type rolloutView struct {
	Image    string `json:"image"`
	Updating bool   `json:"updating"`
	Tasks    []struct {
		Name  string `json:"name"`
		Image string `json:"image"`
		State string `json:"state"`
	} `json:"tasks"`
}

// serviceNames runs `warren service ls --json` on the manager.
func serviceNames(ctx context.Context, c *lab.Cluster) (map[string]bool, error) {
	out, err := c.Manager.Exec(ctx, "warren", "service", "ls", "--json")
	if err != nil {
		return nil, err
	}
	var list []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("service ls --json: %w: %s", err, out)
	}
	names := map[string]bool{}
	for _, s := range list {
		names[s.Name] = true
	}
	return names, nil
}

// restartManager kills the manager's appliance with sig, starts it again and
// waits until every node is ready.
func restartManager(t *testing.T, c *lab.Cluster, sig syscall.Signal) {
	t.Helper()
	if err := c.Manager.RestartAppliance(sig); err != nil {
		t.Fatal(err)
	}
	waitApplianceUp(t, c.Manager, "")
	waitNodesReady(t, c, 90*time.Second)
}

// vipAnswers waits until the VIP answers from every node.
func vipAnswers(t *testing.T, c *lab.Cluster, vip string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	for _, n := range c.Nodes() {
		eventually(t, time.Minute, n.Name+" reaches "+vip, func() error {
			_, err := n.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+vip+"/")
			return err
		})
	}
}

// Issue "integration": crashes of the appliance, of the manager in the
// middle of a rolling update and of a burst of writes, a full state
// filesystem, and a worker lost for good. One cluster; the manager's state
// directory is a small tmpfs so it can be filled.
func TestFaultsCrashesFullDiskPowerCut(t *testing.T) {
	l := newLab(t)
	v2, err := testimage.BusyboxTarball(t.TempDir(), testImageV2)
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, l, lab.ClusterOptions{
		Workers:      2,
		Images:       []string{imageTarball(t), v2},
		ClusterExtra: "node_down_after = \"5s\"\n",
	})
	ctx := ctxFor(t, 10*time.Minute)
	m := c.Manager
	if err := m.StopAppliance(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := m.StateOnTmpfs(ctx, 64); err != nil {
		t.Fatal(err)
	}
	if err := m.StartAppliance("warren-appliance"); err != nil {
		t.Fatal(err)
	}
	waitNodesReady(t, c, 90*time.Second)
	nodesBefore, err := c.NodeList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	createService(t, c, "web", append([]string{"--replicas", "3"}, stoppableHTTPD...)...)
	web := waitRunning(t, c, "web", 3)
	vipAnswers(t, c, web.VIP)

	// Issue "integration": kill -9 of the appliance, on the manager and on
	// a worker; each comes back to a whole cluster.
	t.Run("kill -9 appliance", func(t *testing.T) {
		taskPIDs := func() string {
			var sb strings.Builder
			for _, n := range c.Nodes() {
				tasks, err := ctrTasks(ctx, n)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&sb, "%s: %v\n", n.Name, tasks)
			}
			return sb.String()
		}
		before := taskPIDs()
		for i, n := range []*lab.Node{m, c.Workers[0]} {
			if err := n.RestartAppliance(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			// The new process is up and serving, not just the old
			// heartbeat still fresh at the manager.
			waitApplianceUp(t, n, web.VIP)
			waitNodesReady(t, c, 90*time.Second)
			waitRunning(t, c, "web", 3)
			vipAnswers(t, c, web.VIP)
			// A manager crash restarts no task anywhere. (A worker's may:
			// back later than node_down_after, its tasks move.)
			if i == 0 {
				if after := taskPIDs(); after != before {
					t.Errorf("task processes changed across a manager crash:\nbefore\n%safter\n%s", before, after)
				}
			}
		}
	})

	// Issue "integration": the manager crashes during a rolling update and
	// finishes it once it is back.
	t.Run("manager crash during rolling update", func(t *testing.T) {
		out, err := m.Exec(ctx, "warren", "service", "update", "web", "--image", "bad image!")
		if err == nil || !strings.Contains(out, "bad image!") {
			t.Errorf("update to an invalid image ref: want an error quoting it, got %v:\n%s", err, out)
		}
		if out, err := m.Exec(ctx, "warren", "service", "update", "--detach", "web", "--image", testImageV2); err != nil {
			t.Fatalf("service update: %v\n%s", err, out)
		}
		// Crash once the rollout has started on some task but not finished.
		eventually(t, 90*time.Second, "rolling update under way", func() error {
			var v rolloutView
			out, err := m.Exec(ctx, "warren", "service", "inspect", "web", "--json")
			if err != nil {
				return err
			}
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				return err
			}
			if !v.Updating {
				return fmt.Errorf("not updating: %+v", v)
			}
			return nil
		})
		restartManager(t, c, syscall.SIGKILL)
		back := time.Now()
		err = lab.Poll(ctxFor(t, 2*time.Minute), 200*time.Millisecond, func() error {
			var v rolloutView
			out, err := m.Exec(ctx, "warren", "service", "inspect", "web", "--json")
			if err != nil {
				return err
			}
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				return err
			}
			if v.Updating || v.Image != testImageV2 || len(v.Tasks) != 3 {
				return fmt.Errorf("rollout not done: %+v", v)
			}
			for _, task := range v.Tasks {
				if task.Image != testImageV2 || task.State != "running" {
					return fmt.Errorf("task %s: %s %s", task.Name, task.Image, task.State)
				}
			}
			return nil
		})
		if err != nil {
			stuck, _ := inspect(ctx, m, "web")
			t.Fatalf("every task of web runs %s: %v\ntasks: %+v", testImageV2, err, stuck.Tasks)
		}
		t.Logf("rollout finished %s after the manager was back", time.Since(back).Round(time.Second))
		web = waitRunning(t, c, "web", 3)
		// The nodes run the new image, not just the manager's word for it.
		for _, task := range web.Tasks {
			n := nodeByName(c, task.Node)
			out, err := n.Exec(ctx, "ctr", "-n", "warren", "containers", "info", task.Name)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, `"Image": "`+testImageV2+`"`) {
				t.Errorf("%s on %s: container is not from %s:\n%s", task.Name, n.Name, testImageV2, out)
			}
		}
		vipAnswers(t, c, web.VIP)
	})

	// Issue "integration": a power cut (kill -9) during a burst of service
	// creates loses none the manager acknowledged.
	acked := map[string]bool{"web": true}
	t.Run("power cut during writes", func(t *testing.T) {
		var mu sync.Mutex
		var failures []string // what a user saw while the manager was down
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for s := 0; s < 3; s++ {
			wg.Add(1)
			go func(s int) {
				defer wg.Done()
				for i := 1; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					name := fmt.Sprintf("burst-%d-%d", s, i)
					out, err := m.Exec(ctx, "warren", "service", "create", name, "--detach", "--image", testImage, "--replicas", "0")
					mu.Lock()
					if err == nil {
						acked[name] = true
					} else {
						failures = append(failures, trim(out))
					}
					mu.Unlock()
				}
			}(s)
		}
		eventually(t, time.Minute, "a dozen creates acknowledged", func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(acked) < 13 {
				return fmt.Errorf("%d acknowledged", len(acked)-1)
			}
			return nil
		})
		if err := m.RestartAppliance(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()
		waitApplianceUp(t, m, "")
		waitNodesReady(t, c, 90*time.Second)
		got, err := serviceNames(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		for name := range acked {
			if !got[name] {
				t.Errorf("service %s was acknowledged before the crash and is gone after it", name)
			}
		}
		t.Logf("%d creates acknowledged, %d services after the crash; %d creates failed", len(acked), len(got), len(failures))
		for _, f := range failures {
			if !strings.Contains(f, "cannot reach the warren daemon") {
				t.Errorf("a create during the crash failed with an unclear message: %s", f)
			}
		}
		if len(failures) > 0 {
			t.Logf("a create during the crash says: %s", failures[0])
		}
		if log := m.ApplianceLog(); strings.Contains(log, "panic") {
			t.Errorf("manager log shows a panic")
		}
		waitRunning(t, c, "web", 3)
	})

	// Issue "integration": with the manager's state filesystem full, a
	// write fails with an error that says so; once there is room again and
	// the manager restarts, nothing stored before is lost.
	t.Run("full state directory", func(t *testing.T) {
		// dd stops with ENOSPC: that is the point.
		m.Sh(ctx, "dd if=/dev/zero of=/var/lib/warren/filler bs=1M 2>/dev/null")
		if out, err := m.Sh(ctx, "df -k /var/lib/warren | tail -1"); err != nil || !strings.Contains(out, "100%") {
			t.Fatalf("state dir not full: %v\n%s", err, out)
		}
		var failure string
		before := len(acked)
		for i := 1; i <= 40 && failure == ""; i++ {
			name := fmt.Sprintf("full-%d", i)
			out, err := m.Exec(ctx, "warren", "service", "create", name, "--detach", "--image", testImage, "--replicas", "0")
			if err != nil {
				failure = out
				break
			}
			acked[name] = true
		}
		t.Logf("%d creates succeeded on the full filesystem before one failed", len(acked)-before)
		if failure == "" {
			t.Fatalf("40 service creates on a full state filesystem all succeeded")
		}
		t.Logf("create on a full disk says: %s", trim(failure))
		if !strings.Contains(failure, "no space left on device") {
			t.Errorf("create on a full disk: the error does not say the disk is full:\n%s", failure)
		}
		// Reads still answer.
		if _, err := serviceNames(ctx, c); err != nil {
			t.Errorf("service ls on a full disk: %v", err)
		}
		if _, err := m.Exec(ctx, "rm", "/var/lib/warren/filler"); err != nil {
			t.Fatal(err)
		}
		restartManager(t, c, syscall.SIGTERM)
		got, err := serviceNames(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		var lost []string
		for name := range acked {
			if !got[name] {
				lost = append(lost, name)
			}
		}
		sort.Strings(lost)
		if len(lost) > 0 {
			t.Errorf("services lost after the full disk and a restart: %v", lost)
		}
		nodesAfter, err := c.NodeList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(nodesAfter) != fmt.Sprint(nodesBefore) {
			t.Errorf("nodes changed:\nbefore %+v\nafter  %+v", nodesBefore, nodesAfter)
		}
		// And writes work again.
		if out, err := m.Exec(ctx, "warren", "service", "create", "after-full", "--detach", "--image", testImage, "--replicas", "0"); err != nil {
			t.Errorf("create after freeing space: %v\n%s", err, out)
		}
		waitRunning(t, c, "web", 3)
	})

	// Issue "integration" (seed: a node lost): a worker powered off
	// entirely is marked down and its tasks run elsewhere with new IPs;
	// when it boots again nothing runs twice.
	t.Run("worker lost", func(t *testing.T) {
		before := waitRunning(t, c, "web", 3)
		lost := c.Workers[1]
		moved := map[string]string{} // task → its IP on the lost worker
		for _, task := range before.Tasks {
			if task.Node == lost.Name {
				moved[task.Name] = task.IP
			}
		}
		if len(moved) == 0 {
			t.Fatalf("no task of web on %s to move: %+v", lost.Name, before.Tasks)
		}
		start := time.Now()
		if err := lost.PowerOff(); err != nil {
			t.Fatal(err)
		}
		waitNodeStatus(t, ctx, 2*time.Minute, c.NodeList, lost.Name, "down")
		t.Logf("%s marked down %s after the power cut", lost.Name, time.Since(start).Round(time.Second))
		var after serviceView
		eventually(t, 2*time.Minute, "web's tasks running off "+lost.Name+" with new IPs", func() error {
			var err error
			if after, err = inspect(ctx, m, "web"); err != nil {
				return err
			}
			running := 0
			for _, task := range after.Tasks {
				if task.Node == lost.Name {
					return fmt.Errorf("task %s still on %s (%s)", task.Name, lost.Name, task.State)
				}
				if old, ok := moved[task.Name]; ok && task.IP == old {
					return fmt.Errorf("task %s kept IP %s of the lost node's block", task.Name, old)
				}
				if task.State == "running" {
					running++
				}
			}
			if running != 3 || len(after.Tasks) != 3 {
				return fmt.Errorf("%d of %d running: %+v", running, len(after.Tasks), after.Tasks)
			}
			return nil
		})
		t.Logf("web running on the remaining nodes %s after the power cut", time.Since(start).Round(time.Second))
		// Issue "dns": a moved task's name follows it.
		for _, task := range after.Tasks {
			if _, ok := moved[task.Name]; !ok {
				continue
			}
			eventually(t, 10*time.Second, task.Name+"'s DNS name follows it to "+task.IP, func() error {
				out, err := m.Exec(ctx, "warren", "network", "dns", task.Name)
				if err != nil {
					return err
				}
				if !strings.Contains(out, task.IP) {
					return fmt.Errorf("warren network dns %s: %s", task.Name, out)
				}
				return nil
			})
		}
		for _, n := range []*lab.Node{m, c.Workers[0]} {
			eventually(t, time.Minute, n.Name+" reaches only live tasks through the VIP", func() error {
				pages, err := vipPages(ctx, n, web.VIP, 30)
				if err != nil {
					return err
				}
				return onlyPages(pages, taskNames(after), true)
			})
		}

		// The board boots again with what its disk kept: it rejoins, and
		// every task runs exactly once in the cluster, where the manager
		// says (the old containers on the returned board do not come back
		// as duplicates).
		if err := lost.ForgetVolatile(ctx); err != nil {
			t.Fatal(err)
		}
		if err := lost.StartContainerd(ctx); err != nil {
			t.Fatal(err)
		}
		// Its disk still holds the containers of the tasks that moved away.
		stale, err := ctrNames(ctx, lost, "containers", "list")
		if err != nil {
			t.Fatal(err)
		}
		for name := range moved {
			if !strings.Contains(fmt.Sprint(stale), name) {
				t.Fatalf("%s's containerd lost %s across the power cut (%v): nothing to check", lost.Name, name, stale)
			}
		}
		if err := lost.StartAppliance("warren-appliance"); err != nil {
			t.Fatal(err)
		}
		waitApplianceUp(t, lost, web.VIP)
		waitNodesReady(t, c, 2*time.Minute)
		eventually(t, 2*time.Minute, "each task of web runs once, where the manager says", func() error {
			v, err := inspect(ctx, m, "web")
			if err != nil {
				return err
			}
			want := map[string][]string{}
			for _, task := range v.Tasks {
				if task.State != "running" {
					return fmt.Errorf("task %s is %s", task.Name, task.State)
				}
				want[task.Node] = append(want[task.Node], task.Name)
			}
			for _, n := range c.Nodes() {
				containers, err := ctrNames(ctx, n, "containers", "list")
				if err != nil {
					return err
				}
				sort.Strings(want[n.Name])
				if fmt.Sprint(containers) != fmt.Sprint(want[n.Name]) {
					return fmt.Errorf("%s has containers %v, the manager placed %v there", n.Name, containers, want[n.Name])
				}
			}
			after = v
			return nil
		})
		t.Logf("after %s came back (it had %v on disk): %+v", lost.Name, stale, after.Tasks)
		eventually(t, time.Minute, "the returned "+lost.Name+" reaches only live tasks through the VIP", func() error {
			pages, err := vipPages(ctx, lost, web.VIP, 30)
			if err != nil {
				return err
			}
			return onlyPages(pages, taskNames(after), true)
		})
	})
}
