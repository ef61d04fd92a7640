package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/internal/testimage"
)

// psTask is one task of `warren service ps --json`.
type psTask struct {
	Name         string `json:"name"`
	Node         string `json:"node"`
	DesiredState string `json:"desired_state"`
	State        string `json:"state"`
	Error        string `json:"error"`
	ExitCode     *int   `json:"exit_code"`
	Restarts     int    `json:"restarts"`
	NextRestart  string `json:"next_restart"`
	OOMKilled    bool   `json:"oom_killed"`
}

func servicePS(ctx context.Context, n *lab.Node, name string) ([]psTask, error) {
	out, err := n.Exec(ctx, "warren", "service", "ps", name, "--json")
	if err != nil {
		return nil, err
	}
	var tasks []psTask
	if err := json.Unmarshal([]byte(out), &tasks); err != nil {
		return nil, fmt.Errorf("service ps --json: %w: %s", err, out)
	}
	return tasks, nil
}

// oneTask waits until service name has one desired task for which ok says
// nil, and returns it.
func oneTask(t *testing.T, c *lab.Cluster, name string, timeout time.Duration, what string, ok func(psTask) error) psTask {
	t.Helper()
	ctx := ctxFor(t, timeout+30*time.Second)
	var got psTask
	eventually(t, timeout, name+": "+what, func() error {
		tasks, err := servicePS(ctx, c.Manager, name)
		if err != nil {
			return err
		}
		var desired []psTask
		for _, task := range tasks {
			if task.DesiredState == "running" {
				desired = append(desired, task)
			}
		}
		if len(desired) != 1 {
			return fmt.Errorf("%d desired tasks: %+v", len(desired), tasks)
		}
		got = desired[0]
		return ok(got)
	})
	return got
}

