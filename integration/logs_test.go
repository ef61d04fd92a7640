package integration

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// Issue 32 "workloads": `warren service logs` on the manager shows the
// lines of tasks on two other nodes (gathered over mTLS from their log
// servers), follows new ones, keeps a task's lines across its restarts,
// and the nodes keep them in rotated files within [logs] bounds.
func TestServiceLogsFromTwoNodes(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)},
		WorkerExtra: "[logs]\nmax_size = \"4k\"\nmax_files = 2\n"})
	ctx := ctxFor(t, 5*time.Minute)
	createService(t, c, "talker", "--replicas", "2", "--constraint", "node.name!=manager-1", "--",
		"sh", "-c", `i=0; while true; do echo "line $i of $(hostname)"; echo "err $i" >&2; i=$((i+1)); sleep 0.2; done`)
	v := waitRunning(t, c, "talker", 2)
	nodes := map[string]string{}
	for _, task := range v.Tasks {
		nodes[task.Name] = task.Node
	}
	if nodes["talker-1"] == nodes["talker-2"] {
		t.Fatalf("both tasks on %s", nodes["talker-1"])
	}

	lineRE := regexp.MustCompile(`^(talker-\d)@(worker-\d) \| line (\d+) of (talker-\d)$`)
	lastSeen := func(out string) map[string]int {
		last := map[string]int{}
		for _, line := range strings.Split(trim(out), "\n") {
			m := lineRE.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			if m[1] != m[4] || nodes[m[1]] != m[2] {
				t.Errorf("line %q: prefix does not match its task and node", line)
			}
			n, _ := strconv.Atoi(m[3])
			last[m[1]] = max(last[m[1]], n)
		}
		return last
	}
	var first map[string]int
	eventually(t, time.Minute, "logs of both tasks on the manager", func() error {
		out, err := c.Manager.Exec(ctx, "warren", "service", "logs", "talker", "--tail", "6")
		if err != nil {
			return err
		}
		first = lastSeen(out)
		if len(first) != 2 || !strings.Contains(out, "| err ") {
			return fmt.Errorf("not both tasks, stdout and stderr yet:\n%s", out)
		}
		if n := strings.Count(trim(out), "\n") + 1; n != 12 {
			return fmt.Errorf("--tail 6 of 2 tasks printed %d lines:\n%s", n, out)
		}
		return nil
	})

	// --follow prints lines written after it started.
	fctx := ctxFor(t, 30*time.Second)
	cmd := c.Manager.Command(fctx, "timeout", "6", "warren", "service", "logs", "talker", "--follow", "--tail", "0", "--timestamps")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); err != nil && !(ok && ee.ExitCode() == 124) {
		t.Fatalf("logs --follow: %v\n%s", err, out)
	}
	stamped := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\S+ talker-\d@worker-\d \| `)
	var plain []string
	for _, line := range strings.Split(trim(string(out)), "\n") {
		if !stamped.MatchString(line) {
			t.Fatalf("followed line without timestamp and prefix: %q", line)
		}
		plain = append(plain, stamped.ReplaceAllStringFunc(line, func(s string) string {
			return s[strings.Index(s, " ")+1:]
		}))
	}
	followed := lastSeen(strings.Join(plain, "\n"))
	for task, n := range first {
		if followed[task] <= n {
			t.Errorf("follow of %s saw up to line %d, not past %d:\n%s", task, followed[task], n, out)
		}
	}

	// One task's lines, across a restart of its process.
	w := nodeByName(c, nodes["talker-1"])
	if _, err := w.Exec(ctx, "ctr", "-n", "warren", "tasks", "kill", "-s", "SIGKILL", "talker-1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "talker-1 restarted, earlier lines kept", func() error {
		out, err := c.Manager.Exec(ctx, "warren", "service", "logs", "talker-1")
		if err != nil {
			return err
		}
		if strings.Contains(out, "talker-2@") {
			return fmt.Errorf("task logs include another task:\n%s", out)
		}
		// The counter starts over at 0 after the restart: a "line 0"
		// after a higher line means both runs are there.
		ls := strings.Split(trim(out), "\n")
		restartAt := -1
		for i, line := range ls {
			if strings.HasSuffix(line, "| line 0 of talker-1") && i > 0 {
				restartAt = i
			}
		}
		if restartAt < 0 {
			return fmt.Errorf("no second run in:\n%s", out)
		}
		return nil
	})
	// The node's files rotate and stay within max_size x max_files.
	var sizes string
	eventually(t, time.Minute, "talker-1's log rotated", func() error {
		var err error
		sizes, err = w.Exec(ctx, "sh", "-c", "du -b /var/lib/warren/tasks/files/talker-1/logs/*")
		if err == nil && !strings.Contains(sizes, "logs/log.1") {
			err = fmt.Errorf("not rotated yet:\n%s", sizes)
		}
		return err
	})
	for _, line := range strings.Split(trim(sizes), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			if n, _ := strconv.Atoi(f[0]); n > 4096 {
				t.Errorf("log file over max_size: %s", line)
			}
		}
	}
	if strings.Contains(sizes, "log.2") {
		t.Errorf("more files than max_files = 2:\n%s", sizes)
	}
	t.Logf("log files of talker-1:\n%s", sizes)

	// A task on the manager itself: its own server answers too.
	createService(t, c, "local", "--constraint", "node.name==manager-1", "--", "sh", "-c", "echo on the manager; exec sleep 3600")
	waitRunning(t, c, "local", 1)
	eventually(t, time.Minute, "logs of a task on the manager", func() error {
		out, err := c.Manager.Exec(ctx, "warren", "service", "logs", "local")
		if err != nil {
			return err
		}
		if trim(out) != "local-1@manager-1 | on the manager" {
			return fmt.Errorf("%q", out)
		}
		return nil
	})

	// Bad input is named.
	if out, err := c.Manager.Exec(ctx, "warren", "service", "logs", "nope"); err == nil || !strings.Contains(out, `no service or task named "nope"`) {
		t.Errorf("logs of an unknown name: %v\n%s", err, out)
	}
}
