package orchestrate

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/testimage"
	"github.com/warren-appliance/warren/internal/testimage/testnode"
)

const testResolvConf = "nameserver 10.0.1.1\nsearch warren.local\noptions ndots:1\n"

// node is one simulated node's fixture: a private containerd, an images
// dir with the busybox tarball and a reconciler config.
type node struct {
	d   *testnode.Containerd
	cfg Config
}

func newNode(t testing.TB) *node {
	t.Helper()
	// Registered first so it runs last, after containerd's cleanup has
	// removed every task.
	cgroupParent := fmt.Sprintf("/warren-orchtest-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupParent(cgroupParent) })
	d := testnode.StartContainerd(t)
	images := t.TempDir()
	if _, err := testimage.BusyboxTarball(images, "busybox:latest"); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	// Tests that do not end with Cleanup leave pinned namespaces, which
	// would keep the temp dir from being removed.
	t.Cleanup(func() {
		pinned, _ := filepath.Glob(filepath.Join(state, "netns", "*"))
		for _, p := range pinned {
			removeNetns(p)
		}
	})
	return &node{d: d, cfg: Config{
		ContainerdAddress: d.Address,
		Namespace:         "warren",
		ImagesDir:         images,
		Bridge:            "warren-br0",
		Block:             netip.MustParsePrefix("10.0.1.0/24"),
		ResolvConf:        []byte(testResolvConf),
		StopGrace:         2 * time.Second,
		StateDir:          state,
		CgroupParent:      cgroupParent,
		Logger:            slog.New(slog.NewTextHandler(os.Stderr, nil)), // the parent shows it on failure
	}}
}

// removeCgroupParent removes the (empty) parent cgroups runc leaves.
func removeCgroupParent(parent string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	if unified := filepath.Join("/sys/fs/cgroup", parent); dirExists(unified) {
		dirs = append(dirs, unified)
	}
	for _, d := range dirs {
		os.Remove(d)
	}
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// start runs a reconciler until the test ends or stop is called.
func (n *node) start(t testing.TB) (r *Reconciler, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := New(ctx, n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		r.Close()
	}
	t.Cleanup(stop)
	return r, stop
}

// webTask serves "hello-<hostname>" on port 80.
func webTask(name, ip string) TaskSpec {
	return TaskSpec{
		Name: name, Service: strings.SplitN(name, "-", 2)[0], Image: "busybox", IP: netip.MustParseAddr(ip),
		Env: []string{"GREETING=hello"},
		Command: []string{"sh", "-c",
			`echo "$GREETING-$(hostname)" > /var/www/index.html && exec httpd -f -p 80 -h /var/www`},
	}
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func statusOf(r *Reconciler, name string) (TaskStatus, bool) {
	for _, s := range r.Status() {
		if s.Name == name {
			return s, true
		}
	}
	return TaskStatus{}, false
}

func running(r *Reconciler, names ...string) func() error {
	return func() error {
		for _, n := range names {
			s, ok := statusOf(r, n)
			if !ok || s.State != clustermap.TaskRunning {
				return fmt.Errorf("%s: %+v", n, s)
			}
		}
		return nil
	}
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

func httpGet(ip string) (string, error) {
	resp, err := httpClient.Get("http://" + ip + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return strings.TrimSpace(string(body)), err
}

func answers(ip, want string) func() error {
	return func() error {
		got, err := httpGet(ip)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("got %q, want %q", got, want)
		}
		return nil
	}
}

var execSeq atomic.Int32

// execIn runs a command inside a task's container and returns what it
// printed (stdout and stderr). The output comes through a file
// (--log-uri), not ctr's FIFOs: with containerd 1.6's runc shim a FIFO
// exec now and then delivers nothing at all although the command ran and
// exited 0 (5 of 300 `ctr tasks exec hostname` under load); through a
// file none of 300 lost it. ctr deletes the exec process before it exits
// 0, and the shim finishes the copy into the file before that.
func (n *node) execIn(task string, args ...string) (string, error) {
	id := fmt.Sprintf("probe%d", execSeq.Add(1))
	logPath := filepath.Join(n.d.Dir, "exec", id+".log")
	defer os.Remove(logPath)
	_, err := n.d.Ctr(append([]string{"-n", "warren", "tasks", "exec", "--log-uri", "file://" + logPath, "--exec-id", id, task}, args...)...)
	printed, _ := os.ReadFile(logPath)
	if err != nil {
		return string(printed), fmt.Errorf("%w (the command printed %q)", err, printed)
	}
	return string(printed), nil
}

func (n *node) taskPID(t testing.TB, name string) uint32 {
	t.Helper()
	c, err := client.New(n.d.Address, client.WithDefaultNamespace("warren"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), "warren")
	ctr, err := c.LoadContainer(ctx, name)
	if err != nil {
		t.Fatalf("load container %s: %v", name, err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatalf("task of %s: %v", name, err)
	}
	return task.Pid()
}

// gone checks that nothing of task name is left: container, task,
// snapshot, veth, netns file, task files.
func (n *node) gone(name string) error {
	out, err := n.d.Ctr("-n", "warren", "containers", "list", "-q")
	if err != nil {
		return err
	}
	for _, l := range testnode.Lines(out) {
		if l == name {
			return fmt.Errorf("container %s still listed", name)
		}
	}
	if out, err = n.d.Ctr("-n", "warren", "tasks", "list", "-q"); err != nil {
		return err
	}
	for _, l := range testnode.Lines(out) {
		if l == name {
			return fmt.Errorf("task %s still listed", name)
		}
	}
	if out, err = n.d.Ctr("-n", "warren", "snapshots", "list"); err != nil {
		return err
	}
	for _, l := range testnode.Lines(out) {
		if strings.Fields(l)[0] == name {
			return fmt.Errorf("snapshot %s still listed", name)
		}
	}
	if _, err := netlink.LinkByName(hostVethName(name)); err == nil {
		return fmt.Errorf("veth %s of %s still exists", hostVethName(name), name)
	}
	if _, err := os.Stat(filepath.Join(n.cfg.StateDir, "netns", name)); err == nil {
		return fmt.Errorf("netns file of %s still exists", name)
	}
	if _, err := os.Stat(filepath.Join(n.cfg.StateDir, "files", name)); err == nil {
		return fmt.Errorf("files of %s still exist", name)
	}
	return nil
}

// TestReconciler walks one node through the life of its tasks: start, talk,
// crash and restart, adoption by a new reconciler, orphans, removal, bad
// input, late image tarballs and cleanup.
func TestReconciler(t *testing.T) {
	if !testnode.Enter(t, "orch") {
		return
	}
	n := newNode(t)
	r, stop := n.start(t)
	web1, web2 := webTask("web-1", "10.0.1.2"), webTask("web-2", "10.0.1.3")
	// busybox 1.35's ping needs a raw socket (it opens an ICMP socket
	// without CAP_NET_RAW but then discards the replies): web-1, which
	// pings, gets NET_RAW back; web-2 keeps the default.
	web1.CapAdd = []string{"CAP_NET_RAW"}
	r.Apply([]TaskSpec{web1, web2})

	t.Run("tasks run and answer", func(t *testing.T) {
		waitFor(t, "both running", 60*time.Second, running(r, "web-1", "web-2"))
		waitFor(t, "web-1 answers", 30*time.Second, answers("10.0.1.2", "hello-web-1"))
		waitFor(t, "web-2 answers", 30*time.Second, answers("10.0.1.3", "hello-web-2"))

		out, err := n.d.Ctr("-n", "warren", "containers", "list", "-q")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(testnode.Lines(out), " "); got != "web-1 web-2" {
			t.Fatalf("ctr containers list: %q", got)
		}
		if out, err := n.execIn("web-1", "ping", "-c", "1", "-W", "5", "10.0.1.3"); err != nil {
			t.Fatalf("web-1 -> web-2: %v", err)
		} else if !strings.Contains(out, "1 packets received") {
			t.Fatalf("web-1 -> web-2: %s", out)
		}
		if out, err := n.execIn("web-2", "timeout", "10", "wget", "-q", "-O-", "http://10.0.1.2/"); err != nil || !strings.Contains(out, "hello-web-1") {
			t.Fatalf("web-2 -> web-1: %v %s", err, out)
		}
		// CAP_NET_RAW is dropped by default (web-2); CapAdd gives it back
		// (web-1). ICMP sockets are open to every group, so a ping that
		// uses them (iputils') works without it.
		for task, want := range map[string]bool{"web-1": true, "web-2": false} {
			out, err := n.execIn(task, "grep", "CapEff", "/proc/1/status")
			if err != nil {
				t.Fatalf("%s: %v %s", task, err, out)
			}
			eff, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "CapEff:")), 16, 64)
			if err != nil {
				t.Fatalf("%s: CapEff %q: %v", task, out, err)
			}
			const netRaw = 1 << 13
			if has := eff&netRaw != 0; has != want || eff&(1<<0) == 0 /* CHOWN stays */ {
				t.Errorf("%s: CapEff %#x: NET_RAW %v, want %v", task, eff, has, want)
			}
		}
		if out, err := n.execIn("web-2", "cat", "/proc/sys/net/ipv4/ping_group_range"); err != nil || strings.Join(strings.Fields(out), " ") != pingGroupRange {
			t.Errorf("web-2: ping_group_range %q (%v), want %q", out, err, pingGroupRange)
		}
		if out, err := n.execIn("web-1", "hostname"); err != nil || strings.TrimSpace(out) != "web-1" {
			t.Fatalf("hostname: %q %v", out, err)
		}
		if out, err := n.execIn("web-1", "cat", "/etc/resolv.conf"); err != nil || out != testResolvConf {
			t.Fatalf("resolv.conf: %q %v", out, err)
		}
		if out, err := n.execIn("web-2", "cat", "/etc/hosts"); err != nil || !strings.Contains(out, "10.0.1.3\tweb-2") {
			t.Fatalf("hosts: %q %v", out, err)
		}
		if _, err := n.execIn("web-1", "sh", "-c", "echo x > /etc/resolv.conf"); err == nil {
			t.Fatal("resolv.conf is writable inside the task")
		}
		for _, name := range []string{"web-1", "web-2"} {
			host, err := netlink.LinkByName(hostVethName(name))
			if err != nil {
				t.Fatal(err)
			}
			if pi, err := netlink.LinkGetProtinfo(host); err != nil || !pi.Hairpin {
				t.Fatalf("bridge port of %s: hairpin off (%v)", name, err)
			}
		}
		out, err = n.execIn("web-1", "ip", "route")
		if err != nil || !strings.Contains(out, "default via 10.0.1.1 dev eth0") {
			t.Fatalf("routes: %q %v", out, err)
		}
	})

	// A pass over running tasks (any new map wakes one) must find their
	// network complete; rebuilding it cut every task off for a moment on
	// every pass (netlink lists the default route as 0.0.0.0/0).
	t.Run("a running task's network is complete, not rebuilt by the next pass", func(t *testing.T) {
		br, err := netlink.LinkByName(n.cfg.Bridge)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []TaskSpec{web1, web2} {
			ns, err := netns.GetFromPath(r.net.netnsPath(s.Name))
			if err != nil {
				t.Fatal(err)
			}
			h, err := netlink.NewHandleAt(ns)
			if err != nil {
				ns.Close()
				t.Fatal(err)
			}
			complete := r.net.taskLinkComplete(h, br, hostVethName(s.Name), s.IP)
			h.Close()
			ns.Close()
			if !complete {
				t.Errorf("%s: its veth, address and default route are in place, but the reconciler would rebuild them", s.Name)
			}
		}
	})

	t.Run("egress is masqueraded, overlay traffic keeps its source", func(t *testing.T) {
		outside := serveSourceAddr(t, "orchout", "uplink0", "192.168.77.1/24", "192.168.77.2/24", "")
		overlay := serveSourceAddr(t, "orchpeer", "warren0", "10.0.2.1/24", "10.0.2.5/24", "10.0.1.0/24 via 10.0.2.1")
		for _, c := range []struct{ url, wantSource string }{
			{outside, "192.168.77.1"}, // the node's uplink address
			{overlay, "10.0.1.2"},     // the task's own address
		} {
			out, err := n.execIn("web-1", "timeout", "10", "wget", "-q", "-O-", c.url) // wget -T crashes busybox 1.35
			if err != nil || strings.TrimSpace(out) != c.wantSource {
				t.Errorf("GET %s from web-1: server saw %q (%v), want %s", c.url, out, err, c.wantSource)
			}
		}
	})

	t.Run("host rules", func(t *testing.T) {
		for _, c := range []struct{ table, chain, want string }{
			{"filter", "FORWARD", "-j WARREN-TASK-FORWARD"},
			{"filter", "WARREN-TASK-FORWARD", "-A WARREN-TASK-FORWARD -i warren-br0 -j ACCEPT"},
			{"nat", "POSTROUTING", "-j WARREN-TASK-EGRESS"},
			{"nat", "WARREN-TASK-EGRESS", "-A WARREN-TASK-EGRESS -s 10.0.1.0/24 -j MASQUERADE"},
		} {
			out, err := exec.Command("iptables", "-w", "5", "-t", c.table, "-S", c.chain).CombinedOutput()
			if err != nil || !strings.Contains(string(out), c.want) {
				t.Errorf("%s %s lacks %q: %v\n%s", c.table, c.chain, c.want, err, out)
			}
		}
		before, _ := exec.Command("iptables-save").Output()
		if err := r.net.ensureHost(); err != nil {
			t.Fatal(err)
		}
		after, _ := exec.Command("iptables-save").Output()
		if countLines(before, "WARREN") != countLines(after, "WARREN") {
			t.Fatalf("ensureHost is not idempotent:\n%s\n---\n%s", before, after)
		}
		fwd, _ := os.ReadFile(ipForwardSysctl)
		if strings.TrimSpace(string(fwd)) != "1" {
			t.Fatalf("ip_forward = %q", fwd)
		}
	})

	t.Run("a killed task is restarted", func(t *testing.T) {
		pid := n.taskPID(t, "web-1")
		if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "web-1 restarted", 60*time.Second, func() error {
			s, _ := statusOf(r, "web-1")
			if s.Restarts < 1 || s.State != clustermap.TaskRunning {
				return fmt.Errorf("%+v", s)
			}
			return nil
		})
		if n.taskPID(t, "web-1") == pid {
			t.Fatal("same PID after restart")
		}
		waitFor(t, "web-1 answers again", 30*time.Second, answers("10.0.1.2", "hello-web-1"))
	})

	stop()
	var r2 *Reconciler
	stop2 := func() {}
	outer := t
	t.Run("a new reconciler adopts running tasks", func(t *testing.T) {
		pids := map[string]uint32{"web-1": n.taskPID(t, "web-1"), "web-2": n.taskPID(t, "web-2")}
		n.cfg.ResolvConf = []byte("nameserver 10.0.1.1\nsearch warren.local\n# changed\n")
		r2, stop2 = n.start(outer) // lives on after this subtest
		r2.Apply([]TaskSpec{web1, web2})
		waitFor(t, "adopted", 30*time.Second, running(r2, "web-1", "web-2"))
		for name, pid := range pids {
			if got := n.taskPID(t, name); got != pid {
				t.Errorf("%s restarted on adoption: pid %d -> %d", name, pid, got)
			}
			if s, _ := statusOf(r2, name); s.Restarts != 0 {
				t.Errorf("%s: restarts %d after adoption", name, s.Restarts)
			}
		}
		waitFor(t, "web-2 still answers", 30*time.Second, answers("10.0.1.3", "hello-web-2"))
		// New resolver settings reach running tasks through the bind mount.
		if out, err := n.execIn("web-1", "cat", "/etc/resolv.conf"); err != nil || out != string(n.cfg.ResolvConf) {
			t.Fatalf("resolv.conf after the change: %q %v", out, err)
		}
	})
	if r2 == nil {
		t.FailNow()
	}

	t.Run("a containerd restart keeps tasks and their watch", func(t *testing.T) {
		pid := n.taskPID(t, "web-2")
		n.d.Restart(t)
		r2.Apply([]TaskSpec{web1, web2})
		waitFor(t, "running after containerd restart", 30*time.Second, running(r2, "web-1", "web-2"))
		if got := n.taskPID(t, "web-2"); got != pid {
			t.Fatalf("web-2 restarted by a containerd restart: pid %d -> %d", pid, got)
		}
		// The exit watch is re-established: a crash is still noticed.
		if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "web-2 restarted", 60*time.Second, func() error {
			s, _ := statusOf(r2, "web-2")
			if s.Restarts < 1 || s.State != clustermap.TaskRunning || n.taskPID(t, "web-2") == pid {
				return fmt.Errorf("%+v", s)
			}
			return nil
		})
		waitFor(t, "web-2 answers", 30*time.Second, answers("10.0.1.3", "hello-web-2"))
	})

	t.Run("orphans are removed, foreign containers kept", func(t *testing.T) {
		// A veth on our bridge whose task is gone (its namespace died).
		br, err := netlink.LinkByName("warren-br0")
		if err != nil {
			t.Fatal(err)
		}
		stray := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostVethPrefix + "stray0", MasterIndex: br.Attrs().Index}, PeerName: "orchstrayp"}
		if err := netlink.LinkAdd(stray); err != nil {
			t.Fatal(err)
		}

		c, err := client.New(n.d.Address, client.WithDefaultNamespace("warren"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx := namespaces.WithNamespace(context.Background(), "warren")
		img, err := c.GetImage(ctx, "docker.io/library/busybox:latest")
		if err != nil {
			t.Fatal(err)
		}
		for name, labels := range map[string]map[string]string{
			"orphan-1":  {labelTask: "orphan-1"},
			"bystander": {"owner": "someone-else"},
		} {
			if _, err := c.NewContainer(ctx, name, client.WithNewSnapshot(name, img),
				client.WithNewSpec(oci.WithImageConfig(img)), client.WithContainerLabels(labels)); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			if ctr, err := c.LoadContainer(ctx, "bystander"); err == nil {
				ctr.Delete(ctx, client.WithSnapshotCleanup)
			}
		})
		r2.Apply([]TaskSpec{web1, web2}) // same list: a pass finds the orphan
		waitFor(t, "orphan removed", 30*time.Second, func() error { return n.gone("orphan-1") })
		waitFor(t, "stray veth removed", 30*time.Second, func() error {
			if _, err := netlink.LinkByName(stray.Name); err == nil {
				return fmt.Errorf("%s still exists", stray.Name)
			}
			return nil
		})
		if _, err := c.LoadContainer(ctx, "bystander"); err != nil {
			t.Fatalf("unlabelled container was touched: %v", err)
		}
	})

	t.Run("a task no longer desired is removed completely", func(t *testing.T) {
		r2.Apply([]TaskSpec{web1})
		waitFor(t, "web-2 gone", 30*time.Second, func() error { return n.gone("web-2") })
		if s, ok := statusOf(r2, "web-2"); !ok || s.State != clustermap.TaskShutdown {
			t.Fatalf("web-2 status after removal: %+v %v", s, ok)
		}
		if _, err := httpGet("10.0.1.2"); err != nil {
			t.Fatalf("web-1 hurt by removing web-2: %v", err)
		}
	})

	t.Run("an unknown image fails clearly and creates nothing", func(t *testing.T) {
		bad := webTask("bad-1", "10.0.1.9")
		bad.Image = "registry.invalid/nope:1"
		r2.Apply([]TaskSpec{web1, bad})
		waitFor(t, "bad-1 failed", 60*time.Second, func() error {
			s, _ := statusOf(r2, "bad-1")
			if s.State != clustermap.TaskFailed || !strings.Contains(s.Error, "registry.invalid/nope:1 is not present and pulling it failed") {
				return fmt.Errorf("%+v", s)
			}
			return nil
		})
		if err := n.gone("bad-1"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a command that cannot start fails clearly", func(t *testing.T) {
		broken := webTask("broken-1", "10.0.1.12")
		broken.Command = []string{"/bin/no-such-program"}
		r2.Apply([]TaskSpec{web1, broken})
		waitFor(t, "broken-1 failed", 60*time.Second, func() error {
			s, _ := statusOf(r2, "broken-1")
			if s.State != clustermap.TaskFailed || !strings.Contains(s.Error, "no-such-program") {
				return fmt.Errorf("%+v", s)
			}
			return nil
		})
		r2.Apply([]TaskSpec{web1})
		waitFor(t, "broken-1 gone", 30*time.Second, func() error { return n.gone("broken-1") })
	})

	t.Run("a tarball added later is imported and its task starts", func(t *testing.T) {
		late := webTask("late-1", "10.0.1.10")
		late.Image = "example.org/late:v2"
		r2.Apply([]TaskSpec{web1, late})
		waitFor(t, "bad-1, dropped from the list, reported shut down", 30*time.Second, func() error {
			if s, _ := statusOf(r2, "bad-1"); s.State != clustermap.TaskShutdown {
				return fmt.Errorf("%+v", s)
			}
			return nil
		})
		waitFor(t, "late-1 waits for its image", 60*time.Second, func() error {
			if s, _ := statusOf(r2, "late-1"); s.State != clustermap.TaskFailed {
				return fmt.Errorf("%+v", s)
			}
			return nil
		})
		// Write elsewhere and rename in, as an operator's copy should.
		tmp := t.TempDir()
		path, err := testimage.BusyboxTarball(tmp, late.Image)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path, filepath.Join(n.cfg.ImagesDir, filepath.Base(path))); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "late-1 running", 60*time.Second, running(r2, "late-1"))
		if s, _ := statusOf(r2, "late-1"); s.Image != "example.org/late:v2" {
			t.Fatalf("status names image %q", s.Image)
		}
		waitFor(t, "late-1 answers", 30*time.Second, answers("10.0.1.10", "hello-late-1"))
	})

	t.Run("a changed spec recreates the task", func(t *testing.T) {
		moved := webTask("late-1", "10.0.1.11")
		moved.Image = "example.org/late:v2"
		r2.Apply([]TaskSpec{web1, moved})
		waitFor(t, "late-1 answers on its new IP", 60*time.Second, answers("10.0.1.11", "hello-late-1"))
		if _, err := httpGet("10.0.1.10"); err == nil {
			t.Fatal("old IP still answers")
		}
	})

	t.Run("after a reboot the tasks come back with their network", func(t *testing.T) {
		stop2()
		// What a power cut leaves: containers in containerd's store, but no
		// processes, no veths, and netns files that are plain files.
		for _, name := range []string{"web-1", "late-1"} {
			if _, err := n.d.Ctr("-n", "warren", "tasks", "kill", "-s", "SIGKILL", name); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "tasks stopped", 30*time.Second, func() error {
			out, err := n.d.Ctr("-n", "warren", "tasks", "list")
			if err != nil || strings.Contains(out, "RUNNING") {
				return fmt.Errorf("%v %s", err, out)
			}
			return nil
		})
		for _, name := range []string{"web-1", "late-1"} {
			if _, err := n.d.Ctr("-n", "warren", "tasks", "delete", name); err != nil {
				t.Fatal(err)
			}
			if l, err := netlink.LinkByName(hostVethName(name)); err == nil {
				netlink.LinkDel(l)
			}
			if err := removeNetns(filepath.Join(n.cfg.StateDir, "netns", name)); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(n.cfg.StateDir, "netns", name), nil, 0o444); err != nil {
				t.Fatal(err)
			}
		}
		r3, stop3 := n.start(outer)
		moved := webTask("late-1", "10.0.1.11")
		moved.Image = "example.org/late:v2"
		r3.Apply([]TaskSpec{web1, moved})
		waitFor(t, "web-1 answers after the reboot", 60*time.Second, answers("10.0.1.2", "hello-web-1"))
		waitFor(t, "late-1 answers after the reboot", 60*time.Second, answers("10.0.1.11", "hello-late-1"))
		stop3()
	})

	t.Run("cleanup removes everything", func(t *testing.T) {
		stop2() // --cleanup runs with the daemon stopped, on a fresh reconciler
		r3, err := New(context.Background(), n.cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer r3.Close()
		if err := r3.Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		// No image of ours is left in containerd. (The namespace itself
		// stays here: it holds the foreign container an earlier step made,
		// which cleanup must not touch.)
		imgs, err := r3.client.ImageService().List(namespaces.WithNamespace(context.Background(), n.cfg.Namespace))
		if err != nil || len(imgs) != 0 {
			t.Errorf("images left after cleanup: %d (%v)", len(imgs), err)
		}
		for _, name := range []string{"web-1", "late-1"} {
			if err := n.gone(name); err != nil {
				t.Error(err)
			}
		}
		if _, err := netlink.LinkByName("warren-br0"); err == nil {
			t.Error("bridge still exists")
		}
		if out, err := exec.Command("iptables", "-w", "5", "-t", "nat", "-S").CombinedOutput(); err != nil || strings.Contains(string(out), "WARREN") {
			t.Errorf("nat chains left: %v\n%s", err, out)
		}
		if out, err := exec.Command("iptables", "-w", "5", "-S").CombinedOutput(); err != nil || strings.Contains(string(out), "WARREN") {
			t.Errorf("filter chains left: %v\n%s", err, out)
		}
	})

	t.Run("a slow removal holds up no other task", func(t *testing.T) {
		cfg := n.cfg
		n.cfg.StopGrace = 10 * time.Minute // stubborn-1 ignores SIGTERM: its removal waits
		r4, stop4 := n.start(outer)
		n.cfg = cfg
		stubborn := webTask("stubborn-1", "10.0.1.20")
		r4.Apply([]TaskSpec{stubborn})
		waitFor(t, "stubborn-1 answers", 60*time.Second, answers("10.0.1.20", "hello-stubborn-1"))
		pid := n.taskPID(t, "stubborn-1")

		// reuse-1 gets stubborn-1's IP: it must wait until that is released.
		r4.Apply([]TaskSpec{webTask("fresh-1", "10.0.1.21"), webTask("reuse-1", "10.0.1.20")})
		waitFor(t, "fresh-1 answers during the removal", 60*time.Second, answers("10.0.1.21", "hello-fresh-1"))
		if err := n.gone("stubborn-1"); err == nil {
			t.Fatal("stubborn-1 gone before its grace ended: the test proves nothing")
		}
		if err := n.gone("reuse-1"); err != nil {
			t.Fatalf("reuse-1 created while its IP is still held: %v", err)
		}
		if got, err := httpGet("10.0.1.20"); err != nil || got != "hello-stubborn-1" {
			t.Fatalf("10.0.1.20 during the removal: %q %v", got, err)
		}
		// The grace period's end, early: SIGKILL, as the reconciler would.
		if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "stubborn-1 removed", 60*time.Second, func() error { return n.gone("stubborn-1") })
		waitFor(t, "reuse-1 answers on the released IP", 60*time.Second, answers("10.0.1.20", "hello-reuse-1"))
		stop4()
		r5, err := New(context.Background(), n.cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer r5.Close()
		if err := r5.Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func countLines(b []byte, substr string) int {
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// serveSourceAddr makes a namespace behind a veth (hostIf in the node with
// hostAddr, eth0 inside with nsAddr) running an HTTP server that answers
// with the source address it sees; it returns the server's URL.
func serveSourceAddr(t *testing.T, ns, hostIf, hostAddr, nsAddr, nsRoute string) string {
	t.Helper()
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostIf).Run() })
	ip("addr", "add", hostAddr, "dev", hostIf)
	ip("link", "set", hostIf, "up")
	ip("-n", ns, "addr", "add", nsAddr, "dev", "eth0")
	ip("-n", ns, "link", "set", "eth0", "up")
	if nsRoute != "" {
		ip(append([]string{"-n", ns, "route", "add"}, strings.Fields(nsRoute)...)...)
	}

	// The listening socket is made inside ns; serving it needs no namespace.
	lnc := make(chan net.Listener, 1)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, err := netns.GetFromName(ns)
		if err == nil {
			err = netns.Set(h)
			h.Close()
		}
		if err != nil {
			errc <- err
			return
		}
		addr, _, _ := strings.Cut(nsAddr, "/")
		ln, err := net.Listen("tcp", addr+":8080")
		if err != nil {
			errc <- err
			return
		}
		lnc <- ln
	}()
	var ln net.Listener
	select {
	case ln = <-lnc:
	case err := <-errc:
		t.Fatalf("listen in %s: %v", ns, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintln(w, host)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/"
}