// Issue 32 "workloads": restart policies, limits and OOM kills, volumes,
// bind and tmpfs mounts, and global services, on real containerd.
func TestWorkloadsRestartLimitsMountsGlobal(t *testing.T) {
	l := newLab(t)
	img := imageTarball(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{img}})
	ctx := ctxFor(t, 15*time.Minute)
	w1, w2 := c.Workers[0], c.Workers[1]

	// --- Restart policy.
	createService(t, c, "job", "--restart-condition", "none", "--constraint", "node.name==worker-1", "--", "sh", "-c", "sleep 1; exit 3")
	createService(t, c, "flaky", "--restart-max-attempts", "2", "--constraint", "node.name==worker-1", "--", "sh", "-c", "sleep 1; exit 1")
	createService(t, c, "done", "--restart-condition", "on-failure", "--constraint", "node.name==worker-1", "--", "true")
	job := oneTask(t, c, "job", 2*time.Minute, "exited, not restarted", func(task psTask) error {
		if task.State != "failed" || task.ExitCode == nil || *task.ExitCode != 3 {
			return fmt.Errorf("%+v", task)
		}
		return nil
	})
	if !strings.Contains(job.Error, "not restarted (restart condition none)") || job.Restarts != 0 || job.NextRestart != "" {
		t.Errorf("job: %+v", job)
	}
	oneTask(t, c, "done", 2*time.Minute, "complete", func(task psTask) error {
		if task.State != "complete" || task.ExitCode == nil || *task.ExitCode != 0 {
			return fmt.Errorf("%+v", task)
		}
		return nil
	})
	flaky := oneTask(t, c, "flaky", 3*time.Minute, "gives up after two restarts", func(task psTask) error {
		if task.Restarts != 2 || !strings.Contains(task.Error, "gave up after 2 restarts") {
			return fmt.Errorf("%+v", task)
		}
		return nil
	})
	if flaky.State != "failed" || flaky.ExitCode == nil || *flaky.ExitCode != 1 {
		t.Errorf("flaky: %+v", flaky)
	}
	// They stay stopped: the container's process is not running again.
	time.Sleep(5 * time.Second)
	for _, name := range []string{"job-1", "flaky-1"} {
		out, err := w1.Exec(ctx, "ctr", "-n", "warren", "tasks", "ls")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 3 && f[0] == name && f[2] != "STOPPED" {
				t.Errorf("%s is %s after its policy gave up:\n%s", name, f[2], out)
			}
		}
	}
	if again := oneTask(t, c, "flaky", time.Minute, "still given up", func(psTask) error { return nil }); again.Restarts != 2 {
		t.Errorf("flaky restarted again: %+v", again)
	}

	// --- Limits in the OCI spec, and an OOM kill reported and restarted.
	createService(t, c, "limited", "--limit-memory", "32M", "--limit-cpu", "0.5", "--reserve-memory", "16M",
		"--constraint", "node.name==worker-1", "--", "sleep", "3600")
	waitRunning(t, c, "limited", 1)
	info, err := w1.Exec(ctx, "ctr", "-n", "warren", "containers", "info", "limited-1")
	if err != nil {
		t.Fatal(err)
	}
	var ci struct {
		Spec struct {
			Linux struct {
				Resources struct {
					Memory struct {
						Limit int64 `json:"limit"`
					} `json:"memory"`
					CPU struct {
						Quota  int64  `json:"quota"`
						Period uint64 `json:"period"`
					} `json:"cpu"`
				} `json:"resources"`
			} `json:"linux"`
		} `json:"Spec"`
	}
	if err := json.Unmarshal([]byte(info), &ci); err != nil {
		t.Fatalf("containers info: %v", err)
	}
	if r := ci.Spec.Linux.Resources; r.Memory.Limit != 32<<20 || r.CPU.Quota != 50000 || r.CPU.Period != 100000 {
		t.Errorf("OCI resources = %+v, want memory 33554432, CPU quota 50000 per 100000", r)
	}
	// The kernel enforces it: the task's cgroup has the limit.
	cg, err := w1.Exec(ctx, "sh", "-c", "cat /sys/fs/cgroup"+w1.CgroupParent()+"/limited-1/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory"+w1.CgroupParent()+"/limited-1/memory.limit_in_bytes")
	if err != nil || trim(cg) != "33554432" {
		t.Errorf("cgroup memory limit = %q, %v; want 33554432", cg, err)
	}

	// The tasks' parent cgroup has a memory ceiling that leaves room for
	// the daemon, containerd and the system (default: memory - 256 MiB).
	meminfo, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	var totalKB int64
	fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(meminfo), "\n", 2)[0], "MemTotal:"), "%d", &totalKB)
	wantCeiling := max(totalKB*1024-256<<20, totalKB*1024/2)
	parent, err := w1.Exec(ctx, "sh", "-c", "cat /sys/fs/cgroup"+w1.CgroupParent()+"/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory"+w1.CgroupParent()+"/memory.limit_in_bytes")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := strconv.ParseInt(trim(parent), 10, 64); got > wantCeiling || wantCeiling-got >= 4096 {
		t.Errorf("tasks' parent cgroup memory ceiling = %d, want %d (page-rounded)", got, wantCeiling)
	}

	createService(t, c, "hog", "--limit-memory", "16M", "--constraint", "node.name==worker-1", "--",
		"sh", "-c", "sleep 1; exec dd if=/dev/zero of=/dev/null bs=67108864 count=1")
	hog := oneTask(t, c, "hog", 2*time.Minute, "OOM killed and restarted", func(task psTask) error {
		if !strings.Contains(task.Error, "OOM killed (limit 16 MiB)") && !(task.OOMKilled && task.Restarts >= 1) {
			return fmt.Errorf("%+v", task)
		}
		if task.Restarts < 1 && task.NextRestart == "" {
			return fmt.Errorf("no restart planned: %+v", task)
		}
		return nil
	})
	t.Logf("OOM-killed task: %+v", hog)
	out, _ := c.Manager.Exec(ctx, "warren", "service", "ps", "hog")
	if !strings.Contains(out, "OOM killed (limit 16 MiB)") {
		t.Logf("service ps hog (may have restarted since):\n%s", out)
	}

	// Reservations that fit nowhere leave the replica unplaced, saying why.
	createService(t, c, "huge", "--reserve-memory", "100000G", "--", "sleep", "3600")
	eventually(t, time.Minute, "huge unplaced with a reason", func() error {
		out, err := c.Manager.Exec(ctx, "warren", "service", "ps", "huge")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "without room for the reservation (memory") {
			return fmt.Errorf("%s", out)
		}
		return nil
	})

	// --- Mounts: a volume survives a killed task, a daemon restart and a
	// service update; a read-only bind mount reads and refuses writes; a
	// tmpfs has its size; a missing bind source is named in service ps.
	if _, err := w2.Exec(ctx, "sh", "-c", "mkdir -p /run/cfg && echo hello > /run/cfg/greeting"); err != nil {
		t.Fatal(err)
	}
	createService(t, c, "db", "--constraint", "node.name==worker-2",
		"--mount", "type=volume,source=dbdata,target=/data",
		"--mount", "type=bind,source=/run/cfg,target=/cfg,readonly",
		"--mount", "type=tmpfs,target=/scratch,tmpfs-size=1M",
		"--", "sh", "-c", "echo boot >> /data/boots; exec sleep 3600")
	waitRunning(t, c, "db", 1)
	if _, err := taskExec(ctx, w2, "db-1", "sh", "-c", "echo kept > /data/marker"); err != nil {
		t.Fatal(err)
	}
	if got, err := taskExec(ctx, w2, "db-1", "cat", "/cfg/greeting"); err != nil || trim(got) != "hello" {
		t.Errorf("read-only bind: cat = %q, %v", got, err)
	}
	if got, err := taskExec(ctx, w2, "db-1", "sh", "-c", "echo x > /cfg/new"); err == nil {
		t.Errorf("writing to the read-only bind mount succeeded: %q", got)
	}
	if got, err := taskExec(ctx, w2, "db-1", "grep", " /scratch ", "/proc/mounts"); err != nil || !strings.Contains(got, "tmpfs") || !strings.Contains(got, "size=1024k") {
		t.Errorf("tmpfs mount: %q, %v", got, err)
	}
	marker := func(what string, boots int) {
		t.Helper()
		eventually(t, 2*time.Minute, "db keeps its volume after "+what, func() error {
			got, err := taskExec(ctx, w2, "db-1", "sh", "-c", "cat /data/marker; wc -l < /data/boots")
			if err != nil {
				return err
			}
			if f := strings.Fields(got); len(f) != 2 || f[0] != "kept" || f[1] != fmt.Sprint(boots) {
				return fmt.Errorf("marker and boots = %q, want kept and %d", got, boots)
			}
			return nil
		})
	}
	// A killed task is restarted with its data.
	if _, err := w2.Exec(ctx, "ctr", "-n", "warren", "tasks", "kill", "-s", "SIGKILL", "db-1"); err != nil {
		t.Fatal(err)
	}
	marker("a killed task", 2)
	// A daemon restart (crash) adopts it; the data stays.
	if err := w2.RestartAppliance(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	marker("a daemon restart", 2)
	// A service update replaces the container; the data stays.
	v2 := "warren.test/busybox:v2"
	tar2, err := testimage.BusyboxTarball(t.TempDir(), v2)
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.AddImage(tar2); err != nil {
		t.Fatal(err)
	}
	// The update is health-gated: a new task that fails (its image not
	// imported yet) would roll it back, so the image is there first.
	eventually(t, time.Minute, "v2 imported on worker-2", func() error {
		out, err := w2.Exec(ctx, "ctr", "-n", "warren", "images", "ls", "-q")
		if err != nil || !strings.Contains(out, v2) {
			return fmt.Errorf("images: %q, %v", out, err)
		}
		return nil
	})
	// Every spec flag of create goes through update: image, env, limits.
	// stop-first: the volume has one writer (start-first would run an
	// extra task on the new spec beside db-1, on the same volume).
	if out, err := c.Manager.Exec(ctx, "warren", "service", "update", "db", "--image", v2, "--env-add", "MODE=2", "--limit-memory", "48M",
		"--update-order", "stop-first", "--detach"); err != nil {
		t.Fatalf("service update: %v\n%s", err, out)
	}
	eventually(t, 2*time.Minute, "db updated to v2 with its new env and limit", func() error {
		v, err := inspect(ctx, c.Manager, "db")
		if err != nil {
			return err
		}
		if len(v.Tasks) != 1 || v.Tasks[0].State != "running" || v.Image != v2 {
			return fmt.Errorf("%+v", v)
		}
		out, err := w2.Exec(ctx, "ctr", "-n", "warren", "containers", "info", "db-1")
		if err != nil || !strings.Contains(out, v2) || !strings.Contains(out, "MODE=2") || !strings.Contains(out, `"limit": 50331648`) {
			return fmt.Errorf("container not on the new spec yet")
		}
		return nil
	})
	marker("a service update", 3)
	if got, err := w2.Exec(ctx, "cat", "/var/lib/warren/volumes/dbdata/marker"); err != nil || trim(got) != "kept" {
		t.Errorf("volume on the node: %q, %v", got, err)
	}

	// Volumes are listed per node with their size and users; removing one
	// in use is refused naming the service; once the service is gone it
	// can be removed.
	var vols []struct {
		Node      string   `json:"node"`
		Name      string   `json:"name"`
		SizeBytes int64    `json:"size_bytes"`
		Services  []string `json:"services"`
	}
	out, err = c.Manager.Exec(ctx, "warren", "volume", "ls", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &vols); err != nil {
		t.Fatalf("volume ls --json: %v\n%s", err, out)
	}
	if len(vols) != 1 || vols[0].Node != "worker-2" || vols[0].Name != "dbdata" || vols[0].SizeBytes < 5 || len(vols[0].Services) != 1 || vols[0].Services[0] != "db" {
		t.Errorf("volume ls = %+v", vols)
	}
	if out, err := c.Manager.Exec(ctx, "warren", "volume", "rm", "dbdata"); err == nil || !strings.Contains(out, "in use on node worker-2 by service db") {
		t.Errorf("volume rm of a volume in use: %v\n%s", err, out)
	}
	if out, err := c.Manager.Exec(ctx, "warren", "service", "rm", "db"); err != nil {
		t.Fatalf("service rm db: %v\n%s", err, out)
	}
	if out, err := c.Manager.Exec(ctx, "warren", "volume", "rm", "dbdata", "--node", "worker-2"); err != nil || !strings.Contains(out, "dbdata removed from worker-2") {
		t.Errorf("volume rm: %v\n%s", err, out)
	}
	if _, err := w2.Exec(ctx, "test", "-e", "/var/lib/warren/volumes/dbdata"); err == nil {
		t.Error("volume dir still on worker-2 after volume rm")
	}

	// Process settings: user, workdir, hostname, entrypoint, read-only
	// root, stop signal and grace.
	createService(t, c, "proc", "--constraint", "node.name==worker-2", "--user", "1000:1000", "--workdir", "/tmp", "--hostname", "broker",
		"--read-only", "--entrypoint", "sh -c", "--stop-signal", "SIGINT", "--stop-grace-period", "3s", "--", `trap "exit 0" INT; sleep 3600 & wait`)
	waitRunning(t, c, "proc", 1)
	for cmdline, want := range map[string]string{"id -u": "1000", "pwd": "/tmp", "hostname": "broker"} {
		if got, err := taskExec(ctx, w2, "proc-1", "sh", "-c", cmdline); err != nil || trim(got) != want {
			t.Errorf("proc %s = %q, %v; want %q", cmdline, got, err, want)
		}
	}
	if got, err := taskExec(ctx, w2, "proc-1", "sh", "-c", "touch /rootfs-write"); err == nil {
		t.Errorf("wrote to a read-only root: %q", got)
	}
	info, err = w2.Exec(ctx, "ctr", "-n", "warren", "containers", "info", "proc-1")
	if err != nil || !strings.Contains(info, `"warren.stop-signal": "SIGINT"`) || !strings.Contains(info, `"warren.stop-grace": "3s"`) {
		t.Errorf("proc stop settings not recorded: %v\n%s", err, info)
	}

	createService(t, c, "nobind", "--constraint", "node.name==worker-2", "--mount", "type=bind,source=/run/nope,target=/x", "--", "sleep", "3600")
	oneTask(t, c, "nobind", 2*time.Minute, "fails naming the path and node", func(task psTask) error {
		if task.State != "failed" || !strings.Contains(task.Error, "/run/nope does not exist on node worker-2") {
			return fmt.Errorf("%+v", task)
		}
		return nil
	})

	// --- Global: one task on each of the 3 nodes, then on a 4th that joins.
	createService(t, c, "agent", "--mode", "global", "--", "sleep", "3600")
	waitRunning(t, c, "agent", 3)
	if out, err := c.Manager.Exec(ctx, "warren", "service", "scale", "agent=5"); err == nil || !strings.Contains(out, "is global") {
		t.Errorf("scale of a global service: %v\n%s", err, out)
	}
	if _, err := l.AddWorker(ctxFor(t, 3*time.Minute), c, "worker-3", []string{img}); err != nil {
		t.Fatal(err)
	}
	v := waitRunning(t, c, "agent", 4)
	nodes := map[string]bool{}
	for _, task := range v.Tasks {
		nodes[task.Node] = true
	}
	if len(nodes) != 4 {
		t.Errorf("agent tasks on %d nodes, want one on each of 4: %+v", len(nodes), v.Tasks)
	}

	// Max attempts count the restarts made before a daemon restart (they
	// are recorded on the container).
	createService(t, c, "flaky2", "--restart-max-attempts", "2", "--restart-delay", "2s", "--constraint", "node.name==worker-1", "--", "sh", "-c", "echo run; sleep 2; exit 1")
	oneTask(t, c, "flaky2", 2*time.Minute, "restarted once", func(task psTask) error {
		if task.Restarts != 1 {
			return fmt.Errorf("%+v", task)
		}
		return nil
	})
	if err := w1.RestartAppliance(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	oneTask(t, c, "flaky2", 2*time.Minute, "gives up after two restarts across a daemon restart", func(task psTask) error {
		if !strings.Contains(task.Error, "gave up after 2 restarts") || task.Restarts != 2 {
			return fmt.Errorf("%+v", task)
		}
		return nil
	})
	// Three runs in all (the first and two restarts), as its log shows.
	time.Sleep(5 * time.Second)
	if out, err := c.Manager.Exec(ctx, "warren", "service", "logs", "flaky2"); err != nil || strings.Count(out, "| run") != 3 {
		t.Errorf("flaky2 ran %d times, want 3: %v\n%s", strings.Count(out, "| run"), err, out)
	}
}
