package integration

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// Issue 27: a secret from stdin and a config from a file reach a task on
// another node at /run/secrets/dbpass (tmpfs, 0400) and /etc/app.conf;
// their plaintext is on no disk of any node (state dirs, containerd's
// dirs, logs, a backup) nor in any inspect output; `secret update` reaches
// the running task in place within 15 s; rm is refused while in use.
func TestSecretsAndConfigsReachTheirTaskOnly(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)}})
	ctx := ctxFor(t, 5*time.Minute)
	m := c.Manager
	stamp := time.Now().UnixNano()
	pass1 := fmt.Sprintf("pw1-%x-marker", stamp)
	pass2 := fmt.Sprintf("pw2-%x-marker", stamp)
	conf := fmt.Sprintf("listen=%x-confmarker", stamp)

	// The secret from stdin; the config from a file (on the manager's
	// tmpfs /run, so the test itself leaves no copy on a disk).
	if out, err := m.Sh(ctx, fmt.Sprintf("printf %%s '%s' | warren secret create dbpass -f - --label app=db", pass1)); err != nil {
		t.Fatalf("secret create: %v\n%s", err, out)
	}
	if out, err := m.Sh(ctx, fmt.Sprintf("printf '%%s\\n' '%s' > /run/app.conf && warren config create app.conf -f /run/app.conf && rm /run/app.conf", conf)); err != nil {
		t.Fatalf("config create: %v\n%s", err, out)
	}
	createService(t, c, "db", "--constraint", "node.name==worker-1",
		"--secret", "dbpass", "--config", "source=app.conf,target=/etc/app.conf,mode=0444",
		"--", "sleep", "100000")
	v := waitRunning(t, c, "db", 1)
	if v.Tasks[0].Node != "worker-1" {
		t.Fatalf("db runs on %s", v.Tasks[0].Node)
	}
	w1, w2 := nodeByName(c, "worker-1"), nodeByName(c, "worker-2")
	task := v.Tasks[0].Name

	in := func(args ...string) string {
		t.Helper()
		out, err := taskExec(ctx, w1, task, args...)
		if err != nil {
			t.Fatalf("in %s: %v", task, err)
		}
		return trim(out)
	}
	if got := in("cat", "/run/secrets/dbpass"); got != pass1 {
		t.Fatalf("/run/secrets/dbpass holds %q", got)
	}
	if got := in("busybox", "stat", "-L", "-c", "%a %u %g", "/run/secrets/dbpass"); got != "400 0 0" {
		t.Fatalf("/run/secrets/dbpass mode/owner %q, want 400 0 0 (not world-readable)", got)
	}
	if got := in("cat", "/etc/app.conf"); got != conf {
		t.Fatalf("/etc/app.conf holds %q", got)
	}
	if got := in("busybox", "stat", "-c", "%a", "/etc/app.conf"); got != "444" {
		t.Fatalf("/etc/app.conf mode %q", got)
	}
	mounts := in("cat", "/proc/mounts")
	for _, target := range []string{"/run/secrets", "/etc/app.conf"} {
		found := false
		for _, line := range strings.Split(mounts, "\n") {
			f := strings.Fields(line)
			if len(f) > 3 && f[1] == target && f[2] == "tmpfs" && strings.HasPrefix(f[3], "ro,") {
				found = true
			}
		}
		if !found {
			t.Errorf("%s is not a read-only tmpfs mount in the task:\n%s", target, mounts)
		}
	}
	if env := in("env"); strings.Contains(env, pass1) {
		t.Fatal("the secret is in the task's environment")
	}
	// The other worker runs no db task: it has no copy.
	if out, err := w2.Sh(ctx, "ls /run/warren/tasks 2>/dev/null | wc -l"); err != nil || trim(out) != "0" {
		t.Fatalf("worker-2 holds task files: %q %v", out, err)
	}

	before := in("cat", "/proc/1/stat")
	// The worker's daemon restarts (SIGKILL, as a crash): the task keeps
	// running with its files, the daemon adopts it and rewrites them.
	if err := w1.RestartAppliance(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "worker-1's daemon back and the task untouched", func() error {
		if _, err := w1.Exec(ctx, "warren", "network", "status"); err != nil {
			return err
		}
		after, err := taskExec(ctx, w1, task, "cat", "/proc/1/stat")
		if err != nil {
			return err
		}
		if trim(after) != before {
			t.Fatal("the task was recreated by the daemon's restart")
		}
		got, err := taskExec(ctx, w1, task, "cat", "/run/secrets/dbpass")
		if err != nil || trim(got) != pass1 {
			return fmt.Errorf("after the restart the task reads %q (%v)", got, err)
		}
		return nil
	})

	// Rotation in place (by the restarted daemon, on the tmpfs it found):
	// the running task (same container) reads the new value within 15 s.
	start := time.Now()
	if out, err := m.Sh(ctx, fmt.Sprintf("printf %%s '%s' | warren secret update dbpass -f -", pass2)); err != nil {
		t.Fatalf("secret update: %v\n%s", err, out)
	}
	eventually(t, 15*time.Second, "the running task reads the updated secret", func() error {
		out, err := taskExec(ctx, w1, task, "cat", "/run/secrets/dbpass")
		if err != nil {
			return err
		}
		if trim(out) != pass2 {
			return fmt.Errorf("reads %q", trim(out))
		}
		return nil
	})
	t.Logf("secret update reached the running task in %s", time.Since(start).Round(time.Millisecond))
	if after := in("cat", "/proc/1/stat"); after != before {
		t.Fatal("the task was restarted by the update (in place was asked)")
	}

	// Inspect, ls and service inspect show metadata, never the value.
	for _, argv := range [][]string{
		{"secret", "inspect", "dbpass"}, {"secret", "inspect", "dbpass", "--json"}, {"secret", "ls", "--json"},
		{"service", "inspect", "db", "--json"}, {"config", "inspect", "app.conf", "--json"},
	} {
		out, err := m.Exec(ctx, "warren", argv...)
		if err != nil {
			t.Fatalf("%v: %v", argv, err)
		}
		for _, p := range []string{pass1, pass2, conf} {
			if strings.Contains(out, p) {
				t.Fatalf("`warren %s` shows a value:\n%s", strings.Join(argv, " "), out)
			}
		}
		if argv[1] == "inspect" && argv[0] == "secret" && !strings.Contains(out, "db") {
			t.Fatalf("secret inspect does not name the service using it:\n%s", out)
		}
	}
	if out, err := m.Exec(ctx, "warren", "config", "inspect", "app.conf", "--pretty"); err != nil || !strings.Contains(out, conf) {
		t.Fatalf("config inspect --pretty: %v\n%s", err, out)
	}

	// rm while in use is refused, naming the service.
	if out, err := m.Exec(ctx, "warren", "secret", "rm", "dbpass"); err == nil || !strings.Contains(out, "db") {
		t.Fatalf("secret rm in use: %v\n%s", err, out)
	}

	// A backup (and its data key) in the manager's state dir, then no
	// node's disk holds a value: state dirs, containerd's dirs, logs.
	if out, err := m.Exec(ctx, "warren", "cluster", "backup", "/var/lib/warren/backup.json"); err != nil || !strings.Contains(out, "backup.json.key") {
		t.Fatalf("cluster backup: %v\n%s", err, out)
	}
	backup, err := os.ReadFile(filepath.Join(m.Root, "lib", "backup.json"))
	if err != nil || !bytes.Contains(backup, []byte(`"dbpass"`)) {
		t.Fatalf("the backup does not hold the secret's record: %v", err)
	}
	for _, n := range c.Nodes() {
		// The node's whole directory: its root (/var/lib/warren,
		// /var/lib/containerd, /etc/warren) and its logs.
		for _, p := range []string{pass1, pass2, conf} {
			if files := filesWith(t, filepath.Dir(n.Root), []byte(p)); len(files) > 0 {
				t.Errorf("%s: plaintext %q on disk in %v", n.Name, p, files)
			}
		}
	}

	// The service goes: worker-1 wipes its copies; then rm works.
	if out, err := m.Exec(ctx, "warren", "service", "rm", "db"); err != nil {
		t.Fatalf("service rm: %v\n%s", err, out)
	}
	eventually(t, time.Minute, "worker-1 wipes the task's tmpfs", func() error {
		out, err := w1.Sh(ctx, "grep -c /run/warren/tasks/ /proc/self/mountinfo; ls /run/warren/tasks 2>/dev/null | wc -l")
		if f := strings.Fields(out); len(f) != 2 || f[0] != "0" || f[1] != "0" {
			return fmt.Errorf("mounts and dirs left: %q %v", out, err)
		}
		return nil
	})
	for _, argv := range [][]string{{"secret", "rm", "dbpass"}, {"config", "rm", "app.conf"}} {
		if out, err := m.Exec(ctx, "warren", argv...); err != nil {
			t.Fatalf("%v after the service is gone: %v\n%s", argv, err, out)
		}
	}
}

