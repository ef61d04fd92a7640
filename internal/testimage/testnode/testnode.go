// Package testnode runs a test as a simulated node: inside a network
// namespace of its own and a private mount namespace whose /run is a fresh
// tmpfs, with a private containerd daemon. Nothing of the host's network
// or containerd is touched.
//
// A test calls Enter first; in the parent process Enter re-runs the same
// test inside the namespaces and returns false (the caller returns), in
// that child it returns true and the test goes on, typically with
// StartContainerd.
package testnode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"golang.org/x/sys/unix"
)

const (
	envChild   = "WARREN_TESTNODE_CHILD"
	envMetrics = "WARREN_TESTNODE_METRICS"
)

var seq atomic.Int32

// Tools the simulated node needs on the host.
var required = []string{"containerd", "runc", "ctr", "nsenter", "unshare", "ip"}

// Enter re-runs the calling top-level test or benchmark inside a new
// network namespace named prefix+pid+n and a private mount namespace. It
// returns true in that child; in the parent it waits for the child,
// fails tb if the child failed, and returns false. It skips when not root
// or when a required tool is missing.
func Enter(tb testing.TB, prefix string) bool {
	tb.Helper()
	if os.Getenv(envChild) == tb.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		tb.Skip("needs root: network namespaces and containerd")
	}
	for _, tool := range required {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Skipf("%s not installed", tool)
		}
	}
	name := fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), seq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("create netns %s: %v: %s", name, err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})

	metrics := filepath.Join(tb.TempDir(), "metrics.json")
	args := []string{"-m", "--propagation", "private", "nsenter", "--net=/run/netns/" + name, os.Args[0],
		"-test.v", "-test.count=1", "-test.timeout=15m"}
	pattern := "^" + regexp.QuoteMeta(tb.Name()) + "$"
	if _, isBench := tb.(*testing.B); isBench {
		args = append(args, "-test.run=^$", "-test.bench="+pattern, "-test.benchtime=1x")
	} else {
		args = append(args, "-test.run="+pattern)
	}
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), envChild+"="+tb.Name(), envMetrics+"="+metrics)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	// A benchmark's log is always printed: keep it to failures there.
	if _, isBench := tb.(*testing.B); err != nil || !isBench {
		for _, line := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
			tb.Log("node: " + line)
		}
	}
	if err != nil {
		tb.Fatalf("test inside node namespace %s failed: %v", name, err)
	}
	if b, ok := tb.(*testing.B); ok {
		reportChildMetrics(b, metrics)
	}
	return false
}

// ReportMetric reports a benchmark figure; when running inside a node it
// also hands the figure to the parent, whose output is what `go test`
// prints.
func ReportMetric(b *testing.B, value float64, unit string) {
	b.ReportMetric(value, unit)
	path := os.Getenv(envMetrics)
	if path == "" {
		return
	}
	m := map[string]float64{}
	if data, err := os.ReadFile(path); err == nil {
		json.Unmarshal(data, &m)
	}
	m[unit] = value
	data, _ := json.Marshal(m)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Errorf("record metric: %v", err)
	}
}

func reportChildMetrics(b *testing.B, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	m := map[string]float64{}
	if err := json.Unmarshal(data, &m); err != nil {
		b.Errorf("read child metrics: %v", err)
		return
	}
	for unit, v := range m {
		b.ReportMetric(v, unit)
	}
}

// Containerd is a private containerd daemon.
type Containerd struct {
	Address string // its socket
	Dir     string // root, logs and config
	cmd     *exec.Cmd
	config  string
	log     *os.File
}

// StartContainerd mounts a tmpfs on /run (shim sockets live under
// /run/containerd whatever the config says) and starts containerd with a
// minimal config: no CRI, only the overlayfs and native snapshotters. It
// must run inside Enter's child. Cleanup kills every task the daemon runs
// and stops it.
func StartContainerd(tb testing.TB) *Containerd {
	tb.Helper()
	if os.Getenv(envChild) == "" {
		tb.Fatal("StartContainerd outside testnode.Enter's child would touch the host's /run")
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=755"); err != nil {
		tb.Fatalf("mount tmpfs on /run: %v", err)
	}
	// Not t.TempDir: the root holds overlay mounts until the daemon stops,
	// and it must outlive cleanups registered after this call.
	dir, err := os.MkdirTemp("", "warren-containerd-")
	if err != nil {
		tb.Fatal(err)
	}
	d := &Containerd{Address: filepath.Join(dir, "containerd.sock"), Dir: dir}
	config := fmt.Sprintf(`version = 2
root = %q
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), d.Address, d.Address+".ttrpc")
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		tb.Fatal(err)
	}
	d.config, d.log = cfgPath, logf
	if err := d.startDaemon(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		d.killTasks(tb)
		d.stopDaemon()
		logf.Close()
		if tb.Failed() {
			if log, err := os.ReadFile(logf.Name()); err == nil {
				tb.Logf("containerd log (last 4 KiB):\n%s", tail(log, 4096))
			}
		}
		os.RemoveAll(dir)
	})
	if err := d.waitReady(30 * time.Second); err != nil {
		tb.Fatal(err)
	}
	return d
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (d *Containerd) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c, err := client.New(d.Address)
	if err != nil {
		return fmt.Errorf("containerd client: %w", err)
	}
	defer c.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Version(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd not ready after %s: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (d *Containerd) startDaemon() error {
	d.cmd = exec.Command("containerd", "--config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	return nil
}

// Restart stops the daemon and starts it again; tasks keep running in
// their shims meanwhile, as on a package upgrade.
func (d *Containerd) Restart(tb testing.TB) {
	tb.Helper()
	d.stopDaemon()
	if err := d.startDaemon(); err != nil {
		tb.Fatal(err)
	}
	if err := d.waitReady(30 * time.Second); err != nil {
		tb.Fatal(err)
	}
}

// killTasks kills every task of every namespace, so no shim or container
// process outlives the test.
func (d *Containerd) killTasks(tb testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if c, err := client.New(d.Address); err == nil {
		nss, _ := c.NamespaceService().List(ctx)
		for _, ns := range nss {
			nctx := namespaces.WithNamespace(ctx, ns)
			containers, _ := c.Containers(nctx)
			for _, ctr := range containers {
				if task, err := ctr.Task(nctx, nil); err == nil {
					if _, err := task.Delete(nctx, client.WithProcessKill); err != nil {
						tb.Logf("kill task %s/%s: %v", ns, ctr.ID(), err)
					}
				}
				ctr.Delete(nctx, client.WithSnapshotCleanup)
			}
		}
		c.Close()
	}
}

func (d *Containerd) stopDaemon() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
}

// Ctr runs the ctr CLI against this daemon and returns its output.
func (d *Containerd) Ctr(args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"--address", d.Address}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Lines splits command output into non-empty lines.
func Lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}