// filesWith lists the regular files under dir holding marker.
func filesWith(t *testing.T, dir string, marker []byte) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) || os.IsPermission(err) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil // a socket or a file that went
		}
		if bytes.Contains(b, marker) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// --secret-rotation restart: a new version restarts the service's tasks
// (one at a time, each once the previous runs again), and each restarted
// task reads the new value.
func TestSecretRotationRestartRestartsTasks(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)}})
	ctx := ctxFor(t, 5*time.Minute)
	m := c.Manager
	if out, err := m.Sh(ctx, "printf %s v1 | warren secret create token -f -"); err != nil {
		t.Fatalf("secret create: %v\n%s", err, out)
	}
	createService(t, c, "app", "--replicas", "2", "--constraint", "node.name!=manager-1",
		"--secret", "token", "--secret-rotation", "restart", "--", "sleep", "100000")
	v := waitRunning(t, c, "app", 2)
	started := map[string]string{}
	for _, task := range v.Tasks {
		out, err := taskExec(ctx, nodeByName(c, task.Node), task.Name, "cat", "/proc/1/stat")
		if err != nil {
			t.Fatal(err)
		}
		started[task.Name] = trim(out)
	}
	if out, err := m.Sh(ctx, "printf %s v2 | warren secret update token -f -"); err != nil {
		t.Fatalf("secret update: %v\n%s", err, out)
	}
	for _, task := range v.Tasks {
		n := nodeByName(c, task.Node)
		eventually(t, 2*time.Minute, task.Name+" restarted with the new value", func() error {
			stat, err := taskExec(ctx, n, task.Name, "cat", "/proc/1/stat")
			if err != nil {
				return err
			}
			if trim(stat) == started[task.Name] {
				return fmt.Errorf("not restarted yet")
			}
			val, err := taskExec(ctx, n, task.Name, "cat", "/run/secrets/token")
			if err != nil || trim(val) != "v2" {
				return fmt.Errorf("reads %q, %v", val, err)
			}
			return nil
		})
	}
	waitRunning(t, c, "app", 2)
}
